"""What pruning does to a model and its explanations, along a sparsity axis.

For each criterion and sparsity: top-1 agreement (and accuracy where labels exist) before and
after recovery, parameters, MACs, latency; explanation drift, the Spearman rank correlation and
SSIM between each method's map on the original and on the pruned, recovered model (|map|,
averaged over the images); and pathway overlap, the IoU of the same input's critical pathway
before and after. Everything is measured on images held out from calibration and recovery.

Pathway IoU is computed in the original model's neuron space: the pruned model's mask of a
layer is laid back onto the original channels it kept, and removed channels count as not kept.
"""
import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from core.errors import PruneScopeError, reason
from core.evaluation.records import RecordStore
from core.model_pruning import criteria, measures, pipeline
from core.model_pruning.names import CRITERIA, DEFAULT_PROTECT, SWEEP_METHODS, SWEEP_SPARSITIES
from core.progress import Job, Progress, scaled
from core.runtime.device import seeded

EXPLAIN_SPARSITY = 70.0  # the pathway maps' and pathway masks' own sparsity (the engine's default)
DROP_LEVEL = 0.5  # "drops" / "drifts": first sparsity where agreement / mean Spearman falls below this
SEED = 0  # stochastic maps (smoothgrad) are seeded alike on both models


@dataclass
class SweepPoint:
    criterion: str
    sparsity: float
    params: int
    nonzero: int
    macs: int
    latency_ms: float
    latency_original_ms: float       # the original, timed in turns with this model
    agreement: float                 # after recovery (the same as before it, for "none")
    accuracy: float | None
    drift: dict                      # method -> {"spearman": mean, "ssim": mean}
    pathway_iou: float
    kept: list = field(default_factory=list)  # (producer, kept, total)
    agreement_before_recovery: float | None = None
    accuracy_before_recovery: float | None = None
    recovery_s: float = 0.0
    fidelity: dict = field(default_factory=dict)  # measures.fidelity: top5_overlap, kl
    fidelity_before_recovery: dict = field(default_factory=dict)

    @property
    def mean_spearman(self) -> float:
        """The maps' Spearman similarity to the unpruned model's, averaged over the methods."""
        values = [d["spearman"] for d in self.drift.values()]
        return float(np.mean(values)) if values else float("nan")


@dataclass
class SweepResult:
    model: str
    mode: str
    criteria: list
    sparsities: list
    methods: list
    baseline: dict                   # the unpruned model's ModelStats as a dict (latency: per point)
    accuracy: float | None           # the unpruned model's, where labels exist
    calibration: list
    held_out: list = field(default_factory=list)  # the images measured on
    recovery: str = "none"
    points: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)    # criterion -> why it could not run
    skipped_methods: dict = field(default_factory=dict)  # method -> why
    method_params: dict = field(default_factory=dict)  # the methods' settings (core.methods.checked_settings)

    def series(self, criterion: str, key) -> tuple[list, list]:
        """(sparsities, values) of one criterion; key is a field name or a function of a point."""
        pts = [p for p in self.points if p.criterion == criterion]
        get = key if callable(key) else (lambda p: getattr(p, key))
        return [p.sparsity for p in pts], [get(p) for p in pts]

    @property
    def quality(self) -> str:
        """What "still works" is measured by: accuracy where the images are labelled."""
        return "accuracy" if self.accuracy is not None else "agreement"

    def headline(self) -> dict:
        """Per criterion: the first sparsity where the quality (accuracy or agreement) falls below
        DROP_LEVEL, and the first where the maps' mean Spearman similarity does; None: never."""
        out = {}
        for c in self.criteria:
            xs, quality = self.series(c, self.quality)
            _, sim = self.series(c, "mean_spearman")
            out[c] = {f"{self.quality}_drops_at": _first_below(xs, quality),
                      "explanations_drift_at": _first_below(xs, sim)}
        return out

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["headline"] = self.headline()
        data["drop_level"] = DROP_LEVEL
        return _finite(data)


def _first_below(xs, ys):
    for x, y in zip(xs, ys):
        if y is not None and not math.isnan(y) and y < DROP_LEVEL:
            return x
    return None


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- similarity of maps --------------------------------------------------------------------------

def map_similarity(a: np.ndarray, b: np.ndarray) -> dict:
    """Spearman of |a| and |b|, and SSIM of the two scaled to [0, 1]: the sanity check's measures."""
    from core.evaluation.sanity import spearman_abs, ssim_abs

    return {"spearman": spearman_abs(a, b), "ssim": ssim_abs(a, b)}


# --- pathway overlap ------------------------------------------------------------------------------

def pathway_masks(model, x: torch.Tensor, targets: torch.Tensor) -> list[list[torch.Tensor]]:
    """Per image, the engine's critical-pathway masks (global threshold, EXPLAIN_SPARSITY)."""
    from core.pathway.engine import Engine

    return [Engine.from_tensor(model, x[i:i + 1], int(targets[i])).masks(EXPLAIN_SPARSITY, "global")
            for i in range(x.shape[0])]


def pathway_iou(original: list[torch.Tensor], pruned: list[torch.Tensor], owners: list[str | None],
                removed: dict[str, list[int]]) -> float:
    """IoU of two pathways over the original model's neurons. A pruned layer's mask is placed on
    the channels its producer kept; removed channels are not kept. Layers whose channels changed
    but have no known producer are left out."""
    inter = union = 0
    for mask_a, mask_b, owner in zip(original, pruned, owners):
        a = mask_a.bool().cpu()
        b = mask_b.bool().cpu()
        if a.shape != b.shape:
            gone = set(removed.get(owner, [])) if owner is not None else None
            if gone is None or a.shape[0] - len(gone) != b.shape[0]:
                continue
            kept = torch.tensor([c for c in range(a.shape[0]) if c not in gone], dtype=torch.long)
            full = torch.zeros_like(a)
            full[kept] = b
            b = full
        inter += int((a & b).sum())
        union += int((a | b).sum())
    return inter / union if union else 1.0


# --- the sweep ------------------------------------------------------------------------------------

def _maps(model, x, targets, methods, skipped: dict, settings: dict) -> dict:
    """method -> list of maps, one per image, under the methods' settings; methods this model
    cannot run go to `skipped`."""
    from core.errors import UnsupportedMethod
    from core.pathway.engine import compute_map

    out = {}
    for method in methods:
        if method in skipped:
            continue
        try:
            maps = []
            for i in range(x.shape[0]):
                with seeded(SEED, x.device):
                    maps.append(compute_map(model, x[i:i + 1], int(targets[i]), method,
                                            sparsity=EXPLAIN_SPARSITY, settings=settings))
            out[method] = maps
        except UnsupportedMethod as why:
            skipped[method] = str(why)
    return out


def sweep(model, calib: pipeline.Calibration, criteria_names=CRITERIA,
          sparsities=SWEEP_SPARSITIES, methods=SWEEP_METHODS, mode: str = "global",
          protect=DEFAULT_PROTECT, timed: bool = True,
          settings: pipeline.Recovery = pipeline.Recovery("none"),
          held_out: pipeline.Calibration | None = None, cap: float = 100.0,
          store: RecordStore | None = None, method_params: dict | None = None) -> Job[SweepResult]:
    """Prune a copy of the model at each sparsity by each criterion, recover it and measure what
    changed, on images held out from calibration and recovery (`held_out`, or a share of calib).
    A criterion that cannot run on this model (LRP on some architectures) is recorded in
    `errors`. Each finished point is kept in `store`, and a rerun reads it back. method_params:
    the methods' settings, {method: {key: value}}."""
    from core.methods import checked_settings
    from core.model_pruning.recovery import held_out_split, without
    from core.pathway.engine import ALL_METHODS

    for c in criteria_names:
        criteria.check_criterion(c)
    for m in methods:
        if m not in ALL_METHODS:
            raise PruneScopeError(f"unknown method '{m}': choose from {', '.join(ALL_METHODS)}")
    method_params = checked_settings(method_params)
    settings.check()
    sparsities = sorted(float(s) for s in sparsities)
    used, held = held_out_split(calib) if held_out is None else (without(calib, held_out), held_out)
    if held is None:
        raise PruneScopeError("a sweep needs at least two images: one is held out to measure on")
    images = yield from pipeline.recovery_images(model, settings, used, held)
    yield Progress(0.0, "measuring the original model")
    base = measures.measure(model.module, calib.x)
    result = SweepResult(model.name, mode, list(criteria_names), sparsities, list(methods),
                         dataclasses.asdict(base), measures.accuracy(model.module, held),
                         [str(p) for p in used.paths], [str(p) for p in held.paths], settings.method,
                         method_params=method_params)
    x, targets = held.x, held.targets
    reference = measures.logits(model.module, x)
    yield Progress(0.02, "explaining with the original model")
    original_maps = _maps(model, x, targets, methods, result.skipped_methods, method_params)
    original_paths = pathway_masks(model, x, targets)
    owners = criteria.activation_producers(model.module, x)
    share = 0.95 / len(criteria_names)  # of the progress bar, per criterion
    for ci, name in enumerate(criteria_names):
        lo = 0.05 + ci * share
        step = 0.85 * share / len(sparsities)  # per sparsity, after 15 % for the scores
        try:
            kept = {s: _kept_point(store, f"{name}:{s!r}") for s in sparsities}
            scores = None
            if name != "magnitude" and None in kept.values():
                scores = yield from scaled(criteria.channel_scores(name, model, used.x, used.targets),
                                           lo, lo + 0.15 * share)
            for si, s in enumerate(sparsities):
                if kept[s] is not None:
                    result.points.append(kept[s])
                    continue
                at = lo + 0.15 * share + si * step
                module, done = yield from scaled(pipeline.prune_copy(
                    model, used, name, s, mode, protect, scores=scores, cap=cap), at, at + 0.2 * step)
                pruned = dataclasses.replace(model, module=module)
                before = measures.agreement(module, held), measures.accuracy(module, held)
                first = measures.fidelity(module, reference, x)
                began = time.perf_counter()
                yield from scaled(pipeline.recover(model.module, pruned, settings, used, images, held, done),
                                  at + 0.2 * step, at + 0.4 * step)
                recovery_s = time.perf_counter() - began
                original, stats = measures.measure_pair(model.module, module, x, timed)
                yield Progress(at + 0.5 * step, f"{name} {s:g} %: explanations")
                maps = _maps(pruned, x, targets, [m for m in methods if m in original_maps], {}, method_params)
                drift = {m: _mean_similarity(original_maps[m], maps[m]) for m in maps}
                ious = [pathway_iou(a, b, owners, done.removed)
                        for a, b in zip(original_paths, pathway_masks(pruned, x, targets))]
                result.points.append(SweepPoint(
                    name, s, stats.params, stats.nonzero, stats.macs, stats.latency_ms,
                    original.latency_ms,
                    measures.agreement(module, held), measures.accuracy(module, held), drift,
                    float(np.mean(ious)), [list(row) for row in done.layers], *before, recovery_s,
                    measures.fidelity(module, reference, x), first))
                if store:
                    store.put(f"{name}:{s!r}", dataclasses.asdict(result.points[-1]))
        except Exception as why:  # one criterion failing (out of memory, say) spares the others
            result.errors[name] = reason(why)
    yield Progress(1.0, "sweep done")
    return result


def _kept_point(store: RecordStore | None, key: str) -> SweepPoint | None:
    """A point a stopped sweep finished, or None (none kept, or one of an older layout)."""
    record = store.get(key) if store else None
    try:
        return SweepPoint(**record) if record is not None else None
    except TypeError:
        return None


def _mean_similarity(before: list, after: list) -> dict:
    sims = [map_similarity(a, b) for a, b in zip(before, after)]
    return {k: float(np.mean([s[k] for s in sims])) for k in ("spearman", "ssim")}
