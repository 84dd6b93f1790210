"""CI says what it ran: .ci/check_report.py fails on a skip without an allowed reason, on fewer
passed tests than the floor, and on addopts that select tests beyond the declared markers."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / ".ci" / "check_report.py"
sys.path.insert(0, str(CHECK.parent))
import check_report  # noqa: E402


def report(tmp_path: Path, passed: int, skips=(), failed: int = 0) -> Path:
    cases = [f'<testcase classname="t" name="ok{i}"/>' for i in range(passed)]
    cases += [f'<testcase classname="t" name="skip{i}"><skipped message="{why}"/></testcase>'
              for i, why in enumerate(skips)]
    cases += [f'<testcase classname="t" name="bad{i}"><failure message="no"/></testcase>' for i in range(failed)]
    path = tmp_path / "report.xml"
    path.write_text(f'<testsuites><testsuite name="pytest">{"".join(cases)}</testsuite></testsuites>')
    return path


def check(tmp_path, path, floor=3, allowed="# none\nneeds a display\n") -> subprocess.CompletedProcess:
    (tmp_path / "floor").write_text(f"{floor}\n")
    (tmp_path / "allowed").write_text(allowed)
    return subprocess.run([sys.executable, str(CHECK), str(path), str(tmp_path / "floor"), str(tmp_path / "allowed")],
                          capture_output=True, text=True)


def test_enough_passed_tests_and_allowed_skips_pass(tmp_path):
    done = check(tmp_path, report(tmp_path, 3, ["needs a display here"]))
    assert done.returncode == 0, done.stderr
    assert "3 passed, 1 skipped, 0 failed" in done.stdout


@pytest.mark.parametrize("passed, skips, failed, says", [
    (2, (), 0, "fewer than the floor of 3"),
    (3, ("could not import 'quantus'",), 0, "skipped without an allowed reason: t::skip0"),
    (3, (), 1, "1 failed")])
def test_less_than_it_seems_fails(tmp_path, passed, skips, failed, says):
    done = check(tmp_path, report(tmp_path, passed, skips, failed))
    assert done.returncode == 1 and says in done.stdout + done.stderr


@pytest.mark.parametrize("addopts, ok", [
    ("-m 'not zoo'", True), ("", True), ("-m 'not zoo and not slow'", True),
    ("-m 'not zoo' -k gui", False), ("-m 'not secret'", False), ("-m 'zoo or gui'", False),
    ("--deselect tests/test_gui.py", False)])
def test_addopts_leave_out_declared_markers_only(tmp_path, addopts, ok):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f'[tool.pytest.ini_options]\naddopts = "{addopts}"\n'
                         'markers = ["slow: long", "zoo: the zoo"]\n')
    assert (check_report.addopts_problem(pyproject) is None) == ok


def test_the_repository_addopts_pass():
    assert check_report.addopts_problem(ROOT / "pyproject.toml") is None
