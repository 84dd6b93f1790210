"""`prunescope --self-test`: does this installation (or frozen bundle) work? Checks that a Linux
desktop has the libraries Qt's xcb plugin needs, runs the engine on a bundled photo, checks the
prediction and maps, that pruning's default calibration photos are there, renders the main
window once offscreen."""
import os
import sys
import tempfile

EXPECTED = {"coffee.png": "espresso"}


def self_test() -> int:
    """0 when everything works; otherwise 1, with one line on stderr saying what failed."""
    try:
        _check_desktop()
        _check_engine()
        _check_window()
    except Exception as error:  # any failure is the answer of a self-test, not a crash
        print(f"prunescope: self-test failed: {error}", file=sys.stderr)
        return 1
    print("prunescope: self-test passed", file=sys.stderr)
    return 0


def _check_desktop() -> None:
    """On a Linux desktop, that Qt's xcb plugin has its libraries (the window below is rendered
    offscreen, which needs none of them)."""
    from gui.app import check_xcb

    check_xcb()


def _check_engine() -> None:
    import numpy as np

    from core.io.images import load_image
    from core.io.resources import CALIBRATION_PHOTOS, calibration_images, sample_images
    from core.models.loading import load_model
    from core.pathway.engine import Engine

    expected = len(sample_images()) + sum(len(names) for _, names in CALIBRATION_PHOTOS.values())
    if len(calibration_images()) != expected:  # pruning's default calibration: bundled + dependencies' photos
        raise AssertionError(f"{len(calibration_images())} of {expected} calibration photos found")
    path = next(p for p in sample_images() if p.name in EXPECTED)
    engine = Engine(load_model(device="cpu"), load_image(path))
    name = engine.prediction.name
    if name != EXPECTED[path.name]:
        raise AssertionError(f"{path.name} predicted as '{name}', expected '{EXPECTED[path.name]}'")
    for label, attr in (("pathway-gradient", engine.pathway(70.0).map),
                        ("gradient", engine.attribution("gradient")),
                        ("grad-cam++", engine.attribution("grad-cam++"))):  # pytorch-grad-cam is there
        if not np.all(np.isfinite(attr)):
            raise AssertionError(f"the {label} map has non-finite values")
        if not np.any(attr):
            raise AssertionError(f"the {label} map is all zero")


def _check_window() -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings

    from gui.app import make_app

    app = make_app()
    with tempfile.TemporaryDirectory() as settings_dir:
        # The user's own settings are neither read nor changed by the test.
        QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, settings_dir)
        from gui.window.main_window import MainWindow

        window = MainWindow()
        window.show()
        app.processEvents()
        image = window.grab().toImage()
        window.close()
        app.processEvents()
    if image.isNull() or image.width() < 400 or image.height() < 300:
        raise AssertionError("the main window did not render")
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    if len(colours) < 8:
        raise AssertionError("the main window rendered blank")
