"""Concepts under pruning, the experiment of "Dissecting Pruned Neural Networks": prune a model
more and more by each criterion, dissect every pruned model, and set the number of concept
detectors beside how well the model still decides (accuracy where labelled, else top-1
agreement with the original)."""
import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from core.dissection.dissect import Dissection, iter_dissect, load_items
from core.model_pruning import measures, pipeline
from core.progress import Job, Progress, scaled


@dataclass
class ConceptPoint:
    criterion: str
    sparsity: float              # asked for
    reached: float               # % of channels (magnitude: weights) removed
    parameters: int              # nonzero parameters left
    detectors: int               # units detecting a concept, over the dissected layers
    unique_concepts: int
    layers: list[dict]           # the dissection's per-layer summary
    accuracy: float | None
    agreement: float | None
    finetuned: bool


@dataclass
class ConceptSweep:
    criteria: list[str]
    sparsities: list[float]
    parameters: int              # of the unpruned model
    points: list[ConceptPoint]
    notes: list[str]
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"criteria": self.criteria, "sparsities": self.sparsities,
                "parameters": self.parameters, "notes": self.notes, "seconds": round(self.seconds, 1),
                "points": [dataclasses.asdict(p) for p in self.points]}


def nonzero_parameters(module: torch.nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in module.parameters())


def predictions(model, source, batch: int = 32) -> tuple[torch.Tensor, list]:
    """The model's top-1 on every image of a concept source that loads, and their labels."""
    preds, labels = [], []
    for start in range(0, source.count, batch):
        _, items = load_items(source, range(start, min(source.count, start + batch)))
        if items:
            x = torch.cat([model.preprocess(item.rgb)[0] for item in items])
            preds.append(measures.predict(model.module, x))
            labels += [item.label for item in items]
    return torch.cat(preds), labels


def _quality(pred: torch.Tensor, original: torch.Tensor, labels) -> tuple[float | None, float]:
    agreement = float((pred == original).float().mean())
    if any(label is None for label in labels):
        return None, agreement
    return float((pred == torch.tensor(labels)).float().mean()), agreement


def _point(dissection: Dissection, criterion, sparsity, reached, module, quality, finetuned):
    summary = dissection.summary()
    unique = {c for layer in dissection.layers for c in layer.per_concept()}
    return ConceptPoint(criterion, float(sparsity), float(reached), nonzero_parameters(module),
                        sum(s["detectors"] for s in summary), len(unique), summary, quality[0],
                        quality[1], finetuned)


def iter_concept_sweep(model, source, calib: pipeline.Calibration, criteria, sparsities,
                       layers=None, finetune: Callable | None = None,
                       batch: int = 16) -> Job[tuple[ConceptSweep, Dissection]]:
    """Dissect the unpruned model and every (criterion, sparsity) pruning of it. Each pruning
    starts from the original and recovers BatchNorm statistics on the calibration images;
    `finetune(module) -> Job`, when given, then trains the pruned module further. Returns the
    sweep and the unpruned model's dissection."""
    started = time.perf_counter()
    sparsities = sorted({float(s) for s in sparsities})
    pruned_levels = [s for s in sparsities if s > 0]
    total = 1 + len(criteria) * len(pruned_levels)
    base = yield from scaled(iter_dissect(model, source, layers, batch), 0.0, 1 / total)
    names = [layer.name for layer in base.layers]
    original, labels = predictions(model, source)
    base_quality = _quality(original, original, labels)
    points = [_point(base, c, 0.0, 0.0, model.module, base_quality, False)
              for c in criteria] if 0.0 in sparsities else []
    notes = []
    done = 1
    for criterion in criteria:
        for sparsity in pruned_levels:
            lo = done / total
            span = 1 / total
            yield Progress(lo, f"{criterion} {sparsity:g} %")
            settings = pipeline.Recovery("bn")
            report = yield from scaled(pipeline.prune_model(model, criterion, sparsity, calib,
                                                            settings=settings), lo, lo + span * 0.3)
            pruned = report.model
            tuned = False
            if finetune is not None and report.surgery.unit == "weights":
                note = f"{criterion}: not fine-tuned (training would regrow the zeroed weights)"
                if note not in notes:
                    notes.append(note)
            elif finetune is not None:
                module = copy.deepcopy(pruned.module)
                yield from scaled(finetune(module), lo + span * 0.3, lo + span * 0.6)
                pruned = dataclasses.replace(pruned, module=module.eval().requires_grad_(False))
                tuned = True
            dissected = yield from scaled(iter_dissect(pruned, source, names, batch),
                                          lo + span * 0.6, lo + span)
            quality = _quality(predictions(pruned, source)[0], original, labels)
            points.append(_point(dissected, criterion, sparsity, report.sparsity_reached,
                                 pruned.module, quality, tuned))
            done += 1
    sweep = ConceptSweep(list(criteria), sparsities, nonzero_parameters(model.module), points, notes,
                         time.perf_counter() - started)
    return sweep, base


def synthetic_calibration(model, data, count: int) -> pipeline.Calibration:
    """Labelled calibration images from the synthetic training split."""
    from core.evaluation.synthetic import make_split, to_input

    split = make_split(data, "train", count)
    x = to_input(torch.from_numpy(split.images), model.mean, model.std).to(model.device)
    return pipeline.Calibration([Path(f"train/{i}") for i in split.index], x, split.labels.tolist(),
                                measures.predict(model.module, x))


def synthetic_finetune(model, data, count: int, epochs: int = 1, lr: float = 0.01):
    """Fine-tuning on labelled synthetic training images, as the seed retrains after pruning."""
    from core.evaluation.synthetic import TrainConfig, iter_train, make_split

    split = make_split(data, "train", count)
    config = TrainConfig(epochs=epochs, lr=lr)

    def finetune(module) -> Job:
        yield from iter_train(module, split.images, split.labels, model.mean, model.std, config,
                              model.device)

    return finetune


def distill_finetune(model, calib: pipeline.Calibration, steps: int):
    """Without labels: distillation from the original on the calibration images."""
    from core.model_pruning import recovery

    def finetune(module) -> Job:
        yield from recovery.distill(module, model.module, calib.x, steps, recovery.DISTILL_LR)

    return finetune
