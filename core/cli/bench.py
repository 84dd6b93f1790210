"""`prunescope bench`: the engine's speed as ratios measured side by side, printed as JSON;
`--gui`: the real window's latency as a person meets it (see gui/bench.py)."""
from core.cli.options import add_model_options, model_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure the engine's speed (JSON on stdout)")
    add_model_options(p, "; the figures are for the embedded model unless you name another",
                      quiet=False)
    p.add_argument("--repeats", type=int, default=5, help="timings per figure; the median is kept")
    p.add_argument("--gui", action="store_true",
                   help="drive the real window offscreen instead: time to the first map and to "
                        "everything on screen, slider-to-map latency at three paces, GUI stalls")
    p.add_argument("--image", metavar="FILE", help="the photo --gui opens (default: chelsea.png)")
    p.set_defaults(run=run_bench_command)


def run_bench_command(args) -> int:
    import json

    if args.gui:
        from core.model_sources import resolve_card
        from core.resources import sample_images
        from gui.bench import run_gui_bench  # Qt only for --gui

        image = args.image or str(next(p for p in sample_images() if p.name == "chelsea.png"))
        card = None if args.model is None else resolve_card(
            args.model, weights=args.weights, labels=args.labels, input_size=args.input_size,
            resize=args.resize, mean=args.mean, std=args.std, gradcam_layer=args.gradcam_layer)
        print(json.dumps(run_gui_bench(image, card), indent=2))
        return 0
    from core.bench import run_bench

    model = model_from_args(args)
    print(json.dumps(run_bench(model, repeats=max(1, args.repeats)), indent=2))
    return 0
