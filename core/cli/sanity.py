"""`prunescope sanity IMAGE [IMAGE ...] --out DIR`: cascading parameter randomisation per image.

Writes DIR/<image stem>/sanity.json, spearman.png and ssim.png (similarity to the trained model's
map against the blocks randomised, one line per method) and maps.png (maps at a few steps).
"""
import sys
from pathlib import Path

from core.cli.options import (add_method_params, add_model_options, method_list, model_from_args, out_path,
                              sparsity_percent)
from core.methods import ALL_METHODS, DEFAULTS, unknown

DEFAULT_METHODS = DEFAULTS["sanity"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sanity", help="model-randomisation sanity check: do the maps depend on the weights?",
        description="Re-initialise the model's parameter blocks from the output down and compare "
                    "each method's map with the trained model's (Spearman of |map|, SSIM).")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, type=out_path, metavar="DIR",
                   help="results go to DIR/<image stem>/ (one folder per image, never shared)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace result folders that already exist (default: refuse them)")
    add_model_options(p)
    p.add_argument("--methods", type=method_list, default=list(DEFAULT_METHODS),
                   help=f"comma-separated (default: {','.join(DEFAULT_METHODS)})")
    add_method_params(p)
    p.add_argument("--target", type=int, help="class id to explain (default: the predicted class)")
    p.add_argument("--sparsity", type=sparsity_percent, default=70.0,
                   help="percent of neurons pruned by the pathway methods (default 70)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random re-initialisation")
    p.set_defaults(run=run_sanity)


def run_sanity(args) -> int:
    from dataclasses import replace

    from core.cli import Batch, fail
    from core.evaluation.sanity import iter_cascading_randomization
    from core.io.images import load_image
    from core.io.output import locked, output_folder, result_names, staged_folder
    from core.methods import supports
    from core.pathway.engine import Engine, compute_map
    from core.progress import StderrBar, run

    if unknown(args.methods):
        return fail(f"unknown method(s) {', '.join(unknown(args.methods))}: choose from {', '.join(ALL_METHODS)}")
    out_dir = output_folder(args.out)
    model = model_from_args(args)
    methods = []
    for method in dict.fromkeys(args.methods):
        ok, why = supports(method, model)
        if ok:
            methods.append(method)
        else:
            print(f"prunescope: note: {method} skipped: {why}", file=sys.stderr)
    if not methods:
        return fail(f"none of the methods can run on {model.name}")

    def explain(module, x, target, method):
        return compute_map(replace(model, module=module), x, target, method, sparsity=args.sparsity,
                           settings=args.method_params)

    paths = list(dict.fromkeys(args.images))
    batch = Batch(len(paths), "images", "checked")
    with locked(out_dir):
        for path, name in batch.over(zip(paths, result_names(paths))):
            bar = StderrBar(Path(path).name, quiet=args.quiet)
            out = out_dir / name
            try:
                with staged_folder(out, args.overwrite) as staging:
                    engine = Engine(model, load_image(path), target=args.target)
                    result = run(iter_cascading_randomization(model.module, engine.x, engine.target,
                                                              methods, explain, seed=args.seed), bar)
                    write_results(staging, result, engine, model.name, path, args.sparsity, args.method_params)
            except Exception as err:
                bar.close()  # first, so that the line does not land inside the bar's
                batch.item_failed(path, err)
                continue
            finally:
                bar.close()
            batch.done += 1
            if not args.quiet:
                last = ", ".join(f"{m} {result.spearman[m][-1]:.2f}" for m in methods)
                print(f"{path}: {engine.prediction.name}: Spearman after full randomisation: {last} -> {out}")
    return batch.finish(args.quiet)


def write_results(out: Path, result, engine, model_name: str, image_path, sparsity: float,
                  method_params: dict) -> None:
    import json

    from core.reporting import figures

    data = {"image": str(image_path), "source": str(Path(image_path).resolve()), "model": model_name,
            "class_name": engine.prediction.name, "probability": engine.prediction.prob,
            "sparsity": sparsity, "method_params": method_params, **result.to_json()}
    title = f"{Path(image_path).name}, {model_name}, class {engine.prediction.name}"
    figures.save(figures.sanity(result, engine.view, title), out)
    (out / "sanity.json").write_text(json.dumps(data, indent=2))  # last: the mark of a complete result

