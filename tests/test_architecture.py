"""core/ is pure computation: it must never import Qt or the GUI. Figures are drawn in one
module, core/figures.py, and never with pyplot."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
FORBIDDEN = ("PySide6", "PyQt5", "PyQt6", "PySide2", "qtpy", "superqt", "pyqtgraph", "shiboken6", "gui")


def imported(path: Path) -> set[str]:
    """Every absolute import; `from M import n` counts as M and as M.n (n may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported(path)}


def app_modules() -> list[Path]:
    return [ROOT / "main.py", *sorted(CORE.rglob("*.py")), *sorted((ROOT / "gui").rglob("*.py"))]


def test_no_core_module_imports_qt_or_gui():
    offenders = {str(p.relative_to(CORE.parent)): sorted(imported_roots(p) & set(FORBIDDEN))
                 for p in CORE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_whole_engine_loads_no_qt():
    modules = sorted(".".join(p.relative_to(CORE.parent).with_suffix("").parts)
                     for p in CORE.rglob("*.py") if p.name != "__init__.py")
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=CORE.parent, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_module_uses_pyplot():
    # pyplot's figure manager is global and not thread-safe: the app draws figures on its worker
    offenders = [str(p.relative_to(ROOT)) for p in app_modules()
                 if any(name.startswith("matplotlib.pyplot") for name in imported(p))]
    assert offenders == []


def test_figures_are_drawn_only_in_core_figures():
    # one module, so the CLI and the app draw the same figures
    offenders = [str(p.relative_to(ROOT)) for p in app_modules()
                 if "matplotlib.figure" in imported(p) and p != CORE / "figures.py"]
    assert offenders == []


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Each app module's imports of other app modules, those inside functions included (a lazy
    import is still a dependency): `from core import figures` counts as core.figures."""
    modules = {module_name(p): p for p in app_modules()}
    graph = {}
    for name, path in modules.items():
        found = set()
        for imported_name in imported(path):
            while imported_name and imported_name not in modules:
                imported_name = imported_name.rpartition(".")[0]
            if imported_name and imported_name != name:
                found.add(imported_name)
        graph[name] = found - {n for n in found if name.startswith(n + ".")}  # a package's own __init__
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once, as the modules along it (depth-first search)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_circle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_core_layers_never_import_upwards():
    """Figures are drawn from results and never the other way round; where a model comes from
    does not depend on how it is loaded; the method registry does not depend on what runs it."""
    graph = import_graph()
    forbidden = {
        "core.model_pruning.sweep": {"core.figures", "core.report"},
        "core.model_sources": {"core.models"},
        "core.attribution": {"core.methods", "core.engine"},
        "core.methods.base": {"core.engine", "core.api"},
    }
    assert {m: sorted(graph[m] & up) for m, up in forbidden.items() if graph[m] & up} == {}
    assert not {m for m in graph if m.startswith("core.") and "core.api" in graph[m]}


# The GUI's layers, lowest first, by module name: what runs on the worker (gui/*_jobs.py, one per
# tab and one for the window), the shared parts (the worker and context, the views), how each tab
# draws its results (*_drawing), when it asks for jobs (*_requests), the tabs, the window, and the
# app's entry points. A module never imports one of a higher layer.
GUI_LAYERS = ("jobs", "parts", "drawing", "requests", "tabs", "window", "entry points")
QT = ("PySide6", "PyQt5", "PyQt6", "PySide2", "qtpy", "superqt", "pyqtgraph", "shiboken6")


def gui_layer(module: str) -> str:
    name = module.removeprefix("gui.")
    if name.endswith("_jobs"):
        return "jobs"
    if name.endswith("_drawing"):
        return "drawing"
    if name.endswith("_requests"):
        return "requests"
    if name.endswith("_tab") or name == "tabs":
        return "tabs"
    if name == "window" or name.startswith("window_"):
        return "window"
    if name in ("app", "bench", "selftest"):
        return "entry points"
    return "parts"


def test_gui_layers_never_import_upwards():
    graph = import_graph()
    rank = {m: GUI_LAYERS.index(gui_layer(m)) for m in graph if m.startswith("gui.")}
    upward = {m: sorted(n for n in graph[m] if rank.get(n, -1) > rank[m]) for m in rank}
    assert {m: up for m, up in upward.items() if up} == {}
    assert {gui_layer(m) for m in rank} == set(GUI_LAYERS)  # every layer has its modules


def test_gui_jobs_run_without_qt():
    """What a tab asks the worker for never touches a widget: no Qt in gui/*_jobs.py."""
    jobs = sorted((ROOT / "gui").glob("*_jobs.py"))
    offenders = {p.name: sorted(imported_roots(p) & set(QT)) for p in jobs}
    assert len(jobs) >= 4 and {k: v for k, v in offenders.items() if v} == {}
