"""The headless command line. Each command lives in its own module with

    register(subparsers) -> None   # adds its parser(s), each with set_defaults(run=callable)

Command modules import only the standard library at top level, so that `--help` and the GUI
start fast; they import torch and the engine inside their run functions.
"""
import argparse
import importlib
import sys

from core.errors import PruneScopeError

COMMAND_MODULES = (
    "core.cli.explain",
    "core.cli.models",
    "core.cli.bench",
    "core.cli.sanity",
    "core.cli.evaluate",
    "core.cli.prune",
)

EXIT_BAD_INPUT = 2


def register_all(subparsers) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)


def fail(message: str) -> int:
    """One clear line on stderr; the caller returns EXIT_BAD_INPUT."""
    print(f"prunescope: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def dispatch(args: argparse.Namespace) -> int:
    try:
        return int(args.run(args) or 0)
    except PruneScopeError as err:
        return fail(str(err))
    except KeyboardInterrupt:
        print("prunescope: interrupted", file=sys.stderr)
        return 130
