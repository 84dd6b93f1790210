"""Starting the desktop app: the window first, torch later on the worker."""
import ctypes
import os
import sys
import time
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from core.cli import fail
from core.errors import PruneScopeError
from core.io.resources import resource_path, sample_images

SCREENSHOT_SIZE = (1400, 900)
SCREENSHOT_TIMEOUT_S = 900  # a --screenshot run that never completes gives up with an error


# How long a thread may hold the interpreter lock while another waits for it (Python's default
# is 5 ms). The worker's forward needs the lock between every torch call, and the window's
# pyqtgraph painting is Python; with 2 ms, slider moves every 100 ms got their maps at
# p95 0.29-0.31 s instead of 0.38-0.40 s (bench --gui, 2-core VM, two runs each).
SWITCH_INTERVAL_S = 0.002


# What Qt's xcb platform plugin loads besides Qt itself (ldd of PySide6's libqxcb.so), with the
# Debian/Ubuntu packages that hold it. Without one, Qt aborts the process (SIGABRT) at the
# QApplication, with a message about plugins that does not name what to install.
XCB_LIBRARIES = {
    "libxcb.so.1": "libxcb1", "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0", "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0", "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0", "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0", "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1", "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1", "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
}


def missing_xcb_packages() -> list[str]:
    """The packages of the libraries Qt's xcb plugin could not load, where Qt will use that plugin:
    on Linux with an X display, QT_QPA_PLATFORM unset or xcb, and not in a Wayland session (where
    Qt tries its wayland plugin first). [] elsewhere."""
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0]
    wayland = os.environ.get("XDG_SESSION_TYPE") == "wayland"
    if (not sys.platform.startswith("linux") or not os.environ.get("DISPLAY")
            or platform not in ("", "xcb") or (platform == "" and wayland)):
        return []
    missing = []
    for library, package in XCB_LIBRARIES.items():
        try:
            ctypes.CDLL(library)
        except OSError:
            missing.append(package)
    return missing


def check_xcb() -> None:
    """PruneScopeError naming what to install when Qt's xcb plugin would abort the process."""
    missing = missing_xcb_packages()
    if missing:
        raise PruneScopeError(f"the window cannot open: Qt's xcb platform needs {', '.join(missing)}; "
                              f"install with: sudo apt-get install -y {' '.join(missing)}")


def make_app() -> QApplication:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = QApplication.instance()
    if app is None:
        check_xcb()
        app = QApplication(sys.argv[:1])
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
    from gui.window.main_window import MainWindow

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
