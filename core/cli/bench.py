"""`prunescope bench`: the engine's speed as ratios measured side by side (core.cli.speed), printed
as JSON. `--gui` (the real window's latency as a person meets it, gui/latency.py) is run by
main.py: core never imports the GUI."""
from core.cli.options import add_model_options, model_from_args, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure the engine's speed (JSON on stdout)")
    add_model_options(p, "; the figures are for the embedded model unless you name another",
                      quiet=False)
    p.add_argument("--repeats", type=int, default=5, help="timings per figure; the fastest is kept")
    p.add_argument("--gui", action="store_true",
                   help="drive the real window offscreen instead: time to the first map and to "
                        "everything on screen, slider-to-map latency at three paces, GUI stalls")
    p.add_argument("--image", metavar="FILE", help="the photo --gui opens (default: chelsea.png)")
    p.add_argument("--all-methods", action="store_true",
                   help="with --gui: every method and every pathway version ticked, the slider driven while "
                        "the slow ones are computed")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="torch threads for the engine figures (default: torch's own; the app's worker "
                        "uses every core up to 4, one fewer above)")
    p.set_defaults(run=run_bench_command)


def run_bench_command(args) -> int:
    import json

    from core.cli.speed import run_bench

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = model_from_args(args)
    print(json.dumps(run_bench(model, repeats=max(1, args.repeats)), indent=2))
    return 0
