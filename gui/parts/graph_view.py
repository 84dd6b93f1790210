"""The pathway graph (core.pathway.graph.PathwayGraph) drawn in layers: a column per activation
layer, input side on the left; a node's size is its share of the layer's kept score, an edge's
width its relevance relative to the strongest between the same two layers (red excites, blue
inhibits). Clicking a node asks for its channel; the graph exports as PNG and JSON."""
import json
import math

import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from core.io.output import write_text
from core.reporting.graph_figures import edge_strengths, graph_positions

EXCITE, INHIBIT = (192, 57, 43), (46, 111, 186)
NODE_BRUSH = (243, 156, 18)
LABEL_POINTS = 7


class GraphView(QWidget):
    node_clicked = Signal(str, int)  # layer name, channel
    status = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.graph = None
        self.canvas = pg.PlotWidget(background="w")
        self.plot = self.canvas.getPlotItem()
        self.plot.hideAxis("left")
        self.plot.setMenuEnabled(False)
        self.plot.invertY(True)
        self.canvas.setMouseEnabled(x=False, y=False)
        self.scatter = pg.ScatterPlotItem(hoverable=True, tip=None)
        self.scatter.sigClicked.connect(self._clicked)
        self.note = QLabel("the graph follows the slider once it settles")
        self.note.setStyleSheet("color: #555; font-size: 8pt")
        self.note.setWordWrap(True)
        self.png_button = QPushButton("PNG…")
        self.json_button = QPushButton("JSON…")
        for button, kind in ((self.png_button, "png"), (self.json_button, "json")):
            button.setToolTip(f"Export the graph as {kind.upper()}")
            button.setEnabled(False)
            button.clicked.connect(lambda _checked=False, kind=kind: self._choose_export(kind))
        row = QHBoxLayout()
        row.addWidget(self.note, 1)
        row.addWidget(self.png_button)
        row.addWidget(self.json_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(row)
        layout.addWidget(self.canvas, 1)

    def clear(self, note: str = "computing…") -> None:
        self.graph = None
        self.plot.clear()
        self.note.setText(note)
        for button in (self.png_button, self.json_button):
            button.setEnabled(False)

    def set_graph(self, graph) -> None:
        self.graph = graph
        self.plot.clear()
        places = graph_positions(graph)
        for edge, strength in sorted(zip(graph.edges, edge_strengths(graph)), key=lambda pair: pair[1]):
            if strength < 0.02:
                continue  # below a hundredth of a pixel wide: noise in the drawing
            (x0, y0), (x1, y1) = places[edge.source], places[edge.target]
            colour = EXCITE if edge.weight > 0 else INHIBIT
            pen = pg.mkPen((*colour, int(60 + 160 * strength)), width=0.5 + 4.5 * strength)
            self.plot.addItem(pg.PlotCurveItem([x0, x1], [y0, y1], pen=pen))
        # sized for the strip under the maps: 8 nodes in about 160 px
        spots = [{"pos": places[n.id], "size": 5 + 16 * math.sqrt(n.share), "data": (n.layer, n.channel),
                  "brush": pg.mkBrush(NODE_BRUSH), "pen": pg.mkPen("k", width=0.8)} for n in graph.nodes]
        self.scatter.setData(spots)
        self.plot.addItem(self.scatter)
        font = QFont()
        font.setPointSize(LABEL_POINTS)
        for n in graph.nodes:
            concept = graph.concepts.get(n.id)
            label = pg.TextItem(f"{n.channel}" + (f" {concept}" if concept else ""), color=(40, 40, 40),
                                anchor=(-0.25, 0.5))  # right of its node
            label.setFont(font)
            label.setPos(*places[n.id])
            self.plot.addItem(label)
        axis = self.plot.getAxis("bottom")
        axis.setTicks([[(float(i), _short(name)) for i, name in enumerate(graph.layers)]])
        self.plot.setXRange(-0.3, len(graph.layers) - 0.4, padding=0)
        self.plot.setYRange(-0.8, max((y for _, y in places.values()), default=0) + 0.8, padding=0)
        self.note.setText(f"{graph.class_name} · {graph.sparsity:.1f} % pruned · node: share of its layer's "
                          f"kept score · edge: relevance (red excites, blue inhibits) · click a node")
        for button in (self.png_button, self.json_button):
            button.setEnabled(True)

    def _clicked(self, _scatter, points, _event=None) -> None:
        if len(points):
            layer, channel = points[0].data()
            self.node_clicked.emit(layer, channel)

    def _choose_export(self, kind: str) -> None:
        if self.graph is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export the pathway graph", f"pathway_graph.{kind}",
                                              f"{kind.upper()} (*.{kind})")
        if path:
            self.export(path)

    def export(self, path) -> None:
        """Writes the graph as .json, or as .png the figure `explain --graph` draws."""
        from pathlib import Path

        from core.io.output import save_figure
        from core.reporting.graph_figures import pathway_graph

        path = Path(path)
        try:
            if path.suffix.lower() == ".json":
                write_text(path, json.dumps(self.graph.to_json(), indent=1))
            else:
                save_figure(pathway_graph(self.graph), path.with_suffix(".png"))
        except OSError as err:
            self.status.emit(f"cannot write {path}: {err.strerror or err}")
            return
        self.status.emit(f"wrote {path}")


def _short(layer: str) -> str:
    """A layer's name as a tick label: its last two parts."""
    return ".".join(layer.split(".")[-2:])
