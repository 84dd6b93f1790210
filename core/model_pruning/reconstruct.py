"""Post-training reconstruction: refit the layers of a pruned model, in forward order, so that
each reproduces the original's output on the channels it kept (He et al., "Channel Pruning for
Accelerating Very Deep Neural Networks", ICCV 2017; ThiNet; the layer-wise fits of OBC).

Every spatial position of every calibration image is one sample of a layer's linear map, so a
dozen photos give thousands of samples per layer: enough for a least-squares fit where they are
far too few for distillation. Written here because no maintained library refits layers after
Torch-Pruning's surgery.

- Sequential: each layer sees the pruned model's own inputs, with every earlier layer already
  refitted, so it also corrects the error of those before it.
- A convolution followed by a batch norm is fitted with the norm folded in (eval mode: one
  affine map), against the original's normalised output, and written back through the norm's
  current statistics: it composes with the `bn` correction run before it.
- Ridge towards the current weights; the strength is chosen per layer on calibration images
  held out of the fit, and a layer that no strength improves on them is left as it was.
- Memory stays bounded: only XᵀX and XᵀY are accumulated, never the activations.
"""
import copy
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.model_pruning.layer_io import ConvCall, NoWeightCall, input_of, is_pooled, output_of
from core.model_pruning.recovery import augment
from core.network.folding import conv_bn_pairs, fold_batchnorm
from core.network.hooks import hooked
from core.progress import Job, Progress

PASSES = 4                  # over the images: one as they are, the rest cropped and flipped
BATCH = 16
MAX_POSITIONS = 1024        # per image and layer: early layers have ~12 k, all alike
STRENGTHS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # ridge, times the layer's mean input energy
DEFAULT_STRENGTH = 1e-2     # with too few images to hold any out
NO_WEIGHT_CALL = "its weight is not used by an F.conv2d or F.linear call (a custom layer): left as it was"
OWN_FORWARD = "its output is not the affine map of its weight's call (it transforms the result): left as it was"
VALIDATE_EVERY = 4          # every fourth image is held out of the fit to choose the strength


@dataclass
class LayerFit:
    name: str
    strength: float | None      # None: no strength beat the current weights; left as it was
    error_before: float         # on the held-out calibration images, relative to the target's energy
    error_after: float


@dataclass
class Reconstruction:
    layers: list[LayerFit]
    skipped: dict[str, str]     # layer -> why it was not refitted
    kept: bool                  # False: the refitted model was further from the original; undone


def reconstruct(pruned: nn.Module, original: nn.Module, x: torch.Tensor,
                removed: dict[str, list[int]], passes: int = PASSES, seed: int = 0) -> Job[Reconstruction]:
    """Refit `pruned` (a structurally pruned copy of `original`) in place on images x; removed:
    layer -> the original's output channels it lost (Surgery.removed). Stopped part way, or
    worse than before on the images, the model is left as it was."""
    pruned.eval(), original.eval()
    # The original only gives targets: its batch norms folded, its many forwards are ~15 % faster.
    original = fold_batchnorm(original, x[:2])
    layers, skipped = _layers(pruned, original, x[:1], removed)
    fit_x, val_x = _split(x)
    rng = random.Random(seed)
    fit_batches = _batches(fit_x, passes, rng)
    val_batches = _batches(val_x, passes, rng) if val_x is not None else []
    saved = copy.deepcopy(pruned.state_dict())
    before = _distance(pruned, original, x)
    fits = []
    try:
        for i, layer in enumerate(layers):
            try:
                fits.append(_refit(pruned, original, layer, fit_batches, val_batches))
            except Exception as err:  # noqa: BLE001 - one layer that cannot be fitted spares the rest
                skipped[layer.name] = f"{type(err).__name__}: {err}"[:200]
            yield Progress((i + 1) / max(len(layers), 1), f"reconstructing {layer.name} ({i + 1}/{len(layers)})")
        kept = _distance(pruned, original, x) <= before
        if not kept:
            pruned.load_state_dict(saved)
    except BaseException:
        pruned.load_state_dict(saved)
        raise
    return Reconstruction(fits, skipped, kept)


@dataclass
class _Layer:
    name: str
    module: nn.Module            # in the pruned model
    twin: nn.Module              # the original's module whose output is the target
    norm: nn.Module | None       # the pruned model's batch norm after it, folded into the fit
    kept: torch.Tensor | None    # the original's output channels the pruned layer has; None: all
    pooled: bool = False         # a linear on a feature map's spatial mean: fitted per position
    call: ConvCall | None = None  # how the conv's F.conv2d call convolves (its forward's own padding)

    @property
    def biased(self) -> bool:
        """Whether the fit can shift the output: a bias, or a batch norm's shift, to write it to."""
        return self.module.bias is not None or (self.norm is not None and self.norm.affine)


def _layers(pruned: nn.Module, original: nn.Module, probe: torch.Tensor, removed) -> tuple[list[_Layer], dict]:
    """The layers to refit, in forward order: every conv and linear from the first whose input
    the pruning changed."""
    order, calls = _calls(pruned, probe)
    pairs = dict(conv_bn_pairs(pruned, probe)[0])
    theirs = dict(original.named_modules())
    first_cut = next((i for i, name in enumerate(order) if removed.get(name)), None)
    layers, skipped = [], {}
    if first_cut is None:
        return layers, skipped
    for name in order[first_cut + 1:]:
        m, twin = pruned.get_submodule(name), theirs.get(name)
        norm_name = pairs.get(name)
        why = _unfittable(m, twin, calls[name])
        kept = None
        if not why:
            kept, why = _kept(m, twin, removed.get(name, []))
        if why:
            skipped[name] = why
            continue
        target = theirs.get(norm_name) if norm_name else twin
        norm = pruned.get_submodule(norm_name) if norm_name else None
        pooled = isinstance(m, nn.Linear) and is_pooled(pruned, m, probe) and is_pooled(original, twin, probe)
        layer = _Layer(name, m, target, norm, kept, pooled)
        why = _not_linear_here(pruned, layer, norm or m, probe)
        if why:
            skipped[name] = why
            continue
        layers.append(layer)
    return layers, skipped


def _not_linear_here(pruned: nn.Module, layer: _Layer, output: nn.Module, probe: torch.Tensor) -> str:
    """Why the fit's model of the layer (its weight, bias and batch norm as one affine map on the
    caught input) does not reproduce its real output on the probe, if it does not: a subclass
    whose forward pads or standardises in its own way, a norm without shift, ..."""
    try:
        x, layer.call = input_of(pruned, layer.module, probe, layer.pooled)
        y = output_of(pruned, layer.module if layer.pooled else output, probe, layer.pooled)
        xs, ys = _samples(layer, x, y, seed=0)
        if layer.biased:
            xs = torch.cat([xs, torch.ones_like(xs[..., :1])], dim=-1)
        ours = xs @ _effective(layer).to(xs.device)
    except NoWeightCall:
        return NO_WEIGHT_CALL
    except Exception as err:  # noqa: BLE001 - any failure here only means: not fitted
        return f"its output could not be modelled ({type(err).__name__}: {err})"[:200]
    if ours.shape != ys.shape or not torch.allclose(ours, ys, rtol=1e-3, atol=1e-4 * float(ys.abs().max()) + 1e-6):
        return OWN_FORWARD
    return ""


def _calls(module: nn.Module, probe: torch.Tensor) -> tuple[list[str], dict[str, int]]:
    order, calls = [], {}

    def seen(name):
        def hook(*_):
            calls[name] = calls.get(name, 0) + 1
            order.append(name)
        return hook

    handles = [m.register_forward_hook(seen(name)) for name, m in module.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with hooked(handles), torch.no_grad():
        module(probe)
    return list(dict.fromkeys(order)), calls


def _unfittable(m: nn.Module, twin: nn.Module | None, calls: int) -> str:
    if twin is None or type(twin) is not type(m):
        return "no counterpart in the original"
    if calls != 1:
        return f"called {calls} times per forward"
    if not isinstance(m.weight, nn.Parameter) or hasattr(m, "parametrizations"):
        return "its weight is computed (a parametrization)"
    if isinstance(m, nn.Conv2d) and m.groups != twin.groups and not (twin.groups == twin.in_channels
                                                                        and m.groups == m.in_channels):
        return "its groups changed"
    return ""


def _kept(m: nn.Module, twin: nn.Module, removed: list[int]) -> tuple[torch.Tensor | None, str]:
    ours, theirs = m.weight.shape[0], twin.weight.shape[0]
    if ours == theirs:
        return None, ""
    if theirs - ours != len(removed):
        return None, f"{theirs - ours} output channels gone but {len(removed)} recorded"
    gone = set(removed)
    return torch.tensor([c for c in range(theirs) if c not in gone], dtype=torch.long), ""


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(fit, held out to choose the strength): every VALIDATE_EVERY-th image is held out."""
    if x.shape[0] < VALIDATE_EVERY:
        return x, None
    held = torch.arange(x.shape[0]) % VALIDATE_EVERY == VALIDATE_EVERY - 1
    return x[~held.to(x.device)], x[held.to(x.device)]


def _batches(x: torch.Tensor, passes: int, rng: random.Random) -> list[torch.Tensor]:
    """The images as they are, then passes-1 times cropped and flipped; made once, so that every
    layer is fitted on the same samples."""
    out = []
    for p in range(passes):
        for start in range(0, x.shape[0], BATCH):
            chunk = x[start:start + BATCH]
            out.append(chunk if p == 0 else augment(chunk, rng))
    return out


def _refit(pruned: nn.Module, original: nn.Module, layer: _Layer, fit_batches, val_batches) -> LayerFit:
    current = _effective(layer)
    fit = _accumulate(pruned, original, layer, fit_batches)
    if val_batches:
        val = _accumulate(pruned, original, layer, val_batches)
        energy = max(val.yy, 1e-12)
        errors = {s: _error(_solve(fit, current, s), val) for s in STRENGTHS}
        baseline = _error(current, val)
        strength = min(errors, key=errors.get)
        if errors[strength] >= baseline:
            return LayerFit(layer.name, None, baseline / energy, baseline / energy)
        total = _Stats(fit.xx + val.xx, fit.xy + val.xy, fit.yy + val.yy)
        after = errors[strength]
    else:
        total, strength, energy = fit, DEFAULT_STRENGTH, max(fit.yy, 1e-12)
        baseline = after = float("nan")
    _write(layer, _solve(total, current, strength))
    return LayerFit(layer.name, strength, baseline / energy, after / energy)


@dataclass
class _Stats:
    xx: torch.Tensor   # groups x d x d, d: inputs per group (and a constant 1 for a bias)
    xy: torch.Tensor   # groups x d x outputs per group
    yy: float          # the target's energy, to make errors relative


def _accumulate(pruned: nn.Module, original: nn.Module, layer: _Layer, batches) -> _Stats:
    xx = xy = None
    yy = 0.0
    for k, batch in enumerate(batches):
        inputs, _ = input_of(pruned, layer.module, batch, layer.pooled)
        target = output_of(original, layer.twin, batch, layer.pooled)
        if layer.kept is not None:
            target = target.index_select(_channel_dim(layer), layer.kept.to(target.device))
        xs, ys = _samples(layer, inputs, target, seed=k)
        if layer.biased:
            xs = torch.cat([xs, torch.ones_like(xs[..., :1])], dim=-1)
        bx, by = xs.transpose(1, 2) @ xs, xs.transpose(1, 2) @ ys
        xx, xy = (bx, by) if xx is None else (xx + bx, xy + by)
        yy += float((ys ** 2).sum())
    return _Stats(xx, xy, yy)


def _channel_dim(layer: _Layer) -> int:
    """Where a layer's output channels are: axis 1 of a conv's (or a pooled linear's per-position)
    output, the last axis of a linear's (tokens or channels-last maps before it)."""
    return -1 if isinstance(layer.module, nn.Linear) and not layer.pooled else 1


def _samples(layer: _Layer, x: torch.Tensor, y: torch.Tensor, seed: int):
    """(inputs, targets) as groups x samples x features, one sample per output position (of a
    conv: im2col patches, ordered as the weight's flattened input dimensions)."""
    m = layer.module
    groups = m.groups if isinstance(m, nn.Conv2d) else 1
    if layer.pooled:  # channels x positions
        return (x.movedim(1, -1).reshape(1, -1, x.shape[1]).double(),
                y.movedim(1, -1).reshape(1, -1, y.shape[1]))
    if isinstance(m, nn.Linear):
        return x.reshape(1, -1, x.shape[-1]).double(), y.reshape(1, -1, y.shape[-1])
    y = y.flatten(2)
    positions = y.shape[-1]
    pick = None
    if positions > MAX_POSITIONS:
        pick = torch.randperm(positions, generator=torch.Generator().manual_seed(seed))[:MAX_POSITIONS]
        pick = pick.to(x.device)
        y = y[..., pick]
    # a few images at a time: the patches of an early layer are tens of MB per image
    patches = torch.cat([p if pick is None else p[..., pick]
                         for p in (_patches(m.kernel_size, layer.call, x[i:i + 2])
                                   for i in range(0, x.shape[0], 2))]).double()
    b, d, _ = patches.shape
    xs = patches.reshape(b, groups, d // groups, -1).permute(1, 0, 3, 2).reshape(groups, -1, d // groups)
    ys = y.reshape(b, groups, y.shape[1] // groups, -1).permute(1, 0, 3, 2).reshape(groups, -1, y.shape[1] // groups)
    return xs, ys


def _patches(kernel_size: tuple, call: ConvCall, x: torch.Tensor) -> torch.Tensor:
    """im2col of x as the layer's F.conv2d call sees it (a padding mode other than zeros is an F.pad
    before that call, already in x)."""
    padding = call.padding
    if isinstance(padding, str):  # "valid" or "same" (stride 1): pad as torch does
        pads = []
        for k, d in zip(reversed(kernel_size), reversed(call.dilation)):
            total = d * (k - 1) if padding == "same" else 0
            pads += [total // 2, total - total // 2]
        x, padding = F.pad(x, pads), 0
    return F.unfold(x, kernel_size, dilation=call.dilation, padding=padding, stride=call.stride)


def _scale_shift(layer: _Layer) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch norm after the layer as y = a * x + c per channel (identity without one)."""
    out = layer.module.weight.shape[0]
    if layer.norm is None:
        return torch.ones(out, dtype=torch.float64), torch.zeros(out, dtype=torch.float64)
    n = layer.norm
    var = n.running_var.detach().double()
    a = (n.weight.detach().double() if n.affine else torch.ones_like(var)) / (var + n.eps).sqrt()
    c = (n.bias.detach().double() if n.affine else torch.zeros_like(var)) - a * n.running_mean.detach().double()
    return a.cpu(), c.cpu()


def _effective(layer: _Layer) -> torch.Tensor:
    """The layer's current map, batch norm folded in, as groups x (d+1) x outputs per group."""
    m = layer.module
    groups = m.groups if isinstance(m, nn.Conv2d) else 1
    a, c = _scale_shift(layer)
    w = m.weight.detach().double().cpu().flatten(1) * a[:, None]   # out x d
    b = (m.bias.detach().double().cpu() if m.bias is not None else torch.zeros_like(a)) * a + c
    wb = torch.cat([w, b[:, None]], dim=1) if layer.biased else w    # out x (d+1)
    per = wb.shape[0] // groups
    return wb.reshape(groups, per, -1).transpose(1, 2).to(m.weight.device)


def _solve(stats: _Stats, current: torch.Tensor, strength: float) -> torch.Tensor:
    """argmin |XW - Y|² + λ |W - current|², λ = strength x the mean diagonal of XᵀX."""
    d = stats.xx.shape[-1]
    scale = stats.xx.diagonal(dim1=1, dim2=2).mean(1).clamp(min=1e-12)[:, None, None]
    eye = torch.eye(d, dtype=stats.xx.dtype, device=stats.xx.device)
    lam = strength * scale
    return torch.linalg.solve(stats.xx + lam * eye, stats.xy + lam * current)


def _error(w: torch.Tensor, stats: _Stats) -> float:
    """|XW - Y|², from the accumulated products alone."""
    return float((w * (stats.xx @ w)).sum() - 2 * (w * stats.xy).sum() + stats.yy)


def _write(layer: _Layer, w: torch.Tensor) -> None:
    """Put a fitted map (batch norm folded in) back into the layer and its norm."""
    m = layer.module
    a, c = _scale_shift(layer)
    wb = w.transpose(1, 2).reshape(-1, w.shape[1]).cpu()             # out x (d+1)
    weight, bias = (wb[:, :-1], wb[:, -1]) if layer.biased else (wb, None)
    usable = a.abs() > 1e-6 * a.abs().max()                          # a ~ 0: the channel is off
    old = m.weight.detach().double().cpu().flatten(1)
    new_weight = torch.where(usable[:, None], weight / a.where(usable, torch.ones_like(a))[:, None], old)
    with torch.no_grad():
        m.weight.copy_(new_weight.reshape(m.weight.shape).to(m.weight.dtype))
        if bias is None:
            return
        if m.bias is not None:
            old_bias = m.bias.detach().double().cpu()
            m.bias.copy_(torch.where(usable, (bias - c) / a.where(usable, torch.ones_like(a)), old_bias)
                         .to(m.bias.dtype))
        elif layer.norm is not None and layer.norm.affine:
            n = layer.norm
            shift = bias + a * n.running_mean.double().cpu()              # beta that gives this bias
            n.bias.copy_(torch.where(usable, shift, n.bias.detach().double().cpu()).to(n.bias.dtype))


def _distance(pruned: nn.Module, original: nn.Module, x: torch.Tensor) -> float:
    """Mean KL(original || pruned) of the softmax outputs on x."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], BATCH):
            chunk = x[start:start + BATCH]
            p = torch.log_softmax(original(chunk).double(), 1)
            q = torch.log_softmax(pruned(chunk).double(), 1)
            total += float(nn.functional.kl_div(q, p, log_target=True, reduction="sum"))
    return total / x.shape[0]
