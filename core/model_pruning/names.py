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
MODES = ("global", "per-layer")
DEFAULT_PROTECT = ("first", "last")
SWEEP_SPARSITIES = (0, 30, 50, 70, 80, 90, 95)
SWEEP_METHODS = DEFAULTS["prune-sweep"]
RECOVERIES = ("bn", "distill", "finetune", "none")
DEFAULT_RECOVERY = "bn"
LOW_AGREEMENT = 0.5  # below this agreement on held-out images, the CLI and the app warn
