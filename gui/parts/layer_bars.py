"""Bars per layer along the model's depth, over an axis of layer indices: the neurons each
activation layer kept (the Explain tab's masks view). The Model pruning tab's bars use the axis
too."""
import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Signal

BAR_COLOR = "#7aa6d6"
SELECTED_COLOR = "#d9534f"


class LayerAxis(pg.AxisItem):
    """An x axis of layer indices: whole numbers, and no SI prefix (pyqtgraph labels a one-layer
    axis, -0.6..0.6, as -400..400 (x0.001))."""

    def __init__(self):
        super().__init__("bottom")
        self.enableAutoSIPrefix(False)

    def tickSpacing(self, minVal, maxVal, size):
        whole = [level for level in super().tickSpacing(minVal, maxVal, size) if level[0] >= 1]
        return whole or [(1.0, 0.0)]


class LayerBars(pg.PlotWidget):
    """Percent of neurons kept in each activation layer, input on the left."""

    layer_clicked = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent, axisItems={"bottom": LayerAxis()})
        self.setMenuEnabled(False)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        self.setTitle("Neurons kept per layer (click a bar, or ← →)", size="9pt")
        self.setLabel("left", "kept (%)")
        self.setLabel("bottom", "layer, input → output")
        self.setYRange(0, 100, padding=0.02)
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=BAR_COLOR)
        # made once: the bars are redrawn at every slider move
        self._brush, self._selected_brush = pg.mkBrush(BAR_COLOR), pg.mkBrush(SELECTED_COLOR)
        self.addItem(self.bars)
        self._kept: list = []
        self.scene().sigMouseClicked.connect(self._clicked)
        self.scene().sigMouseMoved.connect(self._hover)

    def set_kept(self, kept: list, selected: int | None) -> None:
        """kept: [(layer name, neurons kept, neurons)]."""
        self._kept = kept
        x = np.arange(len(kept))
        percent = np.array([100.0 * k / max(t, 1) for _, k, t in kept])
        brushes = [self._selected_brush if i == selected else self._brush for i in x]
        self.bars.setOpts(x=x, height=percent, width=0.8, brushes=brushes)
        self.setXRange(-0.6, max(len(kept), 1) - 0.4, padding=0)

    def _index_at(self, scene_pos: QPointF) -> int | None:
        box = self.plotItem.vb
        if not self._kept or not box.sceneBoundingRect().contains(scene_pos):
            return None
        index = int(round(box.mapSceneToView(scene_pos).x()))
        return index if 0 <= index < len(self._kept) else None

    def _clicked(self, event) -> None:
        index = self._index_at(event.scenePos())
        if index is not None:
            self.layer_clicked.emit(index)

    def _hover(self, scene_pos: QPointF) -> None:
        index = self._index_at(scene_pos)
        if index is None:
            self.setToolTip("")
            return
        name, kept, total = self._kept[index]
        self.setToolTip(f"{index}: {name}\n{kept:,} of {total:,} neurons kept "
                        f"({100.0 * kept / max(total, 1):.1f} %)")
