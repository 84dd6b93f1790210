"""Long computations are generators that yield Progress and return their result.

A caller stops one by no longer iterating it (the GUI worker quits at the next yield); a step
that cannot yield may take a `stop` check instead and raise Stopped when it says so.
"""
import sys
from dataclasses import dataclass
from typing import Callable, Generator, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    done: float  # 0..1 of this computation
    message: str = ""
    partial: object = None  # what is finished so far, for a caller that shows it as it grows


Job = Generator[Progress, None, T]


class Stopped(Exception):
    """A step abandoned half-way because its caller's stop check asked: nothing was changed."""


class Paused(Stopped):
    """A step abandoned half-way because more urgent work waits (hurry): it can be run again."""


def _never() -> bool:
    return False


# Set by the app's worker: whether a more urgent job (a slider move) waits for the step under way.
# A step that waits on work it need not watch (core.methods.library_run) then ends at once.
hurry: Callable[[], bool] = _never


def pause_if_hurried() -> bool:
    """A stop check for a step that can be run again: raises Paused when hurry() says so, so that
    a slider move waits for no more of the step than what cannot be cut (a backward)."""
    if hurry():
        raise Paused("more urgent work waits")
    return False


def run(job: "Job[T]", on_progress=None) -> T:
    """Drive a job to its end and return its result."""
    while True:
        try:
            step = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(step)


def scaled(job: "Job[T]", start: float, end: float) -> "Job[T]":
    """Map a sub-job's 0..1 progress into [start, end] of the caller's."""
    while True:
        try:
            step = next(job)
        except StopIteration as stop:
            return stop.value
        yield Progress(start + (end - start) * step.done, step.message)


class StderrBar:
    """A one-line progress bar on stderr that stays silent for jobs under ~2 s."""

    def __init__(self, label: str, quiet: bool = False, delay: float = 2.0):
        from tqdm import tqdm

        self._label = label
        self._bar = tqdm(total=1000, desc=label, disable=quiet, delay=delay, file=sys.stderr,
                         leave=False, bar_format="{desc} {percentage:3.0f}%|{bar}|")

    def __call__(self, step: Progress) -> None:
        self._bar.n = int(1000 * min(max(step.done, 0.0), 1.0))
        self._bar.set_description_str(f"{self._label}: {step.message}", refresh=True)

    def close(self) -> None:
        self._bar.close()
