"""Writing a pruned model out: PruneScope's .pt (the model and how it was pruned), a torch.export
program, and ONNX, the format serving stacks take, checked with onnxruntime on calibration images
before it is kept, with its latency beside PyTorch's."""
import copy
import dataclasses
import importlib.util
import inspect
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import OutputError, PruneScopeError
from core.io.output import atomic_file
from core.model_pruning import surgery

TOLERANCE = 1e-4       # max |Δ| of the outputs, ONNX against PyTorch, on the check images
ONNX_CHECK_IMAGES = 16  # calibration images the check runs on
LATENCY_RUNS = 20      # batch-1 forwards timed per runtime (the median is reported)
OPSET = 18
# The exporter torch itself defaults to: torch.export-based from torch 2.9 (it needs onnxscript), the
# TorchScript-based one before (the older torch.export-based one fails on batch norms there).
_DYNAMO = inspect.signature(torch.onnx.export).parameters.get("dynamo")
DYNAMO_EXPORTER = _DYNAMO is not None and _DYNAMO.default is True


@dataclass
class OnnxExport:
    path: str
    bytes: int
    checked_images: int
    max_abs_diff: float    # between onnxruntime's and PyTorch's outputs on the check images
    torch_ms: float        # median batch-1 latency on the CPU
    onnx_ms: float

    def line(self) -> str:
        return (f"wrote {self.path} ({self.bytes / 1e6:.2f} MB): onnxruntime equals PyTorch on "
                f"{self.checked_images} calibration images (max |Δ| {self.max_abs_diff:.1e}); batch-1 latency "
                f"on the CPU {self.onnx_ms:.1f} ms (PyTorch {self.torch_ms:.1f} ms)")


def require_onnx() -> None:
    """PruneScopeError naming the extra where onnx or onnxruntime is missing (before any work)."""
    needed = ["onnx", "onnxruntime"] + (["onnxscript"] if DYNAMO_EXPORTER else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise PruneScopeError(f"ONNX export needs {', '.join(missing)}: pip install 'prunescope[onnx]'")


def export_onnx(module: nn.Module, path: str | Path, images: torch.Tensor) -> OnnxExport:
    """Write module (a classifier on N x C x S x S batches, any N) to path as ONNX; run it with
    onnxruntime on `images` and keep the file only where every output is within TOLERANCE of
    PyTorch's. Exported on the CPU."""
    require_onnx()
    import onnxruntime

    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path.parent}: folder does not exist")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, not a model file")
    cpu = copy.deepcopy(module).cpu().eval() if _device(module).type != "cpu" else module.eval()
    images = images.detach().float().cpu()
    example = images[:2] if images.shape[0] >= 2 else images.expand(2, *images.shape[1:])  # 2: batch stays dynamic
    with atomic_file(path) as temp:
        _export(cpu, example, temp)
        session = onnxruntime.InferenceSession(str(temp), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        theirs = torch.from_numpy(session.run(None, {name: images.numpy()})[0])
        with torch.no_grad():
            ours = cpu(images).float()
        diff = float((theirs - ours).abs().max()) if theirs.shape == ours.shape else float("inf")
        if not diff <= TOLERANCE:
            raise PruneScopeError(f"{path.name}: the ONNX model's outputs differ from PyTorch's by up to "
                                  f"{diff:.2g} (more than {TOLERANCE:g}): not written")
        one = images[:1]
        onnx_ms = _median_ms(lambda: session.run(None, {name: one.numpy()}))
        with torch.no_grad():
            torch_ms = _median_ms(lambda: cpu(one))
    return OnnxExport(str(path), path.stat().st_size, images.shape[0], diff, torch_ms, onnx_ms)


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    names = dict(input_names=["image"], output_names=["logits"])
    if DYNAMO_EXPORTER:
        torch.onnx.export(module, (example,), str(path), dynamo=True, verbose=False, opset_version=OPSET,
                          external_data=False, dynamic_shapes=({0: torch.export.Dim.AUTO},), **names)
    else:
        torch.onnx.export(module, (example,), str(path), opset_version=OPSET,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, **names)


def _median_ms(forward) -> float:
    forward()  # warm-up: first-run allocations and kernel choice
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _device(module: nn.Module) -> torch.device:
    return next(iter(module.parameters()), torch.zeros(())).device


def save_pruned(report, path, program: bool = False) -> dict[str, int]:
    """Write the pruned model where PruneScope (--weights, Load model...) and plain
    torch.load(weights_only=True) read it; with program=True also a torch.export program (.pt2)
    that runs without PruneScope. Returns {file: bytes on disk}."""
    path = Path(path)
    module = report.model.module
    info = {k: v for k, v in report.summary().items() if k not in ("layers", "calibration_images")}
    sizes = {str(path): save_checkpoint(report.model, info, path)}
    if program:
        size = report.model.input_size
        example = torch.zeros(2, 3, size, size, device=report.model.device)  # 2: batch stays dynamic
        # Not strict: strict export traces Python through dynamo, which fails on import hooks (PySide6's
        # in the app) before torch 2.9, where non-strict became the default.
        exported = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},),
                                       strict=False)
        program_path = path.with_suffix(".pt2")
        with atomic_file(program_path) as temp:
            torch.export.save(exported, temp)
        sizes[str(program_path)] = program_path.stat().st_size
    return sizes


def save_checkpoint(model, info: dict, path) -> int:
    """The pruned model (a LoadedModel) as PruneScope's .pt, with `info` (how it was pruned) and
    what opens it again; returns its bytes on disk."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path.parent}: folder does not exist")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, not a model file")
    info = {**info, "input_size": model.input_size, **source_record(model)}  # load_pruned's trial forward reads input_size
    # Written under a temporary name and renamed: a full disk leaves an older model file intact.
    with atomic_file(path) as temp:
        torch.save(surgery.checkpoint(model.module, model.name, _plain(info)), temp)
    return path.stat().st_size


def source_record(model) -> dict:
    """What opens the pruned file again: the model's card (less its weights) and class names."""
    record = {"class_names": list(model.class_names)}
    if model.card is not None:
        card = {k: v for k, v in dataclasses.asdict(model.card).items()
                if v is not None and k not in ("weights", "labels")}
        record.update(source=model.card.source, card=card)
    return record


def _plain(value):
    """Metadata as plain lists and dicts; NaN (an unmeasured latency) becomes None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value
