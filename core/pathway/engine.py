"""The engine: what is expensive for one (model, image, target), computed once and kept.

Neuron scores depend only on (model, input, target), so they are cached and ranked once; a new
sparsity then costs a threshold lookup and one masked forward and backward. Classic maps and
their curves are cached too. The GUI and the CLI both drive this object.
"""
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from core.errors import PruneScopeError, UnsupportedMethod, reason
from core.methods import (ALL_METHODS, BY_NAME, CLASSIC_METHODS, PATHWAY_METHODS, attribution,
                          checked_settings, configured, ranked)
from core.network.neurons import (MaskedForward, Taps, intercept, intgrad_scores, layer_modules,
                                  taylor_scores, trace_layers)
from core.pathway.curves import Curves, end_probs, iter_curves, output_change
from core.pathway.in_steps import InSteps, supported
from core.pathway.ranking import Ranking
from core.pathway.results import Analysis, AutoSparsity, MethodResult, PathwayResult, Prediction, Sweep
from core.progress import Job, Progress, run, scaled

SELECTORS = ("taylor", "intgrad")
MODES = ("global", "per-layer")
TIES = ("exact", "paper")  # exact: p % of the neurons, ties broken; paper: tied scores go together
AUTO_GRID = 1.0  # points of sparsity between the auto search's probes
AUTO_RESOLUTION = 0.1


@dataclass
class Trace:
    """One input through the model, traced once: what every engine of that input shares."""
    x: torch.Tensor
    view: np.ndarray
    module: nn.Module             # the network the engine runs (the model's, batch-norm-folded)
    layers: list                  # its activation layers (core.network.neurons.Layer)
    layer_modules: list | None    # the module of each layer, where each is one that runs once
    probs: torch.Tensor

    @classmethod
    def of(cls, model, x: torch.Tensor, view: np.ndarray, fold: bool) -> tuple["Trace", tuple]:
        """The trace, and (its taps, its logits): the forward's activations, from which the Taylor
        scores of a target need only a backward."""
        module = _module_of(model, x, fold)
        taps = Taps()
        layers, logits = trace_layers(module, x, taps)
        probs = torch.softmax(logits.detach().float(), dim=1)[0]
        return cls(x, view, module, layers, layer_modules(module, layers), probs), (taps, logits)


@dataclass
class Caches:
    """What an engine computed for its input and target; its with_ties() copies share them (none
    of them depends on the tie rule: the sweep's points are keyed by it)."""
    scores: dict = field(default_factory=dict)   # selector -> Ranking
    maps: dict = field(default_factory=dict)     # classic method -> its map
    curves: dict = field(default_factory=dict)   # (method, steps, baseline) -> Curves
    ends: dict = field(default_factory=dict)     # baseline -> end_probs
    sweep: dict = field(default_factory=dict)    # sweep points done: a restarted sweep skips them
    runs: dict = field(default_factory=dict)     # method -> its run under way in steps (Method.stepped)
    coarse: dict = field(default_factory=dict)   # method -> a first, coarser map (Method.coarse)


class Engine(InSteps):
    """ties: how equal neuron scores are pruned, "exact" (p % of the neurons) or "paper".
    settings: the methods' settings, {method: {key: value}} (core.methods.checked_settings).
    trace, caches: another engine's, for from_tensor, with_target, with_ties and with_settings."""

    def __init__(self, model, image_rgb: np.ndarray | None = None, target: int | None = None,
                 ties: str = "exact", fold: bool = True, *, settings: dict | None = None,
                 trace: Trace | None = None, caches: Caches | None = None, taps: tuple | None = None):
        if ties not in TIES:
            raise PruneScopeError(f"unknown tie rule '{ties}': choose {' or '.join(TIES)}")
        if trace is None:
            x, view = model.preprocess(image_rgb)
            trace, taps = Trace.of(model, x, view, fold)
        self.model, self.ties, self._trace = model, ties, trace
        self.x, self.view, self.module, self.layers = trace.x, trace.view, trace.module, trace.layers
        self.probs, self._layer_modules = trace.probs, trace.layer_modules
        self._taps = taps  # the trace's forward, for the Taylor scores of the target
        n_classes = self.probs.numel()
        self.target = int(self.probs.argmax()) if target is None else int(target)
        if not 0 <= self.target < n_classes:
            raise PruneScopeError(f"target class {self.target} is out of range (0..{n_classes - 1})")
        self._cache = Caches() if caches is None else caches
        self.settings = checked_settings(settings)

    @classmethod
    def from_tensor(cls, model, x: torch.Tensor, target: int | None = None,
                    ties: str = "exact", fold: bool = True, settings: dict | None = None) -> "Engine":
        """fold=False: the model's own module, for a single map of a model made for it (the
        folded copy is made once per model and costs about as much as a map)."""
        x = x.to(model.device)
        trace, taps = Trace.of(model, x, _view_of(model, x), fold)
        return cls(model, target=target, ties=ties, settings=settings, trace=trace, taps=taps)

    def with_target(self, target: int) -> "Engine":
        """The same image and model explained for another class; the forward is reused."""
        return Engine(self.model, target=target, ties=self.ties, settings=self.settings, trace=self._trace)

    def with_ties(self, ties: str) -> "Engine":
        """The same explanation under another tie rule; scores, maps and curves are shared."""
        return self._sharing(ties, self.settings)

    def with_settings(self, settings: dict | None) -> "Engine":
        """The same explanation with other method settings; what they do not change is shared
        (maps and curves are kept per setting)."""
        return self._sharing(self.ties, settings)

    def _sharing(self, ties: str, settings: dict | None) -> "Engine":
        other = Engine(self.model, target=self.target, ties=ties, settings=settings, trace=self._trace,
                       caches=self._cache, taps=self._taps)
        self._taps = None  # the same target: its scores may come from them, once
        return other

    def spec(self, method: str):
        """Method `method` (core.methods.base.Method) under this engine's settings."""
        return configured(method, self.settings)

    def _key(self, method: str):
        """A method's cache key: its name, with its settings where they are not the defaults."""
        token = self.spec(method).token if method in BY_NAME else ()
        return (method, token) if token else method

    # -- prediction ------------------------------------------------------------------------
    @property
    def prediction(self) -> Prediction:
        names = self.model.class_names
        top = torch.topk(self.probs, k=min(5, self.probs.numel()))
        top5 = [(int(i), _name(names, int(i)), float(p)) for p, i in zip(top.values, top.indices)]
        return Prediction(self.target, _name(names, self.target), float(self.probs[self.target]), top5)

    # -- neuron scores and masks ---------------------------------------------------------------
    def iter_scores(self, selector: str = "taylor", steps: int = 10) -> Job[Ranking]:
        if selector not in SELECTORS:
            raise PruneScopeError(f"unknown selector '{selector}': choose {' or '.join(SELECTORS)}")
        if selector not in self._cache.scores:
            module = self.module
            if selector == "taylor" and self._taps is not None:
                (taps, logits), self._taps = self._taps, None
                scores, magnitudes = taps.scores(logits, self.target, self.layers)
            elif selector == "taylor":
                scores, magnitudes = taylor_scores(module, self.x, self.target, self.layers,
                                                   self._layer_modules)
            else:
                self._taps = None  # the trace's graph is for Taylor's scores: not held for others
                per_layer, per_layer_magnitudes = yield from intgrad_scores(
                    module, self.x, self.target, len(self.layers), steps)
                scores = torch.cat([s.flatten() for s in per_layer])
                magnitudes = torch.cat([a.flatten() for a in per_layer_magnitudes])
            self._cache.scores[selector] = Ranking(scores, magnitudes, self.layers)
        return self._cache.scores[selector]

    def scores(self, selector: str = "taylor") -> list[torch.Tensor]:
        return run(self.iter_scores(selector)).per_layer

    def masks(self, sparsity: float, mode: str = "global", selector: str = "taylor") -> list[torch.Tensor]:
        _check(sparsity, mode)
        return run(self.iter_scores(selector)).masks(sparsity, mode, self.ties)

    # -- the pathway map ---------------------------------------------------------------------
    def _factors(self, sparsity: float, mode: str, selector: str) -> list[torch.Tensor]:
        """Each layer's 0/1 factors, from one comparison over all layers written as floats (bool
        masks, then a conversion per layer, cost a tenth of a pass on the embedded model)."""
        _check(sparsity, mode)
        scores = run(self.iter_scores(selector))
        return scores.per_layer_views(scores.kept(sparsity, mode, self.ties, self.x.dtype))

    def masked_forward(self, masks: list[torch.Tensor], stop: Callable[[], bool] | None = None):
        """The pruned network: each activation output multiplied by its mask. stop: checked at
        every layer of each forward; when it returns True the forward raises Stopped."""
        # Float factors, made once: multiplying by a bool mask promotes it in every pass (~10 %
        # of a forward and backward of the embedded model).
        return self._scaled_forward([m.to(self.x.dtype) for m in masks], stop)

    def _scaled_forward(self, factors: list[torch.Tensor], stop: Callable[[], bool] | None = None):
        return MaskedForward(self.module, self._layer_modules, factors, stop)

    def pathway(self, sparsity: float, mode: str = "global", selector: str = "taylor",
                method: str = "gradient", stop: Callable[[], bool] | None = None) -> PathwayResult:
        """stop: see masked_forward; the app's slider gives up a map still in its forward when a
        newer position is asked for (the backward, once begun, runs to the end)."""
        if method not in CLASSIC_METHODS or not BY_NAME[method].through_network:
            raise PruneScopeError(f"no pathway version of '{method}'")
        spec = supported(self.spec(method), self.model)
        factors = self._factors(sparsity, mode, selector)
        kept = self._kept(factors, sparsity, mode, selector)
        if all(k == n for _, k, n in kept):
            # Nothing pruned: the pruned network is the network, so this is the method's own
            # map. Computed again it could differ in the last bits: some CPU convolution
            # backwards are not deterministic across threads (Inception's 1x3 kernels on 1x1
            # maps), and then two runs of one gradient differ.
            p = float(self.probs[self.target])
            return PathwayResult(self.attribution(method).copy(), 0.0, 0.0, p, kept, factors, float(sparsity))
        attr_map, logits = spec.through(self.model, self.module, self._scaled_forward(factors, stop), self.x,
                                        self.target)
        return self._result(attr_map, logits, factors, sparsity, mode, selector, kept)

    def _kept(self, factors, sparsity: float, mode: str, selector: str) -> list[tuple[str, int, int]]:
        """(layer name, neurons kept, neurons) of each layer."""
        counts = run(self.iter_scores(selector)).counts(sparsity, mode, self.ties)
        if counts is None:  # sums: count_nonzero of floats is 30x slower; float32 is exact below 2^24
            counts = torch.stack([f.sum(dtype=torch.float32 if f.numel() < 1 << 24 else torch.float64).double()
                                  for f in factors]).tolist()
        return [(layer.name, round(n), f.numel()) for layer, n, f in zip(self.layers, counts, factors)]

    def _result(self, attr_map, logits, factors, sparsity, mode, selector, kept=None) -> PathwayResult:
        kept = self._kept(factors, sparsity, mode, selector) if kept is None else kept
        p = float(self.probs[self.target])
        prob = float(torch.softmax(logits.detach().float(), dim=1)[0, self.target])
        pruned = 100.0 * (1 - sum(k for _, k, _ in kept) / max(1, sum(n for _, _, n in kept)))
        return PathwayResult(attr_map, pruned, abs(prob - p) / p, prob, kept, factors, float(sparsity))

    def channel_map(self, layer: int, channel: int, sparsity: float, mode: str = "global",
                    selector: str = "taylor") -> np.ndarray:
        """The pathway gradient restricted to one channel of one layer: the input evidence that
        reaches the target through that unit. The forward is the pruned network's; only the
        gradient is stopped at the layer's other channels."""
        if not 0 <= layer < len(self.layers):
            raise PruneScopeError(f"no activation layer {layer} (the model has {len(self.layers)})")
        factors = self._factors(sparsity, mode, selector)
        shape = self.layers[layer].shape
        # masks are per sample: a channel is the first axis of a conv map, the last of tokens
        axis = 0 if len(shape) == 3 else factors[layer].dim() - 1
        if not 0 <= channel < factors[layer].shape[axis]:
            raise PruneScopeError(f"layer {self.layers[layer].name} has no channel {channel}")
        index = torch.tensor([channel], device=factors[layer].device)
        only = torch.zeros_like(factors[layer]).index_fill_(axis, index, 1.0)
        return attribution.collapse_channels(self._gradient_through(factors, layer, only))

    def _gradient_through(self, factors, layer: int, only: torch.Tensor) -> torch.Tensor:
        """d target / d input of the pruned network, with the gradient at `layer` let through
        only where `only` is 1."""
        def transform(i: int, out: torch.Tensor) -> torch.Tensor:
            out = out * factors[i]
            if i == layer:
                out = out.detach() + (out - out.detach()) * only
            return out

        x = self.x.detach().requires_grad_(True)
        with torch.enable_grad(), intercept(transform):
            logits = self.module(x)
            (grad,) = torch.autograd.grad(logits[0, self.target], x)
        return grad

    def output_change(self, sparsity: float, mode: str = "global", selector: str = "taylor") -> float:
        """|p'_c - p_c| / p_c of the pruned network: one forward, no backward."""
        with torch.no_grad():
            logits = self._scaled_forward(self._factors(sparsity, mode, selector))(self.x)
        p = float(self.probs[self.target])
        return abs(float(torch.softmax(logits.float(), dim=1)[0, self.target]) - p) / p

    def iter_auto_sparsity(self, tolerance: float = 0.15, mode: str = "global",
                           selector: str = "taylor", step: float = AUTO_GRID) -> Job[AutoSparsity]:
        """The largest sparsity whose output change is <= tolerance. Output change need not grow
        with sparsity, so every `step` points from 0 to 99.9 % are tried (one forward each),
        then the gap above the largest passing one is bisected to AUTO_RESOLUTION points. A
        coarser step is faster and may miss a larger sparsity that passes between two points."""
        if not math.isfinite(tolerance) or tolerance < 0:
            raise PruneScopeError(f"tolerance must be a finite output change of at least 0, got {tolerance}")
        if not (math.isfinite(step) and 0 < step <= 50):
            raise PruneScopeError(f"the auto search's step must be in (0, 50] points, got {step}")
        yield from scaled(self.iter_scores(selector), 0.0, 0.2)
        grid = [*np.arange(0.0, 99.9, step), 99.9]
        changes = []
        for i, p in enumerate(grid):
            changes.append(self.output_change(float(p), mode, selector))
            yield Progress(0.2 + 0.6 * (i + 1) / len(grid), f"auto sparsity: scanning {p:.0f} %")
        passing = [i for i, c in enumerate(changes) if c <= tolerance]
        best = passing[-1]  # sparsity 0 changes nothing, so there is always one
        lo, hi, change = float(grid[best]), None, changes[best]
        if best + 1 < len(grid):
            hi = float(grid[best + 1])
            while hi - lo > AUTO_RESOLUTION:
                mid = round((lo + hi) / 2, 2)  # on the slider's 0.01 grid: the value returned is the one tried
                mid_change = self.output_change(mid, mode, selector)
                if mid_change <= tolerance:
                    lo, change = mid, mid_change
                else:
                    hi = mid
                yield Progress(0.9, f"auto sparsity: {lo:.1f}-{hi:.1f} %")
        how = (f"scanned 0-99.9 % every {step:g} points ({len(grid)} forwards); "
               f"{len(passing)} within tolerance, the largest at {grid[best]:.1f} %")
        if hi is not None:
            how += f"; bisected up to {hi:.1f} % to {AUTO_RESOLUTION:g} points"
        return AutoSparsity(lo, change, how)

    # -- any method ----------------------------------------------------------------------------
    def attribution(self, method: str, sparsity: float = 70.0, mode: str = "global",
                    selector: str = "taylor") -> np.ndarray:
        if method in PATHWAY_METHODS:
            return self.pathway(sparsity, mode, selector, PATHWAY_METHODS[method]).map
        if method not in CLASSIC_METHODS:
            raise PruneScopeError(f"unknown method '{method}': choose from {', '.join(ALL_METHODS)}")
        key = self._key(method)
        if key not in self._cache.maps:
            spec = supported(self.spec(method), self.model)
            self._cache.maps[key] = spec.attribute(self.model, self._net_of(spec), self.x, self.target)
        return self._cache.maps[key]

    def _net_of(self, spec):
        # Methods that read a layer (CAMs, LRP) run on the model as loaded, the others on the
        # folded copy (the same function, faster).
        return self.model.module if spec.runs_on_loaded else self.module

    def iter_curves(self, method: str, attr_map: np.ndarray, steps: int = 20,
                    baseline: str = "mean", step_seconds: float | None = None,
                    cache: bool = True, insertion: bool = True) -> Job[Curves]:
        """Deletion/insertion for a map; classic methods' curves are cached (cache=False: for a
        map that is not the method's own, e.g. a coarse one). step_seconds, insertion: see
        core.pathway.curves.iter_curves."""
        key = (self._key(method), steps, baseline)
        if cache and key in self._cache.curves:
            return self._cache.curves[key]
        if baseline not in self._cache.ends:  # the curves' first and last points, the same for every map
            self._cache.ends[baseline] = end_probs(self.module, self.x, self.target, baseline,
                                             self.model.mean, self.model.std)
        curves = yield from iter_curves(self.module, self.x, ranked(method, attr_map),
                                        self.target, steps=steps, baseline=baseline, mean=self.model.mean,
                                        std=self.model.std, step_seconds=step_seconds,
                                        ends=self._cache.ends[baseline], insertion=insertion)
        if cache and insertion and method not in PATHWAY_METHODS:
            self._cache.curves[key] = curves
        return curves

    def output_change_measure(self, method: str, attr_map: np.ndarray, baseline: str = "mean"):
        """NeuronMCT's measure: output change after removing 1..10 % least / most relevant pixels."""
        ranking = ranked(method, attr_map)
        return tuple(output_change(self.module, self.x, ranking, self.target, order=order,
                                   baseline=baseline, mean=self.model.mean, std=self.model.std)
                     for order in ("lerf", "morf"))

    def iter_analysis(self, methods, sparsity: float = 70.0, mode: str = "global",
                      selector: str = "taylor", steps: int = 20, baseline: str = "mean",
                      with_curves: bool = True, step_seconds: float | None = None) -> Job[Analysis]:
        """Maps (and curves) for every method; a method the model cannot run is skipped, and one
        that fails (out of memory, say) is reported as failed: both say why, the rest go on.
        step_seconds: how long a step may take where a method can be split (the app's worker)."""
        results, skipped, failed = {}, {}, {}
        n = max(len(methods), 1)
        for i, method in enumerate(methods):
            yield Progress(i / n, f"{method}")
            try:
                results[method] = yield from self._iter_method(method, i, n, sparsity, mode, selector,
                                                               steps, baseline, with_curves, step_seconds)
            except UnsupportedMethod as why:
                skipped[method] = str(why)
            except Exception as error:
                failed[method] = reason(error)
        yield Progress(1.0, "done")
        return Analysis(self.prediction, results, skipped, failed)

    def _iter_method(self, method, i, n, sparsity, mode, selector, steps, baseline,
                     with_curves, step_seconds) -> Job[MethodResult]:
        start = time.perf_counter()
        if method in PATHWAY_METHODS:
            yield from scaled(self.iter_scores(selector), i / n, (i + 0.5) / n)
            path = self.pathway(sparsity, mode, selector, PATHWAY_METHODS[method])
            result = MethodResult(method, path.map, 0.0, pathway=path)
        else:
            attr = yield from scaled(self.iter_attribution(method, step_seconds), i / n, (i + 0.5) / n)
            result = MethodResult(method, attr, 0.0)
        result.seconds = time.perf_counter() - start
        if with_curves:
            result.curves = yield from scaled(
                self.iter_curves(method, result.map, steps, baseline, step_seconds), (i + 0.5) / n, (i + 1) / n)
            result.lerf, result.morf = self.output_change_measure(method, result.map, baseline)
        return result

    def iter_sweep(self, sparsities=(0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99), mode: str = "global",
                   selector: str = "taylor", steps: int = 20, baseline: str = "mean",
                   step_seconds: float | None = None) -> Job[Sweep]:
        """Output change and pathway-gradient deletion AUC along the sparsity axis (the sparsity
        actually pruned). Points are kept, so a sweep stopped and started again goes on where
        it was. step_seconds: see core.pathway.curves.iter_curves."""
        if not len(sparsities):
            raise PruneScopeError("the sweep needs at least one sparsity")
        yield from scaled(self.iter_scores(selector), 0.0, 0.1)
        points = []
        for i, p in enumerate(sparsities):
            key = (float(p), mode, selector, self.ties, steps, baseline)
            if key not in self._cache.sweep:
                path = self.pathway(p, mode, selector)
                yield Progress(0.1 + 0.9 * i / len(sparsities), f"sweep: {float(p):g} %")  # a step of its own
                curves = yield from scaled(
                    self.iter_curves("pathway-gradient", path.map, steps, baseline, step_seconds,
                                     insertion=False),
                    0.1 + 0.9 * i / len(sparsities), 0.1 + 0.9 * (i + 1) / len(sparsities))
                self._cache.sweep[key] = (path.sparsity, path.output_change, curves.deletion_auc)
            points.append(self._cache.sweep[key])
        pruned, changes, aucs = (np.asarray(column, float) for column in zip(*points))
        return Sweep(pruned, changes, aucs)


def compute_map(model, x: torch.Tensor, target: int, method: str, *, sparsity: float = 70.0,
                selector: str = "taylor", mode: str = "global", settings: dict | None = None) -> np.ndarray:
    """One map, no caching kept: for sanity checks, evaluation and pruning drift. settings: the
    methods' (see Engine)."""
    if method in CLASSIC_METHODS:  # no Engine: its forward and layer discovery are not needed
        spec = supported(configured(method, checked_settings(settings)), model)
        return spec.attribute(model, model.module, x.to(model.device), target)
    return Engine.from_tensor(model, x, target, fold=False, settings=settings).attribution(method, sparsity, mode,
                                                                                           selector)


def _module_of(model, x: torch.Tensor, fold: bool):
    # Every pass of the engine's own runs on the batch-norm-folded module: the same function,
    # faster (core.network.folding). Classic maps that read layers (Grad-CAM, LRP) keep the model's.
    return model.folded(x) if fold else model.module


def _check(sparsity: float, mode: str) -> None:
    if not 0.0 <= sparsity < 100.0 or math.isnan(sparsity):
        raise PruneScopeError(f"sparsity must be in [0, 100): got {sparsity}")
    if mode not in MODES:
        raise PruneScopeError(f"unknown threshold mode '{mode}': choose {' or '.join(MODES)}")


def _name(names, i: int) -> str:
    return names[i] if names and i < len(names) else f"class {i}"


def _view_of(model, x: torch.Tensor) -> np.ndarray:
    rgb = (model.unnormalise(x) * 255).round().byte()[0].permute(1, 2, 0)
    return np.ascontiguousarray(rgb.expand(-1, -1, 3).cpu().numpy())  # grayscale shown as RGB
