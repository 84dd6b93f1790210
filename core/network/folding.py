"""Batch norms folded into the convolutions before them, for the engine's many passes.

In eval mode BN(conv(x)) is one convolution with rescaled weights and a bias. On a CPU, folding
makes a forward and backward of EfficientNet-Lite0 about 20 % faster and a forward about 15 %
(measured), and the engine runs tens to hundreds of passes per image (slider, curves, sweep), so
it runs them on a folded copy. Activations, logits and input gradients are
the model's up to float rounding; the fold is checked on a probe input before it is used.

torch.fx's fuse needs a symbolically traceable model, which many checkpoints' code is not
(EfficientNet-Lite0's same padding reads tensor shapes), so the pairs are found from one traced
forward instead: a BN called once whose input is the output of a convolution called once.
"""
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from core.network.neurons import intercept

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(module: nn.Module, probe: torch.Tensor) -> nn.Module:
    """A copy of module (in eval mode) with every foldable batch norm folded into its
    convolution and replaced by an identity; module itself when nothing folds, when some part
    of it is in training mode, or when the copy's activations or outputs on `probe` differ from
    the module's (or it cannot be made or run)."""
    if any(m.training for m in module.modules()):
        return module  # a training BN normalises by the batch, and the probe would update it
    try:
        pairs, reference = conv_bn_pairs(module, probe)
        if not pairs:
            return module
        folded = copy.deepcopy(module)
        named = dict(folded.named_modules())
        for conv_name, norm_name in pairs:
            conv, norm = named[conv_name], named[norm_name]
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean,
                                                norm.running_var, norm.eps, norm.weight, norm.bias)
            conv.weight, conv.bias = weight, bias
            parent, _, leaf = norm_name.rpartition(".")
            setattr(named[parent] if parent else folded, leaf, nn.Identity())
        return folded if _same_function(reference, folded, probe) else module
    except Exception:  # an optimisation only: whatever stops it, the model is used as it is
        return module


def conv_bn_pairs(module: nn.Module, probe: torch.Tensor) -> tuple[list[tuple[str, str]], list]:
    """The (conv, norm) pairs to fold, and the module's _trace on the probe, from one forward."""
    calls: dict[str, int] = {}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id of a conv output -> (conv, output)
    fed: dict[str, str] = {}  # norm -> the conv whose output it normalised

    def conv_hook(name):
        def hook(_m, _inputs, out):
            calls[name] = calls.get(name, 0) + 1
            produced[id(out)] = (name, out)  # the tensor is kept, so its id is not reused
        return hook

    def norm_hook(name):
        def hook(_m, inputs):
            calls[name] = calls.get(name, 0) + 1
            source = produced.get(id(inputs[0]))
            if source is not None and source[1] is inputs[0]:
                fed[name] = source[0]
        return hook

    handles = []
    try:
        for name, m in module.named_modules():
            if isinstance(m, _CONVS) and not _parametrized(m):  # padding variants, e.g. Lite0's
                handles.append(m.register_forward_hook(conv_hook(name)))
            # exact types: subclasses such as timm's BatchNormAct2d do more than normalise
            elif type(m) in _NORMS and m.track_running_stats and m.running_mean is not None:
                handles.append(m.register_forward_pre_hook(norm_hook(name)))
        reference = _trace(module, probe)
    finally:
        for handle in handles:
            handle.remove()
    convs = list(fed.values())
    pairs = [(conv, norm) for norm, conv in fed.items()
             if calls[norm] == 1 and calls[conv] == 1 and convs.count(conv) == 1]
    return pairs, reference


def _parametrized(conv: nn.Module) -> bool:
    # weight norm or other parametrizations compute the weight: it cannot simply be replaced
    return hasattr(conv, "parametrizations") or not isinstance(conv.weight, nn.Parameter)


def _same_function(reference: list, folded: nn.Module, probe: torch.Tensor) -> bool:
    """Whether the folded copy's _trace on the probe matches the module's (`reference`)."""
    tolerance = 1e-3 if probe.dtype in (torch.float32, torch.float64) else 3e-2
    ours, theirs = reference, _trace(folded, probe)
    return len(ours) == len(theirs) and all(
        a.shape == b.shape and float((a - b).abs().max()) <= tolerance * (float(a.abs().max()) + 1e-6)
        for a, b in zip(ours, theirs))


def _trace(module: nn.Module, probe: torch.Tensor) -> list[torch.Tensor]:
    """Every activation output and the logits of one forward."""
    outputs: list[torch.Tensor] = []

    def keep(_index, out):
        outputs.append(out.detach().float().clone())  # later in-place ops must not change it
        return out

    with torch.no_grad(), intercept(keep):
        logits = module(probe)
    return [*outputs, logits.detach().float()]
