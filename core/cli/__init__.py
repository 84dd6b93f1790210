"""The headless command line. Each command lives in its own module with

    register(subparsers) -> None   # adds its parser(s), each with set_defaults(run=callable)

Command modules import only the standard library at top level, so that `--help` and the GUI
start fast; they import torch and the engine inside their run functions.
"""
import argparse
import gc
import importlib
import signal
import sys

from core.errors import PruneScopeError, about, reason

COMMAND_MODULES = (
    "core.cli.explain",
    "core.cli.models",
    "core.cli.bench",
    "core.cli.sanity",
    "core.cli.evaluate",
    "core.cli.pathways",
    "core.cli.prune",
    "core.cli.dissect",
)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl+C's KeyboardInterrupt so that the same clean-up runs."""


# An interrupt that Python dropped because it fired inside a destructor (a progress bar's
# __del__, say): raised again before the next item, so that it is not lost.
_dropped: list[KeyboardInterrupt] = []
# Set once an interrupt stops the command: the destructors of objects it cut half-built (a
# progress bar interrupted in __init__ fails in __del__) then fail silently, not with a traceback.
_stopping: list[bool] = []


def check_interrupted() -> None:
    if _dropped:
        raise _dropped.pop()


def register_all(subparsers) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)


def say(line: str) -> None:
    """A line on stderr that does not land inside a progress bar's line."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def fail(message: str) -> int:
    """One clear line on stderr; the caller returns EXIT_BAD_INPUT."""
    say(f"prunescope: error: {message}")
    return EXIT_BAD_INPUT


def item_failed(item, error: BaseException | str) -> int:
    """One line naming the item and why it failed (an exception, or the reason already told)."""
    return fail(about(item, error if isinstance(error, str) else reason(error)))


class Batch:
    """A batch command's tally: each item succeeds or costs one line; a summary at the end."""

    def __init__(self, total: int, noun: str, verb: str):
        self.total, self.noun, self.verb = total, noun, verb
        self.done = 0
        self.failed = 0
        self.problems = 0  # things that failed inside items that were still done

    def over(self, items):
        """The items, stopping before the next one if an interrupt came in a destructor."""
        for item in items:
            check_interrupted()
            yield item

    def item_failed(self, item, error: BaseException) -> None:
        self.failed += 1
        item_failed(item, error)

    def problem(self, message: str) -> None:
        self.problems += 1
        fail(message)

    def finish(self, quiet: bool = False) -> int:
        """Exit code 2 if anything failed; the summary line when something did, or unless quiet."""
        bad = self.failed or self.problems
        if bad or not quiet:
            line = f"{self.done} of {self.total} {self.noun} {self.verb}"
            if self.failed:
                line += f"; {self.failed} failed"
            if self.problems:
                line += f"; {self.problems} with errors"
            say(f"prunescope: {line}")
        return EXIT_BAD_INPUT if bad else 0


def _terminate(_signum, _frame) -> None:
    raise Terminated()


def _unraisable(previous):
    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _dropped.append(unraisable.exc_value)  # no "Exception ignored" traceback: kept for later
        elif not _stopping:
            previous(unraisable)
    return hook


def dispatch(args: argparse.Namespace) -> int:
    """Run a command: any error is one line and exit 2, Ctrl+C 130, SIGTERM 143."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    _dropped.clear()
    _stopping.clear()
    try:
        code = int(args.run(args) or 0)
        check_interrupted()
        return code
    except PruneScopeError as err:
        return fail(reason(err))
    except Terminated:
        _stopping.append(True)
        say("prunescope: terminated; unfinished results removed")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        _stopping.append(True)
        say("prunescope: interrupted; unfinished results removed")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise  # main() silences it
    except Exception as err:  # a failure outside any one item: still one line, not a traceback
        return fail(reason(err))
    finally:
        try:
            if _stopping:
                gc.collect()  # the interrupted frames' objects go now, while the hook silences them
        finally:
            signal.signal(signal.SIGTERM, previous)
            sys.unraisablehook = previous_hook
