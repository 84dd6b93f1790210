"""`prunescope bench`: the engine's speed as ratios measured side by side, printed as JSON."""


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure the engine's speed (JSON on stdout)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--repeats", type=int, default=5, help="timings per figure; the median is kept")
    p.set_defaults(run=run_bench_command)


def run_bench_command(args) -> int:
    import json

    from core.bench import run_bench
    from core.models import load_model

    model = load_model("efficientnet_lite0", device=args.device)
    print(json.dumps(run_bench(model, repeats=max(1, args.repeats)), indent=2))
    return 0
