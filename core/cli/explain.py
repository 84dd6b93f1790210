"""`prunescope explain IMAGE [IMAGE ...] --out DIR`: maps, curves and a report for each image."""
import sys
from pathlib import Path

from core.cli.options import (MAX_STEPS, add_method_params, add_model_options, curve_steps, method_list,
                              model_from_args, name_list, out_path, positive_int, sparsity_or_auto,
                              tolerance_percent, top_percent)
from core.io.display import AUTO, DEFAULT_TOP_PERCENT, MODES
from core.methods import ALL_METHODS, DEFAULTS, unknown
from core.pathway.graph import DEFAULT_LAYERS, DEFAULT_NODES

DEFAULT_METHODS = DEFAULTS["explain"]


def register(subparsers) -> None:
    p = subparsers.add_parser("explain", help="explain images: maps, curves and a report for each")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, type=out_path, metavar="DIR",
                   help="results go to DIR/<image stem>/ (one folder per image, never shared)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace result folders that already exist (default: refuse them)")
    add_model_options(p)
    p.add_argument("--methods", type=method_list, default=list(DEFAULT_METHODS),
                   help=f"comma-separated (default: {','.join(DEFAULT_METHODS)}); any of "
                        f"{', '.join(m for m in ALL_METHODS if m not in DEFAULT_METHODS)}")
    add_method_params(p)
    p.add_argument("--sparsity", type=sparsity_or_auto, default=70.0,
                   help="percent of neurons pruned, or 'auto' (default 70)")
    p.add_argument("--tolerance", type=tolerance_percent, default=15.0,
                   help="output change in percent allowed by --sparsity auto (default 15)")
    p.add_argument("--mode", choices=("global", "per-layer"), default="global",
                   help="threshold over all layers pooled, or inside each layer")
    p.add_argument("--selector", choices=("taylor", "intgrad"), default="taylor")
    p.add_argument("--ties", choices=("exact", "paper"), default="exact",
                   help="exact: prune exactly the percent asked, equal scores ordered dead neurons "
                        "first, then by |activation|; paper: prune every score tied at the "
                        "threshold together, as the authors' code does (default exact)")
    p.add_argument("--target", type=int, help="class id to explain (default: the predicted class)")
    p.add_argument("--steps", type=curve_steps, default=20,
                   help=f"steps of the deletion/insertion curves, 1-{MAX_STEPS} (default 20)")
    p.add_argument("--baseline", choices=("mean", "blur", "black"), default="mean",
                   help="what removed pixels become in the curves")
    p.add_argument("--display", choices=(AUTO, *MODES), default=AUTO,
                   help="how <method>.png and comparison.png draw each map: map (alone, on black), "
                        "blend (over the image), masked (the image's top pixels only), alpha "
                        "(the image faded by |map|); auto: map, and blend for grad-cam")
    p.add_argument("--graph", action="store_true",
                   help="also write the pathway graph: pathway_graph.json and .png (channels that carry the "
                        "decision, and how they feed each other)")
    p.add_argument("--graph-nodes", type=positive_int, default=DEFAULT_NODES, metavar="K",
                   help=f"channels per layer in the graph (default {DEFAULT_NODES})")
    p.add_argument("--graph-layers", type=name_list, metavar="NAME,...",
                   help=f"activation layers of the graph (default {DEFAULT_LAYERS} spread from input to output)")
    p.add_argument("--display-top", type=top_percent, default=DEFAULT_TOP_PERCENT, metavar="P",
                   help=f"percent of pixels the masked image shows (default {DEFAULT_TOP_PERCENT:g})")
    p.set_defaults(run=run_explain)


def run_explain(args) -> int:
    from core.cli import Batch, fail
    from core.errors import PruneScopeError
    from core.io.images import load_image
    from core.io.output import locked, output_folder, result_names, staged_folder
    from core.pathway.engine import Engine
    from core.pathway.graph import pathway_graph
    from core.progress import StderrBar, run
    from core.reporting.report import write_graph, write_outputs

    if unknown(args.methods):
        return fail(f"unknown method(s) {', '.join(unknown(args.methods))}: choose from {', '.join(ALL_METHODS)}")
    out_dir = output_folder(args.out)
    model = model_from_args(args)
    paths = list(dict.fromkeys(args.images))
    batch = Batch(len(paths), "images", "explained")
    with locked(out_dir):
        for path, name in batch.over(zip(paths, result_names(paths))):
            bar = StderrBar(Path(path).name, quiet=args.quiet)
            out = out_dir / name
            try:
                with staged_folder(out, args.overwrite) as staging:
                    engine = Engine(model, load_image(path), target=args.target, ties=args.ties,
                                    settings=args.method_params)
                    sparsity, auto = args.sparsity, None
                    if sparsity == "auto":
                        auto = run(engine.iter_auto_sparsity(args.tolerance / 100, args.mode,
                                                             args.selector), bar)
                        sparsity = auto.sparsity
                    analysis = run(engine.iter_analysis(args.methods, sparsity, args.mode, args.selector,
                                                        args.steps, args.baseline), bar)
                    if not analysis.results:  # no result folder for nothing
                        why = {**analysis.skipped, **analysis.failed}
                        raise PruneScopeError("no map: " + "; ".join(f"{m}: {w}" for m, w in why.items()))
                    settings = {"sparsity": sparsity, "sparsity_requested": args.sparsity,
                                "mode": args.mode, "selector": args.selector, "ties": args.ties,
                                "steps": args.steps, "baseline": args.baseline,
                                "tolerance_percent": args.tolerance, "display": args.display,
                                "display_top_percent": args.display_top, "method_params": args.method_params}
                    if auto is not None:
                        settings["auto_search"] = auto.how
                    write_outputs(staging, engine, analysis, settings, image_path=path)
                    if args.graph:
                        write_graph(staging, pathway_graph(engine, sparsity, args.mode, args.selector,
                                                           args.graph_layers, args.graph_nodes))
            except Exception as err:
                bar.close()  # first, so that the line does not land inside the bar's
                batch.item_failed(path, err)
                continue
            finally:
                bar.close()
            batch.done += 1
            for method, why in analysis.skipped.items():
                print(f"prunescope: note: {path}: {method} skipped: {why}", file=sys.stderr)
            for method, why in analysis.failed.items():
                batch.problem(f"{path}: {method} failed: {why}")
            if not args.quiet:
                pred = analysis.prediction
                print(f"{path}: {pred.name} ({pred.prob:.3f}) -> {out}")
    return batch.finish(args.quiet)
