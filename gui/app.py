"""Starting the desktop app: the window first, torch later on the worker."""
import os
import sys
import time
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from core.cli import fail
from core.resources import resource_path, sample_images

SCREENSHOT_SIZE = (1400, 900)
SCREENSHOT_TIMEOUT_S = 900  # a --screenshot run that never completes gives up with an error


# How long a thread may hold the interpreter lock while another waits for it (Python's default
# is 5 ms). The worker's forward needs the lock between every torch call, and the window's
# pyqtgraph painting is Python; with 2 ms, slider moves every 100 ms got their maps at
# p95 0.29-0.31 s instead of 0.38-0.40 s (bench --gui, 2-core VM, two runs each).
SWITCH_INTERVAL_S = 0.002


def make_app() -> QApplication:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("PruneScope")
    app.setOrganizationName("PruneScope")
    app.setDesktopFileName("prunescope")
    app.setWindowIcon(QIcon(str(resource_path("icons", "prunescope.png"))))
    return app


def run_app(images=(), screenshot: str | None = None, model=None) -> int:
    """Open the window on `images` (with `model`, a ModelCard, instead of the last model used);
    with `screenshot`, save a PNG of the window once the first full analysis is on screen and
    exit: 0, or 2 (with one line on stderr) if it could not be made, an image or folder could
    not be opened, or it took over SCREENSHOT_TIMEOUT_S."""
    started = time.perf_counter()
    app = make_app()
    from gui.window import MainWindow

    images = list(images)
    if screenshot and not images:
        images = [next(p for p in sample_images() if p.name == "coffee.png")]
    window = MainWindow(images, model=model)
    if screenshot:
        window.resize(*SCREENSHOT_SIZE)  # the same picture whatever size the window was saved at
    window.show()
    if os.environ.get("PRUNESCOPE_TIMING"):
        print(f"window shown after {time.perf_counter() - started:.2f} s", file=sys.stderr)
    status = {"code": 0}
    if screenshot:
        _arm_screenshot(app, window, Path(screenshot), status, started)
    code = app.exec() or status["code"]
    if not window.worker_stopped:
        # One torch call was still running: nothing is left to save, and a thread inside torch
        # cannot be stopped from Python, so leave without waiting for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _arm_screenshot(app, window, path: Path, status: dict, started: float) -> None:
    def save() -> None:
        if os.environ.get("PRUNESCOPE_TIMING"):
            print(f"first full analysis after {time.perf_counter() - started:.2f} s", file=sys.stderr)
        if not window.grab().save(str(path)):
            failed(f"cannot write {path}")
        window.close()

    def failed(message: str) -> None:
        if status["code"] == 0:  # the first failure is the one to tell; closing follows it
            status["code"] = fail(message)
        window.close()

    # Let the last results paint before grabbing.
    window.explain.analysis_shown.connect(lambda: QTimer.singleShot(300, save))
    window.context.job_error.connect(lambda message, _error: failed(message))
    window.load_failed.connect(failed)
    QTimer.singleShot(SCREENSHOT_TIMEOUT_S * 1000,
                      lambda: failed(f"no complete analysis within {SCREENSHOT_TIMEOUT_S} s"))
