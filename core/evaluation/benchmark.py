"""The `evaluate` job: every metric of every method over a dataset, and the sanity check."""
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from core.errors import UnsupportedMethod, reason
from core.evaluation import EXTRA_METRICS
from core.evaluation.faithfulness import complexity, confidence, faithfulness_correlation, road, sparseness
from core.evaluation.leaderboard import bootstrap_ci
from core.evaluation.metrics import (REFERENCE_METHODS, check_methods, item_seed, method_map, pointing_game,
                                     ranking, relevance_mass, unsupported)
from core.evaluation.sources import Item, Source, prepare
from core.methods import DEFAULTS
from core.progress import Job, Progress, run
from core.runtime.distributed import SINGLE, Context, gather_indexed, shard

DEFAULT_METHODS = DEFAULTS["evaluate"]
EXAMPLE_ITEMS = 4  # images whose maps are kept for the example grid
# Per-image scores averaged per method (those an image has: no mask, no pointing game).
SCORES = ("pointing_game", "relevance_mass", "deletion_auc", "insertion_auc", "road_morf", "road_lerf",
          "average_drop", "increase_in_confidence", "faithfulness_correlation", "sparseness", "complexity")


@dataclass
class BenchmarkSettings:
    methods: list[str] = field(default_factory=lambda: [*DEFAULT_METHODS, "random"])
    images: int = 100
    sanity_images: int = 4
    steps: int = 20
    baseline: str = "mean"
    sparsity: float = 70.0
    target: str = "label"  # or "predicted"
    seed: int = 0
    metrics: tuple = EXTRA_METRICS


def evaluate_item(model, item: Item, methods, settings: BenchmarkSettings, index: int,
                  keep_maps: bool) -> dict:
    """Every metric of every method for one image."""
    from core.pathway.curves import curves

    x, view, mask, target, predicted = prepare(model, item, settings.target)
    record = {"index": index, "name": item.name, "label": item.label, "target": target,
              "predicted": predicted, "mask_fraction": None if mask is None else float(mask.mean()),
              "methods": {}, "maps": {}, "view": view if keep_maps else None,
              "mask": mask if keep_maps else None}
    for method in methods:
        try:
            attr = method_map(model, x, target, method, mask,
                              item_seed(settings.seed, "map", index, method), settings.sparsity)
        except UnsupportedMethod as why:
            record["methods"][method] = {"skipped": str(why)}
            continue
        values = ranking(method, attr)
        c = curves(model.module, x, values, target, settings.steps, settings.baseline,
                   model.mean, model.std)
        scores = {"deletion_auc": c.deletion_auc, "insertion_auc": c.insertion_auc,
                  "deletion": c.deletion.tolist(), "insertion": c.insertion.tolist(),
                  "fractions": c.fractions.tolist()}
        if mask is not None:
            scores["pointing_game"] = float(pointing_game(values, mask))
            scores["relevance_mass"] = relevance_mass(values, mask)
        seed = item_seed(settings.seed, "metrics", index, method)
        if "road" in settings.metrics:
            scores["road_morf"], scores["road_lerf"] = road(model.module, x, values, target, seed)
        if "confidence" in settings.metrics:
            scores["average_drop"], scores["increase_in_confidence"] = confidence(model.module, x, values, target)
        if "faithfulness" in settings.metrics:
            scores["faithfulness_correlation"] = faithfulness_correlation(model.module, x, values, target, seed)
        if "complexity" in settings.metrics:
            scores["sparseness"], scores["complexity"] = sparseness(attr), complexity(attr)
        record["methods"][method] = scores
        if keep_maps:
            record["maps"][method] = np.asarray(attr, np.float32)
    return record


def sanity_item(model, item: Item, methods, settings: BenchmarkSettings, index: int) -> dict:
    """Cascading randomisation for one image, seeded by the image."""
    from core.evaluation.sanity import iter_cascading_randomization
    from core.pathway.engine import compute_map

    x, view, _, target, _ = prepare(model, item, settings.target)

    def explain(module, x_in, t, method):
        return compute_map(replace(model, module=module), x_in, t, method,
                           sparsity=settings.sparsity)

    result = run(iter_cascading_randomization(model.module, x, target, methods, explain,
                                              seed=item_seed(settings.seed, "sanity", index)))
    return {"index": index, "result": result, "view": view}


def iter_benchmark(model, source: Source, settings: BenchmarkSettings,
                   ctx: Context = SINGLE) -> Job[dict | None]:
    """Score every method on the first `settings.images` images, and run the sanity check on the
    first `settings.sanity_images`; this rank handles its share. Returns the merged results on
    rank 0, None on the other ranks."""
    methods = check_methods(settings.methods, source.has_masks)
    skipped = unsupported(methods, model)
    methods = [m for m in methods if m not in skipped]
    count = min(settings.images, source.count)
    sanity_count = min(settings.sanity_images, source.count)
    sanity_methods = [m for m in methods if m not in REFERENCE_METHODS]
    mine = shard(count, ctx)
    mine_sanity = shard(sanity_count, ctx) if sanity_methods else []
    work = max(1, len(mine) + 4 * len(mine_sanity))  # a sanity image costs several plain ones
    records, sanity, errors = [], [], []
    done = 0
    for i in mine:
        try:
            records.append((i, evaluate_item(model, source.load(i), methods, settings, i,
                                             keep_maps=i < EXAMPLE_ITEMS)))
        except Exception as err:  # one image failing (out of memory, say) spares the others
            errors.append((i, f"image {i}: {reason(err)}"))
        done += 1
        yield Progress(done / work, f"image {done}/{len(mine)}")
    for i in mine_sanity:
        try:
            sanity.append((i, sanity_item(model, source.load(i), sanity_methods, settings, i)))
        except Exception as err:
            errors.append((i, f"sanity check of image {i}: {reason(err)}"))
        done += 4
        yield Progress(done / work, f"sanity check {mine_sanity.index(i) + 1}/{len(mine_sanity)}")
    records = gather_indexed(records, ctx)
    sanity = gather_indexed(sanity, ctx)
    errors = gather_indexed(errors, ctx)
    if not ctx.is_main:
        return None
    return summarise_benchmark(records, sanity, errors, methods, skipped, settings, source)


def _mean_sem(values) -> tuple[float | None, float | None]:
    values = np.asarray([v for v in values if v is not None], np.float64)
    if not len(values):
        return None, None
    sem = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(values.mean()), sem


def summarise_benchmark(records, sanity, errors, methods, skipped, settings, source) -> dict:
    """Per-method means (with standard errors) over the images, in the order they were given."""
    summary, curves_out = {}, {}
    for method in methods:
        scores = [r["methods"][method] for r in records
                  if method in r["methods"] and "skipped" not in r["methods"][method]]
        if not scores:
            reasons = {r["methods"][method].get("skipped") for r in records if method in r["methods"]}
            skipped[method] = next(iter(reasons - {None}), "no image could be evaluated")
            continue
        entry = {"images": len(scores)}
        for key in SCORES:
            mean, sem = _mean_sem(s.get(key) for s in scores)
            if mean is not None:
                entry[key], entry[f"{key}_sem"] = mean, sem
                entry[f"{key}_ci"] = bootstrap_ci([s.get(key) for s in scores], settings.seed)
        summary[method] = entry
        curves_out[method] = {
            "fractions": scores[0]["fractions"],
            "deletion": np.mean([s["deletion"] for s in scores], axis=0).tolist(),
            "insertion": np.mean([s["insertion"] for s in scores], axis=0).tolist()}
    sanity_out = None
    if sanity:
        results = [s["result"] for s in sanity]
        first = results[0]
        sanity_out = {"images": [s["index"] for s in sanity], "blocks": first.blocks,
                      "steps": first.steps,
                      "spearman": {m: np.mean([r.spearman[m] for r in results], 0).tolist()
                                   for m in first.methods},
                      "ssim": {m: np.mean([r.ssim[m] for r in results], 0).tolist()
                               for m in first.methods}}
        for method in first.methods:
            if method in summary:
                summary[method]["sanity_spearman"] = sanity_out["spearman"][method][-1]
                summary[method]["sanity_ssim"] = sanity_out["ssim"][method][-1]
    fractions = [r["mask_fraction"] for r in records if r["mask_fraction"] is not None]
    # labels are in the model's classes only when they are what is explained
    labelled = [r for r in records if r["label"] is not None and settings.target == "label"]
    return {
        "dataset": source.name,
        "settings": asdict(settings),
        "images": len(records),
        "accuracy": (float(np.mean([r["label"] == r["predicted"] for r in labelled]))
                     if labelled else None),
        # a random pixel's chance of landing on the object: the pointing game's chance level
        "chance_pointing": float(np.mean(fractions)) if fractions else None,
        "methods": summary,
        "skipped": skipped,
        "curves": curves_out,
        "sanity": sanity_out,
        "items": [{"index": r["index"], "name": r["name"], "label": r["label"],
                   "target": r["target"], "predicted": r["predicted"],
                   "scores": {m: {k: v for k, v in s.items()
                                  if k not in ("deletion", "insertion", "fractions")}
                              for m, s in r["methods"].items()}} for r in records],
        "errors": errors,
        # not JSON: arrays for the figures
        "examples": [{"name": r["name"], "view": r["view"], "mask": r["mask"], "maps": r["maps"],
                      "target": r["target"]} for r in records if r["view"] is not None],
        "sanity_example": ({"result": sanity[0]["result"], "view": sanity[0]["view"]}
                           if sanity else None),
    }
