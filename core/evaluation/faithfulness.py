"""More faithfulness and complexity metrics: ROAD, Average Drop and Increase in Confidence (as
pytorch-grad-cam's metrics), faithfulness correlation, sparseness and complexity.

The forward-based metrics queue their inputs into a Forwards (core.evaluation.forwards) for any
number of maps at once, so that one image's metrics share batches; road(), confidence() and
faithfulness_correlation() run one map on its own.

`values` are the maps as ranked (core.methods.ranked: higher = more relevant); the complexity
metrics read the raw map's magnitude. Removed pixels become 0 in normalised space (the dataset
mean) where the metric does not impute them itself.
"""
import numpy as np
import torch

from core.evaluation import road as imputation
from core.evaluation.forwards import Forwards, Outputs

# Imputed values solved at once. On a CPU the solver's vectors must stay in its caches: one map
# (8 masks x 3 channels at 224 px, 5 MB a vector) took 0.09 s a map alone, 0.25 s six at a time.
ROAD_VALUES_PER_SOLVE = {"cpu": 1 << 20, "cuda": 1 << 25}
CORRELATION_RUNS = 40
CORRELATION_SUBSET = 1 / 224  # share of the pixels each run removes: 224 at 224 px, as Quantus


def _maps(values, device) -> torch.Tensor:
    """M x H x W float64 on the device, from one map or several."""
    maps = torch.as_tensor(values if torch.is_tensor(values) else np.asarray(values, np.float64),
                           dtype=torch.float64, device=device)
    return maps[None] if maps.ndim == 2 else maps


def queue_road(forwards: Forwards, x: torch.Tensor, values, seeds, noise: float = imputation.NOISE):
    """ROAD (Rong et al., ICML 2022) with pytorch-grad-cam's noisy linear imputation and its
    most/least-relevant-first removal: the change in the target's probability after the most
    (MoRF, lower is better) and the least (LeRF, higher is better) relevant pixels are imputed,
    averaged over the percentiles. The imputations run on the device (core.evaluation.road),
    several maps at once, each map's noise from its own seed. Returns finish(outputs, p_input)
    -> [(morf, lerf)] per map."""
    maps = _maps(values, x.device)
    keep = imputation.kept_pixels(imputation.unit(maps))  # M x 2 x P x H x W
    per_map = 2 * len(imputation.PERCENTILES) * x[0].numel()
    chunk = max(1, ROAD_VALUES_PER_SOLVE.get(x.device.type, 1 << 20) // per_map)
    generators = [torch.Generator(x.device).manual_seed(seed) for seed in seeds]
    imputed = torch.cat([imputation.impute(x[0], keep[i:i + chunk].flatten(0, 2), noise, generators[i:i + chunk])
                         for i in range(0, len(maps), chunk)])
    rows = forwards.queue_tensor("road", imputed)

    def finish(out: Outputs, p_input: float) -> list[tuple[float, float]]:
        changes = (out.probs[rows] - p_input).reshape(len(maps), 2, -1).mean(2)
        return [(float(morf), float(lerf)) for morf, lerf in changes]

    return finish


def queue_confidence(forwards: Forwards, x: torch.Tensor, values):
    """Average Drop (%) and Increase in Confidence (0 or 1) of Chattopadhay et al. (WACV 2018):
    the input multiplied by the map scaled to 0..1, as pytorch-grad-cam's
    CamMultImageConfidenceChange makes it; its target probability O against the input's Y:
    100 max(0, Y - O) / Y, and O > Y. Returns finish(outputs, p_input) -> [(drop, increase)]."""
    cams = imputation.unit(_maps(values, x.device)).to(x.dtype)
    rows = forwards.queue("confidence", len(cams), lambda a, b: x * cams[a:b, None])

    def finish(out: Outputs, y: float) -> list[tuple[float, float]]:
        return [(100.0 * max(0.0, y - float(o)) / max(y, 1e-12), float(o > y)) for o in out.probs[rows]]

    return finish


def queue_faithfulness(forwards: Forwards, x: torch.Tensor, values, seeds, runs: int = CORRELATION_RUNS):
    """Faithfulness correlation (Bhatt et al., IJCAI 2020), as Quantus defines it: over random
    pixel subsets, the Pearson correlation between the map's sum on the subset and the drop of
    the target's logit when the subset is removed (here to the dataset mean; Quantus's default
    is black). Written here because Quantus cannot be a dependency (README) and runs one forward
    per subset. One seed per map; returns finish(outputs, logit_input) -> [correlation]."""
    maps = _maps(values, x.device)
    height, width = maps.shape[-2:]
    size = max(1, round(height * width * CORRELATION_SUBSET))
    subsets = np.stack([np.stack([rng.choice(height * width, size, replace=False) for _ in range(runs)])
                        for rng in (np.random.default_rng(seed) for seed in seeds)])
    subsets = torch.as_tensor(subsets, device=x.device)  # M x runs x size
    sums = maps.flatten(1).gather(1, subsets.flatten(1)).view(len(maps), runs, size).sum(2)
    flat = subsets.flatten(0, 1)

    def build(a: int, b: int) -> torch.Tensor:
        keep = torch.ones(b - a, height * width, device=x.device, dtype=x.dtype)
        keep.scatter_(1, flat[a:b], 0.0)
        return x * keep.view(-1, 1, height, width)

    rows = forwards.queue("faithfulness", len(maps) * runs, build)

    def finish(out: Outputs, logit: float) -> list[float]:
        drops = (logit - out.logits[rows]).reshape(len(maps), runs)
        return [_pearson(s, d) for s, d in zip(sums.cpu().numpy(), drops)]

    return finish


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _one_map(module, x: torch.Tensor, target: int, queue) -> tuple:
    """One metric of one map: its rows beside the input's own forward."""
    forwards = Forwards(module, target)
    own = forwards.queue_tensor("input", x)
    finish = queue(forwards)
    out = forwards.run(x)
    return finish, out, own


def road(module, x: torch.Tensor, values: np.ndarray, target: int, seed: int = 0,
         noise: float = imputation.NOISE) -> tuple[float, float]:
    finish, out, own = _one_map(module, x, target, lambda f: queue_road(f, x, values, [seed], noise))
    return finish(out, float(out.probs[own][0]))[0]


def confidence(module, x: torch.Tensor, values: np.ndarray, target: int) -> tuple[float, float]:
    finish, out, own = _one_map(module, x, target, lambda f: queue_confidence(f, x, values))
    return finish(out, float(out.probs[own][0]))[0]


def faithfulness_correlation(module, x: torch.Tensor, values: np.ndarray, target: int, seed: int = 0,
                             runs: int = CORRELATION_RUNS) -> float:
    finish, out, own = _one_map(module, x, target, lambda f: queue_faithfulness(f, x, values, [seed], runs))
    return finish(out, float(out.logits[own][0]))[0]


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
