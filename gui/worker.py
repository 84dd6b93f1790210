"""The one background thread that runs every computation of the app, one job at a time.

A job is a zero-argument factory returning a core Progress generator; it is created and driven
on this thread, one `next()` per step. superqt's GeneratorWorker drives one generator per
runnable; we need a single thread (torch state, the engine's caches and `neurons.intercept`
are not safe to share between threads) that picks the most urgent queued job, drops jobs that a
newer request made stale, and lets a live slider request pre-empt a long, restartable job.
So this small scheduler is hand-written.
"""
import itertools
import threading
from dataclasses import dataclass
from typing import Any, Callable

from PySide6.QtCore import QObject, QThread, Signal

# Lower runs first. The engine must exist before the live map, the live map before the rest.
PRIORITY_ENGINE = 0
PRIORITY_LIVE = 10
PRIORITY_VIEW = 20
PRIORITY_CURVES = 30
PRIORITY_BACKGROUND = 40


@dataclass(eq=False)
class Job:
    id: int
    key: str
    factory: Callable[[], Any]
    priority: int
    preemptible: bool
    cancelled: bool = False
    finished: bool = False  # its result is being delivered: no cancel or pre-emption reaches it


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

    def submit(self, factory, key: str, priority: int, preemptible: bool) -> int:
        """Queue a job; an older job with the same key is cancelled (the latest request wins)."""
        with self._cond:
            job = Job(next(self._ids), key, factory, priority, preemptible)
            self._cancel_where(lambda other: other.key == key)
            self._queue.append(job)
            running = self._running
            if (running is not None and not running.cancelled and not running.finished
                    and running.preemptible and priority < running.priority):
                running.cancelled = True  # closed at its next step, then queued again
                self._queue.append(Job(running.id, running.key, running.factory,
                                       running.priority, True))
            self._cond.notify()
            return job.id

    def cancel(self, key: str | None = None) -> None:
        """Cancel queued and running jobs with this key (all jobs when key is None)."""
        with self._cond:
            self._cancel_where(lambda job: key is None or job.key == key)

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
        self._queue = [job for job in self._queue if not match(job)]
        if self._running is not None and not self._running.finished and match(self._running):
            self._running.cancelled = True

    def _emit_dropped(self, job: Job) -> None:
        job.cancelled = True
        self.ended.emit(job.id)

    def _next_job(self) -> Job | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            job = min(self._queue, key=lambda j: (j.priority, j.id))
            self._queue.remove(job)
            self._running = job
            return job

    def run(self) -> None:
        while (job := self._next_job()) is not None:
            self.started_job.emit(job.id)
            try:
                self._drive(job)
            finally:
                with self._cond:
                    self._running = None
                    requeued = any(j.id == job.id for j in self._queue)  # pre-empted, not over
                if not requeued:
                    self.ended.emit(job.id)

    def _drive(self, job: Job) -> None:
        try:
            gen = job.factory()
            while True:
                if job.cancelled:
                    gen.close()  # runs the generator's finally/with exits here
                    return
                try:
                    step = next(gen)
                except StopIteration as stop:
                    # Decided under the lock: a job is either cancelled (and re-queued if
                    # pre-empted) or delivered, never both (which would deliver it twice).
                    with self._cond:
                        if job.cancelled:
                            return
                        job.finished = True
                        commit = getattr(stop.value, "commit", None)
                        if commit is not None:
                            commit()  # what the job changes takes effect exactly when it is delivered
                    self.returned.emit(job.id, stop.value)
                    return
                if not job.cancelled:
                    self.progressed.emit(job.id, step)
        except Exception as exc:  # any failure of a job is reported, the thread goes on
            if not job.cancelled:
                self.failed.emit(job.id, exc)
