"""Getting a pruned model's decisions back without labels, and measuring that honestly.

bn: re-estimate batch-norm running statistics on the calibration images (augmented), since
removing channels shifts every later layer's input distribution; no gradient, cheap.
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

from core.errors import PruneScopeError
from core.progress import Job, Progress

HELD_OUT_EVERY = 3          # every third image (at least one) is held out for measurement
BN_PASSES = 8               # augmented passes over the images to estimate BN statistics
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
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recalibrate_bn(module: nn.Module, x: torch.Tensor, passes: int = BN_PASSES, batch: int = 16,
                   augmented: bool = True, seed: int = 0) -> Job[int]:
    """Replace every batch norm's running mean and variance by their average over `passes`
    (augmented) passes of x, in place; only the batch norms run in train mode, without gradient.
    Returns how many batch norms were re-estimated."""
    norms = _batch_norms(module)
    if not norms:
        return 0
    rng = random.Random(seed)
    momenta = [m.momentum for m in norms]
    chunks = [x[s:s + batch] for s in range(0, x.shape[0], batch)]
    # A single image gives a spatial-only variance; still better than stale ImageNet statistics.
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over every batch, not an exponential one
            m.train()
        with torch.no_grad():
            for p in range(passes):
                for chunk in chunks:
                    module(augment(chunk, rng) if augmented else chunk)
                yield Progress((p + 1) / passes, f"re-estimating batch norm, pass {p + 1}/{passes}")
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        module.eval()
    return len(norms)


def distill(student: nn.Module, teacher: nn.Module, x: torch.Tensor, steps: int = DISTILL_STEPS,
            lr: float = DISTILL_LR, batch: int = DISTILL_BATCH, temperature: float = TEMPERATURE,
            seed: int = 0) -> Job[float]:
    """Train `student` in place to match `teacher`'s softened outputs on augmented batches of x
    (no labels): KL(teacher || student) at `temperature`, times temperature². Batch norms stay
    in eval mode (their statistics come from recalibrate_bn: a few small batches would only
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
