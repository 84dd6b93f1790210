"""`prunescope dissect`: network dissection (which concept each unit detects) and, with
--sparsities, how the concept detectors fare as the model is pruned by each criterion.

Runs under `torchrun --nproc_per_node N main.py dissect ...`: the images are shared out over the
processes and rank 0 writes the results, the same as one process would.
"""
import sys
from pathlib import Path

from core.cli import EXIT_BAD_INPUT, fail
from core.cli.options import (MODEL_HELP, add_model_details, add_synthetic_options, out_path, positive_int,
                              synthetic_model)

SYNTHETIC = "synthetic"


def _percents(text: str) -> list[float]:
    import argparse

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated percentages: {text}")
    if not values or any(not 0 <= v < 100 for v in values):
        raise argparse.ArgumentTypeError(f"sparsities must be percentages in [0, 100): {text}")
    return values


def _criteria(text: str) -> list[str]:
    import argparse

    from core.model_pruning.names import CRITERIA

    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in CRITERIA]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"criteria are comma-separated, from {', '.join(CRITERIA)}")
    return names


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dissect", help="network dissection: which human concept each unit detects, and how "
                        "many detectors survive pruning",
        description="For each unit (channel) of the chosen layers: its top 0.5 %% activation "
                    "threshold over the images, the IoU of its thresholded maps with each "
                    "concept's masks, and the concept it detects (IoU > 0.04), as Bau et al.'s "
                    "network dissection. With --sparsities, every criterion prunes the model to "
                    "each sparsity and the pruned models are dissected too.")
    p.add_argument("--concepts", required=True, metavar="synthetic|DIR",
                   help="'synthetic' (generated scenes with object, colour, pattern, texture and "
                        "background masks), a Broden folder (index.csv, label.csv, images/), or a "
                        "mask folder MASKS/<concept>/<image stem>.png for --images")
    p.add_argument("--images", metavar="DIR", help="the images a mask folder masks")
    p.add_argument("--out", required=True, type=out_path, metavar="DIR", help="folder for the results")
    p.add_argument("--model", metavar="SPEC", default=None,
                   help=f"{MODEL_HELP}; with synthetic concepts the default is the synthetic "
                        "benchmark's trained CNN")
    add_model_details(p)
    p.add_argument("--layers", metavar="L1,L2",
                   help="activation layers to dissect, by name or index (default: the last "
                        "activation of each of the last three spatial resolutions)")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="at most N images (default: all; synthetic: 500)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="default 16")
    p.add_argument("--sparsities", type=_percents, metavar="P1,P2",
                   help="also prune to these percentages and dissect each pruned model "
                        "(e.g. 0,50,70,90,95)")
    p.add_argument("--criteria", type=_criteria, default=["l1", "taylor"], metavar="C1,C2",
                   help="pruning criteria for --sparsities: magnitude, l1, taylor, lrp, pathway "
                        "(default l1,taylor)")
    p.add_argument("--finetune", action="store_true",
                   help="train each pruned model further, as the seed paper retrains: on labelled "
                        "synthetic training images, else by distillation from the original")
    p.add_argument("--finetune-steps", type=positive_int, default=60,
                   help="distillation steps of --finetune without labels (default 60)")
    p.add_argument("--calibration", type=positive_int, default=256, metavar="N",
                   help="images that score the channels for pruning (default 256; a folder "
                        "uses its own images)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_synthetic_options(p)
    p.set_defaults(run=run_dissect)


def _source(args, model, data):
    from core.dissection.concepts import open_concepts, synthetic_concepts

    if args.concepts == SYNTHETIC:
        return synthetic_concepts(data, "test", args.limit or 500)
    return open_concepts(args.concepts, args.images, args.limit)


def _folder_calibration(model, source, count: int):
    import torch

    from core.dissection.dissect import load_items
    from core.model_pruning.measures import predict
    from core.model_pruning.pipeline import Calibration

    _, items = load_items(source, range(min(count, source.count)))
    x = torch.cat([model.preprocess(item.rgb)[0] for item in items])
    labels = [item.label for item in items]
    return Calibration([Path(item.name) for item in items], x,
                       None if None in labels else labels, predict(model.module, x))


def run_dissect(args) -> int:
    import json
    import time

    from core.dissection.dissect import iter_dissect
    from core.errors import PruneScopeError
    from core.io.output import locked, output_folder, write_text
    from core.progress import StderrBar, run
    from core.runtime.distributed import setup, teardown

    if args.concepts != SYNTHETIC and not Path(args.concepts).is_dir():
        raise PruneScopeError(f"{args.concepts}: not 'synthetic' and not a folder")
    out = output_folder(args.out)
    layers = [v for v in args.layers.split(",") if v.strip()] if args.layers else None
    ctx = setup(args.device)
    if args.sparsities and ctx.active:
        teardown(ctx)
        raise PruneScopeError("--sparsities runs in one process (pruning is not sharded); "
                              "run it without torchrun")
    bar = StderrBar("dissect", quiet=args.quiet or not ctx.is_main)
    started = time.perf_counter()
    sweep = None
    try:
        data = None
        if args.model is None and args.concepts == SYNTHETIC:
            data, trained = synthetic_model(args, ctx, bar)
            model = trained.model
        else:
            from core.cli.options import model_from_args

            model = model_from_args(args, device=ctx.device)
        source = _source(args, model, data)
        if args.sparsities:
            sweep, result = run(_sweep(args, model, source, data, layers), bar)
        else:
            result = run(iter_dissect(model, source, layers, args.batch_size, ctx=ctx), bar)
    finally:
        bar.close()
        teardown(ctx)
    if result is None:  # not rank 0
        return 0
    from core.reporting import figures

    result.seconds = time.perf_counter() - started
    with locked(out):
        if sweep is not None:
            write_text(out / "sweep.json", json.dumps(sweep.to_json(), indent=1))
        figures.save(figures.dissect(result, _best_units(model, source, result), sweep), out)
        # last: the mark of a complete dissection
        write_text(out / "dissection.json", json.dumps({**result.to_json(), "world_size": ctx.world}))
    if not args.quiet:
        _print_summary(result, sweep)
        print(f"results in {out}")
    for note in sweep.notes if sweep else []:
        print(f"prunescope: note: {note}", file=sys.stderr)
    for index, why in result.skipped.items():
        fail(f"image {index} of {source.name} left out: {why}")
    return EXIT_BAD_INPUT if result.skipped else 0


def _sweep(args, model, source, data, layers):
    from core.model_pruning import concepts as sweep

    if data is not None:
        calib = sweep.synthetic_calibration(model, data, args.calibration)
        finetune = sweep.synthetic_finetune(model, data, data.train) if args.finetune else None
    else:
        calib = _folder_calibration(model, source, args.calibration)
        finetune = sweep.distill_finetune(model, calib, args.finetune_steps) if args.finetune else None
    return (yield from sweep.iter_concept_sweep(model, source, calib, args.criteria, args.sparsities,
                                                layers, finetune, args.batch_size))


def _best_units(model, source, result, rows: int = 6):
    """The last layer's strongest detectors with their top images, for top_units.png."""
    from core.dissection.units import receptive_field, unit_crops

    layer = result.layers[-1]
    best = sorted(layer.detectors(), key=lambda u: -u.iou)[:rows]
    if not best:
        return []
    side = receptive_field(model, layer.name)
    return [(f"{layer.name} unit {u.unit}: {u.concept} (IoU {u.iou:.2f})",
             unit_crops(model, source, layer, u.unit, side)) for u in best]


def _print_summary(result, sweep) -> None:
    for layer in result.summary():
        top = ", ".join(f"{c} {n}" for c, n in list(layer["per_concept"].items())[:6])
        print(f"{layer['layer']}: {layer['detectors']}/{layer['units']} units detect a concept, "
              f"{layer['unique_concepts']} unique ({top})")
    if sweep is None:
        return
    print(f"{'criterion':<10} {'sparsity':>8} {'params':>9} {'detectors':>9} {'unique':>6} "
          f"{'accuracy':>8} {'agreement':>9}")
    for p in sweep.points:
        acc = "" if p.accuracy is None else f"{p.accuracy:.1%}"
        print(f"{p.criterion:<10} {p.reached:>7.1f}% {p.parameters:>9} {p.detectors:>9} "
              f"{p.unique_concepts:>6} {acc:>8} {p.agreement:>9.1%}")
