"""`prunescope explain IMAGE [IMAGE ...] --out DIR`: maps, curves and a report for each image."""
import sys
from pathlib import Path

from core.cli.options import add_model_options, method_list, model_from_args, sparsity_percent
from core.methods import ALL_METHODS, DEFAULTS, unknown

DEFAULT_METHODS = DEFAULTS["explain"]


def sparsity_value(text: str):
    return text if text == "auto" else sparsity_percent(text)


def register(subparsers) -> None:
    p = subparsers.add_parser("explain", help="explain images: maps, curves and a report for each")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, metavar="DIR", help="results go to DIR/<image stem>/")
    add_model_options(p)
    p.add_argument("--methods", type=method_list, default=list(DEFAULT_METHODS),
                   help=f"comma-separated (default: {','.join(DEFAULT_METHODS)}; also "
                        "pathway-input-x-gradient, pathway-integrated-gradients)")
    p.add_argument("--sparsity", type=sparsity_value, default=70.0,
                   help="percent of neurons pruned, or 'auto' (default 70)")
    p.add_argument("--tolerance", type=float, default=0.15,
                   help="output change allowed by --sparsity auto (default 0.15)")
    p.add_argument("--mode", choices=("global", "per-layer"), default="global",
                   help="threshold over all layers pooled, or inside each layer")
    p.add_argument("--selector", choices=("taylor", "intgrad"), default="taylor")
    p.add_argument("--target", type=int, help="class id to explain (default: the predicted class)")
    p.add_argument("--steps", type=int, default=20, help="steps of the deletion/insertion curves")
    p.add_argument("--baseline", choices=("mean", "blur", "black"), default="mean",
                   help="what removed pixels become in the curves")
    p.set_defaults(run=run_explain)


def run_explain(args) -> int:
    from core.cli import fail
    from core.engine import Engine
    from core.errors import PruneScopeError
    from core.images import load_image
    from core.progress import StderrBar, run
    from core.report import write_outputs

    if unknown(args.methods):
        return fail(f"unknown method(s) {', '.join(unknown(args.methods))}: choose from {', '.join(ALL_METHODS)}")
    if args.steps < 1:
        return fail("--steps must be at least 1")
    model = model_from_args(args)
    status = 0
    for path in args.images:
        bar = StderrBar(Path(path).name, quiet=args.quiet)
        try:
            engine = Engine(model, load_image(path), target=args.target)
            sparsity = args.sparsity
            if sparsity == "auto":
                sparsity = run(engine.iter_auto_sparsity(args.tolerance, args.mode, args.selector), bar)
            analysis = run(engine.iter_analysis(args.methods, sparsity, args.mode, args.selector,
                                                args.steps, args.baseline), bar)
            settings = {"sparsity": sparsity, "sparsity_requested": args.sparsity, "mode": args.mode,
                        "selector": args.selector, "steps": args.steps, "baseline": args.baseline,
                        "tolerance": args.tolerance}
            out = Path(args.out) / Path(path).stem
            write_outputs(out, engine, analysis, settings, image_path=path)
        except PruneScopeError as err:
            bar.close()
            status = fail(str(err) if str(path) in str(err) else f"{path}: {err}")
            continue
        bar.close()
        for method, why in analysis.skipped.items():
            print(f"prunescope: note: {path}: {method} skipped: {why}", file=sys.stderr)
        if not args.quiet:
            pred = analysis.prediction
            print(f"{path}: {pred.name} ({pred.prob:.3f}) -> {out}")
    return status
