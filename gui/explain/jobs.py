"""What the Explain tab asks of the engine, as jobs for the background worker.

Everything here runs on the worker thread: it calls core.pathway.engine and turns its torch results into
plain numpy arrays and small dataclasses that the views draw. It never touches a widget.
"""
from dataclasses import dataclass, field

import numpy as np

from core.errors import UnsupportedMethod, reason
from core.methods import BY_NAME, PATHWAY
from core.network.tokens import grid_side
from core.progress import Progress, scaled

SWEEP_STEPS = 10  # curve steps per sweep point: the sweep is an overview, 12 points of it
# Longest a step of a background job should hold the worker: a slider move waits behind it.
STEP_SECONDS = 0.08


@dataclass(frozen=True)
class Params:
    """The pruning settings one pathway map is computed for."""
    sparsity: float
    mode: str = "global"
    selector: str = "taylor"
    method: str = "gradient"  # the pathway variant: gradient, input-x-gradient, integrated-gradients
    ties: str = "exact"  # core.pathway.engine.TIES

    @property
    def method_name(self) -> str:
        return f"{PATHWAY}{self.method}"


def ruled(engine, params: Params):
    """The engine under params' tie rule (sharing its caches)."""
    return engine if engine.ties == params.ties else engine.with_ties(params.ties)


@dataclass
class LayerView:
    """One activation layer's kept neurons, laid out as channels of 2-D maps."""
    index: int
    name: str
    shape: tuple  # the layer's own shape
    masks: np.ndarray  # C x H x W bool: kept neurons
    scores: np.ndarray  # C x H x W float32: the selector's neuron scores
    count: np.ndarray  # H x W: neurons kept over the channels at each position
    kept: np.ndarray  # C: neurons kept in each channel
    score_sum: np.ndarray  # C
    order: np.ndarray  # channel ids, most kept first (ties: higher score sum first)


@dataclass
class LiveResult:
    engine: object
    params: Params
    map: np.ndarray
    output_change: float
    prob: float
    kept: list  # [(layer name, kept, total)]
    sparsity: float  # % actually pruned
    layer: LayerView | None = field(default=None, repr=False)


@dataclass
class Maps:
    """Maps for `engine` (at `params`, for pathway maps); skipped: method -> why it cannot run
    here; failed: method -> why it failed this time (the other maps are kept)."""
    engine: object
    maps: dict                  # method -> HxW map (classic) or PathwayResult (pathway)
    skipped: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    params: Params | None = None
    coarse: set = field(default_factory=set)  # methods whose map is a coarser first one (Method.coarse)


@dataclass
class CurvesDone:
    engine: object
    curves: dict                # method -> Curves
    of_coarse: set = field(default_factory=set)  # methods whose curves are of the coarse map shown
    params: Params | None = None  # the slider position they belong to (the ↝ rows'), or None: any


@dataclass
class LayerDone:
    engine: object
    params: Params
    view: LayerView


@dataclass
class SweepDone:
    engine: object
    params: Params
    sweep: object               # core.pathway.results.Sweep


@dataclass
class GraphDone:
    engine: object
    params: Params
    graph: object               # core.pathway.graph.PathwayGraph


@dataclass
class AutoDone:
    engine: object
    auto: object                # core.pathway.results.AutoSparsity


class LiveMemo:
    """The last pathway result, so that the curves after a slider stops reuse the map the
    live preview just computed instead of running the same masked backward again."""

    def __init__(self):
        self._key = None
        self._result = None

    def pathway(self, engine, params: Params, stop=None):
        key = (id(engine), params)
        if self._key != key:
            self._result = ruled(engine, params).pathway(params.sparsity, params.mode,
                                                         params.selector, params.method, stop)
            self._key = key
        return self._result


def live(engine, params: Params, layer_index: int | None, memo: LiveMemo, stop=None):
    """The pathway map at params, and the selected layer's kept neurons. stop: given up (core's
    Stopped) while the masked forward runs if stop() says so, for a newer slider position."""
    yield Progress(0.0, f"pruning {params.sparsity:.1f} %")
    result = memo.pathway(engine, params, stop)
    layer = None
    if layer_index is not None and 0 <= layer_index < len(engine.layers):
        layer = layer_view(engine, result.factors, params.selector, layer_index)
    return LiveResult(engine, params, result.map, result.output_change, result.prob,
                      result.kept, result.sparsity, layer)


def layer_at(engine, params: Params, layer_index: int):
    """One layer's view at the current threshold (masks from the cached scores, no backward)."""
    yield Progress(0.0, "layer")
    masks = ruled(engine, params).masks(params.sparsity, params.mode, params.selector)
    return LayerDone(engine, params, layer_view(engine, masks, params.selector, layer_index))


def layer_view(engine, masks, selector: str, index: int) -> LayerView:
    """masks: each layer's bool masks, or 0/1 factors (PathwayResult.factors)."""
    mask = _as_channel_maps(masks[index].detach().bool().cpu().numpy())
    scores = _as_channel_maps(engine.scores(selector)[index].detach().float().cpu().numpy())
    kept = mask.reshape(mask.shape[0], -1).sum(1)
    score_sum = scores.reshape(scores.shape[0], -1).sum(1)
    order = np.lexsort((-score_sum, -kept))
    layer = engine.layers[index]
    return LayerView(index, layer.name, tuple(layer.shape), mask, scores.astype(np.float32),
                     mask.sum(0).astype(np.float32), kept, score_sum, order)


def _as_channel_maps(values: np.ndarray) -> np.ndarray:
    """C x H x W for any activation: conv maps as they are; transformer tokens (T x D, with a
    class token when T - 1 is square) as D channels over the patch grid; vectors as 1x1 maps."""
    if values.ndim == 4 and values.shape[0] == 1:
        values = values[0]
    if values.ndim == 3:
        return values
    if values.ndim == 2:
        tokens, dims = values.shape
        for skip in (1, 0):
            side = grid_side(tokens, skip)
            if side and side > 1:
                return values[skip:].T.reshape(dims, side, side)
        return values.T.reshape(dims, 1, tokens)
    return values.reshape(-1, 1, 1)


def cheap_first(methods) -> list[str]:
    """Maps that take many passes (tens of forwards and backwards, or hundreds of forwards) come
    after the others, so that the cheap ones are on screen first; a forward per channel (Score-CAM,
    Ablation-CAM: a minute on a CPU) last."""
    return sorted(methods, key=lambda method: (BY_NAME[method].in_steps, not BY_NAME[method].interactive,
                                               BY_NAME[method].family == "cam"))


def maps(engine, methods):
    """The classic maps (cached by the engine)."""
    analysis = yield from engine.iter_analysis(list(methods), with_curves=False, step_seconds=STEP_SECONDS)
    return Maps(engine, {m: r.map for m, r in analysis.results.items()}, analysis.skipped, analysis.failed)


def pathway_maps(engine, params: Params, names):
    """pathway-<method> maps at params: one step each, or in steps for the slow methods."""
    out, skipped, failed = {}, {}, {}
    for i, name in enumerate(names):
        yield Progress(i / len(names), name)
        try:
            out[name] = yield from scaled(ruled(engine, params).iter_pathway(
                params.sparsity, params.mode, params.selector, name.removeprefix(PATHWAY), STEP_SECONDS),
                i / len(names), (i + 1) / len(names))
        except UnsupportedMethod as why:
            skipped[name] = str(why)
        except Exception as error:
            failed[name] = reason(error)
    return Maps(engine, out, skipped, failed, params)


def coarse_map(engine, method: str):
    """The method's coarser first map (core.methods.base.Method.coarse: fewer passes)."""
    yield Progress(0.0, f"{method} (coarse)")
    coarse = engine.has_coarse(method)
    try:
        attr = yield from engine.iter_attribution(method, STEP_SECONDS, coarse=True)
    except UnsupportedMethod as why:
        return Maps(engine, {}, skipped={method: str(why)})
    except Exception as error:
        return Maps(engine, {}, failed={method: reason(error)})
    return Maps(engine, {method: attr}, coarse={method} if coarse else set())


def classic_curves(engine, methods, steps: int, coarse_maps: dict):
    """Deletion/insertion curves of every classic map (cached by the engine; those of the coarse
    maps shown for now are not, and are named in the result): they do not depend on the slider.
    A map that cannot be had (its maps job said why) has no curves."""
    out = {}
    for i, method in enumerate(methods):
        start, end = i / len(methods), (i + 1) / len(methods)
        yield Progress(start, f"curves: {method}")
        try:
            attr = coarse_maps[method] if method in coarse_maps else engine.attribution(method)
        except Exception:  # unsupported here, or failed: the maps job has told the user
            continue
        out[method] = yield from scaled(engine.iter_curves(method, attr, steps, step_seconds=STEP_SECONDS,
                                                           cache=method not in coarse_maps), start, end)
    return CurvesDone(engine, out, set(coarse_maps) & set(out))


def pathway_curves(engine, params: Params, memo: LiveMemo, steps: int):
    """Deletion/insertion curves of the pathway map at params (the live map, when it is that)."""
    yield Progress(0.0, f"curves: {params.method_name}")
    attr = memo.pathway(engine, params).map
    yield Progress(0.1, f"curves: {params.method_name}")  # the masked backward was a step of its own
    curves = yield from scaled(engine.iter_curves(params.method_name, attr, steps, step_seconds=STEP_SECONDS),
                               0.1, 1.0)
    return CurvesDone(engine, {params.method_name: curves})


def through_curves(engine, maps: Maps, steps: int):
    """Deletion/insertion curves of pathway-<method> maps (a Maps of pathway_maps): not cached, as
    they belong to one slider position."""
    out = {}
    for i, (name, path) in enumerate(maps.maps.items()):
        start, end = i / len(maps.maps), (i + 1) / len(maps.maps)
        yield Progress(start, f"curves: {name}")
        out[name] = yield from scaled(engine.iter_curves(name, path.map, steps, step_seconds=STEP_SECONDS,
                                                         cache=False), start, end)
    return CurvesDone(engine, out, params=maps.params)


def sweep(engine, params: Params, sparsities, steps: int = SWEEP_STEPS):
    result = yield from ruled(engine, params).iter_sweep(
        sparsities, mode=params.mode, selector=params.selector, steps=steps,
        step_seconds=STEP_SECONDS)
    return SweepDone(engine, params, result)


def graph(engine, params: Params, dissection):
    """The pathway graph at params (core.pathway.graph), its nodes labelled with the dissection's
    concepts where one is open."""
    from core.pathway.graph import pathway_graph

    yield Progress(0.0, "pathway graph")
    done = pathway_graph(ruled(engine, params), params.sparsity, params.mode, params.selector)
    if dissection is not None:
        from core.dissection.units import graph_concepts

        done.concepts = graph_concepts(dissection, done)
    return GraphDone(engine, params, done)


def concepts(engine, params: Params, dissection):
    """The concepts the pathway at params runs through, by the kept neurons' scores (the
    dissection's units, core.dissection.units.pathway_concepts)."""
    from core.dissection.units import pathway_concepts

    masks = engine.masks(params.sparsity, params.mode, params.selector)
    return pathway_concepts(dissection, engine.layers, masks, engine.scores(params.selector))


def auto_sparsity(engine, params: Params, tolerance: float, step: float | None = None):
    """step: the search's grid, in points of sparsity (None: the engine's finest)."""
    search = ruled(engine, params).iter_auto_sparsity
    auto = yield from (search(tolerance, params.mode, params.selector) if step is None
                       else search(tolerance, params.mode, params.selector, step))
    return AutoDone(engine, auto)


def export(engine, methods, params: Params, steps: int, out_dir, image_path, cmap: str,
           alpha: float, extra_settings: dict):
    """The same files as `prunescope explain` writes, for the current image and settings; an
    earlier export of the same image there is replaced whole."""
    from core.io.output import locked, staged_folder
    from core.reporting.report import write_outputs

    analysis = yield from scaled(
        ruled(engine, params).iter_analysis([params.method_name, *methods], params.sparsity,
                                            params.mode, params.selector, steps,
                                            step_seconds=STEP_SECONDS), 0.0, 0.9)  # a slow map resumes
    yield Progress(0.9, "writing files")
    settings = {"sparsity": params.sparsity, "mode": params.mode, "selector": params.selector,
                "ties": params.ties, "steps": steps, "baseline": "mean", **extra_settings}
    with locked(out_dir.parent), staged_folder(out_dir, overwrite=True) as staging:
        written = write_outputs(staging, engine, analysis, settings, image_path=image_path, cmap=cmap,
                                alpha=alpha)
    return [out_dir / path.name for path in written]
