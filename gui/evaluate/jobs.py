"""What the Evaluate tab asks the worker for: the cascading randomisation sanity check of the
image on screen (core.evaluation.sanity), stoppable at every map, and the evaluation of a dataset
folder (core.evaluation.benchmark), stoppable at every image. Runs on the worker thread; it never
touches a widget and imports torch only inside the job.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.progress import Progress


@dataclass
class SanityShown:
    """A finished check (worker result): core.evaluation.sanity.SanityResult, the image, what was skipped."""
    result: object
    view: np.ndarray
    skipped: dict
    label: str


def sanity_job(engine, methods, seed: int, sparsity: float):
    """Job: the cascading randomisation check of the engine's image and class."""
    from dataclasses import replace

    from core.errors import PruneScopeError
    from core.evaluation.sanity import iter_cascading_randomization
    from core.methods import supports
    from core.pathway.engine import compute_map

    model = engine.model
    skipped = {}
    for method in methods:
        ok, why = supports(method, model)
        if not ok:
            skipped[method] = why
    chosen = [m for m in methods if m not in skipped]
    if not chosen:
        raise PruneScopeError("choose at least one method this model supports")
    yield Progress(0.0, "copying the model")

    def explain(module, x, target, method):
        return compute_map(replace(model, module=module), x, target, method, sparsity=sparsity)

    result = yield from iter_cascading_randomization(model.module, engine.x, engine.target, chosen,
                                                     explain, seed=seed)
    prediction = engine.prediction
    name = next((n for i, n, _ in prediction.top5 if i == engine.target), str(engine.target))
    return SanityShown(result, engine.view, skipped, f"{model.name}, class {name}")


@dataclass(frozen=True)
class DatasetRun:
    """What the dataset box asks for; read on the GUI thread, so the job reads no widget."""
    model: object  # core.models.loading.LoadedModel
    folder: Path
    out: Path
    methods: tuple
    metrics: tuple
    images: int
    seed: int
    sparsity: float
    overwrite: bool


def dataset_job(request: DatasetRun):
    """Job: `evaluate` of a folder's images (the predicted class explained), each finished image kept
    in request.out/records at once, so that a cancelled or failed run goes on where it stopped.
    Progress carries the leaderboard so far as `partial`; returns the results folder and the
    lines of the images that failed."""
    import time

    from core.evaluation.benchmark import BenchmarkSettings, iter_benchmark, run_settings, running_leaderboard
    from core.evaluation.records import RecordStore
    from core.evaluation.sources import folder_source
    from core.io.output import locked, output_folder
    from core.reporting.report import EVALUATION_FILES, model_info, save_evaluation

    model, out = request.model, output_folder(request.out)
    started = time.perf_counter()
    with locked(out):
        yield Progress(0.0, "listing the images")
        source = folder_source(request.folder, class_names=model.class_names, seed=request.seed)
        settings = BenchmarkSettings(methods=list(request.methods), images=request.images, sanity_images=0,
                                     sparsity=request.sparsity, target="predicted", seed=request.seed,
                                     metrics=tuple(request.metrics))
        store = RecordStore(out, run_settings(model, source, settings), overwrite=request.overwrite)
        if request.overwrite:  # no results of the old run beside the new one's records
            for name in EVALUATION_FILES:
                (out / name).unlink(missing_ok=True)
        job, shown = iter_benchmark(model, source, settings, store=store), 0.0
        while True:
            try:
                step = next(job)
            except StopIteration as stop:
                result = stop.value
                break
            now = time.perf_counter()
            if step.partial and now - shown > 0.5:  # the table at most twice a second
                shown = now
                step = Progress(step.done, step.message, running_leaderboard(step.partial, settings.methods))
            else:
                step = Progress(step.done, step.message)
            yield step
        yield Progress(1.0, "writing the results")
        examples, sanity_example = result.pop("examples"), result.pop("sanity_example")
        result.update(command="evaluate", model=model_info(model), world_size=1,
                      seconds=time.perf_counter() - started)
        save_evaluation(result, examples, sanity_example, model.class_names, out)
    return out, result["errors"]


@dataclass(frozen=True)
class PathwaysRun:
    """What the pathways box asks for; read on the GUI thread, so the job reads no widget."""
    model: object  # core.models.loading.LoadedModel
    folder: Path
    out: Path
    images: int
    sparsity: float
    overwrite: bool


def pathways_job(request: PathwaysRun):
    """Job: `pathways` of a folder's images (the predicted class), each finished image kept in
    request.out/records, so that a cancelled run goes on where it stopped. Returns the results
    folder and the lines of the images that failed."""
    from core.errors import PruneScopeError
    from core.evaluation.pathways import PathwaySettings, iter_pathways, run_settings
    from core.evaluation.records import RecordStore
    from core.evaluation.sources import folder_source
    from core.io.output import locked, output_folder
    from core.reporting.report import PATHWAYS_FILES, model_info, save_pathways

    model, out = request.model, output_folder(request.out)
    with locked(out):
        yield Progress(0.0, "listing the images")
        source = folder_source(request.folder, class_names=model.class_names)
        settings = PathwaySettings(request.images, request.sparsity)
        store = RecordStore(out, run_settings(model, source, settings), overwrite=request.overwrite)
        if request.overwrite:
            for name in PATHWAYS_FILES:
                (out / name).unlink(missing_ok=True)
        summary = yield from iter_pathways(model, source, settings, store=store)
        if not summary["images"]:
            raise PruneScopeError("no image gave a pathway graph: " + "; ".join(summary["errors"][:3]))
        save_pathways(summary, out, dataset=str(request.folder), source=source.name, model=model_info(model),
                      weights=model.weights_hash())
    return out, summary["errors"]
