"""Neuron masks per layer: the percent of neurons kept along depth, and for the selected layer the
spatial count of kept neurons over the image and a paged grid of its channels (the heir of the
Deep Visualization Toolbox's layer grid); beside them, in a tab, the pathway graph. Keys:
Left/Right pick the layer, PgUp/PgDn the page."""
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Signal
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QSplitter,
                               QTabWidget, QVBoxLayout, QWidget)

from gui.parts.graph_view import GraphView
from gui.parts.layer_bars import LayerBars

PAGE_SIZE = 64  # channel tiles per page: an 8 x 8 grid stays readable at ~250 px
TILE_GAP = 1
GAP_COLOR = (90, 90, 90)
MASK_COLORS = np.array([[20, 20, 20], [250, 250, 250]], np.uint8)  # pruned, kept


class MaskView(QWidget):
    """The bar chart; the selected layer's count map; its channel tiles."""

    layer_selected = Signal(int)
    channel_clicked = Signal(int, int)  # layer index, channel
    graph_wanted = Signal()  # the pathway graph's tab is shown: draw the current one

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.bars = LayerBars()
        self.bars.layer_clicked.connect(self.select_layer)

        self.count_canvas = pg.GraphicsLayoutWidget()
        self.count_box = self.count_canvas.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.count_photo = pg.ImageItem()
        self.count_heat = pg.ImageItem()
        self.count_heat.setOpacity(0.65)
        self.count_box.addItem(self.count_photo)
        self.count_box.addItem(self.count_heat)
        self.count_title = _caption()
        self.count_note = _caption("color: #555; font-size: 8pt")

        self.tile_canvas = pg.GraphicsLayoutWidget()
        self.tile_box = self.tile_canvas.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.tiles = pg.ImageItem()
        self.tile_box.addItem(self.tiles)
        self.tile_canvas.scene().sigMouseMoved.connect(self._hover_tile)
        self.tile_canvas.scene().sigMouseClicked.connect(self._click_tile)
        self._labels: list[pg.TextItem] = []
        self.tile_kind = QComboBox()
        self.tile_kind.addItems(["kept mask", "neuron scores"])
        self.tile_kind.setToolTip("Each tile: that channel's kept neurons, or its neuron scores")
        self.tile_kind.currentIndexChanged.connect(lambda _i: self._draw_tiles())
        self.prev_page = QPushButton("◀")
        self.next_page = QPushButton("▶")
        for button in (self.prev_page, self.next_page):
            button.setFixedWidth(28)
            button.setToolTip("Previous / next page of channels (PgUp / PgDn)")
        self.prev_page.clicked.connect(lambda: self.turn_page(-1))
        self.next_page.clicked.connect(lambda: self.turn_page(1))
        self.page_label = _caption()
        self.hover_label = _caption("color: #555; font-size: 8pt")
        self.hover_label.setText("most kept first · hover a tile for its channel, click it to see more")
        self.concepts_label = _caption("color: #333; font-size: 8pt")
        self.concepts_label.setToolTip("The concepts that the kept units of the dissected layers "
                                       "detect, by the share of the kept neurons' scores")

        count_panel = QWidget()
        count_layout = QVBoxLayout(count_panel)
        count_layout.setContentsMargins(0, 0, 0, 0)
        count_layout.setSpacing(0)
        count_layout.addWidget(self.count_title)
        count_layout.addWidget(self.count_note)
        count_layout.addWidget(self.count_canvas, 1)
        tile_panel = QWidget()
        tile_layout = QVBoxLayout(tile_panel)
        tile_layout.setContentsMargins(0, 0, 0, 0)
        tile_layout.setSpacing(0)
        row = QHBoxLayout()
        row.addWidget(self.tile_kind)
        row.addWidget(self.prev_page)
        row.addWidget(self.next_page)
        row.addWidget(self.page_label, 1)
        tile_layout.addLayout(row)
        tile_layout.addWidget(self.hover_label)
        tile_layout.addWidget(self.tile_canvas, 1)
        for panel in (count_panel, tile_panel):
            panel.setMinimumWidth(200)

        layer_views = QSplitter(Qt.Orientation.Horizontal)
        layer_views.addWidget(count_panel)
        layer_views.addWidget(tile_panel)
        self.graph = GraphView()
        self.graph.node_clicked.connect(self._graph_node)
        self.views = QTabWidget()
        self.views.setDocumentMode(True)
        self.views.addTab(layer_views, "Layer")
        self.views.addTab(self.graph, "Pathway graph")
        self.views.currentChanged.connect(lambda _i: self.graph_visible() and self.graph_wanted.emit())
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.bars)
        self.splitter.addWidget(self.views)
        for i, stretch in enumerate((4, 6)):
            self.splitter.setStretchFactor(i, stretch)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.concepts_label)
        layout.addWidget(self.splitter)
        self.concepts_label.hide()

        self._kept: list = []
        self._selected: int | None = None
        self._layer = None
        self._page = 0
        self._grid = (0, 0, 0, 0)  # columns, tile height, tile width, channels on the page
        self._view_rgb: np.ndarray | None = None
        self._lut: np.ndarray | None = None
        self._dissection = None  # core.dissection.dissect.Dissection of this model, when one is open

    # -- data ----------------------------------------------------------------------------------
    def selected_layer(self) -> int | None:
        return self._selected

    def layer(self):
        """The gui.explain.jobs.LayerView drawn now, or None."""
        return self._layer

    def kept(self) -> list:
        return self._kept

    def set_image(self, rgb: np.ndarray) -> None:
        self._view_rgb = rgb
        self.count_photo.setImage(rgb, autoLevels=False, levels=(0, 255))
        self.count_box.autoRange(padding=0)

    def set_dissection(self, dissection) -> None:
        """Label the channel tiles with the concepts of this dissection (None: no labels)."""
        self._dissection = dissection
        self.concepts_label.setVisible(dissection is not None)
        names = [name for name, _, _ in self._kept]
        dissected = [names.index(layer.name) for layer in (dissection.layers if dissection else [])
                     if layer.name in names]
        if dissected and self._selected not in dissected:
            self.select_layer(dissected[-1])  # show the deepest dissected layer's concepts
        self._draw_tiles()

    def set_concepts(self, text: str) -> None:
        self.concepts_label.setText(text)

    def graph_visible(self) -> bool:
        return self.views.currentWidget() is self.graph

    def _graph_node(self, layer: str, channel: int) -> None:
        names = [name for name, _, _ in self._kept]
        if layer in names:
            self.channel_clicked.emit(names.index(layer), channel)

    def set_colors(self, lut_rgb: np.ndarray) -> None:
        self._lut = lut_rgb
        self._draw_count()
        self._draw_tiles()

    def clear(self) -> None:
        self.graph.clear()
        self._kept, self._layer = [], None
        self.bars.set_kept([], None)
        self.count_heat.clear()
        self.tiles.clear()
        self.count_title.setText("")
        self.count_note.setText("computing…")

    def set_kept(self, kept: list) -> None:
        """kept: [(layer name, neurons kept, neurons)] at the current threshold."""
        self._kept = kept
        if self._selected is None or self._selected >= len(kept):
            self._selected = default_layer(len(kept))
        self.bars.set_kept(kept, self._selected)

    def set_layer(self, layer) -> None:
        """A gui.explain.jobs.LayerView; ignored unless it is the selected layer."""
        if layer.index != self._selected:
            return
        if self._layer is None or self._layer.index != layer.index:
            self._page = 0
        self._layer = layer
        self._draw_count()
        self._draw_tiles()

    def select_layer(self, index: int) -> None:
        if not self._kept:
            return
        index = max(0, min(index, len(self._kept) - 1))
        if index == self._selected:
            return
        self._selected = index
        self.bars.set_kept(self._kept, index)
        self.layer_selected.emit(index)

    def turn_page(self, step: int) -> None:
        if self._layer is None:
            return
        pages = max(1, math.ceil(len(self._layer.order) / PAGE_SIZE))
        self._page = max(0, min(self._page + step, pages - 1))
        self._draw_tiles()

    # -- drawing -------------------------------------------------------------------------------
    def _draw_count(self) -> None:
        layer = self._layer
        if layer is None or self._view_rgb is None or self._lut is None:
            return
        height, width = self._view_rgb.shape[:2]
        self.count_heat.setImage(layer.count, autoLevels=False, levels=(0, layer.masks.shape[0]),
                                 lut=self._lut)
        self.count_heat.setRect(0, 0, width, height)  # stretched over the photo it came from
        kept, total = int(layer.kept.sum()), layer.masks.size
        self.count_title.setText(f"<b>{layer.index}: {layer.name}</b>  {_shape(layer.shape)}")
        self.count_note.setText(f"{kept:,} of {total:,} kept ({100 * kept / max(total, 1):.1f} %) · "
                                f"colour: channels kept at each position")

    def _draw_tiles(self) -> None:
        layer = self._layer
        if layer is None or self._lut is None:
            return
        channels, th, tw = layer.masks.shape
        pages = max(1, math.ceil(channels / PAGE_SIZE))
        first = self._page * PAGE_SIZE
        ids = layer.order[first:first + PAGE_SIZE]
        columns = max(1, math.ceil(math.sqrt(len(ids))))
        rows = max(1, math.ceil(len(ids) / columns))
        if self.tile_kind.currentIndex() == 0:
            colors, index = MASK_COLORS, layer.masks[ids].astype(np.intp)
        else:
            top = float(np.abs(layer.scores).max()) or 1.0
            colors = self._lut
            index = np.rint(np.clip(layer.scores[ids] / top, 0, 1) * (len(colors) - 1)).astype(np.intp)
        mosaic = np.empty((rows * (th + TILE_GAP) - TILE_GAP, columns * (tw + TILE_GAP) - TILE_GAP, 3),
                          np.uint8)
        mosaic[:] = GAP_COLOR
        for i in range(len(ids)):
            r, c = divmod(i, columns)
            y, x = r * (th + TILE_GAP), c * (tw + TILE_GAP)
            mosaic[y:y + th, x:x + tw] = colors[index[i]]
        self._grid = (columns, th, tw, len(ids))
        self.tiles.setImage(mosaic, autoLevels=False, levels=(0, 255))
        self._label_tiles(ids, columns, th, tw)
        self.tile_box.autoRange(padding=0.01)
        self.page_label.setText(f" {first + 1}–{first + len(ids)} of {channels} channels"
                                if pages > 1 else f" {channels} channels")
        self.prev_page.setEnabled(self._page > 0)
        self.next_page.setEnabled(self._page < pages - 1)

    def _label_tiles(self, ids, columns: int, th: int, tw: int) -> None:
        """Each tile of a detector unit gets its concept's name (when a dissection is open)."""
        for item in self._labels:
            self.tile_box.removeItem(item)
        self._labels = []
        units = self._units()
        if units is None:
            return
        for i, channel in enumerate(ids):
            unit = units[channel] if channel < len(units) else None
            if unit is None or not unit.detector:
                continue
            r, c = divmod(i, columns)
            text = pg.TextItem(unit.concept[:9], color=(255, 220, 60), fill=(0, 0, 0, 150), anchor=(0, 0))
            text.setFont(_small_font())
            text.setPos(c * (tw + TILE_GAP), r * (th + TILE_GAP))
            self.tile_box.addItem(text)
            self._labels.append(text)

    def _units(self):
        """The open dissection's units of the layer drawn now, or None."""
        if self._dissection is None or self._layer is None:
            return None
        dissected = self._dissection.layer(self._layer.name)
        return None if dissected is None else dissected.units

    def _hover_tile(self, scene_pos: QPointF) -> None:
        text = self.channel_at(scene_pos)
        if text:
            self.hover_label.setText(text)

    def _click_tile(self, event) -> None:
        channel = self.channel_index_at(event.scenePos())
        if channel is not None:
            self.channel_clicked.emit(self._layer.index, channel)

    def channel_index_at(self, scene_pos: QPointF) -> int | None:
        """The channel of the tile under a scene position (None between tiles)."""
        layer = self._layer
        columns, th, tw, count = self._grid
        if layer is None or not count or not self.tile_box.sceneBoundingRect().contains(scene_pos):
            return None
        point = self.tile_box.mapSceneToView(scene_pos)
        if point.x() < 0 or point.y() < 0:
            return None
        c, r = int(point.x() // (tw + TILE_GAP)), int(point.y() // (th + TILE_GAP))
        i = r * columns + c
        if c >= columns or i >= count:
            return None
        return int(layer.order[self._page * PAGE_SIZE + i])

    def channel_at(self, scene_pos: QPointF) -> str:
        """The hover text of the tile under a scene position ('' between tiles)."""
        channel = self.channel_index_at(scene_pos)
        if channel is None:
            return ""
        text = channel_text(self._layer, channel)
        units = self._units()
        if units is not None and channel < len(units) and units[channel].detector:
            text += f" · detects {units[channel].concept} (IoU {units[channel].iou:.2f})"
        return text

    def keyPressEvent(self, event) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Left, Qt.Key.Key_Up) and self._selected is not None:
            self.select_layer(self._selected - 1)
        elif key in (Qt.Key.Key_Right, Qt.Key.Key_Down) and self._selected is not None:
            self.select_layer(self._selected + 1)
        elif key == Qt.Key.Key_PageUp:
            self.turn_page(-1)
        elif key == Qt.Key.Key_PageDown:
            self.turn_page(1)
        else:
            super().keyPressEvent(event)


def _small_font():
    from PySide6.QtGui import QFont

    font = QFont()
    font.setPointSize(7)
    font.setBold(True)
    return font


def _caption(style: str = "") -> QLabel:
    label = QLabel("")
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    label.setStyleSheet(style)
    return label


def channel_text(layer, channel: int) -> str:
    size = layer.masks[channel].size
    return (f"channel {channel}: {int(layer.kept[channel]):,} of {size:,} neurons kept · "
            f"score sum {float(layer.score_sum[channel]):.4g}")


def default_layer(n_layers: int) -> int | None:
    """Start two thirds of the way in: deep enough to be about the class, with maps still
    fine enough to be worth seeing."""
    return (2 * n_layers) // 3 if n_layers else None


def _shape(shape) -> str:
    return "×".join(str(s) for s in shape)
