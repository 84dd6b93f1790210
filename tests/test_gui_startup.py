"""How the app starts, from source: torch waits for the window, and `--self-test` passes."""
import os
import shutil
import subprocess
import sys
import sysconfig
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


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """PruneScope installed from its wheel into a fresh venv, as pip or pipx installs it, with this
    interpreter's packages beside it (a .pth file: CI installs a wheel with its dependencies)."""
    where = tmp_path_factory.mktemp("wheel")
    source = where / "source"  # setuptools writes build/ into the tree it builds
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "main.py"):
        shutil.copy(ROOT / name, source)
    for name in ("core", "gui", "resources"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(where), str(source)], check=True, capture_output=True, cwd=where, timeout=300)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(where.glob("prunescope-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return venv / "bin" / "python"


def run_installed(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    code = "import sys, main; sys.exit(main.main())"  # what the `prunescope` script runs
    return subprocess.run([str(python), "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": ""})


@pytest.mark.slow
def test_the_installed_wheel_passes_its_self_test_elsewhere(installed_wheel, tmp_path):
    result = run_installed(installed_wheel, tmp_path, "--self-test")
    assert result.returncode == 0, result.stderr
    assert "self-test passed" in result.stderr


@pytest.mark.slow
def test_the_installed_wheel_opens_the_window_elsewhere(installed_wheel, tmp_path):
    shot = tmp_path / "window.png"
    result = run_installed(installed_wheel, tmp_path, "gui", "--screenshot", str(shot))  # the bundled coffee
    assert result.returncode == 0, result.stderr
    assert shot.stat().st_size > 50_000


def test_the_wheel_carries_the_resources_and_the_code_reads_them_there(installed_wheel):
    site = installed_wheel.parent.parent / "lib"
    for name in ("imagenet_classes.txt", "imagenet_wnids.txt", "prunescope.desktop", "icons/prunescope.png",
                 "samples/coffee.png", "samples/chelsea.png", "samples/rocket.jpg"):
        assert next(site.glob(f"python*/site-packages/resources/{name}")).is_file(), name
    code = "from core.io.resources import resource_root; print(resource_root())"
    result = subprocess.run([str(installed_wheel), "-c", code], cwd=site, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert Path(result.stdout.strip()).parent.name == "site-packages", result.stderr


def test_missing_resources_are_one_line_and_exit_2_with_no_thread_left(qapp, monkeypatch, tmp_path, capsys):
    import threading

    import core.io.resources
    from main import main

    monkeypatch.setattr(core.io.resources, "resource_root", lambda: tmp_path)  # an install without them
    before = threading.active_count()
    assert main(["gui", "--screenshot", str(tmp_path / "shot.png")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"prunescope: error: the bundled sample photos are missing from {tmp_path / 'samples'}: "
                     "reinstall PruneScope"]
    assert threading.active_count() == before


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
