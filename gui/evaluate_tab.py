"""The Evaluate tab: the cascading randomisation sanity check for the image on screen, and a viewer
for the results folders that `evaluate`, `roar` and `sanity` write.

The check re-initialises the model's parameter blocks from the output down (core.sanity) and, in
one plot, shows each method's Spearman (solid) and SSIM (dashed) against its map on the trained
model; below, the maps at the steps the user picks. It runs on the context's worker, stoppable at
every map; this module does not import torch.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (QDoubleSpinBox, QFileDialog, QFormLayout, QGridLayout, QGroupBox,
                               QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                               QProgressBar, QPushButton, QScrollArea, QSpinBox, QSplitter,
                               QTabWidget, QVBoxLayout, QWidget)

from core.figures import grid_steps
from core.methods import ALL_METHODS, DEFAULTS
from core.progress import Progress
from gui.context import PRIORITY_BACKGROUND, JobFeedback
from gui.dissection import DissectBox, pixmap
from gui.leaderboard import LeaderboardTable

JOB_KEY = "evaluate-sanity"
DEFAULT_METHODS = DEFAULTS["sanity"]
GRID_COLUMNS = 5  # steps shown in the map grid until the user picks others
CELL = 104  # px of one map in the grid
RESULT_FILES = ("results.json", "roar.json", "sanity.json")
MAX_FIGURES = 40  # PNGs shown from one results folder
FIGURE_WIDTH = 960  # px: wider figures are scaled down to it


@dataclass
class SanityShown:
    """A finished check (worker result): core.sanity.SanityResult, the image, what was skipped."""
    result: object
    view: np.ndarray
    skipped: dict
    label: str


def sanity_job(engine, methods, seed: int, sparsity: float):
    """Job: the cascading randomisation check of the engine's image and class."""
    from dataclasses import replace

    from core.engine import compute_map
    from core.errors import PruneScopeError
    from core.methods import supports
    from core.sanity import iter_cascading_randomization

    model = engine.model
    skipped = {}
    for method in methods:
        ok, why = supports(method, model)
        if not ok:
            skipped[method] = why
    chosen = [m for m in methods if m not in skipped]
    if not chosen:
        raise PruneScopeError("choose at least one method this model supports")
    yield Progress(0.0, "copying the model")

    def explain(module, x, target, method):
        return compute_map(replace(model, module=module), x, target, method, sparsity=sparsity)

    result = yield from iter_cascading_randomization(model.module, engine.x, engine.target, chosen,
                                                     explain, seed=seed)
    prediction = engine.prediction
    name = next((n for i, n, _ in prediction.top5 if i == engine.target), str(engine.target))
    return SanityShown(result, engine.view, skipped, f"{model.name}, class {name}")


def parse_steps(text: str, count: int) -> list[int]:
    """'0, 4, 8' -> [0, 4, 8]; ValueError with a clear line for anything outside 0..count-1."""
    try:
        steps = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"steps must be whole numbers separated by commas: {text}") from None
    bad = [s for s in steps if not 0 <= s < count]
    if bad or not steps:
        raise ValueError(f"steps must be between 0 and {count - 1}")
    return sorted(set(steps))


def _pixmap(rgb: np.ndarray, side: int) -> QPixmap:
    return pixmap(rgb).scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio,
                              Qt.TransformationMode.SmoothTransformation)


class SimilarityPlot(pg.PlotWidget):
    """Spearman (solid) and SSIM (dashed) per method against the number of blocks randomised;
    hovering names the block."""

    def __init__(self):
        super().__init__()
        self.setLabel("left", "similarity to the trained model's map")
        self.setLabel("bottom", "parameter blocks randomised (from the output)")
        self.showGrid(x=True, y=True, alpha=0.25)
        self.setMenuEnabled(False)
        self.addLegend(offset=(-10, 10), labelTextSize="8pt")
        self.blocks: list[str] = []
        self.hover = QLabel("")
        self.scene().sigMouseMoved.connect(self._moved)

    def set_result(self, result) -> None:
        self.clear()
        self.blocks = list(result.blocks)
        for i, method in enumerate(result.methods):
            colour = pg.intColor(i, hues=max(len(result.methods), 3))
            self.plot(result.steps, result.spearman[method], pen=pg.mkPen(colour, width=2),
                      symbol="o", symbolSize=5, symbolBrush=colour, name=f"{method} Spearman")
            self.plot(result.steps, result.ssim[method],
                      pen=pg.mkPen(colour, width=2, style=Qt.PenStyle.DashLine),
                      symbol="t", symbolSize=5, symbolBrush=colour, name=f"{method} SSIM")
        self.setXRange(0, max(len(result.steps) - 1, 1))
        low = min(min(v) for d in (result.spearman, result.ssim) for v in d.values())
        self.setYRange(min(low, 0.0) - 0.05, 1.05)

    def _moved(self, pos) -> None:
        step = int(round(self.getPlotItem().vb.mapSceneToView(pos).x()))
        if step == 0:
            self.hover.setText("step 0: the trained model")
        elif 0 < step <= len(self.blocks):
            self.hover.setText(f"step {step}: randomised down to {self.blocks[step - 1]}")


class MapGrid(QWidget):
    """Rows: methods; columns: the image, then |map| at each chosen step."""

    def __init__(self):
        super().__init__()
        self.grid = QGridLayout(self)
        self.grid.setSpacing(3)
        self.grid.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.cells: dict[tuple[str, int], QLabel] = {}

    def show_maps(self, shown: SanityShown, steps: list[int]) -> None:
        from core.display import colorize, normalize

        while self.grid.count():
            widget = self.grid.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        self.cells = {}
        result = shown.result
        for col, step in enumerate(steps, start=1):
            name = "trained" if step == 0 else result.blocks[step - 1]
            head = QLabel(f"{step}: {name}")
            head.setFixedWidth(CELL)
            head.setWordWrap(True)
            head.setStyleSheet("font-size: 8pt")
            self.grid.addWidget(head, 0, col)
        for row, method in enumerate(result.methods, start=1):
            picture = QLabel()
            picture.setPixmap(_pixmap(shown.view, CELL))
            picture.setToolTip(method)
            self.grid.addWidget(picture, row, 0)
            for col, step in enumerate(steps, start=1):
                cell = QLabel()
                cell.setPixmap(_pixmap(colorize(normalize(result.maps[method][step], "absolute")),
                                       CELL))
                cell.setToolTip(f"{method}, step {step}: Spearman "
                                f"{result.spearman[method][step]:.3f}, SSIM "
                                f"{result.ssim[method][step]:.3f}")
                self.grid.addWidget(cell, row, col)
                self.cells[method, step] = cell
            tag = QLabel(method)
            tag.setStyleSheet("font-size: 8pt")
            self.grid.addWidget(tag, row, len(steps) + 1)


def summary_html(folder: Path) -> str:
    """A table of the numbers in a results folder's JSON (evaluate, roar or sanity)."""
    for name in RESULT_FILES:
        path = folder / name
        if path.is_file():
            break
    else:
        return f"No {', '.join(RESULT_FILES)} in {folder}."
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return f"{path.name}: unreadable ({err})"
    if name == "results.json" and data.get("leaderboard"):  # the sortable table below shows it
        return (f"<b>evaluate: {data.get('images')} images of {data.get('dataset')}</b>: the leaderboard, "
                "best first; click a header to sort, hover a value for its 95 % interval")
    if name == "results.json":
        keys = ("pointing_game", "relevance_mass", "deletion_auc", "insertion_auc",
                "sanity_spearman")
        heads = ("pointing", "mass", "deletion AUC", "insertion AUC", "sanity ρ")
        rows = [[m, *(_num(e.get(k)) for k in keys)] for m, e in data.get("methods", {}).items()]
        title = f"evaluate: {data.get('images')} images of {data.get('dataset')}"
    elif name == "roar.json":
        methods = data.get("methods", {})
        fractions = next(iter(methods.values()), {}).get("fractions", [])
        heads = (*(f"{100 * f:.0f} %" for f in fractions), "AUC")
        rows = [[m, *(_num(a) for a in e["accuracy"]), _num(e["auc"])] for m, e in methods.items()]
        title = (f"ROAR: test accuracy after retraining ({data.get('train_images')} training "
                 f"images; lower AUC = the method found the evidence)")
    else:
        heads = ("Spearman, fully randomised", "SSIM, fully randomised")
        rows = [[m, _num(data["spearman"][m][-1]), _num(data["ssim"][m][-1])]
                for m in data.get("methods", [])]
        title = f"sanity check of {data.get('image')}"
    cells = "".join(f"<th>{h}</th>" for h in ("method", *heads))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<b>{title}</b><table cellspacing=6><tr>{cells}</tr>{body}</table>"


def _leaderboard(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "results.json").read_text()).get("leaderboard")
    except (OSError, ValueError, AttributeError):
        return None


def _num(value) -> str:
    return "–" if value is None else f"{value:.3f}"


class ResultsView(QWidget):
    """A results folder: its numbers as a table, then every PNG in it (and one level down)."""

    def __init__(self):
        super().__init__()
        self.folder: Path | None = None
        self.summary = QLabel("Open a folder written by evaluate, roar or sanity.")
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.figures = QVBoxLayout()
        self.figures.setAlignment(Qt.AlignmentFlag.AlignTop)
        page = QWidget()
        column = QVBoxLayout(page)
        column.addWidget(self.summary)
        self.leaderboard = LeaderboardTable()
        column.addWidget(self.leaderboard)
        column.addLayout(self.figures)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(page)
        scroll.setWidgetResizable(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)
        self.shown: list[Path] = []

    def load(self, folder) -> None:
        folder = Path(folder)
        while self.figures.count():
            widget = self.figures.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        self.folder = folder
        self.summary.setText(summary_html(folder))
        self.leaderboard.show_leaderboard(_leaderboard(folder))
        pngs = sorted(folder.glob("*.png")) + sorted(folder.glob("*/*.png"))
        self.shown = []
        for path in pngs[:MAX_FIGURES]:
            pixmap = QPixmap(str(path))
            if pixmap.isNull():
                continue
            caption = QLabel(f"<b>{path.relative_to(folder)}</b>")
            if pixmap.width() > FIGURE_WIDTH:
                pixmap = pixmap.scaledToWidth(FIGURE_WIDTH,
                                              Qt.TransformationMode.SmoothTransformation)
            picture = QLabel()
            picture.setPixmap(pixmap)
            self.figures.addWidget(caption)
            self.figures.addWidget(picture)
            self.shown.append(path)
        if len(pngs) > MAX_FIGURES:
            self.figures.addWidget(QLabel(f"… and {len(pngs) - MAX_FIGURES} more figures"))


class EvaluateTab(JobFeedback, QWidget):
    status = Signal(str)
    job_key = JOB_KEY
    checked = Signal()  # a sanity check finished and is drawn

    def __init__(self, context, parent=None):
        super().__init__(parent)
        self.context = context
        self.shown: SanityShown | None = None

        controls = QWidget()
        column = QVBoxLayout(controls)
        column.addWidget(self._sanity_box())
        self.dissect = DissectBox(context)
        column.addWidget(self.dissect)
        column.addWidget(self._results_box())
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(controls)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(300)

        self.plot = SimilarityPlot()
        self.grid = MapGrid()
        grid_scroll = QScrollArea()
        grid_scroll.setWidget(self.grid)
        grid_scroll.setWidgetResizable(True)
        sanity_page = QSplitter(Qt.Orientation.Vertical)
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.plot, 1)
        top_layout.addWidget(self.plot.hover)
        sanity_page.addWidget(top)
        sanity_page.addWidget(grid_scroll)
        sanity_page.setSizes([500, 350])  # the plot, and room for two rows of maps
        self.results = ResultsView()
        self.views = QTabWidget()
        self.views.addTab(sanity_page, "Sanity check")
        self.views.addTab(self.results, "Results folder")

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(scroll)
        splitter.addWidget(self.views)
        splitter.setStretchFactor(1, 1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

        context.model_changed.connect(self._model_changed)
        context.engine_changed.connect(self._engine_changed)

    # -- building ------------------------------------------------------------------------------
    def _sanity_box(self) -> QGroupBox:
        box = QGroupBox("Sanity check of this image")
        form = QFormLayout(box)
        self.methods = QListWidget()
        self.methods.setToolTip("Methods whose maps are compared after each randomisation")
        self.methods.setMaximumHeight(170)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Seed of the random re-initialisation")
        self.sparsity = QDoubleSpinBox()
        self.sparsity.setRange(0, 99)
        self.sparsity.setSingleStep(5)
        self.sparsity.setValue(70)
        self.sparsity.setSuffix(" %")
        self.sparsity.setToolTip("Neurons pruned by the pathway methods")
        self.run_button = QPushButton("Run sanity check")
        self.run_button.clicked.connect(self.run_sanity)
        self.run_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.message = QLabel("Open an image, then run the check.")
        self.message.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.steps = QLineEdit()
        self.steps.setPlaceholderText("e.g. 0,3,6,9")
        self.steps.setToolTip("Steps of the cascade whose maps the grid shows (0 = trained model)")
        self.steps.editingFinished.connect(self._steps_changed)
        form.addRow("Methods", self.methods)
        form.addRow("Seed", self.seed)
        form.addRow("Sparsity", self.sparsity)
        form.addRow(self.run_button)
        form.addRow(self.progress)
        form.addRow(self.message)
        form.addRow(self.cancel_button)
        form.addRow("Maps at steps", self.steps)
        return box

    def _results_box(self) -> QGroupBox:
        box = QGroupBox("Results of evaluate / roar / sanity")
        column = QVBoxLayout(box)
        self.open_button = QPushButton("Open results folder…")
        self.open_button.clicked.connect(self._choose_folder)
        self.folder_label = QLabel("")
        self.folder_label.setWordWrap(True)
        column.addWidget(self.open_button)
        column.addWidget(self.folder_label)
        return box

    # -- state ---------------------------------------------------------------------------------
    def _model_changed(self, _model) -> None:
        if self.methods.count() == 0:
            for method in ALL_METHODS:
                item = QListWidgetItem(method)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if method in DEFAULT_METHODS
                                   else Qt.CheckState.Unchecked)
                self.methods.addItem(item)

    def _engine_changed(self, _engine) -> None:
        self.run_button.setEnabled(not self.cancel_button.isEnabled())  # not while checking
        if self.shown is not None:
            self.message.setText("The image or class changed: run the check again for it.")

    def chosen_methods(self) -> list[str]:
        return [self.methods.item(i).text() for i in range(self.methods.count())
                if self.methods.item(i).checkState() == Qt.CheckState.Checked]

    def set_methods(self, methods) -> None:
        for i in range(self.methods.count()):
            item = self.methods.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in methods
                               else Qt.CheckState.Unchecked)

    def _busy(self, busy: bool) -> None:
        self.run_button.setEnabled(not busy and self.context.current_engine() is not None)
        self.cancel_button.setEnabled(busy)
        if not busy:
            self.progress.setValue(0)

    # -- the check -----------------------------------------------------------------------------
    def run_sanity(self) -> None:
        engine = self.context.current_engine()
        if engine is None:
            self.message.setText("Open an image first.")
            return
        methods, seed, sparsity = self.chosen_methods(), self.seed.value(), self.sparsity.value()
        self._busy(True)
        self.context.run_job(lambda: sanity_job(engine, methods, seed, sparsity), self._show,
                             self._progressed, self._failed, key=JOB_KEY,
                             priority=PRIORITY_BACKGROUND)

    def _show(self, shown: SanityShown) -> None:
        self._busy(False)
        self.shown = shown
        result = shown.result
        self.plot.set_result(result)
        steps = grid_steps(len(result.steps), GRID_COLUMNS)
        self.steps.setText(",".join(map(str, steps)))
        self.grid.show_maps(shown, steps)
        last = ", ".join(f"{m} {result.spearman[m][-1]:.2f}" for m in result.methods)
        skipped = "".join(f"; {m} skipped: {why}" for m, why in shown.skipped.items())
        self.message.setText(f"{shown.label}: Spearman after full randomisation: {last}{skipped}")
        self.status.emit("sanity check done")
        self.checked.emit()

    def _steps_changed(self) -> None:
        if self.shown is None:
            return
        try:
            steps = parse_steps(self.steps.text(), len(self.shown.result.steps))
        except ValueError as err:
            self.message.setText(str(err))
            return
        self.grid.show_maps(self.shown, steps)

    # -- results folders -----------------------------------------------------------------------
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Results folder")
        if folder:
            self.open_results(folder)

    def open_results(self, folder) -> None:
        self.results.load(folder)
        self.folder_label.setText(str(folder))
        self.views.setCurrentWidget(self.results)
