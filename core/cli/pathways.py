"""`prunescope pathways --dataset DIR|synthetic --out DIR`: each image's pathway graph, per class how
often each channel is in it and the class's mean graph, and how much images' pathways overlap.

Runs under `torchrun --nproc_per_node N main.py pathways ...` as `evaluate` does, and goes on where a
stopped run left off (the same command; --overwrite starts again)."""
from core.cli import EXIT_BAD_INPUT, fail, say
from core.cli.evaluate import DEFAULT_IMAGES, SYNTHETIC, _check_args, _open_records, model_and_source
from core.cli.options import (MODEL_HELP, add_model_details, add_synthetic_options, name_list, out_path,
                              positive_int, sparsity_or_auto, tolerance_percent)
from core.pathway.graph import DEFAULT_LAYERS, DEFAULT_NODES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pathways", help="pathway graphs over a dataset: the channels each class runs through, and how "
                         "much images' pathways overlap")
    p.add_argument("--dataset", required=True, metavar="synthetic|DIR",
                   help="'synthetic' (generated, with its trained CNN) or an image folder DIR/<class>/<image>")
    p.add_argument("--out", required=True, type=out_path, metavar="DIR", help="folder for the results")
    p.add_argument("--model", metavar="SPEC", default=None,
                   help=f"model for an image folder: {MODEL_HELP}; the synthetic dataset uses its own")
    add_model_details(p)
    p.add_argument("--labels-csv", metavar="FILE", help="labels of a flat image folder, as for evaluate")
    p.add_argument("--target", choices=("label", "predicted"),
                   help="class explained, and the class an image counts for: the true label (default "
                        "for synthetic) or the model's prediction (default for a folder)")
    p.add_argument("--sparsity", type=sparsity_or_auto, default=70.0,
                   help="percent of neurons pruned, or 'auto': each image's largest within --tolerance "
                        "(default 70)")
    p.add_argument("--tolerance", type=tolerance_percent, default=15.0,
                   help="output change in percent allowed by --sparsity auto (default 15)")
    p.add_argument("--mode", choices=("global", "per-layer"), default="global")
    p.add_argument("--selector", choices=("taylor", "intgrad"), default="taylor")
    p.add_argument("--graph-nodes", type=positive_int, default=DEFAULT_NODES, metavar="K",
                   help=f"channels per layer in each graph (default {DEFAULT_NODES})")
    p.add_argument("--graph-layers", type=name_list, metavar="NAME,...",
                   help=f"activation layers of the graphs (default {DEFAULT_LAYERS} spread from input to output)")
    p.add_argument("--images", "--limit", type=positive_int, dest="images",
                   help=f"images: the first N in sorted order, or of --sample's (default {DEFAULT_IMAGES})")
    p.add_argument("--sample", type=positive_int, metavar="N", help="N images drawn at random, each class in proportion")
    p.add_argument("--layer", metavar="NAME", help="the layer of the channels x classes figure (default the last)")
    p.add_argument("--dissection", metavar="FILE",
                   help="a dissection.json of this model: whether the units it labels with a class's object "
                        "are in that class's pathway more often than in the others'")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out folder that holds a run with other settings")
    add_synthetic_options(p)
    p.set_defaults(run=run_pathways, masks=None)  # evaluate's checks read masks: pathways uses none


def run_pathways(args) -> int:
    from contextlib import ExitStack

    from core.errors import PruneScopeError
    from core.evaluation.pathways import PathwaySettings, concept_alignment, iter_pathways, run_settings
    from core.io.output import output_folder
    from core.progress import StderrBar, run
    from core.reporting.report import PATHWAYS_FILES, model_info, save_pathways
    from core.runtime.distributed import setup, teardown

    _check_args(args)
    dissection = _dissection(args.dissection) if args.dissection else None
    out = output_folder(args.out)
    target = args.target or ("label" if args.dataset == SYNTHETIC else "predicted")
    ctx = setup(args.device)
    bar = StderrBar("pathways", quiet=args.quiet or not ctx.is_main)
    with ExitStack() as stack:
        try:
            model, source, trained = model_and_source(args, ctx, bar, target)
            settings = PathwaySettings(args.images or args.sample or DEFAULT_IMAGES, args.sparsity,
                                       args.tolerance / 100, target, args.mode, args.selector, args.graph_nodes,
                                       tuple(args.graph_layers) if args.graph_layers else None)
            store = _open_records(out, run_settings(model, source, settings), args.overwrite, PATHWAYS_FILES, ctx,
                                  stack)
            summary = run(iter_pathways(model, source, settings, ctx, store), bar)
        finally:
            bar.close()
            teardown(ctx)
        if summary is None:  # not rank 0
            return 0
        if not summary["images"]:
            raise PruneScopeError("no image gave a pathway graph: " + "; ".join(summary["errors"][:3]))
        layers = next(iter(summary["classes"].values()))["frequency"]
        if args.layer is not None and args.layer not in layers:
            raise PruneScopeError(f"--layer {args.layer}: not a layer of the graphs ({', '.join(layers)})")
        if dissection is not None:
            summary["concepts"] = concept_alignment(summary, dissection)
        save_pathways(summary, out, args.layer, dataset=args.dataset, source=source.name,
                      model=model_info(model, trained), weights=model.weights_hash(),
                      synthetic=_synthetic_options(args),
                      settings={"sparsity": args.sparsity, "tolerance_percent": args.tolerance, "mode": args.mode,
                                "selector": args.selector, "target": target, "graph_nodes": args.graph_nodes})
    o = summary["overlap"]
    if not args.quiet:
        print(f"{summary['images']} images, {len(summary['classes'])} classes: pathway overlap within a class "
              f"{_fmt(o['within_class'])}, between classes {_fmt(o['between_class'])}")
        for layer, a in summary.get("concepts", {}).items():
            print(f"{layer}: {a['units']} units labelled with a class's object: in their class's pathway "
                  f"{a['own_class']:.0%} of the time, in the other classes' {_percent(a['other_classes'])}")
        print(f"results in {out}")
    for line in summary["errors"]:
        fail(line)
    if summary["errors"]:
        say(f"prunescope: {summary['images']} images done; {len(summary['errors'])} failed")
    return EXIT_BAD_INPUT if summary["errors"] else 0


def _dissection(path: str):
    import json
    from pathlib import Path

    from core.dissection.dissect import Dissection
    from core.errors import PruneScopeError

    try:
        return Dissection.from_json(json.loads(Path(path).read_text()))
    except OSError as err:
        raise PruneScopeError(f"{path}: cannot read the dissection ({err.strerror or err})") from None
    except ValueError as err:
        raise PruneScopeError(f"{path}: not a dissection ({err})") from None


def _synthetic_options(args) -> dict:
    """What makes the synthetic run's model again (prune --class-pathway reads it)."""
    return {k: getattr(args, k) for k in ("classes", "synthetic_train", "synthetic_test", "synthetic_epochs",
                                          "cache_dir", "seed")}


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
