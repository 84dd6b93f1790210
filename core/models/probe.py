"""What one trial pass through a model finds out: its number of classes, the layer Grad-CAM reads
(a square spatial map, or a square grid of tokens after some class tokens), and how to pick the
class scores from a model that returns several outputs."""
import torch
from torch import nn

from core.errors import ModelError
from core.network.tokens import grid_side

PROBE_MAX_PREFIX_TOKENS = 8  # class, distillation and register tokens before a ViT's patch grid


def probe(model, wanted_layer: str | None):
    """One forward and backward of a noise image: the number of classes (refusing outputs that are
    not class scores), and the Grad-CAM layer: the one named, or else the last module called once
    whose output is a square spatial map (N x C x H x H) or a square grid of tokens (N x T x D)
    that the top class's gradient reaches at more than one place. Returns (classes, layer, prefix tokens, reason there is none)."""
    module = model.module
    size = model.input_size
    noise = torch.randn(1, model.channels, size, size, generator=torch.Generator().manual_seed(0))
    x = noise.to(model.device).requires_grad_(True)
    names = {m: name for name, m in module.named_modules() if name}
    outputs: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    order: list[str] = []

    def keep(m, _inputs, out):
        name = names[m]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(out, torch.Tensor) and out.ndim in (3, 4) and out.requires_grad:
            outputs[name] = out
            order.append(name)

    handles = [m.register_forward_hook(keep) for m in names]
    try:
        with torch.enable_grad():
            out = module(x)
    except ModelError:  # output names nothing the model returns
        raise
    except Exception as err:  # the model's own code: one line, never a traceback
        raise ModelError(f"{model.name} fails on a {model.channels}x{size}x{size} input: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    finally:
        for h in handles:
            h.remove()
    if isinstance(out, (tuple, list, dict)):
        how = "--output NAME (their key)" if isinstance(out, dict) else "--output N (their index)"
        raise ModelError(f"{model.name} returns {_described(out)}: say where the class scores are with "
                         f"{how}, or output in its model card (in the app: Class scores)")
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{model.name} is not a classifier: it returns {shape}, not one row of "
                         "class scores (1 x classes)")
    classes = int(out.shape[1])
    if wanted_layer is not None:
        if wanted_layer not in outputs:
            known = wanted_layer in names.values()
            raise ModelError(f"Grad-CAM layer '{wanted_layer}' " + (
                "gives no N x C x H x W map or token grid" if known else f"is not a module of {model.name}"))
        candidates = [wanted_layer]
    else:
        candidates = [n for n in reversed(order) if calls[n] == 1]
    tensors = [outputs[n] for n in candidates]
    grads = torch.autograd.grad(out[0].max(), tensors, allow_unused=True) if tensors else []
    for name, value, grad in zip(candidates, tensors, grads):
        tokens = _token_prefix(module, value)
        # The input is square, so a feature map is too: (heads, tokens, dim) inside attention is not.
        if value.ndim == 4 and value.shape[2] == value.shape[3] > 1:
            reached = grad is not None and int((grad[0].abs().sum(0) > 0).sum()) > 1
            if reached or wanted_layer is not None:
                return classes, name, None, ""
        elif tokens is not None and (wanted_layer is not None or _is_norm(module.get_submodule(name))):
            # A block's input norm (as pytorch-grad-cam advises for ViTs), not the attention's
            # own projections, whose query part the class token never reads.
            reached = grad is not None and int((grad[0, tokens:].abs().sum(-1) > 0).sum()) > 1
            if reached or wanted_layer is not None:
                return classes, name, tokens, ""
        elif wanted_layer is not None:
            raise ModelError(f"Grad-CAM layer '{wanted_layer}' outputs {tuple(value.shape)}: "
                             "neither a spatial map nor a square grid of tokens")
    return classes, None, None, "no layer gives a spatial map or token grid that reaches the output"


def picking(output: int | str):
    """A forward hook that hands on, of a tuple, list or dict the model returns, the item
    `output` (an index or a key): the class scores."""
    def pick(_module, _inputs, out):
        if isinstance(out, (tuple, list, dict)):
            try:
                return out[output]
            except (IndexError, KeyError, TypeError):
                pass
        raise ModelError(f"output {output!r} names nothing in what the model returns, {_described(out)}")
    return pick


def _described(out) -> str:
    """What a model returned, in words: 'a tuple of 2 (1x10, 1x64)', "a dict of 'logits', ..."."""
    def shape(value):
        return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__

    if isinstance(out, dict):
        return f"a dict of {', '.join(repr(k) for k in out)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} ({', '.join(shape(v) for v in out)})"
    return f"one {shape(out)} tensor" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"


def _is_norm(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.LayerNorm, nn.GroupNorm)) or "Norm" in type(layer).__name__


def _token_prefix(module: nn.Module, value: torch.Tensor) -> int | None:
    """How many tokens come before a square patch grid in a N x T x D output, or None."""
    if value.ndim != 3:
        return None
    known = getattr(module, "num_prefix_tokens", None)
    prefixes = [known] if isinstance(known, int) else [1, 0, *range(2, PROBE_MAX_PREFIX_TOKENS + 1)]
    return next((k for k in prefixes if (grid_side(value.shape[1], k) or 0) > 1), None)
