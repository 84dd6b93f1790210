"""The PySide6 desktop app: a thin layer over core.pathway.engine."""
import ctypes
import sys

from PySide6.QtCore import QObject, Signal


def _guard_bool_refcounts() -> None:
    """PySide6 6.12.0 returns True from Signal.emit() without taking a reference, so on Python
    < 3.12 (where True is not immortal) every emit drops one and Python aborts with
    "bool_dealloc" after a few thousand (pyqtgraph emits on every mouse move). Where that bug is
    present, give True and False a reference count no session can use up."""
    if sys.version_info >= (3, 12):
        return

    class _Probe(QObject):
        fired = Signal(int)

    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(8):
        probe.fired.emit(0)
    if sys.getrefcount(True) < before:
        for flag in (True, False):
            ctypes.c_ssize_t.from_address(id(flag)).value += 1 << 40


_guard_bool_refcounts()

import pyqtgraph as pg  # noqa: E402

# Once, before any image item exists: arrays are (row, column) as numpy and core.io.display have them.
pg.setConfigOptions(imageAxisOrder="row-major", antialias=True, background="#fbfbfb",
                    foreground="#222222")
