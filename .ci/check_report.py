"""CI: read pytest's JUnit XML report and fail when fewer tests passed than the floor kept in the
repository, when a test was skipped for a reason not on the allowed list (one regular expression
per line; # starts a comment), or when pyproject's addopts select tests by anything but its
declared markers."""
import re
import shlex
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


def addopts_problem(pyproject: Path) -> str | None:
    """None when addopts is at most `-m "not M and not N"` with M, N declared markers."""
    options = tomllib.loads(pyproject.read_text())["tool"]["pytest"]["ini_options"]
    declared = {m.split(":")[0].strip() for m in options.get("markers", [])}
    words = shlex.split(options.get("addopts", ""))
    if not words:
        return None
    if len(words) != 2 or words[0] != "-m":
        return f"addopts {options['addopts']!r} does more than leave out declared markers"
    names = re.fullmatch(r"not (\w+)((?: and not \w+)*)", words[1])
    left_out = set(re.findall(r"\w+", words[1])) - {"not", "and"}
    if names is None or not left_out <= declared:
        return f"addopts -m {words[1]!r} selects by more than declared markers ({', '.join(sorted(declared))})"
    return None


def main(report: str, floor_file: str, allowed_file: str) -> int:
    cases = list(ET.parse(report).getroot().iter("testcase"))
    skipped = [(c, c.find("skipped")) for c in cases if c.find("skipped") is not None]
    failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
    passed = len(cases) - len(skipped) - len(failed)
    floor = int(Path(floor_file).read_text().split()[0])
    allowed = [re.compile(line.strip()) for line in Path(allowed_file).read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    bad = [f"{c.get('classname')}::{c.get('name')}: {s.get('message', '')}" for c, s in skipped
           if not any(a.search(s.get("message", "")) for a in allowed)]
    problem = addopts_problem(Path(__file__).resolve().parent.parent / "pyproject.toml")
    if problem:
        print(f"CI: pyproject.toml: {problem}", file=sys.stderr)
    print(f"CI: {passed} passed, {len(skipped)} skipped, {len(failed)} failed (floor {floor})")
    for line in bad:
        print(f"CI: skipped without an allowed reason: {line}", file=sys.stderr)
    if passed < floor:
        print(f"CI: {passed} tests passed, fewer than the floor of {floor} in {floor_file}", file=sys.stderr)
    return 1 if bad or failed or passed < floor or problem else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
