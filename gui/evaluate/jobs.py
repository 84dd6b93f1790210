"""What the Evaluate tab asks the worker for: the cascading randomisation sanity check of the
image on screen (core.evaluation.sanity), stoppable at every map. Runs on the worker thread; it never
touches a widget and imports torch only inside the job.
"""
from dataclasses import dataclass

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
