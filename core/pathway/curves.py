"""Deletion / insertion curves and the output-change measure, batched on the model's device.

Pixels are ranked by the attribution map *as given*, highest value first (ties: lower flat
index first, a stable sort, so results are deterministic). The map is not made absolute here: the
caller chooses (the engine passes |map| for methods whose sign carries no evidence, such as plain
gradients, and the signed map otherwise, so that positive evidence goes first).

Deletion starts from the input and replaces the top-ranked pixels with a baseline, a fraction
at a time; insertion starts from the baseline and reveals them. Each point is the softmax
probability of the target class. Every perturbed input is a per-pixel choice between the
input and the baseline image, built from one rank image (rank < k) for all steps at once.
"""
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch

from core.errors import PruneScopeError
from core.io.baselines import (BASELINES, IMAGENET_MEAN, IMAGENET_STD,  # noqa: F401 (read from here)
                               baseline_image)
from core.network.hooks import giving_way
from core.progress import Job, Paused, Progress, run

OUTPUT_CHANGE_FRACTIONS = tuple(round(0.01 * i, 2) for i in range(1, 11))
ORDERS = ("lerf", "morf")  # least / most relevant first


@dataclass
class Curves:
    fractions: np.ndarray  # (S+1,) fraction of pixels removed (deletion) / revealed (insertion)
    deletion: np.ndarray   # (S+1,) target probability
    insertion: np.ndarray | None  # (S+1,); None when only deletion was asked for
    deletion_auc: float    # trapezoid over fractions in [0, 1]; lower is better
    insertion_auc: float | None  # higher is better
    steps: int
    baseline: str

    def to_json(self) -> dict:
        out = asdict(self)
        for key in ("fractions", "deletion", "insertion"):
            out[key] = None if out[key] is None else [float(v) for v in out[key]]
        return out


def rank_image(attr_map, shape: tuple[int, int], descending: bool = True,
               device=None) -> torch.Tensor:
    """HxW int64: 0 for the first pixel to remove, ties broken by flat index (stable)."""
    if torch.is_tensor(attr_map):
        values = attr_map.detach().double().cpu()
    else:
        values = torch.as_tensor(np.asarray(attr_map, dtype=np.float64))
    if values.ndim != 2 or tuple(values.shape) != tuple(shape):
        raise PruneScopeError(f"attribution map has shape {tuple(values.shape)}, "
                              f"the input is {tuple(shape)}")
    if not torch.isfinite(values).all():
        raise PruneScopeError("attribution map contains NaN or infinite values")
    flat = values.flatten()
    order = torch.sort(-flat if descending else flat, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    return ranks.view(shape).to(device)


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[0] != 1:
        raise PruneScopeError(f"expected one image as a 1xCxHxW tensor, got shape {tuple(x.shape)}")


def _device_of(module: torch.nn.Module, x: torch.Tensor) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else x.device


def default_batch(device: torch.device) -> int:
    # On the CPU bigger batches buy no speed: the embedded model's curves took 0.42-0.54 s with
    # 2 to 8 images per forward, 0.63 s with 32, and each image holds 15 MB more while it runs.
    return 64 if device.type == "cuda" else 4


def _target_probs(module, inputs: torch.Tensor, target: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(module(inputs).float(), dim=1)[:, target]


def iter_curves(module: torch.nn.Module, x: torch.Tensor, attr_map, target: int, steps: int = 20,
                baseline: str = "mean", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                batch_size: int | None = None, step_seconds: float | None = None,
                ends: tuple[float, float] | None = None, insertion: bool = True) -> "Job[Curves]":
    """Deletion and insertion curves for one image; yields Progress per batch. With
    step_seconds, batches are sized from the measured time per input so that each step takes
    about that long (the app's worker must stay free for the slider); otherwise batch_size.

    Both curves start or end at the input itself and at the baseline, whatever the map: ends,
    their target probabilities (end_probs), saves those forwards for every map after the first.
    insertion=False: the deletion curve only (insertion and its AUC are None)."""
    _check_input(x)
    if steps < 1:
        raise PruneScopeError(f"steps must be at least 1, got {steps}")
    device = _device_of(module, x)
    x = x.to(device)
    height, width = x.shape[-2:]
    ranks = rank_image(attr_map, (height, width), device=device)
    base = baseline_image(x, baseline, mean, std)
    if ends is None:
        ends = _end_probs(module, x, base, target)
    counts, keep_input = curve_inputs(ranks, steps, insertion)
    batch = batch_size or default_batch(device)
    probs = [torch.zeros(0)]
    n_inputs = keep_input.shape[0]
    done, size = 0, 1 if step_seconds else batch
    if step_seconds:  # the ranking and the masks above are a step of their own
        yield Progress(0.0, f"perturbation curves 0/{n_inputs}")
    while done < n_inputs:
        chunk = keep_input[done:done + size]
        began = time.perf_counter()
        try:
            with giving_way(module) if step_seconds else nullcontext():
                probs.append(_target_probs(module, torch.where(chunk, x, base), target).cpu())
            gave_way = False
        except Paused:  # a slider move waits: this batch again at the next step
            gave_way = True
        if gave_way:  # yielded outside the handler, whose traceback would keep the forward's tensors
            yield Progress(done / n_inputs, f"perturbation curves {done}/{n_inputs}")
            continue
        done += len(chunk)
        if step_seconds:
            per_input = (time.perf_counter() - began) / len(chunk)
            size = int(max(1, min(batch, step_seconds / max(per_input, 1e-6))))
        yield Progress(done / n_inputs, f"perturbation curves {done}/{n_inputs}")
    return assemble_curves(counts, torch.cat(probs).numpy(), ends, steps, baseline, insertion)


def curve_inputs(ranks: torch.Tensor, steps: int, insertion: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel counts removed at each step, and for each inner step a K x 1 x H x W mask, True
    where the perturbed input keeps the input (else the baseline): deletion's steps, then
    insertion's."""
    total = ranks.numel()
    counts = torch.round(torch.arange(steps + 1, dtype=torch.float64) * total / steps).long()
    # one bool mask per inner step: True where the pixel is among the top-ranked counts[i]
    top = ranks.unsqueeze(0) < counts[1:-1].to(ranks.device).view(-1, 1, 1)
    # deletion puts the baseline on the top pixels; insertion puts the input there
    return counts, (torch.cat([~top, top]) if insertion else ~top).unsqueeze(1)


def assemble_curves(counts: torch.Tensor, inner: np.ndarray, ends: tuple[float, float], steps: int,
                    baseline: str, insertion: bool = True) -> Curves:
    """The curves from the target probabilities of the inner steps (curve_inputs' order) and of
    the input and the baseline."""
    inner = np.asarray(inner, np.float64)
    fractions = (counts.double() / counts[-1]).numpy()
    p_input, p_base = ends
    deletion = np.concatenate([[p_input], inner[:steps - 1], [p_base]])
    rising = np.concatenate([[p_base], inner[steps - 1:], [p_input]]) if insertion else None
    return Curves(fractions=fractions, deletion=deletion, insertion=rising,
                  deletion_auc=float(np.trapezoid(deletion, fractions)),
                  insertion_auc=float(np.trapezoid(rising, fractions)) if insertion else None,
                  steps=steps, baseline=baseline)


def end_probs(module: torch.nn.Module, x: torch.Tensor, target: int, baseline: str = "mean",
              mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[float, float]:
    """The target probability of the input and of the baseline image: where the curves of
    every map start and end."""
    _check_input(x)
    x = x.to(_device_of(module, x))
    return _end_probs(module, x, baseline_image(x, baseline, mean, std), target)


def _end_probs(module, x: torch.Tensor, base: torch.Tensor, target: int) -> tuple[float, float]:
    p_input, p_base = _target_probs(module, torch.cat([x, base]), target).tolist()
    return float(p_input), float(p_base)


def curves(module, x, attr_map, target, steps=20, baseline="mean", mean=IMAGENET_MEAN,
           std=IMAGENET_STD, batch_size=None, on_progress=None) -> Curves:
    return run(iter_curves(module, x, attr_map, target, steps, baseline, mean, std, batch_size),
               on_progress)


def output_change(module: torch.nn.Module, x: torch.Tensor, attr_map, target: int,
                  fractions=OUTPUT_CHANGE_FRACTIONS, order: str = "lerf", baseline: str = "mean",
                  mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """|p - p'| / p per fraction, p' after removing that fraction of the least (LeRF) or most
    (MoRF) relevant pixels (NeuronMCT's measure); the input and all fractions run in one batch."""
    _check_input(x)
    if order not in ORDERS:
        raise PruneScopeError(f"unknown order '{order}': choose one of {', '.join(ORDERS)}")
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or np.any((fractions < 0) | (fractions > 1)):
        raise PruneScopeError("fractions must be a list of numbers in [0, 1]")
    device = _device_of(module, x)
    x = x.to(device)
    height, width = x.shape[-2:]
    ranks = rank_image(attr_map, (height, width), descending=order == "morf", device=device)
    base = baseline_image(x, baseline, mean, std)
    counts = torch.as_tensor(np.round(fractions * height * width).astype(np.int64), device=device)
    removed = ranks.unsqueeze(0) < counts.view(-1, 1, 1)
    inputs = torch.cat([x, torch.where(removed.unsqueeze(1), base, x)])
    probs = _target_probs(module, inputs, target).cpu().numpy().astype(np.float64)
    p, perturbed = probs[0], probs[1:]
    return np.abs(p - perturbed) / max(p, np.finfo(np.float64).tiny)
