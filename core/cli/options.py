"""Argument types and options that several commands share (standard library only)."""
import argparse


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --weights, --device and --quiet, for the commands that load a model."""
    parser.add_argument("--model", default="efficientnet_lite0",
                        help="efficientnet_lite0 (embedded, the default) or a torchvision name")
    parser.add_argument("--weights", metavar="FILE", help="a local weights file for the model")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


MAX_STEPS = 1000  # deletion/insertion steps: each is a forward pass, and 1000 already resolves 0.1 %


def method_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return names


def bounded_int(text: str, low: int, high: int | None = None) -> int:
    """A whole number in [low, high] (no upper bound when high is None)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number: {text}")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise argparse.ArgumentTypeError(f"expected a number {bounds}: {text}")
    return value


def positive_int(text: str) -> int:
    return bounded_int(text, 1)


def curve_steps(text: str) -> int:
    return bounded_int(text, 1, MAX_STEPS)


def _percent(text: str, what: str, high: float, include_high: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    inside = 0 <= value <= high if include_high else 0 <= value < high  # False for nan
    if not inside:
        bounds = f"[0, {high:g}]" if include_high else f"[0, {high:g})"
        raise argparse.ArgumentTypeError(f"{what} must be a percentage in {bounds}: {text}")
    return value


def sparsity_percent(text: str) -> float:
    """A percentage of neurons or channels pruned, in [0, 100)."""
    return _percent(text, "sparsity", 100, include_high=False)


def tolerance_percent(text: str) -> float:
    """An output change |p' - p| / p in percent, as --sparsity is, in [0, 100]."""
    return _percent(text, "tolerance", 100, include_high=True)


def out_path(text: str) -> str:
    """--out: any path but an empty one (which would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
