"""Argument types and options that several commands share (standard library only)."""
import argparse
import math

MODEL_HELP = ("built-in name (default efficientnet_lite0, embedded), torchvision:ARCH, timm:NAME, "
              "FILE.py:FACTORY, package.module:FACTORY, FILE.pt2 or a FILE.toml model card")


def add_model_options(parser: argparse.ArgumentParser, default_help: str = "",
                      quiet: bool = True) -> None:
    """--model SPEC with its weights, labels and preprocessing, --device and (with `quiet`)
    --quiet, for the commands that load a model."""
    parser.add_argument("--model", metavar="SPEC", default=None, help=MODEL_HELP + default_help)
    add_model_details(parser)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_model_details(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model details (override the SPEC's or the card's defaults)")
    g.add_argument("--weights", metavar="FILE",
                   help="weights file: .pth/.pt state dict or checkpoint, or .safetensors")
    g.add_argument("--labels", metavar="FILE",
                   help="class names: one per line (.txt), a JSON list or a JSON {id: name} map")
    g.add_argument("--input-size", type=positive_int, metavar="N", help="side of the square input")
    g.add_argument("--resize", type=positive_int, metavar="N",
                   help="the short side is resized to N before the centre crop")
    g.add_argument("--mean", type=float_list, metavar="M[,M,M]", help="per-channel mean, in [0, 1] units")
    g.add_argument("--std", type=float_list, metavar="S[,S,S]", help="per-channel std, in [0, 1] units")
    g.add_argument("--gradcam-layer", metavar="MODULE", help="module path whose output Grad-CAM weighs")
    g.add_argument("--output", type=model_output, metavar="N|NAME",
                   help="for a model that returns a tuple, list or dict: the index or key of its "
                        "class scores")


def model_from_args(args, device=None):
    """core.models.loading.load_model with the shared model options of `args` (on `device` if given)."""
    from core.cli import say
    from core.models.loading import NAMES_ASSUMED_NOTE, load_model

    model = load_model(args.model, weights=args.weights, device=device or args.device,
                       labels=args.labels, input_size=args.input_size, resize=args.resize,
                       mean=args.mean, std=args.std, gradcam_layer=args.gradcam_layer, output=args.output)
    if model.names_assumed:
        say(f"prunescope: note: {NAMES_ASSUMED_NOTE}")
    return model


def add_synthetic_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("synthetic dataset (the model is trained once and cached)")
    g.add_argument("--classes", type=positive_int, default=6, help="object classes, 2-10 (default 6)")
    g.add_argument("--synthetic-train", type=positive_int, default=3000,
                   help="training images for the benchmark CNN (default 3000)")
    g.add_argument("--synthetic-test", type=positive_int, default=1000,
                   help="test images (default 1000)")
    g.add_argument("--synthetic-epochs", type=positive_int, default=5,
                   help="training epochs of the benchmark CNN (default 5)")
    g.add_argument("--cache-dir", metavar="DIR",
                   help="where the trained benchmark CNN is kept (default ~/.cache/prunescope/synthetic)")


def synthetic_config(args):
    from core.evaluation.synthetic import SyntheticConfig, TrainConfig

    data = SyntheticConfig(classes=args.classes, train=args.synthetic_train,
                           test=args.synthetic_test, seed=args.seed)
    return data, TrainConfig(epochs=args.synthetic_epochs, seed=args.seed)


def synthetic_model(args, ctx, bar):
    """The trained benchmark CNN: rank 0 trains it if the cache lacks it, the others then load it."""
    from core.errors import ModelError
    from core.evaluation.synthetic import iter_trained_model
    from core.progress import run
    from core.runtime.distributed import all_ok, barrier

    data, train = synthetic_config(args)
    trained, failure = None, None
    if ctx.is_main:
        try:
            trained = run(iter_trained_model(data, train, args.cache_dir, ctx.device), bar)
        except Exception as err:  # the other ranks must hear of it rather than wait forever
            failure = err
    if not all_ok(failure is None, ctx):
        raise failure or ModelError("rank 0 could not prepare the synthetic model")
    barrier(ctx)
    if not ctx.is_main:
        trained = run(iter_trained_model(data, train, args.cache_dir, ctx.device, may_train=False))
    return data, trained


def float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text}")
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers: {text}")
    return values


def model_output(text: str) -> int | str:
    """--output: an index (a whole number) or a key."""
    from core.models.sources import parse_output

    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return parse_output(text)


MAX_STEPS = 1000  # deletion/insertion steps: each is a forward pass, and 1000 already resolves 0.1 %


def add_method_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method-params", type=method_params, default={}, metavar="NAME.KEY=VALUE,...",
                        help="the methods' settings, e.g. integrated-gradients.steps=20,occlusion.window=48 "
                             "(README lists each method's; a pathway-<method> takes its method's)")


def method_params(text: str) -> dict:
    from core.errors import PruneScopeError
    from core.methods import parse_settings

    try:
        return parse_settings(text)
    except PruneScopeError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


def sparsity_or_auto(text: str):
    """--sparsity: a percent, or 'auto' (the largest within --tolerance)."""
    return text if text == "auto" else sparsity_percent(text)


def name_list(text: str) -> list[str]:
    """Comma-separated names, each once, none empty."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty name in {text!r}")
    return list(dict.fromkeys(names))


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


def top_percent(text: str) -> float:
    """The share of pixels a masked image shows, in (0, 100]."""
    value = _percent(text, "--display-top", 100, include_high=True)
    if value == 0:
        raise argparse.ArgumentTypeError(f"--display-top must be a percentage in (0, 100]: {text}")
    return value


def out_path(text: str) -> str:
    """--out: any path but an empty one (which would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
