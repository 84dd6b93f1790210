"""The `evaluate` job: every metric of every method over a dataset, and the sanity check."""
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from core.errors import reason
from core.evaluation import EXTRA_METRICS
from core.evaluation.faithfulness import (complexity, queue_confidence, queue_faithfulness, queue_road,
                                          sparseness)
from core.evaluation.forwards import Forwards
from core.evaluation.leaderboard import bootstrap_ci, rows as leaderboard_rows
from core.evaluation.metrics import (REFERENCE_METHODS, check_methods, item_seed, method_maps, pointing_game,
                                     ranking, relevance_mass, unsupported)
from core.evaluation.records import RecordStore
from core.evaluation.sources import Item, Source, prepare
from core.methods import DEFAULTS
from core.progress import Job, Progress, run
from core.runtime.distributed import SINGLE, Context, gather, gather_indexed, shard

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
    method_params: dict = field(default_factory=dict)  # the methods' settings (core.methods.checked_settings)


STAGES = ("maps", "curves", "road", "other metrics")


class _Clock:
    """Seconds spent per stage of one image: `with clock(stage):` adds the block's time."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - began)

    def add(self, stage: str, seconds: float) -> None:
        stage = stage if stage in STAGES else "other metrics"
        self.seconds[stage] += seconds


def evaluate_item(model, item: Item, methods, settings: BenchmarkSettings, keep_maps: bool) -> dict:
    """Every metric of every method for one image: the maps, then every perturbed input of every
    metric through the model in shared batches (core.evaluation.forwards). Seeds come from the
    image's name, so neither its place in the dataset nor the process that runs it matters."""
    clock = _Clock()
    with clock("maps"):
        prepared = prepare(model, item, settings.target)
        seeds = [item_seed(settings.seed, "map", item.name, m) for m in methods]
        maps = method_maps(model, prepared.x, prepared.target, methods, prepared.mask, seeds,
                           settings.sparsity, settings.method_params)
    record = {"name": item.name, "label": item.label, "target": prepared.target,
              "predicted": prepared.predicted,
              "mask_fraction": None if prepared.mask is None else float(prepared.mask.mean()),
              "methods": {m: {"skipped": str(maps[m])} for m in methods if isinstance(maps[m], Exception)},
              "maps": {}, "view": prepared.view if keep_maps else None,
              "mask": prepared.mask if keep_maps else None}
    ran = {m: np.asarray(a, np.float64) for m, a in maps.items() if not isinstance(a, Exception)}
    if ran:
        record["methods"].update(_scores(model, prepared, ran, settings, item.name, clock))
    record["methods"] = {m: record["methods"][m] for m in methods}  # in the order asked
    if keep_maps:
        record["maps"] = {m: a.astype(np.float32) for m, a in ran.items()}
    record["seconds"] = clock.seconds
    return record


def _scores(model, prepared, maps: dict, settings: BenchmarkSettings, name: str, clock: _Clock) -> dict:
    from core.pathway.curves import assemble_curves, baseline_image, curve_inputs, rank_image

    x, target, mask = prepared.x, prepared.target, prepared.mask
    values = {m: ranking(m, a) for m, a in maps.items()}
    stacked = torch.as_tensor(np.stack(list(values.values())), device=x.device)
    forwards = Forwards(model.module, target)
    finish = {}
    with clock("curves"):
        base = baseline_image(x, settings.baseline, model.mean, model.std)
        ends = forwards.queue_tensor("curves", base)  # once per image; the input's own is prepare's
        curve_rows = {}
        for m, v in values.items():
            counts, keep = curve_inputs(rank_image(v, tuple(x.shape[-2:]), device=x.device), settings.steps)
            rows = forwards.queue("curves", len(keep), lambda a, b, keep=keep: torch.where(keep[a:b], x, base))
            curve_rows[m] = (counts, rows)
    if "road" in settings.metrics:
        with clock("road"):
            seeds = [item_seed(settings.seed, "road", name, m) for m in values]
            finish["road"] = queue_road(forwards, x, stacked, seeds)
    with clock("other metrics"):
        if "confidence" in settings.metrics:
            finish["confidence"] = queue_confidence(forwards, x, stacked)
        if "faithfulness" in settings.metrics:
            seeds = [item_seed(settings.seed, "metrics", name, m) for m in values]
            finish["faithfulness"] = queue_faithfulness(forwards, x, stacked, seeds)
    out = forwards.run(x)
    for stage, seconds in out.seconds.items():
        clock.add(stage, seconds)
    own = prepared.logits[0].float()
    p_input, logit_input = float(torch.softmax(own, 0)[target]), float(own[target])
    p_base = float(out.probs[ends][0])
    with clock("other metrics"):
        done = {k: f(out, logit_input if k == "faithfulness" else p_input) for k, f in finish.items()}
        scores = {}
        for i, (m, v) in enumerate(values.items()):
            counts, rows = curve_rows[m]
            c = assemble_curves(counts, out.probs[rows], (p_input, p_base), settings.steps, settings.baseline)
            s = scores[m] = {"deletion_auc": c.deletion_auc, "insertion_auc": c.insertion_auc,
                             "deletion": c.deletion.tolist(), "insertion": c.insertion.tolist(),
                             "fractions": c.fractions.tolist()}
            if mask is not None:
                s["pointing_game"] = float(pointing_game(v, mask))
                s["relevance_mass"] = relevance_mass(v, mask)
            if "road" in done:
                s["road_morf"], s["road_lerf"] = done["road"][i]
            if "confidence" in done:
                s["average_drop"], s["increase_in_confidence"] = done["confidence"][i]
            if "faithfulness" in done:
                s["faithfulness_correlation"] = done["faithfulness"][i]
            if "complexity" in settings.metrics:
                s["sparseness"], s["complexity"] = sparseness(maps[m]), complexity(maps[m])
    return scores


def sanity_item(model, item: Item, methods, settings: BenchmarkSettings) -> dict:
    """Cascading randomisation for one image, seeded by the image."""
    from core.evaluation.sanity import iter_cascading_randomization
    from core.pathway.engine import compute_map

    prepared = prepare(model, item, settings.target)

    def explain(module, x_in, t, method):
        return compute_map(replace(model, module=module), x_in, t, method,
                           sparsity=settings.sparsity, settings=settings.method_params)

    result = run(iter_cascading_randomization(model.module, prepared.x, prepared.target, methods, explain,
                                              seed=item_seed(settings.seed, "sanity", item.name)))
    return {"name": item.name, "result": result, "view": prepared.view}


def run_settings(model, source: Source, settings: BenchmarkSettings) -> dict:
    """What an evaluation's records depend on: a rerun with any of them changed is refused."""
    return {"methods": list(settings.methods), "metrics": list(settings.metrics), "model": model.name,
            "weights": model.weights_hash(), "dataset": source.name, "labels": source.labels_key,
            "seed": settings.seed,
            "target": settings.target, "sparsity": settings.sparsity, "steps": settings.steps,
            "baseline": settings.baseline, "method_params": settings.method_params}


def iter_benchmark(model, source: Source, settings: BenchmarkSettings, ctx: Context = SINGLE,
                   store: RecordStore | None = None) -> Job[dict | None]:
    """Score every method on the source's first `settings.images` images, and run the sanity check
    on the first `settings.sanity_images`; this rank handles its share. With a store, each finished
    image is kept there at once and a finished one is read back instead of computed. Returns the
    merged results on rank 0, None on the other ranks."""
    methods = check_methods(settings.methods, source.has_masks)
    skipped = unsupported(methods, model)
    methods = [m for m in methods if m not in skipped]
    count = min(settings.images, source.count)
    sanity_count = min(settings.sanity_images, source.count)
    sanity_methods = [m for m in methods if m not in REFERENCE_METHODS]
    mine = shard(count, ctx)
    mine_sanity = shard(sanity_count, ctx) if sanity_methods else []
    tasks = [("image", i) for i in mine] + [("sanity", i) for i in mine_sanity]
    weight = {"image": 1, "sanity": 4}  # a sanity image costs several plain ones
    total = max(1, sum(weight[kind] for kind, _ in tasks))
    records, sanity, errors, stages = [], [], [], dict.fromkeys(STAGES, 0.0)
    done, computed, busy = 0, 0, 0.0  # work units (weight) computed, not read back, and their time
    images, image_seconds = 0, 0.0
    finished = {"image": 0, "sanity": 0}
    for (kind, i), loaded in zip(tasks, prefetched(source, [i for _, i in tasks])):
        began = time.perf_counter()
        try:
            item = _item(loaded)
            key = f"{kind}:{item.name}"
            record = store.get(key) if store else None
            if record is not None and kind == "image" and i < EXAMPLE_ITEMS and record["view"] is None:
                record = None  # kept without its maps (another selection), needed for the examples
            if record is None:
                if kind == "image":
                    record = evaluate_item(model, item, methods, settings, keep_maps=i < EXAMPLE_ITEMS)
                else:
                    record = sanity_item(model, item, sanity_methods, settings)
                if store:
                    store.put(key, record)
                spent = time.perf_counter() - began
                computed, busy = computed + weight[kind], busy + spent
                if kind == "image":
                    images, image_seconds = images + 1, image_seconds + spent
                    for stage, seconds in record["seconds"].items():
                        stages[stage] += seconds
            (records if kind == "image" else sanity).append((i, {**record, "index": i}))
        except Exception as err:  # one image failing (out of memory, say) spares the others
            errors.append((i, f"{'sanity check of ' if kind == 'sanity' else ''}image {i}: {reason(err)}"))
        done += weight[kind]
        finished[kind] += 1
        what = (f"image {finished[kind]}/{len(mine)}" if kind == "image"
                else f"sanity check {finished[kind]}/{len(mine_sanity)}")
        yield Progress(done / total, _with_eta(f"{what} done", done, total, computed, busy), partial=records)
    timing = {"images": images, "seconds": image_seconds, "stage_seconds": stages}
    records = gather_indexed(records, ctx)
    sanity = gather_indexed(sanity, ctx)
    errors = gather_indexed(errors, ctx)
    timings = gather(timing, ctx)
    if not ctx.is_main:
        return None
    result = summarise_benchmark(records, sanity, errors, methods, skipped, settings, source)
    result["timing"] = _merged_timing(timings)
    return result


def running_leaderboard(records: list, methods) -> dict:
    """The leaderboard of the images finished so far ((index, record) pairs, as iter_benchmark's
    progress carries them): means only, no intervals, cheap enough to redo at every image."""
    summary = {}
    for method in methods:
        scores = [r["methods"][method] for _, r in records
                  if method in r["methods"] and "skipped" not in r["methods"][method]]
        if scores:
            summary[method] = {key: mean for key in SCORES
                               if (mean := _mean_sem(s.get(key) for s in scores)[0]) is not None}
    metrics, rows = leaderboard_rows(summary)
    return {"metrics": metrics, "rows": rows, "images": len(records)}


def _item(loaded) -> Item:
    if isinstance(loaded, Exception):
        raise loaded
    return loaded


def prefetched(source: Source, indices):
    """source.load(i) for each index, the next image decoded on a thread while this one is
    computed (decoding releases the GIL); a failed load comes as its exception."""
    from concurrent.futures import ThreadPoolExecutor

    def load(i):
        try:
            return source.load(i)
        except Exception as err:
            return err

    with ThreadPoolExecutor(1, thread_name_prefix="prunescope-decode") as pool:
        pending = pool.submit(load, indices[0]) if indices else None
        for k in range(len(indices)):
            current = pending.result()
            pending = pool.submit(load, indices[k + 1]) if k + 1 < len(indices) else None
            yield current


def _with_eta(what: str, done: int, total: int, computed: int, busy: float) -> str:
    """'image 3/100 done, 2.4 s/image, ETA 3 min 55 s': the time per image measured on the images
    computed in this run (not those read back), the ETA from the work left."""
    if not computed:
        return what
    per = busy / computed
    return f"{what}, {per:.1f} s/image, ETA {_duration(per * (total - done))}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


def _merged_timing(timings: list[dict]) -> dict:
    """Time spent this run over all processes: images per second and seconds per stage."""
    images = sum(t["images"] for t in timings)
    seconds = max(t["seconds"] for t in timings)  # the processes work side by side
    stages = {s: sum(t["stage_seconds"][s] for t in timings) for s in STAGES}
    return {"images_computed": images, "seconds": seconds,
            "images_per_second": images / seconds if seconds > 0 else None,
            "seconds_per_image": {s: v / images for s, v in stages.items()} if images else None}


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
