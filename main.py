"""PruneScope: `python main.py` opens the app; subcommands run the engine headless."""
import argparse
import ctypes
import os
import signal
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters


def build_parser() -> argparse.ArgumentParser:
    from core.cli import register_all
    from core.cli.options import MODEL_HELP, add_model_details

    parser = argparse.ArgumentParser(
        prog="prunescope",
        description="Explain image classifiers by pruning them for one input.")
    parser.add_argument("--self-test", action="store_true",
                        help="run the engine and render the window once, then exit (for bundles)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    gui = commands.add_parser("gui", help="open the desktop app (the default)")
    gui.add_argument("images", nargs="*", help="images to open")
    gui.add_argument("--screenshot", metavar="FILE.png",
                     help="save a PNG of the window once the first analysis is shown, then exit")
    gui.add_argument("--model", metavar="SPEC", help=MODEL_HELP + " (default: the last one used)")
    add_model_details(gui)
    gui.set_defaults(run=_run_gui)
    register_all(commands)
    parser.command_names = frozenset(commands.choices)
    return parser


def _card_of(args: argparse.Namespace):
    """The model card --model and its details name, or None for the app's last model."""
    from core.models.sources import resolve_card

    details = dict(weights=args.weights, labels=args.labels, input_size=args.input_size,
                   resize=args.resize, mean=args.mean, std=args.std, gradcam_layer=args.gradcam_layer,
                   output=args.output)
    if args.model or any(v is not None for v in details.values()):
        return resolve_card(args.model, **details)  # a bad SPEC or card: one line, exit 2
    return None


def _run_gui_bench(args: argparse.Namespace) -> int:
    import json

    from core.io.resources import sample_images
    from gui.latency import run_gui_bench  # Qt only for --gui

    image = args.image or str(next(p for p in sample_images() if p.name == "chelsea.png"))
    print(json.dumps(run_gui_bench(image, _card_of(args), args.all_methods), indent=2))
    return 0


def _run_gui(args: argparse.Namespace) -> int:
    from gui.app import run_app  # Qt is imported only when the window is wanted

    model = _card_of(args)
    # SIGTERM ends the app at once, as by default: a Python handler would wait for Qt's loop.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return run_app(args.images, screenshot=args.screenshot, model=model)


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next allocation instead of handing it back to the OS.
    Every forward and backward allocates its activations afresh; returned to the OS they are
    page-faulted in again each time, a large share of a pathway map's time (`bench`). Nor is any
    block mapped apart (glibc maps those over a threshold of at most 32 MB): the flat score and
    mask buffers of a model with more than 8 M neurons (ResNet-50) are larger, and each slider
    move would page-fault its masks in. Where the heap cannot grow, glibc still maps. One arena
    for all threads: another thread's (the app's worker, where the engine runs) maps its blocks
    over 64 MB and hands emptied heaps back. A long session may keep more memory, as freed blocks
    stay for reuse."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:  # another C library
            return
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_ARENA_MAX, 1)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in parser.command_names:
        argv = ["gui", *argv]  # `prunescope photo.jpg` opens the photo
    args = parser.parse_args(argv)
    if args.self_test:
        from gui.selftest import self_test

        return self_test()
    if args.command is None:
        args = parser.parse_args(["gui", *argv])
    if args.command == "bench" and args.gui:
        args.run = _run_gui_bench  # core never imports the GUI
    from core.cli import dispatch

    try:
        return dispatch(args)
    except BrokenPipeError:  # e.g. `prunescope models | head`: stop quietly, as Python's docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
