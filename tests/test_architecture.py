"""core/ is pure computation: it must never import Qt or the GUI. Figures are drawn in one
module, core/reporting/figures.py, and never with pyplot."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
FORBIDDEN = ("PySide6", "PyQt5", "PyQt6", "PySide2", "qtpy", "superqt", "pyqtgraph", "shiboken6", "gui")


def imported(path: Path, root: Path = ROOT) -> set[str]:
    """Every import, those inside functions included; `from M import n` counts as M and as M.n (n
    may be a module). Relative imports are resolved against the module's package, and
    `importlib.import_module("literal")` counts as an import of that module."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[:len(package) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            if base:
                names.add(base)
            names.update(f"{base}.{alias.name}".lstrip(".") for alias in node.names)
        elif (isinstance(node, ast.Call) and _is_import_module(node.func) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def _is_import_module(func: ast.expr) -> bool:
    return ((isinstance(func, ast.Attribute) and func.attr == "import_module")
            or (isinstance(func, ast.Name) and func.id == "import_module"))


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported(path)}


def app_modules(root: Path = ROOT) -> list[Path]:
    return [root / "main.py", *sorted((root / "core").rglob("*.py")), *sorted((root / "gui").rglob("*.py"))]


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
                 if "matplotlib.figure" in imported(p) and p != CORE / "reporting" / "figures.py"]
    assert offenders == []


def module_name(path: Path, root: Path = ROOT) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each app module's imports of other app modules, those inside functions included (a lazy
    import is still a dependency): `from core.io import display` counts as core.io.display, and an
    import of a package (its __init__) is an edge like any other."""
    modules = {module_name(p, root): p for p in app_modules(root)}
    graph = {}
    for name, path in modules.items():
        found = set()
        for imported_name in imported(path, root):
            while imported_name and imported_name not in modules:
                imported_name = imported_name.rpartition(".")[0]
            if imported_name and imported_name != name:
                found.add(imported_name)
        graph[name] = found
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


# core's packages, lowest first: a module imports only from its own package or a lower one. The
# small foundation modules (errors, progress) come first; the public API and the CLI last.
CORE_LAYERS = ("core.errors", "core.progress", "core.runtime", "core.io", "core.network", "core.models",
               "core.methods", "core.pathway", "core.evaluation", "core.dissection", "core.reporting",
               "core.model_pruning", "core.api", "core.cli")


def core_layer(module: str) -> str:
    return ".".join(module.split(".")[:2])


def upward_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """core modules that import from a higher package than their own, and GUI modules that import
    from a higher GUI layer."""
    rank = {m: CORE_LAYERS.index(core_layer(m)) for m in graph if m.startswith("core.")}
    rank.update({m: GUI_LAYERS.index(gui_layer(m)) for m in graph if m.startswith("gui.")})
    upward = {m: sorted(n for n in graph[m] if n.split(".")[0] == m.split(".")[0] and rank.get(n, -1) > rank[m])
              for m in rank}
    return {m: up for m, up in upward.items() if up}


def test_core_layers_never_import_upwards():
    """Figures are drawn from results and never the other way round; where a model comes from
    does not depend on how it is loaded; the method registry does not depend on what runs it."""
    graph = import_graph()
    assert {core_layer(m) for m in graph if m.startswith("core.")} == set(CORE_LAYERS) - {"core"}
    assert {m: up for m, up in upward_imports(graph).items() if m.startswith("core.")} == {}
    forbidden = {
        "core.model_pruning.sweep": {"core.reporting.figures", "core.reporting.report"},
        "core.models.sources": {"core.models.loading"},
        "core.methods": {"core.methods.attribution"},  # the registry imports no torch
        "core.methods.base": {"core.methods.attribution", "core.api"},
    }
    assert {m: sorted(graph[m] & up) for m, up in forbidden.items() if graph[m] & up} == {}


# The GUI's layers, lowest first, by module name: what runs on the worker (gui/*/jobs.py, one per
# tab and one for the window), the shared parts (the worker and context, the views), how each tab
# draws its results (drawing), when it asks for jobs (requests), the tabs, the window, and the
# app's entry points. A module never imports one of a higher layer.
GUI_LAYERS = ("jobs", "parts", "drawing", "requests", "tabs", "window", "entry points")
QT = ("PySide6", "PyQt5", "PyQt6", "PySide2", "qtpy", "superqt", "pyqtgraph", "shiboken6")


def gui_layer(module: str) -> str:
    """gui/<part>/jobs.py, drawing.py, requests.py, tab.py by their leaf name; the window's package
    above the tabs; the entry points at gui/'s top; everything else is a shared part."""
    leaf = module.rpartition(".")[2]
    if leaf in ("jobs", "drawing", "requests"):
        return leaf
    if leaf in ("tab", "tabs"):
        return "tabs"
    if module.startswith("gui.window"):
        return "window"
    if module in ("gui.app", "gui.latency", "gui.selftest"):
        return "entry points"
    return "parts"


def test_gui_layers_never_import_upwards():
    graph = import_graph()
    assert {m: up for m, up in upward_imports(graph).items() if m.startswith("gui.")} == {}
    assert {gui_layer(m) for m in graph if m.startswith("gui.")} == set(GUI_LAYERS)  # each has modules


def test_gui_jobs_run_without_qt():
    """What a tab asks the worker for never touches a widget: no Qt in gui/*_jobs.py."""
    jobs = sorted((ROOT / "gui").rglob("jobs.py"))
    offenders = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & set(QT)) for p in jobs}
    assert len(jobs) >= 4 and {k: v for k, v in offenders.items() if v} == {}


def _tree_copy(tmp_path: Path) -> Path:
    for path in app_modules():
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n" + code + "\n")


def test_the_checks_see_relative_imports(tmp_path):
    root = _tree_copy(tmp_path)
    assert upward_imports(import_graph(root)) == {}
    _append(root / "core" / "io" / "images.py", "def f():\n    from ..pathway import engine")
    assert upward_imports(import_graph(root)) == {"core.io.images": ["core.pathway", "core.pathway.engine"]}


def test_the_checks_see_import_module_with_a_literal_name(tmp_path):
    root = _tree_copy(tmp_path)
    _append(root / "core" / "models" / "weights.py",
            "import importlib\ndef f():\n    return importlib.import_module('core.evaluation.roar')")
    assert upward_imports(import_graph(root)) == {"core.models.weights": ["core.evaluation.roar"]}


def test_the_checks_see_an_import_of_a_parent_package(tmp_path):
    root = _tree_copy(tmp_path)
    assert cycles(import_graph(root)) == []
    _append(root / "core" / "methods" / "base.py", "def f():\n    import core.methods")
    assert ["core.methods", "core.methods.base", "core.methods"] in cycles(import_graph(root))
