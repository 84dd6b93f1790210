"""Getting a pruned model's decisions back without labels, and measuring that honestly.

bn: correct batch-norm running statistics for the shift that removing channels makes in every
later layer's input, measured on the calibration images (augmented); no gradient, cheap.
distill: after bn, knowledge distillation from the original model (KL divergence between
softened logits) on any unlabelled images, augmented.
finetune: cross-entropy on a labelled ImageFolder (pipeline.finetune).

held_out_split keeps some images out of calibration and recovery, so that agreement is never
measured on an image the pruned model was scored or trained on.
"""
import random
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from core.errors import PruneScopeError
from core.progress import Job, Progress

HELD_OUT_EVERY = 3          # every third image (at least one) is held out for measurement
BN_PASSES = 8               # augmented passes over the images to measure the BN shift
DISTILL_STEPS = 60
DISTILL_LR = 1e-4           # Adam; measured on EfficientNet-Lite0 (README)
DISTILL_BATCH = 8
TEMPERATURE = 4.0


def held_out_split(calib, every: int = HELD_OUT_EVERY):
    """(calibration, held_out): every `every`-th image (from the second) held out, at least one
    when there are two or more images; held_out is None for a single image."""
    n = calib.x.shape[0]
    if n < 2:
        return calib, None
    held = [i for i in range(n) if i % every == 1] or [n - 1]
    used = [i for i in range(n) if i not in held]
    return _rows(calib, used), _rows(calib, held)


def _rows(calib, rows: list[int]):
    index = torch.tensor(rows, dtype=torch.long)
    return replace(calib, paths=[calib.paths[i] for i in rows] if calib.paths else [],
                   x=calib.x[index.to(calib.x.device)],
                   labels=None if calib.labels is None else [calib.labels[i] for i in rows],
                   targets=calib.targets[index], skipped={})


def without(images, held_out):
    """`images` less any file that is also a held-out image (same resolved path)."""
    if held_out is None or not images.paths:
        return images
    held = {Path(p).resolve() for p in held_out.paths}
    rows = [i for i, p in enumerate(images.paths) if Path(p).resolve() not in held]
    if not rows:
        raise PruneScopeError("every recovery image is also a held-out image: choose another folder")
    return images if len(rows) == len(images.paths) else _rows(images, rows)


def augment(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Per image: a random crop of 60-100 % of the side, resized back, and a horizontal flip."""
    size = x.shape[-1]
    out = []
    for image in x:
        side = int(size * rng.uniform(0.6, 1.0))
        top, left = rng.randint(0, x.shape[-2] - side), rng.randint(0, size - side)
        crop = image[:, top:top + side, left:left + side].unsqueeze(0)
        crop = nn.functional.interpolate(crop, size=(x.shape[-2], size), mode="bilinear",
                                         align_corners=False)
        out.append(crop.flip(-1) if rng.random() < 0.5 else crop)
    return torch.cat(out)


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def correct_bn(pruned: nn.Module, source: nn.Module, x: torch.Tensor, removed: dict | None = None,
               passes: int = BN_PASSES, batch: int = 16, augmented: bool = True, seed: int = 0) -> Job[int]:
    """Correct every batch norm of `pruned` (a pruned copy of `source`) for the shift that the
    pruning made in its input, in place; returns how many were corrected.

    A few photos are no estimate of the statistics a model was trained with: re-estimating them
    from scratch on 12 photos cost the unpruned EfficientNet-Lite0 4 of its 6 held-out decisions.
    So only the change is estimated: both models see the same (augmented) batches of x, and each
    batch norm keeps the source's statistics, moved by the difference between the two models'
    batch means and scaled by the ratio of their batch variances. Layer by layer within each
    forward, as a training-mode pass would, so that each layer's shift is measured on inputs
    already corrected upstream. removed: batch norm name -> the source's channels it lost
    (Surgery.norms). A batch norm with no counterpart in `source` is re-estimated."""
    sources = {name: m for name, m in source.named_modules() if isinstance(m, _BatchNorm)}
    norms = {name: m for name, m in pruned.named_modules()
             if isinstance(m, _BatchNorm) and m.track_running_stats}
    if not norms:
        return 0
    kept = {name: _kept_channels(m, sources.get(name), (removed or {}).get(name, []))
            for name, m in norms.items()}
    start = {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in norms.items()}
    # Per forward, the source's batch statistics at each call of each batch norm (a module
    # may be called more than once), and how many calls of the pruned one have come.
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    calls: dict[str, int] = {}
    totals = {name: [0.0, 0.0, 0] for name in norms}  # sums of mean and variance, and count

    def record(name):
        def hook(_m, inputs):
            seen.setdefault(name, []).append(_batch_stats(inputs[0]))
        return hook

    def shift(name):
        def hook(m, inputs):
            mean, var = _batch_stats(inputs[0])
            call = calls[name] = calls.get(name, -1) + 1
            theirs = seen.get(name, [])
            if kept[name] is not None and call < len(theirs):
                mean0, var0 = start[name]
                other_mean, other_var = theirs[call]
                index = kept[name]
                mean = mean0 + mean - other_mean[index]
                var = var0 * (var + m.eps) / (other_var[index] + m.eps)
            m.running_mean.copy_(mean)  # this call is normalised with them, as in training
            m.running_var.copy_(var)
            total = totals[name]
            total[0], total[1], total[2] = total[0] + mean, total[1] + var, total[2] + 1
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in sources.items()]
    hooks += [m.register_forward_pre_hook(shift(name)) for name, m in norms.items()]
    rng = random.Random(seed)
    chunks = [x[s:s + batch] for s in range(0, x.shape[0], batch)]
    source.eval(), pruned.eval()
    try:
        for p in range(passes):
            for chunk in chunks:
                inputs = augment(chunk, rng) if augmented else chunk
                seen.clear(), calls.clear()
                with torch.no_grad():  # not around the yield: grad mode is the thread's
                    source(inputs)
                    pruned(inputs)
            yield Progress((p + 1) / passes, f"correcting batch norm, pass {p + 1}/{passes}")
        for name, m in norms.items():
            mean, var, count = totals[name]
            if count:  # a batch norm that never ran keeps what it had
                m.running_mean.copy_(mean / count)
                m.running_var.copy_(var / count)
    except BaseException:
        for name, m in norms.items():  # stopped part way: the model is left as it was
            m.running_mean.copy_(start[name][0])
            m.running_var.copy_(start[name][1])
        raise
    finally:
        for hook in hooks:
            hook.remove()
    return len(norms)


def _batch_stats(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of a batch norm's input, channels on axis 1."""
    a = a.transpose(0, 1).flatten(1)
    return a.mean(1), a.var(1, unbiased=False)


def _kept_channels(norm: nn.Module, original: nn.Module | None, removed) -> torch.Tensor | None:
    """Which of `original`'s channels the pruned copy `norm` has, in order; None when that
    does not add up (a layer that is not a pruned copy of it)."""
    if original is None or not original.track_running_stats:
        return None
    gone = set(removed)
    index = [c for c in range(original.num_features) if c not in gone]
    if len(index) != norm.num_features:
        return None
    return torch.tensor(index, dtype=torch.long, device=norm.running_mean.device)


def distill(student: nn.Module, teacher: nn.Module, x: torch.Tensor, steps: int = DISTILL_STEPS,
            lr: float = DISTILL_LR, batch: int = DISTILL_BATCH, temperature: float = TEMPERATURE,
            seed: int = 0) -> Job[float]:
    """Train `student` in place to match `teacher`'s softened outputs on augmented batches of x
    (no labels): KL(teacher || student) at `temperature`, times temperature². Batch norms stay
    in eval mode (their statistics come from correct_bn: a few small batches would only
    make them worse). Returns the last loss."""
    if steps < 1:
        raise PruneScopeError(f"recovery steps must be at least 1, got {steps}")
    rng = random.Random(seed)
    params = list(student.parameters())
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(params, lr=lr)
    order: list[int] = []
    loss = torch.zeros(())
    try:
        for step in range(steps):
            while len(order) < batch:
                more = list(range(x.shape[0]))
                rng.shuffle(more)
                order += more
            rows, order = order[:batch], order[batch:]
            inputs = augment(x[rows], rng)
            with torch.no_grad():
                soft = torch.log_softmax(teacher(inputs) / temperature, dim=1)
            student.train()
            for m in _batch_norms(student):
                m.eval()
            with torch.enable_grad():
                out = torch.log_softmax(student(inputs) / temperature, dim=1)
                loss = nn.functional.kl_div(out, soft, log_target=True, reduction="batchmean") * temperature ** 2
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
            yield Progress((step + 1) / steps, f"distilling step {step + 1}/{steps}, loss {loss.item():.3f}")
    finally:
        student.eval().requires_grad_(False)
    return float(loss.item())
