"""`prunescope prune` (prune one model, export it) and `prunescope prune-sweep` (accuracy, cost and
explanation drift along a sparsity axis, one line per criterion)."""
import argparse
import json
import sys
from pathlib import Path

from core.cli import say
from core.cli.options import (add_method_params, add_model_options, method_list, model_from_args, out_path,
                              positive_int, sparsity_percent)
from core.methods import ALL_METHODS, unknown
from core.model_pruning.names import (CRITERIA, DEFAULT_COVERAGE, DEFAULT_MODE, DEFAULT_RECOVERY,
                                      LOW_AGREEMENT, MODES, SWEEP_METHODS, SWEEP_SPARSITIES, recovery_stages)


def percent_list(text: str) -> list[float]:
    return [sparsity_percent(t) for t in method_list(text)]


def criterion_list(text: str) -> list[str]:
    names = method_list(text)
    unknown = [n for n in names if n not in CRITERIA]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown criterion {', '.join(unknown) or '(none)'}: "
                                         f"choose from {', '.join(CRITERIA)}")
    return names


def sparsity_cap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"must be a percentage in (0, 100], got {text}")
    return value


def recovery_spec(text: str) -> str:
    """The stages as they will run (distill is bn+distill), so that reports say what ran."""
    try:
        return "+".join(recovery_stages(text)) or "none"
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _common(p: argparse.ArgumentParser, recovery: str) -> None:
    add_model_options(p)
    p.add_argument("--calib", metavar="DIR", help="calibration images: a folder, or an ImageFolder "
                   "(one subfolder per class id or name) for accuracy; default: the bundled samples and "
                   "scikit-image's sample photos")
    p.add_argument("--held-out", metavar="DIR", help="images to measure agreement on, never calibrated or "
                   "trained on (default: every third calibration image)")
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                   help="rank channels over all layers together (global), remove the ratio from each layer "
                        "(per-layer), or give each layer a share by what removing its channels alone costs "
                        "on the calibration images (sensitivity, the default)")
    p.add_argument("--max-layer-sparsity", type=sparsity_cap, default=100.0, metavar="P",
                   help="global ranking: remove at most P %% of any one layer's channels, per pruning step "
                        "(default 100)")
    p.add_argument("--protect", type=method_list, default=["first", "last"],
                   help="layers kept whole: first, last, none, or module paths, comma-separated "
                        "(default first,last)")
    p.add_argument("--recover", type=recovery_spec, default=recovery, metavar="STAGES",
                   help="after pruning, stages joined by +, run in this order: bn (correct batch-norm "
                        "statistics for the shift pruning made), reconstruct (refit each layer to reproduce "
                        "the original's output on the calibration images), distill (distil the original "
                        "model on unlabelled images; runs after bn), finetune (labelled ImageFolder); or "
                        f"none (default {recovery})")
    p.add_argument("--recover-images", metavar="DIR", help="distill: unlabelled images (default: the "
                   "calibration images); finetune: the labelled ImageFolder")
    p.add_argument("--recover-steps", type=positive_int, default=60,
                   help="distillation steps of 8 images (default 60)")
    p.add_argument("--epochs", type=positive_int, default=1, help="fine-tuning epochs (default 1)")
    p.add_argument("--lr", type=float, help="learning rate (default: distill Adam 1e-4, finetune SGD 1e-3)")


def recovery_of(args):
    from core.model_pruning.pipeline import Recovery

    method, images = args.recover, args.recover_images
    if getattr(args, "finetune", None):
        method, images = "finetune", args.finetune
    return Recovery(method, images, args.recover_steps, args.epochs, args.lr)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prune", help="prune a whole model by an explainability-aware criterion and export it",
        description="Remove the least important channels (or weights, for magnitude) and write a "
                    "model file that --weights and Load model... read back.")
    p.add_argument("--criterion", choices=CRITERIA,
                   help="magnitude (unstructured), l1, taylor, lrp or pathway (structured); required "
                        "unless --class-pathway")
    p.add_argument("--sparsity", type=sparsity_percent,
                   help="percent of channels removed (of weights zeroed, for magnitude); required unless "
                        "--class-pathway")
    p.add_argument("--out", required=True, type=out_path, metavar="FILE", help="the pruned model file (.pt)")
    _common(p, DEFAULT_RECOVERY)
    p.add_argument("--iterations", type=positive_int, default=1,
                   help="reach the sparsity in this many pruning steps, recovering after each (default 1)")
    p.add_argument("--save-steps", action="store_true",
                   help="with --iterations, also write each earlier step's model as FILE.stepK.pt")
    p.add_argument("--finetune", metavar="DIR", help="the same as --recover finetune --recover-images DIR")
    p.add_argument("--program", action="store_true",
                   help="also write FILE.pt2, a torch.export program that runs without PruneScope")
    p.add_argument("--onnx", metavar="FILE.onnx", type=out_path,
                   help="also write the pruned model as ONNX, checked with onnxruntime on the calibration "
                        "images (needs pip install 'prunescope[onnx]')")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    g = p.add_argument_group("a class's pathway as a model")
    g.add_argument("--class-pathway", metavar="CLASS",
                   help="keep the channels of this class's pathway (from --from, a `pathways` run) and "
                        "remove the rest; agreement is measured on the class's images and the others'")
    g.add_argument("--from", dest="pathways", metavar="pathways.json", help="the `pathways` run's results")
    g.add_argument("--coverage", type=coverage_percent, default=100 * DEFAULT_COVERAGE, metavar="P",
                   help="each graph layer keeps the fewest channels that carry P %% of the class's kept "
                        f"score (default {100 * DEFAULT_COVERAGE:g})")
    p.set_defaults(run=run_prune)

    s = subparsers.add_parser(
        "prune-sweep", help="prune at several sparsities by several criteria; plot accuracy, cost "
                            "and explanation drift",
        description="Writes DIR/sweep.json and DIR/headline.png, cost.png, drift.png, pathway.png.")
    s.add_argument("--criteria", type=criterion_list, default=list(CRITERIA),
                   help=f"comma-separated (default: {','.join(CRITERIA)})")
    s.add_argument("--out", required=True, type=out_path, metavar="DIR", help="folder for sweep.json and the plots")
    s.add_argument("--sparsities", type=percent_list, default=list(SWEEP_SPARSITIES),
                   help=f"comma-separated percents (default: {','.join(map(str, SWEEP_SPARSITIES))})")
    s.add_argument("--methods", type=method_list, default=list(SWEEP_METHODS),
                   help=f"maps compared before/after, comma-separated (default: {','.join(SWEEP_METHODS)})")
    add_method_params(s)
    s.add_argument("--no-latency", action="store_true", help="skip the latency measurements")
    s.add_argument("--overwrite", action="store_true",
                   help="start again in an --out folder that holds a sweep with other settings (without "
                        "it, the same command goes on where a stopped sweep left off)")
    # bn: a sweep prunes at every criterion x sparsity, and reconstruction takes minutes on each
    _common(s, "bn")
    s.set_defaults(run=run_sweep)


def _stats_line(label: str, stats, zeroed: bool) -> str:
    latency = "n/a" if stats.latency_ms != stats.latency_ms else f"{stats.latency_ms:.1f} ms"
    nonzero = f" ({stats.nonzero:,} non-zero)" if zeroed else ""
    return (f"{label:<9} params {stats.params:>12,}{nonzero}  MACs {stats.macs / 1e6:>9.1f} M  "
            f"latency {latency}")


def _report_skipped(calib) -> int:
    """One line per calibration image left out; exit code 2 if any was."""
    from core.cli import EXIT_BAD_INPUT, item_failed

    for path, why in calib.skipped.items():
        item_failed(path, why)
    if calib.skipped:
        total = len(calib.paths) + len(calib.skipped)
        say(f"prunescope: {len(calib.paths)} of {total} calibration images used; "
            f"{len(calib.skipped)} failed")
    return EXIT_BAD_INPUT if calib.skipped else 0


def coverage_percent(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 100], got {text}")
    return value


def run_prune(args) -> int:
    import dataclasses

    from core.errors import OutputError, PruneScopeError
    from core.io.output import write_text
    from core.model_pruning import calibrate, prune_model, save_pruned
    from core.model_pruning.deploy import export_onnx, require_onnx
    from core.progress import StderrBar, run

    out = Path(args.out)
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: output folder does not exist")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder, not a model file")
    if args.class_pathway is not None:
        return run_class_pathway(args, out)
    if args.criterion is None or args.sparsity is None:
        raise PruneScopeError("--criterion and --sparsity are required (or --class-pathway CLASS --from FILE)")
    if args.onnx:
        require_onnx()
        if not Path(args.onnx).parent.is_dir():
            raise OutputError(f"{Path(args.onnx).parent}: output folder does not exist")
    settings = recovery_of(args)
    settings.check()
    model = model_from_args(args)
    bar = StderrBar(f"prune {args.criterion}", quiet=args.quiet)
    try:
        calib = run(calibrate(model, args.calib), bar)
        held = run(calibrate(model, args.held_out), bar) if args.held_out else None
        report = run(prune_model(model, args.criterion, args.sparsity, calib, args.mode, args.protect,
                                 settings=settings, iterations=args.iterations, held_out=held,
                                 cap=args.max_layer_sparsity), bar)
        sizes = save_pruned(report, out, program=args.program)
        onnx = export_onnx(report.model.module, args.onnx, report.check_images) if args.onnx else None
        if args.save_steps:
            for k, step in enumerate(report.steps[:-1], 1):
                sizes.update(save_pruned(report.at_step(k - 1), out.with_name(f"{out.stem}.step{k}{out.suffix}")))
    finally:
        bar.close()
    unit = report.surgery.unit
    steps = f" in {report.iterations} steps" if report.iterations > 1 else ""
    print(f"{model.name}: {args.criterion}, {report.sparsity_reached:.3g} % of {unit}{steps} ({args.mode}), "
          f"{len(report.calibration)} calibration and {len(report.held_out)} held-out images on {model.device}")
    zeroed = unit == "weights"
    print(_stats_line("original", report.before, zeroed))
    print(_stats_line("pruned", report.after, zeroed))
    print(quality_line(report))
    if report.warning:
        say(f"prunescope: warning: {report.warning}")
    for name, why in report.surgery.skipped.items():
        print(f"kept whole: {name} ({why})")
    if report.reconstruction:
        r = report.reconstruction
        print("reconstruction undone: the refitted model was further from the original" if r["undone"] else
              f"reconstruction refitted {r['refitted']} of {r['layers']} layers (the others fitted no better)")
        for name, why in r["skipped"].items():
            print(f"not reconstructed: {name} ({why})")
    for path, size in sizes.items():
        print(f"wrote {path} ({size / 1e6:.2f} MB)")
    if onnx is not None:
        print(onnx.line())
    if args.json:
        extra = {"onnx": dataclasses.asdict(onnx)} if onnx is not None else {}
        write_text(args.json, json.dumps({"model": model.name, **report.summary(), "files": sizes, **extra},
                                         indent=1, default=_nan_free))
    return _report_skipped(calib)


def quality_line(report) -> str:
    """Agreement (and accuracy) on the held-out images, before and after recovery."""
    if report.agreement is None:
        return "top-1 agreement: not measured (one image: none left to hold out)"
    text = f"top-1 agreement with the original on {len(report.held_out)} held-out images: "
    after, before = report.fidelity, report.fidelity_before_recovery
    if report.recovery != "none":
        text += f"{report.agreement_before_recovery:.1%} -> {report.agreement:.1%} after {report.recovery} " \
                f"({report.recovery_s:.0f} s); top-5 overlap {before['top5_overlap']:.2f} -> " \
                f"{after['top5_overlap']:.2f}; KL to the original {before['kl']:.2f} -> {after['kl']:.2f}"
    else:
        text += f"{report.agreement:.1%}; top-5 overlap {after['top5_overlap']:.2f}; KL to the original " \
                f"{after['kl']:.2f}"
    if report.accuracy_after is not None:
        text += f"; accuracy {report.accuracy_before:.1%} -> {report.accuracy_after:.1%}"
    return text


def _nan_free(value):
    return None if value != value else value


def run_sweep(args) -> int:
    import dataclasses

    from core.cli import fail
    from core.evaluation.records import RecordStore
    from core.io.output import locked, output_folder
    from core.model_pruning import calibrate
    from core.model_pruning.sweep import sweep
    from core.progress import StderrBar, run
    from core.reporting.report import save_sweep

    if unknown(args.methods):
        return fail(f"unknown method(s) {', '.join(unknown(args.methods))}: choose from {', '.join(ALL_METHODS)}")
    settings = recovery_of(args)
    settings.check()
    out = output_folder(args.out)
    model = model_from_args(args)
    with locked(out):
        bar = StderrBar("prune-sweep", quiet=args.quiet)
        try:
            calib = run(calibrate(model, args.calib), bar)
            held = run(calibrate(model, args.held_out), bar) if args.held_out else None
            # what every point depends on; new criteria and sparsities add points beside the kept ones
            identity = {"model": model.name, "weights": model.weights_hash(), "mode": args.mode,
                        "protect": args.protect, "recovery": dataclasses.asdict(settings),
                        "calibration": [str(p) for p in calib.paths],
                        "held_out": [str(p) for p in held.paths] if held else None,
                        "methods": list(args.methods), "cap": args.max_layer_sparsity, "timed": not args.no_latency,
                        "method_params": args.method_params}
            store = RecordStore(out, identity, overwrite=args.overwrite)
            if args.overwrite:
                (out / "sweep.json").unlink(missing_ok=True)
            result = run(sweep(model, calib, args.criteria, args.sparsities, args.methods, args.mode,
                               args.protect, timed=not args.no_latency, settings=settings, held_out=held,
                               cap=args.max_layer_sparsity, store=store, method_params=args.method_params), bar)
        finally:
            bar.close()
        written = save_sweep(result, out)
    data = result.to_json()
    quality = result.quality
    print(f"{model.name}: {len(result.calibration)} calibration and {len(result.held_out)} held-out images, "
          f"{args.mode} ranking, recovery {result.recovery}, on {model.device}")
    print(f"{'criterion':<10} {'sparsity':>8} {'params':>7} {'MACs':>7} {'latency':>7} {'one-shot':>9} "
          f"{quality:>9} {'spearman':>8} {'IoU':>5}   (params, MACs, latency: % of the original)")
    for p in result.points:
        ratio = p.latency_ms / p.latency_original_ms
        latency = f"{ratio:>7.1%}" if ratio == ratio else f"{'-':>7}"
        print(f"{p.criterion:<10} {p.sparsity:>7g}% {p.nonzero / result.baseline['nonzero']:>7.1%} "
              f"{p.macs / result.baseline['macs']:>7.1%} {latency} "
              f"{getattr(p, quality + '_before_recovery'):>9.1%} {getattr(p, quality):>9.1%} "
              f"{p.mean_spearman:>8.3f} {p.pathway_iou:>5.2f}")
    for criterion, h in data["headline"].items():
        print(f"{criterion}: {quality} below {data['drop_level']:.0%} from "
              f"{_pct(h[f'{quality}_drops_at'])}, map similarity below it from {_pct(h['explanations_drift_at'])}")
    low = [f"{p.criterion} {p.sparsity:g} %" for p in result.points if p.agreement < LOW_AGREEMENT]
    if low:
        say(f"prunescope: warning: agreement on held-out images below {LOW_AGREEMENT:.0%} at {', '.join(low)}")
    for method, why in result.skipped_methods.items():
        print(f"skipped {method}: {why}", file=sys.stderr)
    for criterion, why in result.errors.items():
        fail(f"{criterion}: {why}")
    print(f"wrote {', '.join(p.name for p in written)} in {out}")
    if result.errors:
        say(f"prunescope: {len(result.criteria) - len(result.errors)} of {len(result.criteria)} "
            f"criteria swept; {len(result.errors)} failed")
    return max(_report_skipped(calib), 2 if result.errors else 0)


def _pct(value) -> str:
    return "never" if value is None else f"{value:g} %"


def run_class_pathway(args, out: Path) -> int:
    """prune --class-pathway CLASS --from pathways.json: see core.model_pruning.class_pathway."""
    import json

    import torch

    from core.errors import PruneScopeError
    from core.io.output import write_text
    from core.model_pruning.class_pathway import prune_class_pathway
    from core.model_pruning.deploy import save_checkpoint
    from core.progress import StderrBar, run

    if args.pathways is None:
        raise PruneScopeError("--class-pathway needs --from pathways.json (a `pathways` run's results)")
    try:
        summary = json.loads(Path(args.pathways).read_text())
    except (OSError, ValueError) as err:
        raise PruneScopeError(f"{args.pathways}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    if summary.get("command") != "pathways":
        raise PruneScopeError(f"{args.pathways}: not the results of a `pathways` run")
    model, load = _pathways_model(args, summary)
    if model.weights_hash() != summary.get("weights"):
        raise PruneScopeError(f"{args.pathways} was computed with another model than {model.name}: give the "
                              "same --model and --weights as for `pathways`")
    target = summary["classes"].get(args.class_pathway, {}).get("id")
    own, others = [], []
    for name, cls in zip(summary["image_names"], summary["image_classes"]):
        (own if cls == target else others).append(model.preprocess(load(name))[0])
    if not own:
        raise PruneScopeError(f"no class '{args.class_pathway}' in {args.pathways}: choose from "
                              f"{', '.join(summary['classes'])}")
    bar = StderrBar(f"class pathway {args.class_pathway}", quiet=args.quiet)
    try:
        report = run(prune_class_pathway(model, summary, args.class_pathway, torch.cat(own),
                                         torch.cat(others) if others else None, args.coverage / 100), bar)
    finally:
        bar.close()
    size = save_checkpoint(report.model, report.summary(), out)
    print(f"{model.name}: the pathway of {args.class_pathway} ({args.coverage:g} % of its kept score in "
          + ", ".join(f"{layer} {k}/{n}" for layer, (k, n) in report.kept.items()) + ")")
    print(_stats_line("original", report.before, False))
    print(_stats_line("pruned", report.after, False))
    others_text = "n/a" if report.agreement_others is None else f"{report.agreement_others:.1%}"
    print(f"top-1 agreement with the original: {report.agreement_own:.1%} on the class's {report.own_images} "
          f"images, {others_text} on the other classes' {report.other_images}")
    print(f"wrote {out} ({size / 1e6:.2f} MB)")
    if args.json:
        write_text(args.json, json.dumps({"model": model.name, **report.summary()}, indent=1))
    return 0


def _pathways_model(args, summary: dict):
    """The model a pathways run used and a loader of its images by name: the synthetic CNN (as the
    run made it) or the model options given, on the run's image folder."""
    from core.cli.options import model_from_args, synthetic_model
    from core.io.images import load_image
    from core.progress import StderrBar
    from core.runtime.distributed import SINGLE

    if summary.get("dataset") == "synthetic":
        from core.evaluation.synthetic import make_item

        for key, value in summary.get("synthetic", {}).items():
            setattr(args, key, value)
        bar = StderrBar("synthetic model", quiet=args.quiet)
        try:
            data, trained = synthetic_model(args, SINGLE, bar)
        finally:
            bar.close()
        return trained.model, lambda name: make_item(data, name.split("/")[0], int(name.split("/")[1]))[0]
    root = Path(summary["source"])
    return model_from_args(args), lambda name: load_image(root / name)
