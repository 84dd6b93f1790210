"""`prunescope bench --gui`: the real window, offscreen, driven as a person uses it; JSON figures.

Opens a photo on the embedded model and measures, from the window's creation (app start-up
included) and from the moment the image is open (its prediction shown), the time to the first
pathway map, to Auto's sparsity for the image, to everything on screen (maps, masks, curves, sweep; coarse ones count) and to all
of it at full resolution; then moves the sparsity slider at a fixed pace and measures, per move,
the time until the map of that position (or a later one) is drawn. A 5 ms timer on the GUI
thread records its longest stall throughout, and the worker its longest step per job.

all_methods: once Auto has found the sparsity, every method and every ↝ box ticked, one per turn of
the event loop as clicks come; once the quick maps are on screen (the first CAM and LRP import their
libraries then, once a session), the slider is driven while the slow maps are still being computed in
steps, and the ↝ rows follow each settled position (the worst case for the live map). The time until
every map is on screen is left out: it is minutes for Score-CAM and Ablation-CAM.
"""
import os
import statistics
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PACES_MS = (100, 350, 2000)
SHUTDOWN_WAIT_MS = 60_000  # a torch step ends within seconds: wait for it rather than abort
MOVES = {100: 30, 350: 20, 2000: 6}
TIMEOUT_S = 300
CLICK_MS = 50  # between the ticks of --all-methods


def run_gui_bench(image: str, model=None, all_methods: bool = False) -> dict:
    from PySide6.QtCore import QElapsedTimer, QSettings, QTimer

    from core.methods import BY_NAME
    from gui.app import make_app

    make_app()
    import tempfile

    settings = tempfile.mkdtemp(prefix="prunescope-bench-")  # the user's settings stay untouched
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, settings)
    from gui.window.main_window import MainWindow

    stalls = _StallMeter(QTimer, QElapsedTimer)
    started = time.perf_counter()
    window = MainWindow([image], model=model)
    window.resize(1400, 900)
    window.show()
    tab = window.explain
    opened = []

    def image_open(_path) -> None:
        opened.append(time.perf_counter() - started)
        stalls.image_open = True

    window.context.image_changed.connect(image_open)
    try:
        first = _wait(lambda: tab.shown.live is not None, started)
        auto = _wait(lambda: tab._auto_search is None, started)  # Auto for the new image
        auto_sparsity = tab.controls.sparsity.value()
        if all_methods:
            complete = refined = None
            for box in [*tab.controls.method_boxes.values(), *tab.controls.pathway_boxes.values()]:
                box.setChecked(True)
                _pause(CLICK_MS)
            quick = [m for m in tab.methods() if BY_NAME[m].interactive]
            _wait(lambda: all(m in tab.heatmaps.shown_maps() or m in tab.shown.unavailable for m in quick), started)
        else:
            complete = _wait(tab.is_complete, started)
            refined = _wait(tab.is_refined, started)
        moves = {f"every_{pace}_ms": _drag(tab, pace, MOVES[pace]) for pace in PACES_MS}
    finally:
        stalls.stop()
        window.close()
        if not window.worker_stopped:  # a torch step was still running: no thread may outlive the bench
            window.worker_stopped = window.context.shutdown(SHUTDOWN_WAIT_MS)
    steps = window.context.longest_steps()
    after = {"first_pathway_map": round(first - opened[0], 3), "auto_sparsity_found": round(auto - opened[0], 3)}
    if not all_methods:
        after.update(everything_on_screen=round(complete - opened[0], 3),
                     everything_at_full_resolution=round(refined - opened[0], 3))
    return {
        "model": window.context.current_model().name if window.context.current_model() else None,
        "image": str(image),
        "first_pathway_map_s": round(first, 3),
        "auto_sparsity_found_s": round(auto, 3),
        "auto_sparsity_percent": auto_sparsity,
        "methods": "every method, and every ↝ box" if all_methods else "the app's defaults",
        **({} if all_methods else {"everything_on_screen_s": round(complete, 3),
                                   "everything_at_full_resolution_s": round(refined, 3)}),
        "image_open_s": round(opened[0], 3),
        "after_image_open_s": after,
        "slider_to_map_s": moves,
        "longest_gui_stall_ms": round(stalls.longest_ms, 1),
        "longest_gui_stall_after_image_open_ms": round(stalls.longest_after_open_ms, 1),
        "longest_worker_step_ms": {key: round(1000 * s, 1) for key, s in sorted(steps.items())},
    }


def _pause(ms: int) -> None:
    """The window's own event loop for ms milliseconds."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def _wait(condition, since: float) -> float:
    """Seconds from `since` until condition() holds, checked every 5 ms from the window's own
    event loop (a busy loop here would take CPU from the window and the worker)."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop, timer = QEventLoop(), QTimer()
    reached = []

    def check() -> None:
        now = time.perf_counter()
        if condition() or now - since > TIMEOUT_S:
            reached.append(now)
            timer.stop()
            loop.quit()

    timer.timeout.connect(check)
    timer.start(5)
    check()
    if not reached:
        loop.exec()
    if not condition():
        raise TimeoutError(f"the window did not get there within {TIMEOUT_S} s")
    return reached[0] - since


def _drag(tab, pace_ms: int, moves: int) -> dict:
    """Slider moves every pace_ms (timers of the event loop, as a person's moves arrive),
    alternating up and down; latency of each until its map (or a later position's) is drawn."""
    from PySide6.QtCore import QEventLoop, QTimer

    values = [round(20 + (i * 7.3) % 70, 1) for i in range(moves)]
    asked: list[tuple[float, float]] = []  # (time, value)
    latencies: list[float] = []
    loop = QEventLoop()
    start = time.perf_counter()

    def move() -> None:
        if not loop.isRunning():  # the deadline passed
            return
        tab.controls.sparsity.setValue(values[len(asked)])
        asked.append((time.perf_counter(), tab.params().sparsity))
        if len(asked) < moves:  # on the pace's grid, whatever this move took
            due = start + len(asked) * pace_ms / 1000
            QTimer.singleShot(max(0, round(1000 * (due - time.perf_counter()))), move)

    def drawn(result) -> None:
        now = time.perf_counter()
        shown = result.params.sparsity
        while len(latencies) < len(asked) and any(v == shown for _, v in asked[len(latencies):]):
            latencies.append(now - asked[len(latencies)][0])
        if len(latencies) == moves:
            loop.quit()

    deadline = QTimer()
    deadline.setSingleShot(True)
    deadline.timeout.connect(loop.quit)
    deadline.start(TIMEOUT_S * 1000)
    tab.live_shown.connect(drawn)
    QTimer.singleShot(0, move)
    try:
        loop.exec()
    finally:
        deadline.stop()
        tab.live_shown.disconnect(drawn)
    if len(latencies) < moves:
        raise TimeoutError("slider moves were not answered")
    latencies.sort()
    return {"moves": moves, "p50": round(statistics.median(latencies), 3),
            "p95": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
            "max": round(latencies[-1], 3)}


class _StallMeter:
    """The longest gap between ticks of a 5 ms timer on the GUI thread: throughout, and since
    the image is open (building the window stalls it once, before any image)."""

    def __init__(self, QTimer, QElapsedTimer):
        self.longest_ms = 0.0
        self.longest_after_open_ms = 0.0
        self.image_open = False
        self._clock = QElapsedTimer()
        self._clock.start()
        self._last = 0
        self._timer = QTimer()
        self._timer.timeout.connect(self._tick)
        self._timer.start(5)

    def _tick(self) -> None:
        now = self._clock.elapsed()
        stall = float(now - self._last - 5)
        self.longest_ms = max(self.longest_ms, stall)
        if self.image_open:
            self.longest_after_open_ms = max(self.longest_after_open_ms, stall)
        self._last = now

    def stop(self) -> None:
        self._timer.stop()
