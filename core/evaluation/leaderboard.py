"""The leaderboard: one row per method, one column per metric (the mean over images), a 95 %
bootstrap interval beside each, and a rank from the mean of the per-metric ranks."""
import csv
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

# Whether a higher value of the metric is better.
HIGHER_IS_BETTER = {
    "pointing_game": True, "relevance_mass": True, "deletion_auc": False, "insertion_auc": True,
    "road_morf": False, "road_lerf": True, "average_drop": False, "increase_in_confidence": True,
    "faithfulness_correlation": True, "sparseness": True, "complexity": False,
    "sanity_spearman": False,  # a map that survives randomising the model says little about it
}
BOOTSTRAP = 1000


def bootstrap_ci(values, seed: int = 0) -> list[float] | None:
    """95 % percentile bootstrap interval of the mean, resampling images."""
    values = np.asarray([v for v in values if v is not None], np.float64)
    if not len(values):
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (BOOTSTRAP, len(values)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def rows(methods: dict) -> tuple[list[str], list[dict]]:
    """The metrics every ranked method has, and one row per method (best rank first): its
    name, each metric's mean and interval, and `rank`. Methods tied on their mean rank share it."""
    metrics = [m for m in HIGHER_IS_BETTER if any(m in entry for entry in methods.values())]
    names = list(methods)
    per_metric = {}  # metric -> each method's rank on it, 1 is best, ties share (a missing value is last)
    for metric in metrics:
        scores = np.array([_value(methods[n].get(metric)) for n in names], np.float64)
        signed = -scores if HIGHER_IS_BETTER[metric] else scores
        per_metric[metric] = rankdata(np.where(np.isnan(signed), np.inf, signed), method="min")
    mean_rank = sum(per_metric.values(), np.zeros(len(names))) / max(1, len(metrics))
    table = []
    for i, (name, score) in enumerate(zip(names, mean_rank)):
        row = {"method": name}
        for metric in metrics:
            row[metric] = methods[name].get(metric)
            row[f"{metric}_ci"] = methods[name].get(f"{metric}_ci")
        row["ranks"] = {metric: int(per_metric[metric][i]) for metric in metrics}
        row["mean_rank"] = float(score)
        row["rank"] = 1 + int(np.sum(mean_rank < score))
        table.append(row)
    table.sort(key=lambda r: (r["rank"], r["method"]))
    return metrics, table


def _value(value) -> float:
    return np.nan if value is None else float(value)


def write_csv(path, metrics: list[str], table: list[dict]) -> Path:
    path = Path(path)
    columns = ["method", *(c for m in metrics for c in (m, f"{m}_ci")), "mean_rank", "rank"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in table:
            writer.writerow([_cell(row.get(c)) for c in columns])
    return path


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return f"[{value[0]:.4f}, {value[1]:.4f}]"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
