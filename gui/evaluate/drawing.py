"""How the Evaluate tab draws its results: the sanity check's similarity curves and its grid of
maps, and a results folder that `evaluate`, `roar` or `sanity` wrote (its numbers, leaderboard and
figures)."""
import json
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QGridLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from gui.evaluate.jobs import SanityShown
from gui.evaluate.leaderboard import LeaderboardTable
from gui.parts.dissection import pixmap

CELL = 104  # px of one map in the grid
RESULT_FILES = ("results.json", "roar.json", "sanity.json", "pathways.json")
MAX_FIGURES = 40  # PNGs shown from one results folder
FIGURE_WIDTH = 960  # px: wider figures are scaled down to it


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
        from core.io.display import colorize, normalize

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
    elif name == "pathways.json":
        o = data.get("overlap", {})
        heads = ("images", "nodes most often in its graph (last layer)")
        rows = [[c, str(e.get("images")), _frequent(e)] for c, e in data.get("classes", {}).items()]
        title = (f"pathways: {data.get('images')} images of {data.get('dataset')}; overlap within a class "
                 f"{_num(o.get('within_class'))}, between classes {_num(o.get('between_class'))}")
    else:
        heads = ("Spearman, fully randomised", "SSIM, fully randomised")
        rows = [[m, _num(data["spearman"][m][-1]), _num(data["ssim"][m][-1])]
                for m in data.get("methods", [])]
        title = f"sanity check of {data.get('image')}"
    cells = "".join(f"<th>{h}</th>" for h in ("class" if name == "pathways.json" else "method", *heads))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<b>{title}</b><table cellspacing=6><tr>{cells}</tr>{body}</table>"


def _leaderboard(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "results.json").read_text()).get("leaderboard")
    except (OSError, ValueError, AttributeError):
        return None


def _frequent(entry: dict, count: int = 5) -> str:
    """A class's channels most often in its graphs, at the graphs' last layer: 'channel (share)'."""
    frequency = entry.get("frequency", {})
    if not frequency:
        return "–"
    values = list(frequency.values())[-1]
    top = sorted(range(len(values)), key=lambda c: -values[c])[:count]
    return ", ".join(f"{c} ({values[c]:.0%})" for c in top if values[c] > 0)


def _num(value) -> str:
    return "–" if value is None else f"{value:.3f}"


class ResultsView(QWidget):
    """A results folder: its numbers as a table, then every PNG in it (and one level down)."""

    def __init__(self):
        super().__init__()
        self.folder: Path | None = None
        self.summary = QLabel("Open a folder written by evaluate, roar, sanity or pathways.")
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

    def show_running(self, leaderboard: dict) -> None:
        """The leaderboard of a run still going: the images finished so far, means only."""
        count = leaderboard["images"]
        self.summary.setText(f"<b>Evaluating:</b> {count} image{'s' if count != 1 else ''} finished so far "
                             "(the intervals and figures come at the end)")
        self.leaderboard.show_leaderboard(leaderboard)

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
