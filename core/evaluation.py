"""How good are the explanations? Ground-truth metrics, the benchmark job, and ROAR.

Maps are ranked as the engine ranks them for its curves (`Engine._ranking`): by magnitude for
methods whose sign carries no evidence (gradient, SmoothGrad, guided backprop, pathway gradient),
signed otherwise, so "most relevant" means most positive evidence. Two reference maps need no
model: "random" (uniform noise, seeded per image) and "oracle" (the ground-truth mask, ties inside
it broken at random), the floor and the ceiling of every metric.

Everything is computed per item (image, or ROAR's method x fraction job) with a seed derived from
the item alone, so sharding items over processes (core.distributed) cannot change a result.
"""
import hashlib
import json
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core.distributed import SINGLE, Context, barrier, broadcast, gather_indexed, shard
from core.errors import PruneScopeError, UnsupportedMethod, reason
from core.methods import ALL_METHODS, DEFAULTS, supports
from core.progress import Job, Progress, run, scaled

REFERENCE_METHODS = ("random", "oracle")
DEFAULT_METHODS = DEFAULTS["evaluate"]
EXAMPLE_ITEMS = 4  # images whose maps are kept for the example grid


# ---- metrics -------------------------------------------------------------------------------

def ranking(method: str, attr_map: np.ndarray) -> np.ndarray:
    """The values pixels are ranked by (higher = more relevant), as the engine ranks them."""
    from core.engine import Engine

    return np.asarray(Engine._ranking(method, np.asarray(attr_map, np.float64)), np.float64)


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


def reference_map(method: str, shape, mask: np.ndarray | None, seed: int) -> np.ndarray:
    """'random': uniform noise; 'oracle': 0 outside the ground truth, 1 to 2 inside (at random,
    so the object's pixels are ordered at random among themselves)."""
    noise = np.random.default_rng(seed).random(shape)
    if method == "random":
        return noise
    if mask is None:
        raise PruneScopeError("the oracle map needs ground-truth masks")
    return np.asarray(mask, np.float64) * (1 + noise)


# ---- what to evaluate ----------------------------------------------------------------------

@dataclass
class Item:
    rgb: np.ndarray            # H x W x 3 uint8, as stored (the model's preprocess is applied)
    label: int | None          # class index, None when unknown
    mask: np.ndarray | None    # H x W bool ground truth, None when unknown
    name: str


@dataclass
class Source:
    """Evaluation images, loaded one at a time by index (so each rank loads only its own)."""
    name: str
    count: int
    load: Callable[[int], Item]
    has_masks: bool
    class_names: list[str] | None = None  # the dataset's classes, in label order


def synthetic_source(config, split: str = "test", count: int | None = None) -> Source:
    from core.synthetic import make_item

    count = getattr(config, split) if count is None else min(count, getattr(config, split))

    def load(i: int) -> Item:
        rgb, label, mask = make_item(config, split, i)
        return Item(rgb, label, mask, f"{split}/{i}")

    return Source(f"synthetic {split}", count, load, True, config.class_names)


def folder_source(root, masks=None, limit: int | None = None, class_names=None) -> Source:
    """An ImageFolder: root/<class>/<image>, classes in sorted order (torchvision's convention),
    or, when every folder is named by one of `class_names` (or its id), those classes' ids;
    a folder of images without class folders has no labels. Masks, when given, are images at
    masks/<class>/<image stem>.png (any size and mode; pixels >= 128 are the object)."""
    from core.images import class_id, list_images, load_image

    root = Path(root)
    if not root.is_dir():
        raise PruneScopeError(f"{root}: no such dataset folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and list_images(p))
    ids = {c: i for i, c in enumerate(classes)}
    if class_names and all(class_id(c, class_names) is not None for c in classes):
        ids = {c: class_id(c, class_names) for c in classes}
    entries = [(path, ids[c]) for c in classes for path in list_images(root / c)]
    if not classes:
        entries = [(path, None) for path in list_images(root)]
    if not entries:
        raise PruneScopeError(f"{root}: no images (expected {root}/<class>/<image> files)")
    entries = entries[:limit] if limit else entries
    mask_root = Path(masks) if masks else None
    if mask_root is not None and not mask_root.is_dir():
        raise PruneScopeError(f"{mask_root}: no such mask folder")

    def load(i: int) -> Item:
        path, label = entries[i]
        mask = None
        if mask_root is not None:
            rel = path.relative_to(root).with_suffix(".png")
            mask_path = mask_root / rel
            if not mask_path.is_file():
                from core.errors import ImageError

                raise ImageError(f"{path}: no mask at {mask_path}")
            mask = load_image(mask_path).max(axis=2) >= 128
        return Item(load_image(path), label, mask, str(path.relative_to(root)))

    in_order = classes if ids == {c: i for i, c in enumerate(classes)} else None  # else the model's
    return Source(str(root), len(entries), load, mask_root is not None, in_order or None)


def prepare(model, item: Item, target_rule: str):
    """The model input, the view, the view-aligned mask, and the class to explain."""
    x, view = model.preprocess(item.rgb)
    mask = None
    if item.mask is not None:
        if item.mask.shape != item.rgb.shape[:2]:
            raise PruneScopeError(f"{item.name}: mask is {item.mask.shape[1]}x{item.mask.shape[0]}, "
                                  f"image is {item.rgb.shape[1]}x{item.rgb.shape[0]}")
        # the same resize and crop as the image, so the mask stays aligned with the view
        _, mask_view = model.preprocess(np.repeat(item.mask[..., None].astype(np.uint8) * 255, 3, 2))
        mask = mask_view[..., 0] >= 128
    with torch.no_grad():
        predicted = int(model.module(x).argmax(1).item())
    if target_rule == "label":
        if item.label is None:
            raise PruneScopeError(f"{item.name}: no class folder, so no label to explain")
        if item.label >= len(model.class_names):
            raise PruneScopeError(f"{item.name}: label {item.label} is not one of the model's "
                                  f"{len(model.class_names)} classes")
        target = int(item.label)
    else:
        target = predicted
    return x, view, mask, target, predicted


def method_map(model, x, target: int, method: str, mask, seed: int, sparsity: float) -> np.ndarray:
    if method in REFERENCE_METHODS:
        return reference_map(method, tuple(x.shape[-2:]), mask, seed)
    from core.engine import compute_map

    return compute_map(model, x, target, method, sparsity=sparsity)


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


# ---- the benchmark -------------------------------------------------------------------------

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


def evaluate_item(model, item: Item, methods, settings: BenchmarkSettings, index: int,
                  keep_maps: bool) -> dict:
    """Every metric of every method for one image."""
    from core.perturbation import curves

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
        record["methods"][method] = scores
        if keep_maps:
            record["maps"][method] = np.asarray(attr, np.float32)
    return record


def sanity_item(model, item: Item, methods, settings: BenchmarkSettings, index: int) -> dict:
    """Cascading randomisation for one image, seeded by the image."""
    from core.engine import compute_map
    from core.sanity import iter_cascading_randomization

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
        for key in ("pointing_game", "relevance_mass", "deletion_auc", "insertion_auc"):
            mean, sem = _mean_sem(s.get(key) for s in scores)
            if mean is not None:
                entry[key], entry[f"{key}_sem"] = mean, sem
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


# ---- ROAR ----------------------------------------------------------------------------------

@dataclass
class RoarSettings:
    methods: list[str] = field(default_factory=lambda: ["gradient", "grad-cam", "pathway-gradient"])
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    epochs: int = 8
    batch_size: int = 32
    lr: float = 0.05
    sparsity: float = 70.0
    target: str = "label"
    seed: int = 0


def fingerprint(*arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def model_fingerprint(module: torch.nn.Module) -> str:
    return fingerprint(*(t.detach().cpu().numpy() for t in module.state_dict().values()))


def iter_cached_maps(model, images: np.ndarray, labels: np.ndarray, masks, split: str, method: str,
                     settings: RoarSettings, folder: Path, key: str,
                     ctx: Context = SINGLE) -> Job[np.ndarray]:
    """The ranking values of `method` for every image of a split, computed once and kept in
    folder/<method>.<split>.npy (float16, each map scaled by its largest magnitude). Reused while
    the key (model, data, settings) matches. Ranks fill their rows of one shared file."""
    path = folder / f"{method}.{split}.npy"
    meta = path.with_suffix(".json")
    cached = meta.is_file() and path.is_file() and json.loads(meta.read_text()).get("key") == key
    if broadcast(cached, ctx):  # rank 0 decides, so no rank computes while others read
        return np.load(path)
    shape = (len(images), *images.shape[1:3])
    if ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        meta.unlink(missing_ok=True)
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape).flush()
    barrier(ctx)
    out = np.lib.format.open_memmap(path, mode="r+")
    mine = shard(len(images), ctx)
    for n, i in enumerate(mine):
        x, _ = model.preprocess(images[i])
        target = int(labels[i]) if settings.target == "label" else _predicted(model, x)
        mask = None if masks is None else masks[i]
        attr = method_map(model, x, target, method, mask,
                          item_seed(settings.seed, "roar-map", split, i, method), settings.sparsity)
        values = ranking(method, attr)
        top = np.abs(values).max()
        out[i] = values / top if top > 0 else values
        if n % 16 == 15 or n == len(mine) - 1:
            yield Progress((n + 1) / len(mine), f"{method} maps, {split} {n + 1}/{len(mine)}")
    out.flush()
    del out
    barrier(ctx)
    if ctx.is_main:
        meta.write_text(json.dumps({"key": key}))
    return np.load(path)


def load_dataset(model, source: Source, rows, target_rule: str) -> "Dataset":
    """Items of a source as a core.synthetic.Dataset of what the model sees (views at its input
    size, aligned masks); labels are the classes the retrained models learn."""
    from core.synthetic import Dataset

    views, labels, masks = [], [], []
    for i in rows:
        item = source.load(i)
        x, view, mask, target, _ = prepare(model, item, target_rule)
        views.append(view)
        labels.append(target if item.label is None else item.label)
        masks.append(mask)
    has_masks = all(m is not None for m in masks)
    return Dataset(np.stack(views), np.asarray(labels, np.int64),
                   np.stack(masks) if has_masks else None, source.class_names or [],
                   np.asarray(list(rows), np.int64))


def _predicted(model, x) -> int:
    with torch.no_grad():
        return int(model.module(x).argmax(1).item())


def remove_top(images: np.ndarray, values: np.ndarray, fraction: float, fill: np.ndarray,
               seed: int, split: str) -> np.ndarray:
    """Copy of images with each one's top `fraction` of pixels by value set to `fill`.
    Ties are broken at random, seeded per image."""
    out = images.copy()
    n_pixels = images.shape[1] * images.shape[2]
    k = int(round(fraction * n_pixels))
    if k == 0:
        return out
    for i in range(len(images)):
        tie = np.random.default_rng(item_seed(seed, "tie", split, i)).random(n_pixels)
        order = np.lexsort((tie, -values[i].astype(np.float64).ravel()))
        flat = out[i].reshape(n_pixels, 3)
        flat[order[:k]] = fill
    return out


def roar_job(make_fresh, train, test, train_values, test_values, fraction: float, fill,
             settings: RoarSettings, mean, std, device) -> float:
    """Retrain a fresh model on the training images with `fraction` of their most relevant pixels
    removed, and return its accuracy on the test images treated the same way."""
    from core.synthetic import TrainConfig, accuracy, iter_train

    if fraction > 0:
        train = replace(train, images=remove_top(train.images, train_values, fraction, fill,
                                                 settings.seed, "train"))
        test = replace(test, images=remove_top(test.images, test_values, fraction, fill,
                                               settings.seed, "test"))
    # every job starts from the same weights and batch order: only the removed pixels differ
    module = make_fresh(settings.seed)
    config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                         seed=settings.seed)
    module = run(iter_train(module, train.images, train.labels, mean, std, config, device))
    return accuracy(module, test, mean, std, device)


def iter_roar(model, make_fresh, train, test, settings: RoarSettings, folder: Path,
              data_key: str, ctx: Context = SINGLE) -> Job[dict | None]:
    """ROAR (Hooker et al. 2019). train/test are core.synthetic.Dataset at the model's input size
    (labels = the classes to learn); make_fresh(seed) builds an untrained model. Maps come from
    `model` (the original, trained one) and are cached in `folder`; (method, fraction) jobs are
    shared out over ranks. Returns the table on rank 0, None elsewhere."""
    has_masks = train.masks is not None and test.masks is not None
    methods = check_methods(settings.methods, has_masks)
    skipped = unsupported(methods, model)
    methods = [m for m in methods if m not in skipped]
    if "random" not in methods:
        methods.append("random")  # the baseline every method must beat
    fractions = sorted(set(settings.fractions))
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise PruneScopeError("ROAR fractions must be percentages between 0 and 100 (exclusive)")
    if len(train) < 2 or len(test) < 1:
        raise PruneScopeError("ROAR needs at least 2 training and 1 test image")
    key = json.dumps({"model": model_fingerprint(model.module), "data": data_key,
                      "sparsity": settings.sparsity, "target": settings.target,
                      "seed": settings.seed})
    values = {}
    map_methods = [m for m in methods if m not in REFERENCE_METHODS]
    n_stages = 2 * len(map_methods) + 1
    for s, method in enumerate(map_methods):
        for half, data in enumerate((train, test)):
            split = ("train", "test")[half]
            stage = 2 * s + half
            try:
                values[method, split] = yield from scaled(
                    iter_cached_maps(model, data.images, data.labels, data.masks, split, method,
                                     settings, folder, key, ctx),
                    stage / n_stages, (stage + 1) / n_stages)
            except UnsupportedMethod as why:
                skipped[method] = str(why)
                break
    methods = [m for m in methods if m not in skipped]
    for method in REFERENCE_METHODS:
        if method in methods:
            for split, data in (("train", train), ("test", test)):
                values[method, split] = np.stack([
                    reference_map(method, data.images.shape[1:3],
                                  None if data.masks is None else data.masks[i],
                                  item_seed(settings.seed, "roar-map", split, i, method))
                    for i in range(len(data))])
    fill = np.round(train.images.reshape(-1, 3).mean(0)).astype(np.uint8)
    mean = tuple(float(v) for v in model.mean)
    std = tuple(float(v) for v in model.std)
    jobs = [(None, 0.0)] + [(m, f) for m in methods for f in fractions]
    mine = shard(len(jobs), ctx)
    results = []
    for n, j in enumerate(mine):
        method, fraction = jobs[j]
        yield Progress((2 * len(map_methods) + n / len(mine)) / n_stages,
                       f"retraining {n + 1}/{len(mine)}: "
                       f"{method or 'unchanged data'} {fraction:.0%}")
        started = time.perf_counter()
        acc = roar_job(make_fresh, train, test,
                       values.get((method, "train")), values.get((method, "test")),
                       fraction, fill, settings, mean, std, model.device)
        results.append((j, {"method": method, "fraction": fraction, "accuracy": acc,
                            "seconds": time.perf_counter() - started}))
    yield Progress(1.0, "retraining done")
    results = gather_indexed(results, ctx)
    if not ctx.is_main:
        return None
    base = results[0]["accuracy"]
    table = {}
    for method in methods:
        accs = [r["accuracy"] for r in results[1:] if r["method"] == method]
        xs, ys = [0.0, *fractions], [base, *accs]
        table[method] = {"fractions": xs, "accuracy": ys, "auc": float(np.trapezoid(ys, xs))}
    return {"settings": asdict(settings), "train_images": len(train), "test_images": len(test),
            "unchanged_accuracy": base, "methods": table, "skipped": skipped,
            "jobs": [{k: v for k, v in r.items() if k != "seconds"} for r in results],
            "job_seconds": [r["seconds"] for r in results]}
