"""The engine: what is expensive for one (model, image, target), computed once and kept.

Neuron scores depend only on (model, input, target), so they are cached and sorted once; a new
sparsity then costs a threshold lookup and one masked forward and backward. Classic maps and
their curves are cached too. The GUI and the CLI both drive this object.
"""
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from captum.attr import IntegratedGradients

from core import attribution
from core.errors import PruneScopeError, UnsupportedMethod, reason
from core.methods import ALL_METHODS, CLASSIC_METHODS, MAGNITUDE_RANKED, PATHWAY_METHODS
from core.neurons import intercept, trace_layers, intgrad_scores, taylor_scores
from core.perturbation import Curves, iter_curves, output_change
from core.progress import Job, Progress, run, scaled

SELECTORS = ("taylor", "intgrad")
MODES = ("global", "per-layer")
IG_STEPS = 50
IG_BATCH = 10


@dataclass
class Prediction:
    target: int
    name: str
    prob: float
    top5: list  # [(class id, name, probability)]


@dataclass
class PathwayResult:
    map: np.ndarray               # H x W, signed, raw
    sparsity: float
    output_change: float          # |p'_c - p_c| / p_c
    prob: float                   # p'_c, the pruned network's probability of the target
    kept: list                    # [(layer name, neurons kept, neurons)]
    masks: list = field(repr=False)  # bool tensors, one per layer, the layer's shape


@dataclass
class MethodResult:
    method: str
    map: np.ndarray
    seconds: float
    curves: Curves | None = None
    pathway: PathwayResult | None = None
    lerf: np.ndarray | None = None   # output change after removing the least relevant 1..10 %
    morf: np.ndarray | None = None   # ... and the most relevant


@dataclass
class Analysis:
    prediction: Prediction
    results: dict                 # method -> MethodResult, in the order asked
    skipped: dict                 # method -> why it could not run on this model
    failed: dict = field(default_factory=dict)  # method -> why it failed (the others are kept)


@dataclass
class Sweep:
    sparsities: np.ndarray
    output_change: np.ndarray
    deletion_auc: np.ndarray


class _Scores:
    """One selector's neuron scores, with the sorted values every threshold is read from.

    Sorting once (lazily, per threshold mode) makes each later sparsity a lookup. Scores are
    >= 0 and often exactly 0 (inactive neurons), so only the non-zero ones are sorted and the
    zeros are counted: the same thresholds for a fraction of the sorting time.
    """

    def __init__(self, per_layer: list[torch.Tensor]):
        self.per_layer = per_layer
        self._sorted: dict[str, list[tuple[int, torch.Tensor]]] = {}

    def _sorted_values(self, mode: str) -> list[tuple[int, torch.Tensor]]:
        if mode not in self._sorted:
            groups = ([torch.cat([s.flatten() for s in self.per_layer])] if mode == "global"
                      else [s.flatten() for s in self.per_layer])
            self._sorted[mode] = [(int((g == 0).sum()), g[g != 0].sort().values) for g in groups]
        return self._sorted[mode]

    @staticmethod
    def threshold(zeros: int, sorted_nonzero: torch.Tensor, sparsity: float) -> float | None:
        """The value at the sparsity-th percentile; None when nothing is pruned."""
        pruned = math.floor(sparsity / 100.0 * (zeros + sorted_nonzero.numel()))
        if pruned <= 0:
            return None
        if pruned <= zeros:
            return 0.0
        return sorted_nonzero[min(pruned - zeros, sorted_nonzero.numel()) - 1].item()

    def masks(self, sparsity: float, mode: str) -> list[torch.Tensor]:
        groups = self._sorted_values(mode)
        if mode == "global":
            thresholds = [self.threshold(*groups[0], sparsity)] * len(self.per_layer)
        else:
            thresholds = [self.threshold(*group, sparsity) for group in groups]
        return [torch.ones_like(s, dtype=torch.bool) if t is None else s > t
                for s, t in zip(self.per_layer, thresholds)]


class Engine:
    def __init__(self, model, image_rgb: np.ndarray, target: int | None = None):
        x, view = model.preprocess(image_rgb)
        self._setup(model, x, view, target)

    @classmethod
    def from_tensor(cls, model, x: torch.Tensor, target: int | None = None) -> "Engine":
        engine = cls.__new__(cls)
        engine._setup(model, x.to(model.device), _view_of(model, x), target)
        return engine

    def _setup(self, model, x, view, target, shared=None):
        self.model = model
        self.x = x
        self.view = view
        if shared is None:
            self.layers, logits = trace_layers(model.module, x)
            self.probs = torch.softmax(logits.float(), dim=1)[0]
        else:
            self.probs, self.layers = shared
        n_classes = self.probs.numel()
        self.target = int(self.probs.argmax()) if target is None else int(target)
        if not 0 <= self.target < n_classes:
            raise PruneScopeError(f"target class {self.target} is out of range (0..{n_classes - 1})")
        self._scores: dict[str, _Scores] = {}
        self._maps: dict[str, np.ndarray] = {}
        self._curves: dict[tuple, Curves] = {}

    def with_target(self, target: int) -> "Engine":
        """The same image and model explained for another class; the forward is reused."""
        other = Engine.__new__(Engine)
        other._setup(self.model, self.x, self.view, target, shared=(self.probs, self.layers))
        return other

    # -- prediction ------------------------------------------------------------------------
    @property
    def prediction(self) -> Prediction:
        names = self.model.class_names
        top = torch.topk(self.probs, k=min(5, self.probs.numel()))
        top5 = [(int(i), _name(names, int(i)), float(p)) for p, i in zip(top.values, top.indices)]
        return Prediction(self.target, _name(names, self.target), float(self.probs[self.target]), top5)

    # -- neuron scores and masks ---------------------------------------------------------------
    def iter_scores(self, selector: str = "taylor", steps: int = 10) -> Job[_Scores]:
        if selector not in SELECTORS:
            raise PruneScopeError(f"unknown selector '{selector}': choose {' or '.join(SELECTORS)}")
        if selector not in self._scores:
            module = self.model.module
            if selector == "taylor":
                per_layer = taylor_scores(module, self.x, self.target)
            else:
                per_layer = yield from intgrad_scores(module, self.x, self.target, len(self.layers), steps)
            self._scores[selector] = _Scores(per_layer)
        return self._scores[selector]

    def scores(self, selector: str = "taylor") -> list[torch.Tensor]:
        return run(self.iter_scores(selector)).per_layer

    def masks(self, sparsity: float, mode: str = "global", selector: str = "taylor") -> list[torch.Tensor]:
        _check(sparsity, mode)
        return run(self.iter_scores(selector)).masks(sparsity, mode)

    # -- the pathway map ---------------------------------------------------------------------
    def masked_forward(self, masks: list[torch.Tensor]):
        """The pruned network: each activation output multiplied by its mask."""
        module = self.model.module
        # Float factors, made once: multiplying by a bool mask promotes it in every pass (~10 %
        # of a forward and backward of the embedded model).
        factors = [m.to(self.x.dtype) for m in masks]

        def forward(x: torch.Tensor) -> torch.Tensor:
            with intercept(lambda i, out: out * factors[i]):
                return module(x)

        return forward

    def pathway(self, sparsity: float, mode: str = "global", selector: str = "taylor",
                method: str = "gradient") -> PathwayResult:
        masks = self.masks(sparsity, mode, selector)
        forward = self.masked_forward(masks)
        if method == "integrated-gradients":
            grads = IntegratedGradients(forward).attribute(
                self.x, target=self.target, n_steps=IG_STEPS, internal_batch_size=IG_BATCH)
            with torch.no_grad():
                logits = forward(self.x)
        elif method in ("gradient", "input-x-gradient"):
            x = self.x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = forward(x)
                (grad,) = torch.autograd.grad(logits[0, self.target], x)
            grads = grad * self.x if method == "input-x-gradient" else grad
        else:
            raise PruneScopeError(f"no pathway version of '{method}'")
        prob = float(torch.softmax(logits.detach().float(), dim=1)[0, self.target])
        p = float(self.probs[self.target])
        kept = [(layer.name, int(torch.count_nonzero(m)), m.numel()) for layer, m in zip(self.layers, masks)]
        return PathwayResult(attribution.collapse_channels(grads), float(sparsity),
                             abs(prob - p) / p, prob, kept, masks)

    def output_change(self, sparsity: float, mode: str = "global", selector: str = "taylor") -> float:
        """|p'_c - p_c| / p_c of the pruned network: one forward, no backward."""
        with torch.no_grad():
            logits = self.masked_forward(self.masks(sparsity, mode, selector))(self.x)
        p = float(self.probs[self.target])
        return abs(float(torch.softmax(logits.float(), dim=1)[0, self.target]) - p) / p

    def iter_auto_sparsity(self, tolerance: float = 0.15, mode: str = "global",
                           selector: str = "taylor") -> Job[float]:
        """The largest sparsity (to within 0.5 points) whose output change is <= tolerance."""
        if not math.isfinite(tolerance) or tolerance < 0:
            raise PruneScopeError(f"tolerance must be a finite output change of at least 0, got {tolerance}")
        yield from scaled(self.iter_scores(selector), 0.0, 0.3)
        lo, hi = 0.0, 99.9
        if self.output_change(hi, mode, selector) <= tolerance:
            return hi
        probes = math.ceil(math.log2((hi - lo) / 0.5))
        for i in range(probes):
            mid = (lo + hi) / 2
            if self.output_change(mid, mode, selector) <= tolerance:
                lo = mid
            else:
                hi = mid
            yield Progress(0.3 + 0.7 * (i + 1) / probes, f"auto sparsity: {lo:.1f}-{hi:.1f} %")
        return round(lo, 2)

    # -- any method ----------------------------------------------------------------------------
    def attribution(self, method: str, sparsity: float = 70.0, mode: str = "global",
                    selector: str = "taylor") -> np.ndarray:
        if method in PATHWAY_METHODS:
            return self.pathway(sparsity, mode, selector, PATHWAY_METHODS[method]).map
        if method not in CLASSIC_METHODS:
            raise PruneScopeError(f"unknown method '{method}': choose from {', '.join(ALL_METHODS)}")
        if method not in self._maps:
            self._maps[method] = attribution.attribute(method, self.model, self.x, self.target)
        return self._maps[method]

    def iter_curves(self, method: str, attr_map: np.ndarray, steps: int = 20,
                    baseline: str = "mean") -> Job[Curves]:
        """Deletion/insertion for a map; classic methods' curves are cached."""
        key = (method, steps, baseline)
        if key in self._curves:
            return self._curves[key]
        curves = yield from iter_curves(self.model.module, self.x, self._ranking(method, attr_map), self.target, steps=steps,
                                        baseline=baseline, mean=self.model.mean, std=self.model.std)
        if method not in PATHWAY_METHODS:
            self._curves[key] = curves
        return curves

    def output_change_measure(self, method: str, attr_map: np.ndarray, baseline: str = "mean"):
        """NeuronMCT's measure: output change after removing 1..10 % least / most relevant pixels."""
        ranking = self._ranking(method, attr_map)
        return tuple(output_change(self.model.module, self.x, ranking, self.target, order=order,
                                   baseline=baseline, mean=self.model.mean, std=self.model.std)
                     for order in ("lerf", "morf"))

    @staticmethod
    def _ranking(method: str, attr_map: np.ndarray) -> np.ndarray:
        return np.abs(attr_map) if method in MAGNITUDE_RANKED else attr_map

    def iter_analysis(self, methods, sparsity: float = 70.0, mode: str = "global",
                      selector: str = "taylor", steps: int = 20, baseline: str = "mean",
                      with_curves: bool = True) -> Job[Analysis]:
        """Maps (and curves) for every method; a method the model cannot run is skipped, and one
        that fails (out of memory, say) is reported as failed: both say why, the rest go on."""
        results, skipped, failed = {}, {}, {}
        n = max(len(methods), 1)
        for i, method in enumerate(methods):
            yield Progress(i / n, f"{method}")
            try:
                results[method] = yield from self._iter_method(method, i, n, sparsity, mode, selector,
                                                               steps, baseline, with_curves)
            except UnsupportedMethod as why:
                skipped[method] = str(why)
            except Exception as error:
                failed[method] = reason(error)
        yield Progress(1.0, "done")
        return Analysis(self.prediction, results, skipped, failed)

    def _iter_method(self, method, i, n, sparsity, mode, selector, steps, baseline,
                     with_curves) -> Job[MethodResult]:
        start = time.perf_counter()
        if method in PATHWAY_METHODS:
            yield from scaled(self.iter_scores(selector), i / n, (i + 0.5) / n)
            path = self.pathway(sparsity, mode, selector, PATHWAY_METHODS[method])
            result = MethodResult(method, path.map, 0.0, pathway=path)
        else:
            result = MethodResult(method, self.attribution(method), 0.0)
        result.seconds = time.perf_counter() - start
        if with_curves:
            result.curves = yield from scaled(
                self.iter_curves(method, result.map, steps, baseline), (i + 0.5) / n, (i + 1) / n)
            result.lerf, result.morf = self.output_change_measure(method, result.map, baseline)
        return result

    def iter_sweep(self, sparsities=(0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99), mode: str = "global",
                   selector: str = "taylor", steps: int = 20, baseline: str = "mean") -> Job[Sweep]:
        """Output change and pathway-gradient deletion AUC along the sparsity axis."""
        yield from scaled(self.iter_scores(selector), 0.0, 0.1)
        changes, aucs = [], []
        for i, p in enumerate(sparsities):
            path = self.pathway(p, mode, selector)
            curves = yield from scaled(self.iter_curves("pathway-gradient", path.map, steps, baseline),
                                       0.1 + 0.9 * i / len(sparsities), 0.1 + 0.9 * (i + 1) / len(sparsities))
            changes.append(path.output_change)
            aucs.append(curves.deletion_auc)
        return Sweep(np.asarray(sparsities, float), np.asarray(changes), np.asarray(aucs))


def compute_map(model, x: torch.Tensor, target: int, method: str, *, sparsity: float = 70.0,
                selector: str = "taylor", mode: str = "global") -> np.ndarray:
    """One map, no caching kept: for sanity checks, evaluation and pruning drift."""
    if method in CLASSIC_METHODS:  # no Engine: its forward and layer discovery are not needed
        return attribution.attribute(method, model, x.to(model.device), target)
    return Engine.from_tensor(model, x, target).attribution(method, sparsity, mode, selector)


def _check(sparsity: float, mode: str) -> None:
    if not 0.0 <= sparsity < 100.0 or math.isnan(sparsity):
        raise PruneScopeError(f"sparsity must be in [0, 100): got {sparsity}")
    if mode not in MODES:
        raise PruneScopeError(f"unknown threshold mode '{mode}': choose {' or '.join(MODES)}")


def _name(names, i: int) -> str:
    return names[i] if names and i < len(names) else f"class {i}"


def _view_of(model, x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(model.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(model.std, device=x.device).view(1, -1, 1, 1)
    rgb = ((x * std + mean).clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0)
    return np.ascontiguousarray(rgb.expand(-1, -1, 3).cpu().numpy())  # grayscale shown as RGB
