"""How the app starts, from source: torch waits for the window, and `--self-test` passes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_python(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})


def test_the_window_modules_do_not_import_torch():
    # The window must show before torch (seconds to import) loads; torch is imported on the worker.
    code = ("import sys, gui.window.main_window, gui.app, gui.window.tabs, gui.evaluate.tab, gui.pruning.tab; "
            "heavy = [m for m in ('torch', 'torchvision', 'captum', 'matplotlib') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = run_python("-c", code, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_self_test_passes_from_source(tmp_path):
    result = run_python("main.py", "--self-test")
    assert result.returncode == 0, result.stderr
    assert "self-test passed" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", ["empty folder", "corrupt file"])
def test_a_screenshot_of_nothing_says_why_and_exits_2(tmp_path, case):
    target = tmp_path / "images"
    target.mkdir()
    if case == "corrupt file":
        target = target / "photo.png"
        target.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    result = subprocess.run([sys.executable, "main.py", "gui", str(target), "--screenshot",
                             str(tmp_path / "shot.png")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("prunescope: error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and ("No images in" in errors[0] or "photo.png" in errors[0])
    assert not (tmp_path / "shot.png").exists()
