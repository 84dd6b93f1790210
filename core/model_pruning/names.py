"""The choices whole-model pruning offers, importable without torch (CLI --help, the GUI)."""
from core.methods import DEFAULTS

CRITERIA = ("magnitude", "l1", "taylor", "lrp", "pathway")
DESCRIPTIONS = {
    "magnitude": "weight magnitude (unstructured: zeroes single weights, torch.nn.utils.prune)",
    "l1": "L1 norm of each filter (structured, data-free)",
    "taylor": "Taylor: sum over the channel's map of |activation x gradient|",
    "lrp": "LRP relevance: sum over the channel's map of |relevance| (Yeom et al. 2021)",
    "pathway": "pathway frequency: how often the channel's neurons are in the critical pathway",
}
MODES = ("global", "per-layer", "sensitivity")
DEFAULT_MODE = "sensitivity"  # kept the most decisions of Lite0 on held-out photos (README's table)
DEFAULT_PROTECT = ("first", "last")
SWEEP_SPARSITIES = (0, 30, 50, 70, 80, 90, 95)
SWEEP_METHODS = DEFAULTS["prune-sweep"]
# Recovery stages, in the order they run; --recover joins them with "+" (bn+reconstruct+distill).
RECOVERIES = ("bn", "reconstruct", "distill", "finetune")
DEFAULT_RECOVERY = "bn+reconstruct"
# The combinations the app offers, each with what it does.
RECOVERY_CHOICES = {
    "bn+reconstruct": "correct batch norms, then refit each layer to reproduce the original's output on the "
                      "calibration images (a minute or two, no labels)",
    "bn": "correct batch-norm statistics for the shift pruning made, measured on the calibration images "
          "(seconds, no labels)",
    "reconstruct": "refit each layer to reproduce the original's output on the calibration images (no labels)",
    "bn+reconstruct+distill": "the default, then distil the original model on unlabelled images "
                              "(minutes, no labels)",
    "distill": "batch norm, then distil the original model on unlabelled images (minutes, no labels)",
    "finetune": "fine-tune on a labelled ImageFolder (Recovery images)",
    "none": "no recovery: the one-shot pruned model",
}


def recovery_stages(text: str) -> tuple[str, ...]:
    """The stages a --recover value names, in the order they run; () for none. distill always
    runs after bn, as it did alone. ValueError says what is wrong."""
    names = [t.strip() for t in str(text).split("+") if t.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in RECOVERIES]
    if unknown or not names:
        raise ValueError(f"unknown recovery '{text}': choose none or stages from {', '.join(RECOVERIES)}, "
                         "joined by + (e.g. bn+reconstruct)")
    if "distill" in names and "finetune" in names:
        raise ValueError("choose distill or finetune, not both")
    if "distill" in names:
        names.append("bn")
    return tuple(stage for stage in RECOVERIES if stage in names)
LOW_AGREEMENT = 0.5  # below this agreement on held-out images, the CLI and the app warn

# prune --class-pathway: each graph layer keeps the channels that carry this share of the class's kept score
DEFAULT_COVERAGE = 0.9
