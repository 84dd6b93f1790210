"""Perturbation curves: deletion and insertion, one curve per method with its AUC in the legend,
and the sparsity sweep (output change and deletion AUC against sparsity) with a marker at the
slider. Curves are created once per method and updated with setData."""
import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QWidget

from core.methods import PATHWAY

PATHWAY_COLOR = "#d62728"
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")


def _titled(plot: pg.PlotWidget, title: str, note: str = "") -> None:
    """A title, with a note (that the curves are coarse) on a second, smaller line. The title
    must not set the plot's width: pyqtgraph makes a title's text width its minimum, and a plot
    wider than its widget is drawn cut off at the right, legend and all."""
    text = title + (f"<br><span style='font-size:7.5pt; color:#666'>{note}</span>" if note else "")
    plot.setTitle(text, size="9pt")
    plot.getPlotItem().titleLabel.setMinimumWidth(0)


def _plot(title: str, x_label: str, y_label: str) -> pg.PlotWidget:
    plot = pg.PlotWidget()
    _titled(plot, title)
    plot.setLabel("bottom", x_label)
    plot.setLabel("left", y_label)
    plot.showGrid(x=True, y=True, alpha=0.25)
    plot.setMenuEnabled(False)
    plot.setMinimumSize(200, 160)
    return plot


def _refit(legend: pg.LegendItem) -> None:
    """Resize a legend to its labels (its anchor follows): pyqtgraph sizes a legend when an
    entry is added, not when a label's text changes, so a longer label (an AUC added) would
    run past the plot's edge."""
    legend.layout.activate()
    legend.updateSize()


class CurvesView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._titles = {"deletion": "Deletion · AUC, lower is better",
                        "insertion": "Insertion · AUC, higher is better"}
        self.deletion = _plot(self._titles["deletion"], "fraction of pixels removed", "p(target)")
        self.insertion = _plot(self._titles["insertion"], "fraction of pixels revealed", "p(target)")
        self.sweep = _plot("Sparsity sweep", "sparsity (%)", "")
        for plot in (self.deletion, self.insertion):
            plot.setXRange(0, 1, padding=0.02)
            plot.setYRange(0, 1, padding=0.02)
        # Where the curves are not: deletion falls from the top left, insertion rises to the
        # top right, the sweep rises at high sparsity.
        self._legends = {plot: plot.addLegend(offset=offset, labelTextSize="7.5pt", verSpacing=-8,
                                              brush=pg.mkBrush(255, 255, 255, 200))
                         for plot, offset in ((self.deletion, (-4, 4)), (self.insertion, (-4, -4)),
                                              (self.sweep, (4, 4)))}
        self._plots = {"deletion": self.deletion, "insertion": self.insertion}
        self._lines: dict[tuple[str, str], pg.PlotDataItem] = {}  # (plot, method) -> line
        self._colors: dict[str, str] = {}
        self.sweep.setXRange(0, 100, padding=0.02)
        self.sweep_change = self.sweep.plot([], [], pen=pg.mkPen("#d62728", width=2), symbol="o",
                                            symbolSize=5, symbolBrush="#d62728",
                                            name="output change")
        self.sweep_auc = self.sweep.plot([], [], pen=pg.mkPen("#1f77b4", width=2), symbol="s",
                                         symbolSize=5, symbolBrush="#1f77b4",
                                         name="deletion AUC (pathway)")
        self.marker = pg.InfiniteLine(pos=70, angle=90, pen=pg.mkPen("#555", width=1, style=Qt.PenStyle.DashLine))
        self.sweep.addItem(self.marker)
        layout = QGridLayout(self)  # deletion and insertion side by side, the sweep below
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.deletion, 0, 0)
        layout.addWidget(self.insertion, 0, 1)
        layout.addWidget(self.sweep, 1, 0, 1, 2)
        self._curves: dict = {}
        self._has_sweep = False
        self._live: str | None = None

    def set_methods(self, methods: list[str], live: str | None = None) -> None:
        """The methods whose curves are drawn, in legend order; live: the pathway map the slider
        makes. Their lines are made here, so that a result only updates data (making plot items is
        the slow part)."""
        self._live = live
        for key in [key for key in self._lines if key[1] not in methods]:
            plot = self._plots[key[0]]
            line = self._lines.pop(key)
            plot.removeItem(line)
            self._legends[plot].removeItem(line)
        for method in methods:
            for name, plot in self._plots.items():
                if (name, method) not in self._lines:
                    self._lines[(name, method)] = plot.plot([], [], pen=self._pen(method), name=method)
        self._curves = {m: c for m, c in self._curves.items() if m in methods}

    def _pen(self, method: str):
        """The live pathway map: thick red. A method through the pathway (a ↝ row): its plain
        map's colour, dashed. Other methods: a colour of their own."""
        if method == self._live:
            return pg.mkPen(PATHWAY_COLOR, width=3)
        through = method.removeprefix(PATHWAY)
        color = self._colors.setdefault(through, PALETTE[len(self._colors) % len(PALETTE)])
        if through != method:
            return pg.mkPen(color, width=2.2, style=Qt.PenStyle.DashLine)
        return pg.mkPen(color, width=1.6)

    def _label(self, method: str) -> str:
        return method if method == self._live else method.replace(PATHWAY, "↝ ", 1)

    def set_curves(self, curves: dict) -> None:
        """curves: method -> core.pathway.curves.Curves, for the methods of set_methods."""
        self._curves = dict(curves)
        for (name, method), line in self._lines.items():
            c = curves.get(method)
            shown_as = self._label(method)
            if c is None:
                line.setData([], [])
                label = shown_as
            else:
                values, auc = ((c.deletion, c.deletion_auc) if name == "deletion"
                               else (c.insertion, c.insertion_auc))
                line.setData(np.asarray(c.fractions), np.asarray(values))
                label = f"{shown_as}  {auc:.3f}"
            self._legends[self._plots[name]].getLabel(line).setText(label)
        for legend in self._legends.values():
            _refit(legend)

    def set_note(self, note: str) -> None:
        """A line under the deletion and insertion titles (that the curves are coarse), or none."""
        for name, plot in self._plots.items():
            _titled(plot, self._titles[name], note)

    def set_sweep_title(self, mode: str, selector: str, note: str = "") -> None:
        _titled(self.sweep, f"Sparsity sweep · pathway-gradient · {mode}, {selector}", note)

    def clear(self) -> None:
        self.set_curves({})
        self.set_note("")
        self.sweep_change.setData([], [])
        self.sweep_auc.setData([], [])
        self._has_sweep = False

    def set_sweep(self, sweep) -> None:
        """core.pathway.engine.Sweep."""
        self.sweep_change.setData(sweep.sparsities, sweep.output_change)
        self.sweep_auc.setData(sweep.sparsities, sweep.deletion_auc)
        self._has_sweep = True

    def set_marker(self, sparsity: float) -> None:
        self.marker.setValue(sparsity)

    def curves(self) -> dict:
        return self._curves

    def ready(self, methods: list[str]) -> bool:
        return self._has_sweep and all(m in self._curves for m in methods)
