"""The side-by-side heatmaps: the image, the pathway map and each chosen classic map, in a grid of
linked views with one shared colour bar. Each map is drawn by core.io.display.render in the chosen
display mode, as the export draws it. Hovering shows the raw value under the cursor in every
panel; clicking a map opens it large beside the image. Changing colours, opacity, mode or
normalisation redraws; it never recomputes a map."""
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt
from PySide6.QtWidgets import QGridLayout, QWidget

from core.io import display
from gui.parts.heatmap_panels import Fit, LargeView, Panel

IMAGE_PANEL = "image"
COLORBAR_WIDTH = 84


class HeatmapGrid(QWidget):
    """The image and the maps in a grid of linked panels, with the shared colour bar."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(2, 2, 2, 2)
        self._grid.setSpacing(4)
        self._panels: dict[str, Panel] = {}
        self._order: list[str] = []
        self._view_rgb: np.ndarray | None = None
        self._lut_rgb = None
        self._opacity = display.DEFAULT_OPACITY
        self._sign = "absolute"
        self._shared = True
        self._mode = display.AUTO
        self._top_percent = display.DEFAULT_TOP_PERCENT
        self._columns = 0
        self.large: LargeView | None = None
        self.colorbar_canvas = pg.GraphicsLayoutWidget()
        self.colorbar_canvas.setFixedWidth(COLORBAR_WIDTH)
        self.colorbar = pg.ColorBarItem(values=(0, 1), width=14, interactive=False,
                                        colorMapMenu=False)
        self.colorbar_canvas.addItem(self.colorbar)
        self._colorbar_lut, self._colorbar_shown = None, None  # what the colour bar shows now
        self.fit = Fit(self._add_panel(IMAGE_PANEL).view)
        self.fit.watch(self._panels[IMAGE_PANEL].view)
        self._order = [IMAGE_PANEL]
        self._relayout(force=True)

    def _add_panel(self, name: str) -> Panel:
        panel = Panel(name, self._hover, self._clicked)
        if self._panels:
            lead = self._panels[IMAGE_PANEL].view
            panel.view.setXLink(lead)  # zooming or panning one panel moves them all
            panel.view.setYLink(lead)
            panel.canvas.setToolTip("Click to open this map large beside the image")
            self.fit.watch(panel.view)
        panel.set_picture(self._view_rgb)
        self._panels[name] = panel
        return panel

    # -- content -------------------------------------------------------------------------------
    def set_image(self, rgb: np.ndarray, title: str, note: str) -> None:
        """The picture the model saw (maps of the previous one are cleared); title and note are
        plain text."""
        self._view_rgb = rgb
        for panel in self._panels.values():
            panel.raw = None
            panel.set_picture(rgb)
        image = self._panels[IMAGE_PANEL]
        image.title.setText(title)
        image.set_text(note)
        self.reset_zoom()
        self._update_large()

    def set_methods(self, names: list[str]) -> None:
        """Which map panels are shown, in order, after the image."""
        wanted = [IMAGE_PANEL, *names]
        if wanted == self._order:
            return
        for name in names:
            if name not in self._panels:
                self._add_panel(name)
        self._order = wanted
        self._relayout(force=True)
        self.render()

    def set_map(self, name: str, raw: np.ndarray, note: str = "") -> None:
        self.set_maps({name: (raw, note)})

    def set_maps(self, maps: dict) -> None:
        """name -> (raw map, note), drawn in one pass."""
        changed = []
        for name, (raw, note) in maps.items():
            panel = self._panels.get(name)
            if panel is not None:
                panel.raw = raw
                panel.set_text(note)
                changed.append(name)
        self.render(changed)

    def set_note(self, name: str, note: str) -> None:
        """A panel without a map: say why (computing, not for this model)."""
        panel = self._panels.get(name)
        if panel is not None:
            panel.raw = None
            panel.set_picture(self._view_rgb)
            panel.set_text(note)
            self._update_large()

    def set_detail(self, name: str, text: str) -> None:
        """The line under a panel's title (what set_map and set_note write), nothing else changed."""
        panel = self._panels.get(name)
        if panel is not None:
            panel.set_text(text)

    def set_title(self, name: str, title: str) -> None:
        panel = self._panels.get(name)
        if panel is not None:
            panel.title.setText(title)
            panel.title.setToolTip(title)

    def shown_maps(self) -> dict[str, np.ndarray]:
        return {name: self._panels[name].raw for name in self._order
                if name != IMAGE_PANEL and self._panels[name].raw is not None}

    def ready(self) -> bool:
        return self._view_rgb is not None and all(
            self._panels[name].raw is not None for name in self._order if name != IMAGE_PANEL)

    def panel(self, name: str) -> Panel:
        return self._panels[name]

    # -- display -------------------------------------------------------------------------------
    def set_display(self, lut_rgb: np.ndarray, opacity: float, sign: str, shared: bool,
                    mode: str = display.AUTO, top_percent: float = display.DEFAULT_TOP_PERCENT) -> None:
        """lut_rgb: the colormap's 256-colour table (core.io.display.colorize of a ramp); mode: a
        core.io.display mode, or auto for the one that suits each panel's method."""
        self._lut_rgb = lut_rgb
        self._opacity, self._sign, self._shared = opacity, sign, shared
        self._mode, self._top_percent = mode, top_percent
        self.render()

    def render(self, names: list[str] | None = None) -> None:
        """Draw the maps as core.io.display.render does for the export: all of them, or with
        per-map scales only those named (the others' pictures do not change)."""
        if self._lut_rgb is None or self._view_rgb is None:
            return
        maps = self.shown_maps()
        scale = display.shared_scale(list(maps.values()), self._sign) if self._shared and maps else None
        signed = self._sign == "signed"
        levels = (-1.0, 1.0) if signed else (0.0, 1.0)
        redraw = maps if names is None or self._shared else {n: maps[n] for n in names if n in maps}
        for name, raw in redraw.items():
            self._panels[name].set_picture(display.render(
                self._view_rgb, raw, display.mode_for(name, self._mode), self._sign, scale,
                self._lut_rgb, self._opacity, self._top_percent))
        self._update_large()
        if scale:
            self._set_colorbar((-scale, scale) if signed else (0, scale), f"{self._sign} value (shared scale)")
        else:
            self._set_colorbar(levels, f"{self._sign}, each map to its own scale")

    def _set_colorbar(self, levels: tuple, label: str) -> None:
        """Only what changed: a pyqtgraph ColorMap takes ~12 ms to build, and the slider redraws
        a map many times a second on the GUI thread, which the worker then waits for."""
        if self._colorbar_lut is not self._lut_rgb:
            self.colorbar.setColorMap(pg.ColorMap(np.linspace(0, 1, len(self._lut_rgb)), self._lut_rgb))
            self._colorbar_lut = self._lut_rgb
        if self._colorbar_shown != (levels, label):
            self.colorbar.setLevels(levels)
            self.colorbar.axis.setLabel(label)
            self._colorbar_shown = (levels, label)

    # -- the large view ------------------------------------------------------------------------
    def open_large(self, name: str) -> LargeView:
        """Show panel `name` large beside the image, in a window that follows its redraws."""
        if self.large is None:
            self.large = LargeView(self)
        self.large.show_panels(self._panels[IMAGE_PANEL], self._panels[name])
        self.large.show()
        self.large.raise_()
        return self.large

    def _update_large(self) -> None:
        large = self.large
        if large is not None and large.isVisible() and large.name in self._order:
            large.show_panels(self._panels[IMAGE_PANEL], self._panels[large.name])

    def _clicked(self, panel: Panel, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton and panel.name != IMAGE_PANEL:
            self.open_large(panel.name)

    # -- layout and hover -----------------------------------------------------------------------
    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._relayout()

    def _best_columns(self) -> int:
        """The column count that makes the (square) panels largest in this widget."""
        n = len(self._order)
        width = max(self.width() - COLORBAR_WIDTH, 1)
        height = max(self.height(), 1)
        return max(range(1, n + 1), key=lambda c: (min(width / c, height / math.ceil(n / c) - 36), -c))

    def _relayout(self, force: bool = False) -> None:
        columns = self._best_columns()
        if columns == self._columns and not force:
            return
        self._columns = columns
        lead = self._panels[IMAGE_PANEL].view
        followers = [panel.view for name, panel in self._panels.items() if name != IMAGE_PANEL]
        for view in followers:  # unlinked while they move: each move would move every other (n² moves)
            view.setXLink(None)
            view.setYLink(None)
        for panel in self._panels.values():
            self._grid.removeWidget(panel)
            panel.hide()
        self._grid.removeWidget(self.colorbar_canvas)
        for i in range(self._grid.columnCount()):
            self._grid.setColumnStretch(i, 0)
        for i in range(self._grid.rowCount()):
            self._grid.setRowStretch(i, 0)
        rows = math.ceil(len(self._order) / columns)
        for i, name in enumerate(self._order):
            self._grid.addWidget(self._panels[name], i // columns, i % columns)
            self._panels[name].show()
        for c in range(columns):
            self._grid.setColumnStretch(c, 1)
        for r in range(rows):
            self._grid.setRowStretch(r, 1)
        self._grid.addWidget(self.colorbar_canvas, 0, columns, rows, 1)
        for view in followers:
            view.setXLink(lead)
            view.setYLink(lead)

    def reset_zoom(self) -> None:
        """The whole image again, in every (linked) panel, and after every resize until a zoom."""
        self.fit.reset()

    def _hover(self, panel: Panel, scene_pos: QPointF) -> None:
        point = panel.view.mapSceneToView(scene_pos)
        self.show_value_at(int(math.floor(point.x())), int(math.floor(point.y())))

    def show_value_at(self, x: int, y: int) -> None:
        """Every panel's value at pixel (x, y) of the model's input, under its title."""
        rgb = self._view_rgb
        inside = rgb is not None and 0 <= x < rgb.shape[1] and 0 <= y < rgb.shape[0]
        for name in self._order:
            panel = self._panels[name]
            if not inside:
                panel.detail.setText(panel.note)
            elif name == IMAGE_PANEL:
                r, g, b = (int(v) for v in rgb[y, x])
                panel.detail.setText(f"({x}, {y})  rgb {r} {g} {b}")
            elif panel.raw is not None and panel.raw.shape == rgb.shape[:2]:
                panel.detail.setText(f"({x}, {y})  value {panel.raw[y, x]:+.4g}")
