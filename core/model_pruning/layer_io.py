"""What one layer sees in a forward, for reconstruction: the input of the F.conv2d or F.linear call
on its weight (whatever its forward does first), its output, and the feature map a pooled linear
averages. Each forward stops once it has what it came for."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


class NoWeightCall(Exception):
    """No F.conv2d or F.linear call of a forward used the layer's weight."""


class _Reached(BaseException):  # not Exception: a model's own `except Exception` must not catch it
    """Stops a forward once the layer being fitted has been seen."""


@dataclass(frozen=True)
class ConvCall:
    """How an F.conv2d call convolves: the module's attributes may not say (a forward that pads
    first, as TensorFlow's "same" padding in efficientnet_pytorch, calls it with padding 0)."""
    stride: tuple
    padding: tuple | str
    dilation: tuple


_CALL_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


class _WeightCall(TorchFunctionMode):
    """Inside a layer's forward: the F.conv2d or F.linear call on its weight, whatever the forward
    does before it; records its input and geometry, then stops the forward."""

    def __init__(self, weight: torch.Tensor, seen: list):
        super().__init__()
        self.weight, self.seen = weight, seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.conv2d, F.linear):
            call = {**dict(zip(_CALL_ARGS, args)), **kwargs}
            if call.get("weight") is self.weight:
                geometry = None
                if func is F.conv2d:
                    geometry = ConvCall(*(_pair(call.get(k, default)) for k, default in
                                       (("stride", 1), ("padding", 0), ("dilation", 1))))
                self.seen.append((call["input"], geometry))
                raise _Reached
        return func(*args, **kwargs)


def _pair(value):
    return value if isinstance(value, str) else tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def input_of(model: nn.Module, m: nn.Module, batch: torch.Tensor, pooled: bool = False):
    """(what m computes its linear map on, how its conv call convolves or None) in a forward of
    `model` stopped there: the input of the F.conv2d or F.linear call on m's weight (its forward
    may pad first). pooled: the feature map whose spatial mean the linear m takes."""
    if pooled:
        return _feature_map(model, m, batch)[0], None
    seen: list = []
    mode = _WeightCall(m.weight, seen)
    entered = []

    def enter(_m, _args):  # the mode is on during this layer's forward only: the rest runs at full speed
        mode.__enter__()
        entered.append(mode)

    def leave():
        if entered:
            entered.clear()
            mode.__exit__(None, None, None)

    handle = m.register_forward_pre_hook(enter)
    after = m.register_forward_hook(lambda *_: leave())
    _stopped_forward(model, batch, [leave, handle.remove, after.remove])
    if not seen:
        raise NoWeightCall
    return seen[0]


def output_of(model: nn.Module, m: nn.Module, batch: torch.Tensor, pooled: bool = False) -> torch.Tensor:
    """m's output in a forward of `model` stopped there; pooled: the linear's output at each
    position of the feature map it averages, as channels x positions (their mean is its output)."""
    if pooled:
        features = _feature_map(model, m, batch)[0].double()
        out = nn.functional.linear(features.movedim(1, -1), m.weight.detach().double(),
                                   None if m.bias is None else m.bias.detach().double())
        return out.movedim(-1, 1)
    seen = []

    def catch(_m, _args, out):
        seen.append(out)
        raise _Reached

    _stopped_forward(model, batch, [m.register_forward_hook(catch).remove])
    return seen[0].double()


def _feature_map(model: nn.Module, m: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(the last 4-d tensor any module took before m, m's input), from a forward stopped at m."""
    last, seen = [None], []

    def remember(_m, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            last[0] = args[0]

    def catch(_m, args):
        seen.append(args[0])
        raise _Reached

    handles = [other.register_forward_pre_hook(remember) for other in model.modules() if other is not m]
    handles.append(m.register_forward_pre_hook(catch))
    _stopped_forward(model, batch, [handle.remove for handle in handles])
    return last[0], seen[0]


def _stopped_forward(model: nn.Module, batch: torch.Tensor, undo: list) -> None:
    """Run model on batch until a hook raises _Reached, then undo the hooks."""
    try:
        with torch.no_grad():
            model(batch)
    except _Reached:
        pass
    finally:
        for step in undo:
            step()


def is_pooled(model: nn.Module, m: nn.Linear, probe: torch.Tensor) -> bool:
    """Whether m's input is the spatial mean of a feature map (global average pooling): then
    each position is a sample of the same linear map, 49 instead of 1 per image."""
    features, x = _feature_map(model, m, probe)
    return (features is not None and x.dim() == 2 and features.shape[:2] == x.shape
            and torch.allclose(features.mean((2, 3)), x, rtol=1e-4, atol=1e-6))
