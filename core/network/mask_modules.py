"""The pruned network as a module graph of its own: a copy of the network in which each mask is a
module that gates its activation, for the libraries that cannot take the slider's masks as hooks
(Captum's DeepLIFT hooks the same activation modules; zennit's LRP rewrites a copy of the model)."""
import copy

import torch
from torch import nn

from core.errors import UnsupportedMethod


class MaskModule(nn.Module):
    """An activation with its mask, as a module of its own (masked_copy): the mask gates the
    activation's input, which for an activation that maps 0 to 0 (ReLU, ReLU6, SiLU, GELU, ...) is
    the same function as masking its output. Libraries that hook the activation modules (Captum's
    DeepLIFT) or rewrite the model (zennit's LRP) then see the activation as it is, and the mask as
    one multiplication before it, a linear step they pass with the mask as its gradient. (After
    it, Captum's DeepLIFT no longer composes: a multiplication by ones moved its map by 30 %.)"""

    def __init__(self, activation: nn.Module, mask: torch.Tensor):
        super().__init__()
        self.activation = activation
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x * self.mask)


def masked_copy(module: nn.Module, names: list[str], masks: list[torch.Tensor]) -> nn.Module:
    """A copy of module with each activation module named in `names` gated by its mask (a
    MaskModule in its place): the pruned network as a module graph of its own. UnsupportedMethod
    for an activation that does not map 0 to 0 (a sigmoid): its mask cannot go before it."""
    module = copy.deepcopy(module)
    for name, mask in zip(names, masks):
        parent, _, child = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        activation = getattr(owner, child)
        with torch.no_grad():
            at_zero = activation(torch.zeros(1, device=mask.device, dtype=mask.dtype))
        if bool(at_zero.ne(0).any()):
            raise UnsupportedMethod(f"{type(activation).__name__} ('{name}') maps 0 to {float(at_zero.flatten()[0]):g}: "
                                    "its mask cannot gate its input")
        setattr(owner, child, MaskModule(activation, mask))
    return module


def masked_names(inner: nn.Module, forward) -> list[str]:
    """The names, in `inner`, of the activation modules a MaskedForward over it masks; UnsupportedMethod
    where its masks are not on modules (function calls, or a module called twice)."""
    if forward.modules is None:
        raise UnsupportedMethod("an activation is a function call or a module that runs more than once per "
                                "forward: no module of its own for its mask to gate")
    names = {id(m): n for n, m in inner.named_modules()}
    return [names[id(m)] for m in forward.modules]
