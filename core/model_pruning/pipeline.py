"""Prune a loaded model end to end: calibration images, scores, surgery on a copy, recovery (and
fine-tuning), and the report of what it changed (core.model_pruning.measures); writing it out is
core.model_pruning.deploy's."""
import copy
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.errors import ImageError, PruneScopeError
from core.model_pruning import criteria, recovery, surgery
from core.model_pruning.deploy import ONNX_CHECK_IMAGES
from core.model_pruning.measures import (ModelStats, accuracy, agreement, fidelity, logits, measure,
                                         measure_pair, predict)
from core.model_pruning.names import DEFAULT_PROTECT, DEFAULT_RECOVERY, LOW_AGREEMENT, recovery_stages
from core.model_pruning.reconstruct import reconstruct
from core.progress import Job, Progress, scaled

FEW_HELD_OUT = 8  # fewer held-out images than this, and agreement says little: a warning


# --- calibration images --------------------------------------------------------------------------

@dataclass
class Calibration:
    paths: list[Path]
    x: torch.Tensor                  # N x 3 x S x S, preprocessed, on the model's device
    labels: list[int] | None         # class ids when the folder is labelled (one subfolder per class)
    targets: torch.Tensor = None     # the unpruned model's top-1 per image (CPU), filled by calibrate()
    skipped: dict = field(default_factory=dict)  # image -> why it could not be used


def labelled_images(folder: Path, class_names: list[str]) -> list[tuple[Path, int]] | None:
    """(image, class id) pairs when `folder` is an ImageFolder: one subfolder per class, named by
    the class id or the class name (case and _/space ignored). None for a flat folder."""
    from core.io.images import class_id, list_images

    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        return None
    pairs = []
    for sub in subdirs:
        name = sub.name
        label = class_id(name, class_names)
        if label is None:
            raise ImageError(f"{sub}: folder name '{name}' is neither a class id (0..{len(class_names) - 1}) "
                             "nor a class name of this model")
        pairs += [(p, label) for p in list_images(sub)]
    return pairs


def calibration_files(model, folder=None) -> tuple[list[Path], list[int] | None]:
    """The calibration images: a flat folder, a labelled ImageFolder, or by default the bundled
    samples and scikit-image's sample photos."""
    from core.io.images import list_images
    from core.io.resources import calibration_images

    if folder is None:
        return calibration_images(), None
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: calibration folder does not exist")
    pairs = labelled_images(folder, model.class_names)
    if pairs is not None:
        paths, labels = [p for p, _ in pairs], [label for _, label in pairs]
    else:
        paths, labels = list_images(folder), None
    if not paths:
        raise ImageError(f"{folder}: no images to calibrate with")
    return paths, labels


def calibrate(model, folder=None) -> Job[Calibration]:
    """Load and preprocess the calibration images; note what the unpruned model predicts. An
    image that cannot be used is left out (with why, in `skipped`); none usable is an error."""
    from core.errors import reason
    from core.io.images import load_image

    paths, labels = calibration_files(model, folder)
    xs, kept, skipped = [], [], {}
    for i, path in enumerate(paths):
        try:
            xs.append(model.preprocess(load_image(path))[0])
            kept.append(i)
        except Exception as err:
            skipped[str(path)] = reason(err)
        yield Progress((i + 1) / len(paths), f"loading {path.name}")
    if not xs:
        raise ImageError(f"{folder}: none of the {len(paths)} calibration images can be used "
                         f"(first: {next(iter(skipped.values()))})")
    x = torch.cat(xs)
    return Calibration([paths[i] for i in kept], x, None if labels is None else [labels[i] for i in kept],
                       predict(model.module, x), skipped)


# --- measurements --------------------------------------------------------------------------------


# --- pruning -------------------------------------------------------------------------------------

@dataclass
class Recovery:
    """How the pruned model gets its decisions back: stages of names.RECOVERIES joined by "+"."""
    method: str = DEFAULT_RECOVERY
    images: str | None = None        # distill: unlabelled folder (default: the calibration images);
                                     # finetune: a labelled ImageFolder (required)
    steps: int = recovery.DISTILL_STEPS
    epochs: int = 1                  # finetune
    lr: float | None = None          # None: distill's Adam 1e-4, finetune's SGD 1e-3

    @property
    def stages(self) -> tuple[str, ...]:
        try:
            return recovery_stages(self.method)
        except ValueError as err:
            raise PruneScopeError(str(err)) from None

    def check(self) -> None:
        if "finetune" in self.stages and not self.images:
            raise PruneScopeError("--recover finetune needs a labelled ImageFolder (--recover-images DIR)")
        if self.steps < 1 or self.epochs < 1:
            raise PruneScopeError("recovery steps and epochs must be at least 1")


@dataclass
class Step:
    """One pruning step of an iterative schedule, after its recovery."""
    module: nn.Module
    surgery: surgery.Surgery
    sparsity_reached: float
    agreement_before_recovery: float | None
    agreement: float | None


@dataclass
class PruneReport:
    model: object                    # core.models.loading.LoadedModel holding the pruned module
    criterion: str
    sparsity: float
    mode: str
    protected: list[str]
    surgery: surgery.Surgery
    before: ModelStats
    after: ModelStats
    agreement: float | None          # top-1 agreement with the unpruned model on the held-out images
    accuracy_before: float | None    # where the images are labelled
    accuracy_after: float | None
    calibration: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)  # measured on; never calibrated or trained on
    recovery: str = "none"
    iterations: int = 1
    sparsity_reached: float = 0.0    # what the steps together removed, in the original's terms
    agreement_before_recovery: float | None = None  # the last step's, before its recovery
    accuracy_before_recovery: float | None = None
    recovery_s: float = 0.0
    recovery_images: list[str] = field(default_factory=list)  # distilled or fine-tuned on
    steps: list[Step] = field(default_factory=list)
    # fidelity() on the held-out images, after recovery and before it (empty without any)
    fidelity: dict = field(default_factory=dict)
    fidelity_before_recovery: dict = field(default_factory=dict)
    reconstruction: dict = field(default_factory=dict)  # the last step's: refitted, layers, undone, skipped
    check_images: torch.Tensor | None = None  # a few calibration images (CPU): what an ONNX export is checked on

    def summary(self) -> dict:
        """Plain numbers, for JSON and the checkpoint's metadata."""
        return {
            "criterion": self.criterion, "sparsity": self.sparsity, "mode": self.mode,
            "protected": self.protected, "unit": self.surgery.unit,
            "iterations": self.iterations, "sparsity_reached": self.sparsity_reached,
            "before": dataclasses.asdict(self.before), "after": dataclasses.asdict(self.after),
            "recovery": self.recovery, "recovery_s": self.recovery_s,
            "held_out_count": len(self.held_out),
            "agreement_before_recovery": self.agreement_before_recovery, "agreement": self.agreement,
            "accuracy_before": self.accuracy_before,
            "accuracy_before_recovery": self.accuracy_before_recovery,
            "accuracy_after": self.accuracy_after,
            "top5_overlap": self.fidelity.get("top5_overlap"), "kl": self.fidelity.get("kl"),
            "top5_overlap_before_recovery": self.fidelity_before_recovery.get("top5_overlap"),
            "kl_before_recovery": self.fidelity_before_recovery.get("kl"),
            "reconstruction": self.reconstruction,
            "steps": [{"sparsity_reached": t.sparsity_reached, "agreement": t.agreement,
                       "agreement_before_recovery": t.agreement_before_recovery} for t in self.steps],
            "calibration_images": self.calibration, "held_out_images": self.held_out,
            "recovery_images": self.recovery_images,
            "layers": [list(row) for row in self.surgery.layers],
            "kept_whole": dict(self.surgery.skipped),
        }

    def at_step(self, k: int) -> "PruneReport":
        """This report as it stood after step k (0-based), to save that step's model (counts
        measured again; the latency is not)."""
        step = self.steps[k]
        size = self.model.input_size
        after = measure(step.module, torch.zeros(1, 3, size, size, device=self.model.device))
        return dataclasses.replace(self, model=dataclasses.replace(self.model, module=step.module),
                                   surgery=step.surgery, after=after,
                                   sparsity_reached=step.sparsity_reached, agreement=step.agreement,
                                   agreement_before_recovery=step.agreement_before_recovery,
                                   steps=self.steps[:k + 1])

    @property
    def warning(self) -> str:
        """What to do when the pruned model lost most of the original's decisions, or when too
        few images were held out to tell; "" if neither."""
        warnings = []
        if self.agreement is not None and self.agreement < LOW_AGREEMENT:
            warnings.append(f"the pruned model keeps only {self.agreement:.0%} of the original's decisions "
                            "on held-out images: lower the sparsity, add iterations, or recover by distill "
                            "on more images")
        if len(self.held_out) < FEW_HELD_OUT:
            warnings.append(f"only {len(self.held_out)} held-out image(s) to measure on: calibrate with "
                            "24 or more images, or measure on a folder of their own (--held-out)")
        return "; ".join(warnings)


def prune_copy(model, calib: Calibration, criterion: str, sparsity: float, mode: str = "global",
               protect=DEFAULT_PROTECT, scores: criteria.Scores | None = None,
               pathway_sparsity: float = criteria.PATHWAY_SPARSITY,
               cap: float = 100.0) -> Job[tuple[nn.Module, surgery.Surgery]]:
    """A pruned copy of model.module; the original is untouched. Pass `scores` to reuse them.
    cap: at most this percent of any one group's channels (global ranking)."""
    criteria.check_criterion(criterion)
    surgery.check_sparsity(sparsity, mode)
    protected = surgery.resolve_protected(model.module, calib.x, protect)
    if criterion != "magnitude" and scores is None:
        scores = yield from scaled(criteria.channel_scores(
            criterion, model, calib.x, calib.targets, pathway_sparsity), 0.0, 0.8)
    yield Progress(0.85, f"removing {sparsity:g} % by {criterion}")
    module = copy.deepcopy(model.module).eval()
    if criterion == "magnitude":
        done = surgery.prune_unstructured(module, calib.x, sparsity, mode, protected)
    else:
        done = surgery.prune_structured(module, calib.x, scores, sparsity, mode, protected, cap)
    module.eval().requires_grad_(False)
    return module, done


def recovery_images(model, settings: Recovery, calib: Calibration, held_out) -> Job[Calibration]:
    """The images distillation trains on: a folder of its own or the calibration images, less
    any held-out image."""
    from core.model_pruning.recovery import without

    if "distill" not in settings.stages or not settings.images:
        return calib
    images = yield from calibrate(model, settings.images)
    return without(images, held_out)


# Share of a recovery's progress bar per stage, by what each costs.
STAGE_WEIGHTS = {"bn": 1.0, "reconstruct": 4.0, "distill": 6.0, "finetune": 6.0}


def recover(original: nn.Module, model, settings: Recovery, calib: Calibration,
            images: Calibration, held_out, done=None, source: nn.Module | None = None,
            total=None) -> Job[dict]:
    """Recover model.module in place, stage by stage. bn corrects batch-norm statistics for the
    shift pruning made, measured on the calibration images against `source`, the model it was
    cut from (by default the original; `done`, the Surgery of that cut, says which channels
    went). reconstruct refits the layers to reproduce `original` on the calibration images
    (`total`: the Surgery from the original, by default `done`). distill distils `original` on
    `images`; finetune trains on labelled images. Returns what the stages report (reconstruct:
    layers refitted, left as they were, or the whole fit undone)."""
    notes: dict = {}
    stages = settings.stages
    if done is not None and done.unit == "weights":
        if {"distill", "finetune"} & set(stages):
            raise PruneScopeError(f"{settings.method} would regrow the zeroed weights of unstructured "
                                  "pruning; use --recover bn or none with magnitude")
        stages = tuple(s for s in stages if s != "reconstruct")  # no channel was removed
    total = total or done
    weights = [STAGE_WEIGHTS[stage] for stage in stages]
    start = 0.0
    for stage, weight in zip(stages, weights):
        end = start + weight / sum(weights)
        if stage == "bn":
            job = recovery.correct_bn(model.module, original if source is None else source, calib.x,
                                      done.norms if done is not None else None)
        elif stage == "reconstruct":
            job = reconstruct(model.module, original, calib.x, total.removed if total is not None else {})
        elif stage == "distill":
            job = recovery.distill(model.module, original, images.x, settings.steps,
                                   settings.lr or recovery.DISTILL_LR)
        else:
            job = finetune(model, settings.images, settings.epochs, settings.lr or 1e-3,
                           exclude=held_out.paths if held_out is not None else [])
        result = yield from scaled(job, start, end)
        if stage == "reconstruct":
            fitted = sum(f.strength is not None for f in result.layers)
            notes["reconstruct"] = {"refitted": fitted if result.kept else 0, "layers": len(result.layers),
                                    "undone": not result.kept, "skipped": result.skipped}
        start = end
    return notes


def step_sparsities(sparsity: float, iterations: int) -> list[float]:
    """The cumulative sparsity after each step: equal steps up to the target, as Torch-Pruning's
    linear iterative_steps schedule."""
    if iterations < 1:
        raise PruneScopeError(f"iterations must be at least 1, got {iterations}")
    return [sparsity * k / iterations for k in range(1, iterations + 1)]


def prune_model(model, criterion: str, sparsity: float, calib: Calibration, mode: str = "global",
                protect=DEFAULT_PROTECT, pathway_sparsity: float = criteria.PATHWAY_SPARSITY,
                settings: Recovery = Recovery("none"), iterations: int = 1,
                held_out: Calibration | None = None, cap: float = 100.0) -> Job[PruneReport]:
    """Prune a copy of `model` in `iterations` steps, recovering after each, and measure both on
    images held out from calibration and recovery: the job the CLI's and GUI's "prune" run.
    Each step after the first removes, from the already pruned model, the channels that bring
    the total to that step's share of the target (scores recomputed on the pruned model).
    held_out: images to measure on (all of calib is then used); by default a share of calib."""
    settings.check()
    goals = step_sparsities(float(sparsity), iterations)
    used, held = recovery.held_out_split(calib) if held_out is None else \
        (recovery.without(calib, held_out), held_out)
    reference = logits(model.module, held.x) if held is not None else None
    images = yield from scaled(recovery_images(model, settings, used, held), 0.0, 0.05)
    current, done, measured, steps = model, None, None, []
    recovery_s = 0.0
    share = 0.85 / iterations
    for k, goal in enumerate(goals):
        lo = 0.05 + k * share
        step = goal if done is None or done.unit == "weights" else _next_step(done, goal)
        source = current.module
        module, step_done = yield from scaled(prune_copy(current, used, criterion, step, mode, protect,
                                                         pathway_sparsity=pathway_sparsity, cap=cap),
                                              lo, lo + share / 2)
        done = step_done if done is None or done.unit == "weights" else done.then(step_done)
        current = dataclasses.replace(model, module=module)
        measured = (_quality(module, held, agreement), _quality(module, held, accuracy))
        first = fidelity(module, reference, held.x) if held is not None else {}
        began = time.perf_counter()
        notes = yield from scaled(recover(model.module, current, settings, used, images, held, step_done, source,
                                          done), lo + share / 2, lo + share)
        recovery_s += time.perf_counter() - began
        steps.append(Step(module, done, _reached(done, goal), measured[0], _quality(module, held, agreement)))
    yield Progress(0.9, "measuring both models")
    module = current.module
    before, after = measure_pair(model.module, module, calib.x)
    report = PruneReport(current, criterion, float(sparsity), mode, done.protected, done, before, after,
                         _quality(module, held, agreement), _quality(model.module, held, accuracy),
                         _quality(module, held, accuracy), [str(p) for p in used.paths],
                         [str(p) for p in held.paths] if held is not None else [], settings.method,
                         iterations, steps[-1].sparsity_reached, measured[0], measured[1], recovery_s,
                         _trained_on(settings, used, images), steps,
                         fidelity(module, reference, held.x) if held is not None else {}, first,
                         notes.get("reconstruct", {}), calib.x[:ONNX_CHECK_IMAGES].cpu())
    yield Progress(1.0, "pruned")
    return report


def _reached(done: surgery.Surgery, goal: float) -> float:
    """Percent of the original's rankable channels removed (of weights zeroed: the goal)."""
    if done.unit == "weights":
        return goal
    return 100.0 * done.cut / done.ranked if done.ranked else 0.0


def _trained_on(settings: Recovery, used: Calibration, images: Calibration) -> list[str]:
    """The images recovery used: calibration (bn, reconstruct), `images` (distill) or the
    fine-tuning folder."""
    stages = settings.stages
    paths = [str(p) for p in used.paths] if {"bn", "reconstruct"} & set(stages) else []
    if "distill" in stages:
        paths = list(dict.fromkeys(paths + [str(p) for p in images.paths]))
    return paths + ([settings.images] if "finetune" in stages else [])


def _next_step(done: surgery.Surgery, goal: float) -> float:
    """The sparsity of the still-ranked channels that brings the total removed to `goal` % of
    the original's: half a channel above the count, so that the floor in surgery lands on it."""
    need = int(done.ranked * goal / 100.0) - done.cut
    left = done.ranked - done.cut
    return min(100.0 * (need + 0.5) / left, 99.9) if need > 0 and left > 0 else 0.0


def _quality(module: nn.Module, held, measure_fn) -> float | None:
    """A measure on the held-out images; None without any."""
    return None if held is None else measure_fn(module, held)


def finetune(model, folder, epochs: int = 1, lr: float = 1e-3, batch: int = 8, seed: int = 0,
             exclude=()) -> Job[None]:
    """Short fine-tuning of model.module in place on a labelled ImageFolder (class-id or
    class-name subfolders), leaving out the `exclude` images (those measured on)."""
    from core.io.images import load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: fine-tuning folder does not exist")
    pairs = labelled_images(folder, model.class_names)
    if not pairs:
        raise ImageError(f"{folder}: fine-tuning needs labelled images, one subfolder per class")
    held = {Path(p).resolve() for p in exclude}
    pairs = [(p, label) for p, label in pairs if p.resolve() not in held]
    if not pairs:
        raise ImageError(f"{folder}: every fine-tuning image is also a held-out image")
    module = model.module
    rng = random.Random(seed)
    params = [p for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-5)
    steps = epochs * ((len(pairs) + batch - 1) // batch)
    step = 0
    try:
        for epoch in range(epochs):
            rng.shuffle(pairs)
            for start in range(0, len(pairs), batch):
                chunk = pairs[start:start + batch]
                x = torch.cat([model.preprocess(load_image(p))[0] for p, _ in chunk])
                x = recovery.augment(x, rng)
                y = torch.tensor([label for _, label in chunk], device=x.device)
                module.train()
                # Batch-norm statistics stay frozen: a few small batches would only make them worse.
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
                with torch.enable_grad():
                    loss = nn.functional.cross_entropy(module(x), y)
                    optimiser.zero_grad()
                    loss.backward()
                optimiser.step()
                step += 1
                yield Progress(step / steps, f"fine-tuning epoch {epoch + 1}/{epochs}, loss {loss.item():.3f}")
    finally:
        module.eval().requires_grad_(False)


