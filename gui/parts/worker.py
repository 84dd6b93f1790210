"""The one background thread that runs every computation of the app, one job at a time.

A job is a zero-argument factory returning a core Progress generator; it is created and driven
on this thread, one `next()` per step. superqt's GeneratorWorker drives one generator per
runnable; we need a single thread (torch state, the engine's caches and `neurons.intercept`
are not safe to share between threads) that picks the most urgent queued job, drops jobs that a
newer request made stale, lets a live slider request pre-empt a long job between two of its
steps (the job is paused, not restarted: its generator resumes where it was), and lets a newer
slider position stop the map being made for an older one, inside its step, while it still can.
So this small scheduler is hand-written.
"""
import enum
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

from PySide6.QtCore import QObject, QThread, Signal

from core.progress import Stopped

# Lower runs first. The engine must exist before the live map, the live map before the rest.
PRIORITY_ENGINE = 0
PRIORITY_LIVE = 10
PRIORITY_VIEW = 20
PRIORITY_CURVES = 30
PRIORITY_BACKGROUND = 40
PRIORITY_SLOW = 50  # maps that take a minute (the slow methods): after everything else


class State(enum.Enum):
    """Where a job is in its life. QUEUED -> RUNNING when the worker picks it. RUNNING -> PAUSING
    when a more urgent job is queued and it is preemptible; at its next step it goes back to
    QUEUED, its generator kept, and resumes where it was. RUNNING -> DELIVERED once its generator
    returned and its result is being delivered: no cancel or pre-emption reaches it then. Any state
    but DELIVERED -> CANCELLED (a newer request with its key, Cancel, shutdown); a cancelled job's
    generator is closed on the worker, where it ran."""
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class Job:
    id: int
    key: str
    factory: Callable[[], Any]
    priority: int
    preemptible: bool
    keep_running: bool = False  # a newer request with its key waits for it instead of cancelling it
    # ... and asks it to stop where it can (JobRunner.stop_requested; interrupted), unless it took
    # the place of one that did (protected): then it finishes, so that requests faster than jobs
    # still get answers. Both are about the request, in any state.
    interrupted: bool = False
    protected: bool = False
    quiet_s: float = 0.0  # once it ends, less urgent jobs wait this long (a drag's next move comes first)
    state: State = State.QUEUED
    gen: Generator | None = field(default=None, repr=False)  # made on the worker at its first run

    @property
    def cancelled(self) -> bool:
        return self.state is State.CANCELLED


class JobRunner(QThread):
    """Runs jobs on its own thread; reports through queued signals on the GUI thread."""

    started_job = Signal(int)
    progressed = Signal(int, object)  # job id, core.progress.Progress
    returned = Signal(int, object)  # job id, result
    failed = Signal(int, object)  # job id, exception
    ended = Signal(int)  # job id: after returned/failed, or once a cancelled job is dropped

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._ids = itertools.count(1)
        self._queue: list[Job] = []
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._to_close: list[Generator] = []  # generators of paused jobs since cancelled
        self._quiet = (PRIORITY_ENGINE, 0.0)  # jobs less urgent than this priority wait until this time
        self.longest_steps: dict[str, float] = {}  # job key -> seconds of its longest step

    def submit(self, factory, key: str, priority: int, preemptible: bool,
               keep_running: bool = False, quiet_s: float = 0.0) -> int:
        """Queue a job; an older job with the same key is cancelled (the latest request wins),
        except a running one submitted with keep_running: that one finishes and delivers first,
        or stops inside its step where it can (stop_requested), unless it is protected. quiet_s:
        once this job ends, jobs less urgent than it start or resume only after that long."""
        with self._cond:
            job = Job(next(self._ids), key, factory, priority, preemptible, keep_running, quiet_s=quiet_s)
            # replacing a waiting request that a stopped job gave up for, it inherits its right to finish
            job.protected = any(other.protected for other in self._queue if other.key == key)
            running = self._running
            self._cancel_where(lambda other: other.key == key and not (other is running and other.keep_running))
            if running is not None and running.key == key and running.keep_running and not running.protected:
                running.interrupted = True
            self._queue.append(job)
            if running is not None and running.state is State.RUNNING and running.preemptible \
                    and priority < running.priority:
                running.state = State.PAUSING  # back in the queue at its next step
            self._cond.notify()
            return job.id

    def cancel(self, key: str | None = None) -> None:
        """Cancel queued and running jobs with this key (all jobs when key is None)."""
        with self._cond:
            self._cancel_where(lambda job: key is None or job.key == key)

    def stop_requested(self) -> bool:
        """On the worker, inside a step: whether the running job should stop now (cancelled, or
        a newer request with its key is waiting); a step that can stop raises Stopped then."""
        running = self._running
        return running is not None and (running.cancelled or running.interrupted)

    def pause_requested(self) -> bool:
        """On the worker, inside a step: whether a more urgent job waits for this step to end."""
        running = self._running
        return running is not None and running.state is State.PAUSING

    def running_key(self) -> str | None:
        running = self._running
        return None if running is None else running.key

    def is_idle(self) -> bool:
        with self._cond:
            return self._running is None and not self._queue

    def stop(self, timeout_ms: int = 1500) -> bool:
        """Cancel everything and end the thread; False if a step is still running after timeout."""
        with self._cond:
            self._stopping = True
            self._cancel_where(lambda job: True)
            self._cond.notify()
        return self.wait(timeout_ms)

    def _cancel_where(self, match) -> None:
        for job in self._queue:
            if match(job):
                self._emit_dropped(job)
                if job.gen is not None:
                    self._to_close.append(job.gen)  # closed on the worker, where it ran
        self._queue = [job for job in self._queue if not match(job)]
        if self._running is not None and self._running.state is not State.DELIVERED and match(self._running):
            self._running.state = State.CANCELLED

    def _emit_dropped(self, job: Job) -> None:
        job.state = State.CANCELLED
        self.ended.emit(job.id)

    def _next_job(self) -> Job | None:
        with self._cond:
            while True:
                self._close_dropped()
                if self._stopping:
                    return None
                job = min(self._queue, key=lambda j: (j.priority, j.id), default=None)
                quiet = self._quiet[1] - time.perf_counter() if job and job.priority > self._quiet[0] else 0
                if job is not None and quiet <= 0:
                    break
                self._cond.wait(quiet or None)  # a submit wakes it
            self._queue.remove(job)
            job.state = State.RUNNING
            self._running = job
            return job

    def _close_dropped(self) -> None:
        while self._to_close:
            self._to_close.pop().close()  # runs the generator's finally/with exits here

    def run(self) -> None:
        while (job := self._next_job()) is not None:
            self.started_job.emit(job.id)
            paused = False
            try:
                paused = self._drive(job)
            finally:
                with self._cond:
                    self._running = None
                    if job.quiet_s:
                        self._quiet = (job.priority, time.perf_counter() + job.quiet_s)
                    requeued = paused and not job.cancelled
                    if requeued:
                        job.state = State.QUEUED
                        self._queue.append(job)
                if paused and not requeued:
                    job.gen.close()  # cancelled as it paused
                if not requeued:
                    self.ended.emit(job.id)

    def _drive(self, job: Job) -> bool:
        """Steps the job until it returns, fails, is cancelled, or is paused (then True)."""
        try:
            if job.gen is None:
                job.gen = job.factory()
            gen = job.gen
            while True:
                if job.cancelled:
                    gen.close()  # runs the generator's finally/with exits here
                    return False
                if job.state is State.PAUSING:
                    return True  # resumed from here when it is picked again
                began = time.perf_counter()
                try:
                    step = next(gen)
                except StopIteration as stop:
                    # Decided under the lock: a job is either cancelled or delivered, never
                    # both (which would deliver it twice).
                    with self._cond:
                        if job.cancelled:
                            return False
                        job.state = State.DELIVERED
                        commit = getattr(stop.value, "commit", None)
                        if commit is not None:
                            commit()  # what the job changes takes effect exactly when it is delivered
                    self.returned.emit(job.id, stop.value)
                    return False
                finally:
                    took = time.perf_counter() - began
                    self.longest_steps[job.key] = max(took, self.longest_steps.get(job.key, 0.0))
                if not job.cancelled:
                    self.progressed.emit(job.id, step)
        except Stopped as exc:  # it gave up for a newer request (or a cancel): nothing to deliver
            with self._cond:
                if job.interrupted and not job.cancelled:
                    for other in self._queue:  # the request it gave up for: that one finishes
                        if other.key == job.key:
                            other.protected = True
            if not (job.interrupted or job.cancelled):
                self.failed.emit(job.id, exc)  # nobody asked: a fault of the job's
            return False
        except Exception as exc:  # any failure of a job is reported, the thread goes on
            if not job.cancelled:
                self.failed.emit(job.id, exc)
            return False
