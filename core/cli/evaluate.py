"""`prunescope evaluate` (ground-truth metrics, deletion/insertion, sanity checks over a dataset)
and `prunescope roar` (remove and retrain), on the synthetic benchmark or an image folder.

Both run under `torchrun --nproc_per_node N main.py evaluate|roar ...`: images and ROAR jobs are
shared out over the processes and rank 0 writes the results, the same as one process would.
"""
import argparse
import sys
from pathlib import Path

from core.cli import EXIT_BAD_INPUT, fail, say
from core.cli.options import (MAX_STEPS, MODEL_HELP, add_method_params, add_model_details,
                              add_synthetic_options, curve_steps, method_list, out_path, positive_int,
                              sparsity_percent, synthetic_model)
from core.evaluation import EXTRA_METRICS
from core.methods import DEFAULTS

SYNTHETIC = "synthetic"
DEFAULT_IMAGES = 100
EVALUATE_DEFAULT = DEFAULTS["evaluate"]
ROAR_DEFAULT = DEFAULTS["roar"]


def percent_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"fractions must be comma-separated percentages: {text}")
    if not values or any(not 0 < v < 100 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be percentages in (0, 100): {text}")
    return [v / 100 for v in values]


def metric_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if names == ["none"]:
        return []
    bad = [m for m in names if m not in EXTRA_METRICS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(bad) or text!r}: choose from "
                                         f"{', '.join(EXTRA_METRICS)} or none")
    return names


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, metavar="synthetic|DIR",
                   help="'synthetic' (generated, with exact ground truth) or an image folder "
                        "DIR/<class>/<image> (ImageFolder layout)")
    p.add_argument("--out", required=True, type=out_path, metavar="DIR", help="folder for the results")
    p.add_argument("--model", metavar="SPEC", default=None,
                   help=f"model for an image folder: {MODEL_HELP}; the synthetic dataset uses its "
                        "own trained CNN")
    add_model_details(p)
    p.add_argument("--labels-csv", metavar="FILE",
                   help="labels of a flat image folder (ImageNet's validation set): image,label rows, "
                        "the label a class id, a class name or an ImageNet WordNet ID")
    p.add_argument("--masks", metavar="DIR",
                   help="ground-truth masks for an image folder, as MASKS/<class>/<image stem>.png "
                        "(pixels >= 128 are the object; default DIR_masks when it exists)")
    p.add_argument("--target", choices=("label", "predicted"),
                   help="class explained: the true label (default for synthetic) or the model's "
                        "prediction (default for a folder; 'label' there needs class folders named "
                        "by the model's class ids, class names or ImageNet WordNet IDs, or "
                        "--labels-csv)")
    p.add_argument("--sparsity", type=sparsity_percent, default=70.0,
                   help="percent of neurons pruned by the pathway methods (default 70)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out folder that holds a run with other settings "
                        "(without it, the same command goes on where a stopped run left off)")
    add_synthetic_options(p)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score explanation methods on a dataset: pointing game, relevance mass, "
                         "deletion/insertion AUC, sanity checks",
        description="Score every method on a dataset. Ground-truth metrics (pointing game, "
                    "relevance mass) need masks: the synthetic dataset has them; an image folder "
                    "has them with --masks.")
    _common(p)
    p.add_argument("--methods", type=method_list, default=[*EVALUATE_DEFAULT, "random"],
                   help=f"comma-separated; 'random' and 'oracle' (the ground truth) are reference "
                        f"maps (default: {','.join(EVALUATE_DEFAULT)},random)")
    add_method_params(p)
    p.add_argument("--images", "--limit", type=positive_int, dest="images",
                   help=f"images scored: the first N, in sorted order, or of --sample's (default "
                        f"{DEFAULT_IMAGES}, or all of --sample's)")
    p.add_argument("--sample", type=positive_int, metavar="N",
                   help="score N images drawn at random (--seed), each class in proportion")

    p.add_argument("--sanity-images", type=int, default=4,
                   help="images given the cascading randomisation check (default 4; 0 skips it)")
    p.add_argument("--steps", type=curve_steps, default=20,
                   help=f"deletion/insertion steps, 1-{MAX_STEPS} (default 20)")
    p.add_argument("--baseline", choices=("mean", "blur", "black"), default="mean",
                   help="what deleted pixels become (default: the dataset mean)")
    p.add_argument("--metrics", type=metric_list, default=list(EXTRA_METRICS),
                   help="besides deletion/insertion and the ground-truth metrics, comma-separated: "
                        "road (ROAD MoRF and LeRF, the slowest), confidence (Average Drop, Increase "
                        "in Confidence), faithfulness (faithfulness correlation), complexity "
                        "(sparseness, complexity), or none (default: all)")
    p.set_defaults(run=run_evaluate)

    r = subparsers.add_parser(
        "roar", help="RemOve And Retrain: accuracy of models retrained without each method's "
                     "most relevant pixels",
        description="For each method and fraction, replace that fraction of every training and "
                    "test image's most relevant pixels with the dataset mean, train a fresh model "
                    "on the rest and test it. A lower curve (area) means the method found the "
                    "evidence better. A random order is always included as the baseline.")
    _common(r)
    r.add_argument("--methods", type=method_list, default=list(ROAR_DEFAULT),
                   help=f"comma-separated; 'random' is always added, 'oracle' (ground truth) is "
                        f"allowed with masks (default: {','.join(ROAR_DEFAULT)})")
    add_method_params(r)
    r.add_argument("--fractions", type=percent_list, default=[0.1, 0.3, 0.5, 0.7, 0.9],
                   help="percent of pixels removed (default 10,30,50,70,90)")
    r.add_argument("--train-images", type=positive_int, default=1000,
                   help="training images for each retrained model (default 1000)")
    r.add_argument("--test-images", type=positive_int, default=500,
                   help="test images (default 500)")
    r.add_argument("--epochs", type=positive_int, default=8, help="retraining epochs (default 8)")
    r.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    r.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    r.set_defaults(run=run_roar)


# ---- shared set-up -------------------------------------------------------------------------

def _folder_model(args, ctx):
    from core.cli.options import model_from_args

    return model_from_args(args, device=ctx.device)


def _masks_dir(args):
    if args.masks:
        return args.masks
    default = Path(str(Path(args.dataset)).rstrip("/") + "_masks")
    return default if default.is_dir() else None


def _check_args(args):
    from core.errors import PruneScopeError

    if args.dataset == SYNTHETIC:
        details = (args.model, args.weights, args.labels, args.input_size, args.resize, args.mean,
                   args.std, args.gradcam_layer, args.output, args.masks, args.labels_csv)
        if any(v is not None for v in details):
            raise PruneScopeError("--model, its details, --masks and --labels-csv are for an image "
                                  "folder; the synthetic dataset brings its own model, labels and masks")
    elif not Path(args.dataset).is_dir():
        raise PruneScopeError(f"{args.dataset}: not 'synthetic' and not a folder")


def model_and_source(args, ctx, bar, target: str, masks=None):
    """(model, source, trained): the synthetic set's test images and its trained CNN (trained: how),
    or the image folder --dataset names (with masks) and the model the options name (trained: None)."""
    from core.evaluation.sources import folder_source, synthetic_source

    if args.dataset == SYNTHETIC:
        data, trained = synthetic_model(args, ctx, bar)
        return trained.model, synthetic_source(data, "test"), trained
    model = _folder_model(args, ctx)
    return model, folder_source(args.dataset, masks, class_names=model.class_names, labels_csv=args.labels_csv,
                                strict=target == "label", sample=args.sample, seed=args.seed), None


def _open_records(out: Path, identity: dict, overwrite: bool, finals, ctx, stack):
    """The run's kept records (core.evaluation.records). The first process holds the output folder
    for the rest of the run (`stack`), checks the folder's settings and, with overwrite, clears
    the old run's final files; what it refuses reaches every process as the same one line."""
    from core.errors import PruneScopeError
    from core.evaluation.records import RecordStore
    from core.io.output import locked
    from core.runtime.distributed import broadcast

    store, problem = None, None
    if ctx.is_main:
        try:
            stack.enter_context(locked(out))
            store = RecordStore(out, identity, overwrite=overwrite)
            if overwrite:  # no results of the old run beside the new one's records
                for name in finals:
                    (out / name).unlink(missing_ok=True)
        except PruneScopeError as err:
            problem = str(err)
    problem = broadcast(problem, ctx)
    if problem:
        raise PruneScopeError(problem)
    return store or RecordStore(out, identity, check=False)


def _write_json(path: Path, data: dict) -> None:
    import json

    from core.io.output import write_text

    write_text(path, json.dumps(data, indent=2))


# ---- evaluate ------------------------------------------------------------------------------

def run_evaluate(args) -> int:
    import time
    from contextlib import ExitStack

    from core.evaluation.benchmark import BenchmarkSettings, iter_benchmark, run_settings
    from core.io.output import output_folder
    from core.progress import StderrBar, run
    from core.reporting.report import EVALUATION_FILES, model_info, save_evaluation
    from core.runtime.distributed import setup, teardown

    _check_args(args)
    out = output_folder(args.out)  # before the work: a bad --out must not cost an evaluation
    target = args.target or ("label" if args.dataset == SYNTHETIC else "predicted")
    ctx = setup(args.device)
    bar = StderrBar("evaluate", quiet=args.quiet or not ctx.is_main)
    started = time.perf_counter()
    with ExitStack() as stack:
        try:
            model, source, trained = model_and_source(args, ctx, bar, target, _masks_dir(args))
            settings = BenchmarkSettings(
                methods=args.methods, images=args.images or args.sample or DEFAULT_IMAGES,
                sanity_images=max(0, args.sanity_images), steps=args.steps, baseline=args.baseline,
                sparsity=args.sparsity, target=target, seed=args.seed, metrics=tuple(args.metrics),
                method_params=args.method_params)
            store = _open_records(out, run_settings(model, source, settings), args.overwrite, EVALUATION_FILES,
                                  ctx, stack)
            result = run(iter_benchmark(model, source, settings, ctx, store), bar)
        finally:
            bar.close()
            teardown(ctx)
        if result is None:  # not rank 0
            return 0
        examples, sanity_example = result.pop("examples"), result.pop("sanity_example")
        result.update(command="evaluate", model=model_info(model, trained), world_size=ctx.world,
                      seconds=time.perf_counter() - started)
        save_evaluation(result, examples, sanity_example, model.class_names, out)
    if not args.quiet:
        print_table(result)
        print(f"results in {out}")
        say(timing_line(result["timing"]))
    for line in result["errors"]:
        fail(line)
    for method, why in result["skipped"].items():
        print(f"prunescope: note: {method} skipped: {why}", file=sys.stderr)
    if result["errors"]:
        say(f"prunescope: {result['images']} images evaluated; {len(result['errors'])} failed")
    return EXIT_BAD_INPUT if result["errors"] else 0


def timing_line(timing: dict) -> str:
    """This run's speed: images per second and seconds per image in each stage."""
    if not timing["images_computed"]:
        return "prunescope: every image was already evaluated in this folder: nothing computed"
    stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timing["seconds_per_image"].items())
    return (f"prunescope: {timing['images_computed']} images computed in {timing['seconds']:.1f} s, "
            f"{timing['images_per_second']:.2f} images/s; per image: {stages}")


def print_table(result: dict) -> None:
    """The leaderboard, best first, with the metrics most users read."""
    shown = [("deletion_auc", "del.AUC"), ("insertion_auc", "ins.AUC"), ("road_morf", "ROAD-MoRF"),
             ("road_lerf", "ROAD-LeRF"), ("average_drop", "AvgDrop"), ("faithfulness_correlation", "faith.r"),
             ("sparseness", "sparse"), ("pointing_game", "pointing"), ("sanity_spearman", "sanity-rho")]
    acc = result.get("accuracy")
    print(f"{result['images']} images of {result['dataset']}"
          + (f", model accuracy {acc:.1%}" if acc is not None else "")
          + (f", pointing-game chance {result['chance_pointing']:.3f}"
             if result["chance_pointing"] is not None else ""))
    metrics = result["leaderboard"]["metrics"]
    shown = [(key, label) for key, label in shown if key in metrics]
    print(f"{'rank':>4} {'method':28s} " + " ".join(f"{label:>10s}" for _, label in shown))
    for row in result["leaderboard"]["rows"]:
        cells = " ".join(f"{row[key]:10.3f}" if row.get(key) is not None else f"{'-':>10s}" for key, _ in shown)
        print(f"{row['rank']:>4} {row['method']:28s} {cells}")


# ---- roar ----------------------------------------------------------------------------------

def run_roar(args) -> int:
    import time
    from contextlib import ExitStack

    from core.evaluation.roar import RoarSettings, iter_roar, run_settings
    from core.evaluation.synthetic import SmallResNet, make_split, reinitialise
    from core.io.output import output_folder
    from core.models.weights import fingerprint
    from core.progress import StderrBar, run
    from core.reporting import figures
    from core.reporting.report import model_info
    from core.runtime.distributed import setup, teardown

    _check_args(args)
    out = output_folder(args.out)
    ctx = setup(args.device)
    bar = StderrBar("roar", quiet=args.quiet or not ctx.is_main)
    started = time.perf_counter()
    target = args.target or ("label" if args.dataset == SYNTHETIC else "predicted")
    with ExitStack() as stack:
        try:
            trained = None
            if args.dataset == SYNTHETIC:
                data, trained = synthetic_model(args, ctx, bar)
                model = trained.model
                train = make_split(data, "train", min(args.train_images, data.train))
                test = make_split(data, "test", min(args.test_images, data.test))

                def make_fresh(seed):
                    return reinitialise(SmallResNet(data.classes), seed)
            else:
                import copy

                model = _folder_model(args, ctx)
                train, test = _folder_split(args, model, target)

                def make_fresh(seed):  # the explained architecture, trained from scratch
                    return reinitialise(copy.deepcopy(model.module).cpu(), seed)
            data_key = fingerprint(train.images, train.labels, test.images, test.labels)
            settings = RoarSettings(methods=args.methods, fractions=args.fractions,
                                    epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                    sparsity=args.sparsity, target=target, seed=args.seed,
                                    method_params=args.method_params)
            store = _open_records(out, run_settings(model, settings, data_key), args.overwrite, ["roar.json"],
                                 ctx, stack)
            result = run(iter_roar(model, make_fresh, train, test, settings, out / "maps", data_key,
                                   ctx, store), bar)
        finally:
            bar.close()
            teardown(ctx)
        if result is None:
            return 0
        result.update(command="roar", dataset=args.dataset, model=model_info(model, trained),
                      world_size=ctx.world, seconds=time.perf_counter() - started)
        figures.save(figures.roar(result), out)
        _write_json(out / "roar.json", result)  # last: the mark of a complete run
    if not args.quiet:
        print(f"{result['train_images']} training / {result['test_images']} test images; "
              f"unchanged data: accuracy {result['unchanged_accuracy']:.3f}")
        fractions = result["methods"][next(iter(result["methods"]))]["fractions"][1:]
        print(f"{'method':30s} " + " ".join(f"{f:6.0%}" for f in fractions) + "     AUC")
        for method, entry in result["methods"].items():
            print(f"{method:30s} " + " ".join(f"{a:6.3f}" for a in entry["accuracy"][1:])
                  + f"  {entry['auc']:6.3f}")
        print(f"results in {out}")
    for method, why in result["skipped"].items():
        print(f"prunescope: note: {method} skipped: {why}", file=sys.stderr)
    return 0


def _folder_split(args, model, target):
    """DIR/train and DIR/test when both exist; else every fifth image (by sorted order) is a test
    image. Capped at --train-images / --test-images."""
    from core.evaluation.sources import folder_source, load_dataset

    root = Path(args.dataset)
    masks = _masks_dir(args)
    if (root / "train").is_dir() and (root / "test").is_dir():
        parts = []
        for split, cap in (("train", args.train_images), ("test", args.test_images)):
            source = folder_source(root / split, Path(masks) / split if masks else None)
            parts.append(load_dataset(model, source, range(min(cap, source.count)), target))
        return tuple(parts)
    source = folder_source(root, masks, class_names=model.class_names if args.labels_csv else None,
                           labels_csv=args.labels_csv)
    test_rows = [i for i in range(source.count) if i % 5 == 0][:args.test_images]
    train_rows = [i for i in range(source.count) if i % 5][:args.train_images]
    return (load_dataset(model, source, train_rows, target),
            load_dataset(model, source, test_rows, target))

