"""`prunescope bench --gui`: the real window, offscreen, driven as a person uses it; JSON figures.

Opens a photo on the embedded model and measures the time to the first pathway map and to
everything on screen (maps, masks, curves, sweep); then moves the sparsity slider at a fixed
pace and measures, per move, the time until the map of that position (or a later one) is drawn;
a 5 ms timer on the GUI thread records its longest stall throughout.
"""
import os
import statistics
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PACES_MS = (100, 350, 2000)
MOVES = {100: 30, 350: 20, 2000: 6}
TIMEOUT_S = 300


def run_gui_bench(image: str, model=None) -> dict:
    from PySide6.QtCore import QElapsedTimer, QSettings, QTimer

    from gui.app import make_app

    app = make_app()
    import tempfile

    settings = tempfile.mkdtemp(prefix="prunescope-bench-")  # the user's settings stay untouched
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, settings)
    from gui.window import MainWindow

    stalls = _StallMeter(QTimer, QElapsedTimer)
    started = time.perf_counter()
    window = MainWindow([image], model=model)
    window.resize(1400, 900)
    window.show()
    tab = window.explain
    try:
        first = _wait(app, lambda: tab._live is not None, started)
        complete = _wait(app, tab.is_complete, started)
        moves = {f"every_{pace}_ms": _drag(app, tab, pace, MOVES[pace]) for pace in PACES_MS}
    finally:
        stalls.stop()
        window.close()
    return {
        "model": window.context.current_model().name if window.context.current_model() else None,
        "image": str(image),
        "first_pathway_map_s": round(first, 3),
        "everything_on_screen_s": round(complete, 3),
        "slider_to_map_s": moves,
        "longest_gui_stall_ms": round(stalls.longest_ms, 1),
    }


def _wait(app, condition, since: float) -> float:
    while not condition():
        if time.perf_counter() - since > TIMEOUT_S:
            raise TimeoutError(f"the window did not get there within {TIMEOUT_S} s")
        app.processEvents()
        time.sleep(0.002)
    return time.perf_counter() - since


def _drag(app, tab, pace_ms: int, moves: int) -> dict:
    """Slider moves every pace_ms, alternating up and down; latency of each until its map
    (or a later position's) is drawn."""
    values = [round(20 + (i * 7.3) % 70, 1) for i in range(moves)]
    asked: list[tuple[float, float]] = []  # (time, value)
    latencies = []
    pending = 0
    next_move = time.perf_counter()
    while len(latencies) < moves:
        now = time.perf_counter()
        if len(asked) < moves and now >= next_move:
            tab.controls.sparsity.setValue(values[len(asked)])
            asked.append((now, tab.params().sparsity))
            next_move = now + pace_ms / 1000
        live = tab._live
        while pending < len(asked) and live is not None and _drawn(live, asked, pending):
            latencies.append(now - asked[pending][0])
            pending += 1
        if now - asked[0][0] > TIMEOUT_S:
            raise TimeoutError("slider moves were not answered")
        app.processEvents()
        time.sleep(0.001)
    latencies.sort()
    return {"moves": moves, "p50": round(statistics.median(latencies), 3),
            "p95": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
            "max": round(latencies[-1], 3)}


def _drawn(live, asked, index: int) -> bool:
    """The live map shows move `index`'s position, or one asked after it."""
    shown = live.params.sparsity
    return any(value == shown for _, value in asked[index:])


class _StallMeter:
    """The longest gap between ticks of a 5 ms timer on the GUI thread."""

    def __init__(self, QTimer, QElapsedTimer):
        self.longest_ms = 0.0
        self._clock = QElapsedTimer()
        self._clock.start()
        self._last = 0
        self._timer = QTimer()
        self._timer.timeout.connect(self._tick)
        self._timer.start(5)

    def _tick(self) -> None:
        now = self._clock.elapsed()
        self.longest_ms = max(self.longest_ms, float(now - self._last - 5))
        self._last = now

    def stop(self) -> None:
        self._timer.stop()
