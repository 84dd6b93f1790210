"""Scores of one map against the ground truth, the two reference maps, and the methods scored.

Maps are ranked as the engine ranks them for its curves (core.methods.ranked): by magnitude for
methods whose sign carries no evidence (gradient, SmoothGrad, guided backprop, pathway gradient),
signed otherwise, so "most relevant" means most positive evidence. Two reference maps need no
model: "random" (uniform noise, seeded per image) and "oracle" (the ground-truth mask, ties inside
it broken at random), the floor and the ceiling of every metric.
"""
import zlib

import numpy as np

from core.errors import PruneScopeError, UnsupportedMethod
from core.methods import ALL_METHODS, CLASSIC_METHODS, ranked, supports


def ranking(method: str, attr_map: np.ndarray) -> np.ndarray:
    """The values pixels are ranked by (higher = more relevant), as the engine ranks them."""
    return ranked(method, np.asarray(attr_map, np.float64))


def pointing_game(values: np.ndarray, mask: np.ndarray) -> bool:
    """A hit when the most relevant pixel lies in the mask. With ties for the maximum every tied
    pixel must lie in it, so a flat map (all ties) points nowhere and misses."""
    values = np.asarray(values, np.float64)
    mask = np.asarray(mask, bool)
    if values.shape != mask.shape:
        raise PruneScopeError(f"map {values.shape} and mask {mask.shape} differ in shape")
    top = values == values.max()
    return bool(mask.any() and not top.all() and mask[top].all())


def relevance_mass(values: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive relevance that falls inside the mask (Arras et al. 2022's relevance
    mass accuracy); 0 for a map with no positive relevance."""
    values = np.asarray(values, np.float64)
    mask = np.asarray(mask, bool)
    if values.shape != mask.shape:
        raise PruneScopeError(f"map {values.shape} and mask {mask.shape} differ in shape")
    positive = np.clip(values, 0, None)
    total = positive.sum()
    return float(positive[mask].sum() / total) if total > 0 else 0.0


def item_seed(seed: int, *parts) -> int:
    """A seed for one item from the run seed and the item's identity (never the rank)."""
    return zlib.crc32(repr((seed, *parts)).encode())


def _random_map(noise: np.ndarray, _mask) -> np.ndarray:
    return noise


def _oracle_map(noise: np.ndarray, mask) -> np.ndarray:
    if mask is None:
        raise PruneScopeError("the oracle map needs ground-truth masks")
    return np.asarray(mask, np.float64) * (1 + noise)


# The evaluation's reference maps: 'random', uniform noise; 'oracle', 0 outside the ground truth and
# 1 to 2 inside (at random, so the object's pixels are ordered at random among themselves).
_REFERENCE_MAPS = {"random": _random_map, "oracle": _oracle_map}
REFERENCE_METHODS = tuple(_REFERENCE_MAPS)


def reference_map(method: str, shape, mask: np.ndarray | None, seed: int) -> np.ndarray:
    return _REFERENCE_MAPS[method](np.random.default_rng(seed).random(shape), mask)


def method_map(model, x, target: int, method: str, mask, seed: int, sparsity: float,
               settings: dict | None = None) -> np.ndarray:
    """settings: the methods' (core.methods.checked_settings)."""
    if method in REFERENCE_METHODS:
        return reference_map(method, tuple(x.shape[-2:]), mask, seed)
    from core.pathway.engine import compute_map

    return compute_map(model, x, target, method, sparsity=sparsity, settings=settings)


def method_maps(model, x, target: int, methods, mask, seeds, sparsity: float, settings: dict | None = None) -> dict:
    """Every method's map of one image, or the UnsupportedMethod saying why not. The pathway
    methods share one engine: the neuron scores are computed once for all of them."""
    from core.pathway.engine import Engine

    maps, engine = {}, None
    for method, seed in zip(methods, seeds):
        try:
            if method in REFERENCE_METHODS or method in CLASSIC_METHODS:
                maps[method] = method_map(model, x, target, method, mask, seed, sparsity, settings)
                continue
            engine = engine or Engine.from_tensor(model, x, target, fold=False, settings=settings)
            maps[method] = engine.attribution(method, sparsity)
        except UnsupportedMethod as why:
            maps[method] = why
    return maps


def check_methods(methods, has_masks: bool) -> list[str]:
    methods = list(dict.fromkeys(methods))
    known = set(ALL_METHODS) | set(REFERENCE_METHODS)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UnsupportedMethod(f"unknown method(s) {', '.join(unknown)}: choose from "
                                f"{', '.join((*ALL_METHODS, *REFERENCE_METHODS))}")
    if "oracle" in methods and not has_masks:
        raise PruneScopeError("the oracle method needs ground-truth masks")
    if not methods:
        raise PruneScopeError("no methods to evaluate")
    return methods


def unsupported(methods, model) -> dict[str, str]:
    """Methods this model cannot run, with the reason (they are skipped, not failed)."""
    out = {}
    for method in methods:
        if method in ALL_METHODS:
            ok, why = supports(method, model)
            if not ok:
                out[method] = why
    return out
