"""AppContext: the app's shared state (model, image, target, engine) and its one background worker.

Tabs and views get the context and

- listen to `image_changed`, `model_changed`, `target_changed`, `engine_changed`;
- call `current_model()`, `current_engine()`, `current_image_path()`;
- run every computation with `run_job(job_factory, on_result, ...)`.

The state is one immutable Snapshot (model, engine, prediction, image, target). A job that changes
it returns a new one; the worker makes it its own in the same locked step that decides the job is
delivered rather than cancelled, and the GUI thread makes it current when it arrives. So a job
factory (on the worker) always sees what the jobs before it produced, the GUI thread sees what is on
screen, and a cancel at any moment leaves them in agreement. Nothing here imports torch: the engine
is imported inside jobs, on the worker.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, Qt, Signal

from core import progress
from core.progress import Progress
from gui.parts.feedback import error_message
from gui.parts.worker import (PRIORITY_BACKGROUND, PRIORITY_CURVES, PRIORITY_ENGINE, PRIORITY_LIVE,
                              PRIORITY_SLOW, PRIORITY_VIEW, JobRunner)

__all__ = ["AppContext", "ModelChoice", "PRIORITY_BACKGROUND", "PRIORITY_CURVES",
           "PRIORITY_ENGINE", "PRIORITY_LIVE", "PRIORITY_SLOW", "PRIORITY_VIEW"]

_DETACHED: list = []  # runners still finishing a step after their window closed
MODEL_CACHE_SIZE = 2  # loaded models kept, so switching back and forth is instant


@dataclass(frozen=True)
class ModelChoice:
    """What the user asked for: a model SPEC (a built-in name, timm:..., a card file, ...), an
    optional weights file, a device name."""
    name: str
    weights: str | None = None
    device: str = "auto"

    def label(self) -> str:
        shown = Path(self.name).stem if self.name.lower().endswith(".toml") else self.name
        return f"{shown} ({Path(self.weights).name})" if self.weights else shown


@dataclass(frozen=True)
class Snapshot:
    """What the app shows: a model and, once an image is open, its engine and prediction."""
    model: Any = None
    choice: ModelChoice | None = None
    engine: Any = None
    prediction: Any = None  # read on the worker: the GUI thread never runs torch
    image_path: Path | None = None
    target: int | None = None  # None: the model's top prediction


class _Commit:
    """A job result that replaces the state. JobRunner calls commit() on the worker, under its
    lock, once the job is sure to be delivered; the GUI thread adopts the snapshot on arrival."""

    def __init__(self, context: "AppContext", snapshot: Snapshot, value):
        self.context, self.snapshot, self.value = context, snapshot, value

    def commit(self) -> None:
        self.context._work = self.snapshot


@dataclass
class _Request:
    key: str
    on_result: Callable[[Any], None]
    on_progress: Callable[[Progress], None] | None
    on_error: Callable[[Exception], None] | None
    on_end: Callable[[], None] | None
    keep_running: bool = False  # delivered even after a newer request with its key, unless cancelled


class AppContext(QObject):
    """Shared state and the single background worker. Create once per window; call shutdown()."""

    image_changed = Signal(object)  # Path of the image now analysed
    model_changed = Signal(object)  # core.models.loading.LoadedModel now in use
    target_changed = Signal(object)  # int class id now explained (None: the predicted class)
    engine_changed = Signal(object)  # core.pathway.engine.Engine for (model, image, target)
    job_error = Signal(str, object)  # message, exception: a job failed and had no on_error
    progress = Signal(str, object)  # job key, Progress: for a progress bar
    busy_changed = Signal(bool)  # the worker started / ran out of work

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._models: dict[ModelChoice, Any] = {}
        self._work = Snapshot()  # the worker's: what later jobs build on
        self._shown = Snapshot()  # the GUI thread's: what the views show
        self._requests: dict[int, _Request] = {}
        self._latest: dict[str, int] = {}
        self._busy = False
        self._runner = JobRunner(self)
        progress.hurry = self._runner.pause_requested  # a slider move cuts a slow map's wait short
        # Queued even when emitted on the GUI thread (a cancel inside submit), so that callbacks
        # never run inside the runner's lock and always arrive in emission order.
        queued = Qt.ConnectionType.QueuedConnection
        self._runner.progressed.connect(self._on_progressed, queued)
        self._runner.returned.connect(self._on_returned, queued)
        self._runner.failed.connect(self._on_failed, queued)
        self._runner.ended.connect(self._on_ended, queued)
        self._runner.started_job.connect(self._on_started, queued)
        self._runner.start()

    # -- state ---------------------------------------------------------------------------------
    def current_model(self):
        """The LoadedModel in use, or None before the first model has loaded."""
        return self._shown.model

    def current_model_choice(self) -> ModelChoice | None:
        return self._shown.choice

    def current_engine(self):
        """The Engine for the current (model, image, target), or None before an image is analysed."""
        return self._shown.engine

    def current_prediction(self):
        """core.pathway.engine.Prediction of the current engine (its target, name, prob, top-5)."""
        return self._shown.prediction

    def current_image_path(self) -> Path | None:
        """The image file the current engine was built from."""
        return self._shown.image_path

    def is_idle(self) -> bool:
        return self._runner.is_idle()

    def longest_steps(self) -> dict[str, float]:
        """Job key -> seconds of the longest step the worker ran for it (what a slider move may
        wait behind)."""
        return dict(self._runner.longest_steps)

    # -- jobs ----------------------------------------------------------------------------------
    def run_job(self, job_factory: Callable[[], Any], on_result: Callable[[Any], None],
                on_progress: Callable[[Progress], None] | None = None,
                on_error: Callable[[Exception], None] | None = None, key: str = "default",
                priority: int = PRIORITY_BACKGROUND, preemptible: bool = False,
                on_end: Callable[[], None] | None = None, keep_running: bool = False,
                quiet_s: float = 0.0) -> int:
        """Run a job on the single background worker; returns its request id.

        job_factory: called on the worker with no arguments; returns a generator that yields
            core.progress.Progress and returns the result (a plain return value is accepted too).
        on_result(result), on_progress(Progress), on_error(exception): called on the GUI thread,
            and only while this is the latest request with this key: a newer run_job with the
            same key cancels this one at its next step and its result is never delivered.
            Without on_error the error goes to `job_error` (the window shows it).
        priority: lower runs first (PRIORITY_ENGINE < LIVE < VIEW < CURVES < BACKGROUND).
        preemptible: a job that a more urgent one may pause between two of its steps (it then
            resumes where it was); leave False for jobs that must not wait, such as benchmarks.
        on_end(): called on the GUI thread once the job is over for any reason (delivered,
            failed, cancelled or superseded), after on_result / on_error.
        keep_running: once it runs, a newer request with this key queues behind it instead of
            cancelling it, and its result is still delivered (a computation that cannot be
            interrupted is not thrown away, and the next one starts the moment it ends).
        quiet_s: once it ends, less urgent jobs start or resume only after that long: the worker
            stays free for the next of a series of requests (a drag's next slider move).
        """
        job_id = self._runner.submit(_as_job(job_factory), key, priority, preemptible, keep_running, quiet_s)
        self._requests[job_id] = _Request(key, on_result, on_progress, on_error, on_end, keep_running)
        self._latest[key] = job_id
        return job_id

    def stop_requested(self) -> bool:
        """Called by a job on the worker, inside a step: whether to stop now (JobRunner)."""
        return self._runner.stop_requested()

    def cancel(self, key: str | None = None) -> None:
        """Cancel the jobs with this key (every job when None); their results are dropped."""
        for request in self._requests.values():
            if key is None or request.key == key:
                request.keep_running = False
        if key is None:
            self._latest.clear()
        else:
            self._latest.pop(key, None)
        self._runner.cancel(key)

    def cancel_running(self) -> None:
        """The Cancel button: stop whatever step-wise job runs now."""
        key = self._runner.running_key()
        if key is not None:
            self.cancel(key)

    def shutdown(self, timeout_ms: int = 1500) -> bool:
        """Cancel all jobs and end the worker; False if a step was still running at the timeout.
        A worker still inside one long step (one torch call cannot be interrupted) is detached
        and kept alive, so that destroying the window does not destroy a running thread."""
        self._latest.clear()
        stopped = self._runner.stop(timeout_ms)
        if not stopped:
            self._runner.setParent(None)
            _DETACHED.append(self._runner)
        return stopped

    # -- model, image, target ------------------------------------------------------------------
    def load_model(self, choice: ModelChoice, on_loaded=None, on_error=None) -> int:
        """Load (or reuse) a model on the worker; then rebuild the engine for the current image.
        On failure the previous model stays in use."""

        def job():
            yield Progress(0.0, f"loading model {choice.label()}")
            from core.models.loading import load_model

            model = self._models.get(choice)
            if model is None:
                model = load_model(choice.name, weights=choice.weights, device=choice.device)
                while len(self._models) >= MODEL_CACHE_SIZE:
                    self._models.pop(next(iter(self._models)))
                self._models[choice] = model
            engine, path = None, self._work.image_path
            if path is not None:
                yield Progress(0.6, "predicting")
                engine = self._build_engine(model, path, None)
            snapshot = Snapshot(model, choice, engine, engine and engine.prediction, path)
            return _Commit(self, snapshot, (model, engine))

        def done(result):
            model, engine = result
            self.model_changed.emit(model)
            if engine is not None:
                self.target_changed.emit(None)
                self.engine_changed.emit(engine)
            if on_loaded is not None:
                on_loaded(model)

        return self.run_job(job, done, on_error=on_error, key="model", priority=PRIORITY_ENGINE)

    def open_image(self, path, on_error=None) -> int:
        """Analyse an image file with the current model (the predicted class). A bad file
        leaves the previous image and results in place."""
        path = Path(path)

        def job():
            yield Progress(0.0, f"opening {path.name}")
            model = self._work.model
            if model is None:
                from core.errors import ModelError

                raise ModelError("no model is loaded: choose a model first")
            engine = self._build_engine(model, path, None)
            work = self._work
            return _Commit(self, Snapshot(work.model, work.choice, engine, engine.prediction, path), engine)

        def done(engine):
            self.image_changed.emit(path)
            self.target_changed.emit(None)
            self.engine_changed.emit(engine)

        return self.run_job(job, done, on_error=on_error, key="engine", priority=PRIORITY_ENGINE)

    def set_target(self, target: int | None, on_error=None) -> int | None:
        """Explain another class of the current image (None: the predicted class)."""
        if self._shown.engine is None:
            return None

        def job():
            yield Progress(0.0, "switching class")
            work = self._work
            engine = work.engine.with_target(work.prediction.top5[0][0] if target is None else target)
            return _Commit(self, Snapshot(work.model, work.choice, engine, engine.prediction,
                                          work.image_path, target), engine)

        def done(engine):
            self.target_changed.emit(target)
            self.engine_changed.emit(engine)

        return self.run_job(job, done, on_error=on_error, key="engine", priority=PRIORITY_ENGINE)

    @staticmethod
    def _build_engine(model, path: Path, target):
        from core.io.images import load_image
        from core.pathway.engine import Engine

        return Engine(model, load_image(path), target)

    # -- worker signals (GUI thread) -----------------------------------------------------------
    def _current(self, job_id: int) -> _Request | None:
        request = self._requests.get(job_id)
        if request is None or not (request.keep_running or self._latest.get(request.key) == job_id):
            return None  # stale: a newer request with this key exists, or it was cancelled
        return request

    def _on_progressed(self, job_id: int, step) -> None:
        request = self._current(job_id)
        if request is None or not isinstance(step, Progress):
            return
        self.progress.emit(request.key, step)
        if request.on_progress is not None:
            request.on_progress(step)

    def _on_returned(self, job_id: int, result) -> None:
        if isinstance(result, _Commit):
            # The worker already builds on it: shown even if a newer request is on its way.
            self._shown = result.snapshot
            request = self._requests.get(job_id)
            if request is not None:
                request.on_result(result.value)
            return
        request = self._current(job_id)
        if request is not None:
            request.on_result(result)

    def _on_failed(self, job_id: int, error: Exception) -> None:
        request = self._current(job_id)
        if request is None:
            return
        if request.on_error is not None:
            request.on_error(error)
        else:
            self.job_error.emit(error_message(error), error)

    def _on_started(self, _job_id: int) -> None:
        self._set_busy(True)

    def _on_ended(self, job_id: int) -> None:
        request = self._requests.pop(job_id, None)
        if request is not None and self._latest.get(request.key) == job_id:
            del self._latest[request.key]
        self._set_busy(not self._runner.is_idle())
        if request is not None and request.on_end is not None:
            request.on_end()

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busy_changed.emit(busy)


def _as_job(factory):
    """Let a factory return a plain value as well as a Progress generator."""

    def job():
        made = factory()
        if hasattr(made, "send") and hasattr(made, "throw"):
            return (yield from made)
        return made

    return job
