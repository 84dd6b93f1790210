"""What the Model pruning tab asks the worker for: prune the model (and explain the current image
with both models), a sparsity sweep and its figures, writing the pruned model and the sweep.

Everything here runs on the worker thread (core.model_pruning, cancellable at each step); it
never touches a widget and imports torch only inside the jobs.
"""
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.io import display
from core.progress import Progress

MAP_COLORMAP = "inferno"


@dataclass
class SideBySide:
    """The current image explained by the original and by the pruned model (worker result)."""
    method: str
    view: np.ndarray
    original: np.ndarray
    pruned: np.ndarray
    original_label: str
    pruned_label: str
    lut: np.ndarray


def side_by_side(engine, pruned_model, method: str):
    """Job: one method's map of the engine's image and class, from both models."""
    import torch

    from core.pathway.engine import compute_map

    yield Progress(0.0, f"{method} of the original model")
    original = engine.attribution(method)
    yield Progress(0.5, f"{method} of the pruned model")
    pruned = compute_map(pruned_model, engine.x, engine.target, method)
    with torch.no_grad():
        probs = torch.softmax(pruned_model.module(engine.x).float(), dim=1)[0].cpu()
    top = int(probs.argmax())
    names = pruned_model.class_names
    first = engine.prediction
    lut = display.colorize(np.linspace(0.0, 1.0, 256, dtype=np.float32), MAP_COLORMAP)
    return SideBySide(method, engine.view, original, pruned,
                      f"{first.top5[0][1]} ({first.top5[0][2]:.2f})",
                      f"{names[top] if top < len(names) else top} ({float(probs[top]):.2f})", lut)


def prune_job(model, engine, s: dict, method: str):
    """Job: prune the model with the tab's settings s; with an image open on that model (engine),
    its maps by both models too. Returns (PruneReport, SideBySide or None, calibration images
    left out)."""
    from core.model_pruning import Recovery, calibrate, prune_model
    from core.progress import scaled

    if model is None:
        from core.errors import ModelError

        raise ModelError("no model is loaded: choose a model first")
    settings = Recovery(*s["recovery"])
    settings.check()
    calib = yield from scaled(calibrate(model, s["folder"]), 0.0, 0.1)
    report = yield from scaled(prune_model(model, s["criterion"], s["sparsity"], calib,
                                           s["mode"], s["protect"], settings=settings,
                                           iterations=s["iterations"]), 0.1, 0.85)
    shown = None
    if engine is not None and engine.model is model:
        shown = yield from scaled(side_by_side(engine, report.model, method), 0.85, 1.0)
    return report, shown, calib.skipped


def export_job(report, path):
    """Job: write the pruned model: FILE.onnx as ONNX, checked with onnxruntime
    (core.model_pruning.deploy), else as PruneScope's .pt (save_pruned). Returns what it wrote, in words."""
    from core.model_pruning import save_pruned
    from core.model_pruning.deploy import export_onnx

    yield Progress(0.0, f"writing {path.name}")
    if path.suffix.lower() == ".onnx":
        return export_onnx(report.model.module, path, report.check_images).line()
    sizes = save_pruned(report, path)
    return "wrote " + ", ".join(f"{Path(p).name} {size / 1e6:.2f} MB" for p, size in sizes.items())


def sweep_job(model, s: dict, chosen, sparsities_text: str, methods_text: str):
    """Job: the sparsity sweep of the model over the chosen criteria, as the tab's fields give
    it. Returns (SweepResult, its figures as PNG bytes, calibration images left out)."""
    from core.errors import PruneScopeError
    from core.model_pruning import Recovery, calibrate
    from core.model_pruning.sweep import sweep
    from core.progress import scaled

    try:
        sparsities = [float(t) for t in sparsities_text.split(",") if t.strip()]
    except ValueError:
        raise PruneScopeError(f"sparsities must be comma-separated numbers: {sparsities_text}") from None
    if not chosen or not sparsities:
        raise PruneScopeError("choose at least one criterion and one sparsity")
    methods = [m.strip() for m in methods_text.split(",") if m.strip()]
    if model is None:
        raise PruneScopeError("no model is loaded: choose a model first")
    calib = yield from scaled(calibrate(model, s["folder"]), 0.0, 0.05)
    settings = Recovery(*s["recovery"])
    settings.check()
    result = yield from scaled(sweep(model, calib, chosen, sparsities, methods, s["mode"],
                                     s["protect"], settings=settings), 0.05, 0.98)
    yield Progress(0.99, "drawing")
    return result, render_sweep(result), calib.skipped


def render_sweep(result) -> dict[str, bytes]:
    """The sweep's figures (the CLI's) as PNG bytes (matplotlib Agg, on the worker)."""
    from core.reporting import figures

    pngs = {}
    for name, fig in figures.sweep(result).items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        pngs[name] = buffer.getvalue()
    return pngs


def save_sweep_job(result, folder):
    """Job: sweep.json and the plots into folder (core.reporting.report.save_sweep)."""
    from core.reporting.report import save_sweep

    yield Progress(0.0, f"writing to {folder}")
    return save_sweep(result, folder)
