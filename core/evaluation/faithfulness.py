"""More faithfulness and complexity metrics of one map: ROAD, Average Drop and Increase in
Confidence (from pytorch-grad-cam's metrics), faithfulness correlation, sparseness and complexity.

`values` are the map as ranked (core.evaluation.metrics.ranking: higher = more relevant); the
complexity metrics read the raw map's magnitude. Removed pixels become 0 in normalised space (the
dataset mean) where the metric does not impute them itself.
"""
import numpy as np
import torch

from core.runtime.device import seeded

ROAD_PERCENTILES = (20, 40, 60, 80)  # the library's default is 10..90 by 10: half the solves
CORRELATION_RUNS = 40
CORRELATION_SUBSET = 1 / 224  # share of the pixels each run removes: 224 at 224 px, as Quantus


def unit(values: np.ndarray) -> np.ndarray:
    """Min-max to 0..1 (a flat map is all 0): what CAM-style metrics take as a map."""
    values = np.asarray(values, np.float64)
    span = values.max() - values.min()
    return np.zeros_like(values, np.float32) if span <= 0 else ((values - values.min()) / span).astype(np.float32)


def road(module, x: torch.Tensor, values: np.ndarray, target: int, seed: int = 0) -> tuple[float, float]:
    """ROAD (Rong et al., ICML 2022) with pytorch-grad-cam's noisy linear imputation and its
    most/least-relevant-first removal: the change in the target's probability after the most
    (MoRF, lower is better) and the least (LeRF, higher is better) relevant pixels are imputed,
    averaged over ROAD_PERCENTILES. The library's ROAD*Average classes run two forwards per
    percentile; here the imputed images go through one batched forward (the imputations, a
    sparse solve each, are most of the cost)."""
    from pytorch_grad_cam.metrics.perturbation_confidence import (RemoveLeastRelevantFirst,
                                                                  RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    cam, image = torch.from_numpy(unit(values)), x.detach()[0].cpu()
    imputer = NoisyLinearImputer()
    with seeded(seed):  # the imputation's noise
        imputed = [removal(p, imputer)(image, cam)
                   for removal in (RemoveMostRelevantFirst, RemoveLeastRelevantFirst) for p in ROAD_PERCENTILES]
    with torch.no_grad():
        probs = torch.softmax(module(torch.stack([image, *imputed]).to(x.device)).float(), dim=1)[:, target]
    changes = (probs[1:] - probs[0]).cpu().numpy()
    half = len(ROAD_PERCENTILES)
    return float(changes[:half].mean()), float(changes[half:].mean())


def confidence(module, x: torch.Tensor, values: np.ndarray, target: int) -> tuple[float, float]:
    """Average Drop (%) and Increase in Confidence (0 or 1) of Chattopadhay et al. (WACV 2018):
    the input multiplied by the map scaled to 0..1 (pytorch-grad-cam's CamMultImageConfidenceChange),
    its target probability O against the input's Y: 100 max(0, Y - O) / Y, and O > Y."""
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    targets = [ClassifierOutputSoftmaxTarget(target)]
    with torch.no_grad():
        y = float(torch.softmax(module(x).float(), dim=1)[0, target])
    # return_diff=False: O alone, so that the input's own forward (for Y) runs once, not twice
    o = float(CamMultImageConfidenceChange()(x.detach(), unit(values)[None], targets, module,
                                             return_diff=False)[0])
    return 100.0 * max(0.0, y - o) / max(y, 1e-12), float(o > y)


def faithfulness_correlation(module, x: torch.Tensor, values: np.ndarray, target: int, seed: int = 0,
                             runs: int = CORRELATION_RUNS, batch: int = 40) -> float:
    """Faithfulness correlation (Bhatt et al., IJCAI 2020), as Quantus defines it: over random
    pixel subsets, the Pearson correlation between the map's sum on the subset and the drop of
    the target's logit when the subset is removed (here to the dataset mean; Quantus's default
    is black). Written here because Quantus cannot be a dependency (README); the forwards are
    batched, where Quantus runs one per subset."""
    height, width = values.shape
    size = max(1, round(height * width * CORRELATION_SUBSET))
    rng = np.random.default_rng(seed)
    subsets = np.stack([rng.choice(height * width, size, replace=False) for _ in range(runs)])
    flat = np.asarray(values, np.float64).reshape(-1)
    sums = flat[subsets].sum(1)
    drops = []
    with torch.no_grad():
        base = float(module(x)[0, target])
        for start in range(0, runs, batch):
            chunk = subsets[start:start + batch]
            keep = torch.ones(len(chunk), height * width, device=x.device, dtype=x.dtype)
            keep[np.arange(len(chunk))[:, None], torch.as_tensor(chunk)] = 0
            out = module(x * keep.view(-1, 1, height, width))[:, target]
            drops.extend((base - out.float()).cpu().tolist())
    drops = np.asarray(drops)
    if sums.std() == 0 or drops.std() == 0:
        return 0.0
    return float(np.corrcoef(sums, drops)[0, 1])


def sparseness(attr_map: np.ndarray) -> float:
    """Gini index of |map| (Chalasani et al., ICML 2020), as Quantus computes it: 1 when one
    pixel holds everything, near 0 when all hold the same."""
    a = np.sort(_magnitude(attr_map) + 1e-7)
    n = a.size
    return float(((2 * np.arange(1, n + 1) - n - 1) * a).sum() / (n * a.sum()))


def complexity(attr_map: np.ndarray) -> float:
    """Entropy of |map| as a distribution over pixels (Bhatt et al. 2020), as Quantus computes it:
    lower is a simpler explanation."""
    a = _magnitude(attr_map)
    total = a.sum()
    if total == 0:
        return float(np.log(a.size))
    p = a / total
    return float(-(p * np.log(p + 1e-12)).sum())


def _magnitude(attr_map: np.ndarray) -> np.ndarray:
    a = np.abs(np.asarray(attr_map, np.float64)).reshape(-1)
    top = a.max()
    return a / top if top > 0 else a  # Quantus normalises by the maximum first
