"""RemOve And Retrain (Hooker et al. 2019): the accuracy of models retrained without each method's
most relevant pixels."""
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from core.errors import PruneScopeError, UnsupportedMethod
from core.evaluation.metrics import (REFERENCE_METHODS, check_methods, item_seed, method_map, ranking,
                                     reference_map, unsupported)
from core.evaluation.records import RecordStore
from core.methods import DEFAULTS, PATHWAY_METHODS
from core.models.weights import model_fingerprint
from core.progress import Job, Progress, run, scaled
from core.runtime.distributed import SINGLE, Context, barrier, broadcast, gather_indexed, shard


@dataclass
class RoarSettings:
    methods: list[str] = field(default_factory=lambda: list(DEFAULTS["roar"]))
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    epochs: int = 8
    batch_size: int = 32
    lr: float = 0.05
    sparsity: float = 70.0
    target: str = "label"
    seed: int = 0
    method_params: dict = field(default_factory=dict)  # the methods' settings (core.methods.checked_settings)


def iter_cached_maps(model, images: np.ndarray, labels: np.ndarray, masks, split: str, method: str,
                     settings: RoarSettings, folder: Path, key: str,
                     ctx: Context = SINGLE) -> Job[np.ndarray]:
    """The ranking values of `method` for every image of a split, computed once and kept in
    folder/<method>.<split>.npy (float16, each map scaled by its largest magnitude). Reused while
    the key (model, data, settings) matches. Ranks fill their rows of one shared file."""
    path = folder / f"{method}.{split}.npy"
    meta = path.with_suffix(".json")
    own = settings.method_params.get(PATHWAY_METHODS.get(method, method))
    if own:  # maps made under other settings of this method are not these
        key = json.dumps([key, own], sort_keys=True)
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
                          item_seed(settings.seed, "roar-map", split, i, method), settings.sparsity,
                          settings.method_params)
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
    from core.evaluation.synthetic import TrainConfig, accuracy, iter_train

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


def run_settings(model, settings: RoarSettings, data_key: str) -> dict:
    """What a ROAR job's accuracy depends on: a rerun with any of them changed is refused. Methods
    and fractions are not among them: new ones add jobs beside the finished ones."""
    return {"model": model.name, "weights": model_fingerprint(model.module), "data": data_key,
            "sparsity": settings.sparsity, "target": settings.target, "seed": settings.seed,
            "epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
            "method_params": settings.method_params}


def iter_roar(model, make_fresh, train, test, settings: RoarSettings, folder: Path,
              data_key: str, ctx: Context = SINGLE, store: RecordStore | None = None) -> Job[dict | None]:
    """ROAR (Hooker et al. 2019). train/test are core.evaluation.synthetic.Dataset at the model's input size
    (labels = the classes to learn); make_fresh(seed) builds an untrained model. Maps come from
    `model` (the original, trained one) and are cached in `folder`; (method, fraction) jobs are
    shared out over ranks, and each finished one is kept in `store` (a rerun reads it back).
    Returns the table on rank 0, None elsewhere."""
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
        job = f"{method}:{fraction!r}"
        record = store.get(job) if store else None
        if record is None:
            started = time.perf_counter()
            acc = roar_job(make_fresh, train, test,
                           values.get((method, "train")), values.get((method, "test")),
                           fraction, fill, settings, mean, std, model.device)
            record = {"method": method, "fraction": fraction, "accuracy": acc,
                      "seconds": time.perf_counter() - started}
            if store:
                store.put(job, record)
        results.append((j, record))
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
