"""A Linux desktop without the libraries of Qt's xcb plugin: one line naming the packages and
exit 2, where Qt would abort the process. The loader is faked, so this runs on any machine."""
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import PruneScopeError

ROOT = Path(__file__).resolve().parent.parent
LACKING = ("libxcb-icccm.so.4", "libxcb-keysyms.so.1")
FAKE_LOADER = f"""
import ctypes
real = ctypes.CDLL

def fake(name, *args, **kwargs):
    if name in {LACKING!r}:
        raise OSError(name + ": cannot open shared object file")
    return object() if "xcb" in name else real(name, *args, **kwargs)

ctypes.CDLL = fake
"""


@pytest.fixture
def desktop(monkeypatch):
    """An X desktop session on Linux that lacks LACKING."""
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("XDG_SESSION_TYPE", raising=False)
    namespace = {}
    exec(FAKE_LOADER, namespace)
    monkeypatch.setattr(ctypes, "CDLL", namespace["fake"])


def test_the_missing_packages_are_named_with_the_command_that_installs_them(desktop):
    from gui.app import check_xcb, missing_xcb_packages

    assert missing_xcb_packages() == ["libxcb-icccm4", "libxcb-keysyms1"]
    with pytest.raises(PruneScopeError) as err:
        check_xcb()
    assert str(err.value).endswith("sudo apt-get install -y libxcb-icccm4 libxcb-keysyms1")


@pytest.mark.parametrize("setting", [
    {"QT_QPA_PLATFORM": "offscreen"}, {"QT_QPA_PLATFORM": "wayland"}, {"DISPLAY": ""},
    {"XDG_SESSION_TYPE": "wayland"}])
def test_nothing_is_asked_where_qt_will_not_use_xcb(desktop, monkeypatch, setting):
    from gui.app import missing_xcb_packages

    for key, value in setting.items():
        monkeypatch.setenv(key, value)
    assert missing_xcb_packages() == []
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")  # asked for by name: checked even so
    assert missing_xcb_packages() == ([] if setting == {"DISPLAY": ""} else ["libxcb-icccm4", "libxcb-keysyms1"])


def test_the_self_test_checks_them_first(desktop):
    from gui.selftest import self_test

    assert self_test() == 1  # before loading any model


def test_the_app_exits_2_with_one_line_instead_of_aborting():
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "XDG_SESSION_TYPE")}
    env["DISPLAY"] = ":99"  # no X server: without the check Qt would abort either way
    code = FAKE_LOADER + "import sys, main\nsys.exit(main.main([]))\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "sudo apt-get install -y libxcb-icccm4 libxcb-keysyms1" in done.stderr


def test_the_readme_installs_every_package_checked():
    from gui.app import XCB_LIBRARIES

    text = (ROOT / "README.md").read_text()
    start = text.index("sudo apt-get install -y libxcb1")
    line = text[start:text.index("\n\n", start)].replace("\\\n", " ")
    assert line.split()[4:] == list(XCB_LIBRARIES.values())
