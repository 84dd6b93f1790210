"""Argument types and options that several commands share (standard library only)."""
import argparse


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --weights, --device and --quiet, for the commands that load a model."""
    parser.add_argument("--model", default="efficientnet_lite0",
                        help="efficientnet_lite0 (embedded, the default) or a torchvision name")
    parser.add_argument("--weights", metavar="FILE", help="a local weights file for the model")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def method_list(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def sparsity_percent(text: str) -> float:
    """A percentage of neurons or channels pruned, in [0, 100)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number in [0, 100): {text}")
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 100): {text}")
    return value
