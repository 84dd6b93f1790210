"""The panels of the side-by-side heatmaps: one picture under a two-line title, and one map large
beside the image (gui.parts.heatmaps lays them out in a grid)."""
import numpy as np
import pyqtgraph as pg
from PySide6 import QtGui
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QPainter, QTextDocumentFragment
from PySide6.QtWidgets import QDialog, QLabel, QSizePolicy, QVBoxLayout, QWidget


class ElidedLabel(QLabel):
    """One line of plain text, cut with an ellipsis when the panel is narrower than the text."""

    def __init__(self, style: str = ""):
        super().__init__()
        self.setStyleSheet(style)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setMinimumHeight(self.fontMetrics().height() + 2)

    def setText(self, text: str) -> None:
        # Callers may pass a little markup (<b>, &nbsp;): shown as its plain text.
        if QtGui.Qt.mightBeRichText(text):
            text = QTextDocumentFragment.fromHtml(text).toPlainText()
        super().setText(text)

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, self.width())
        painter.drawText(self.rect(), Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter,
                         text)


def view_box(canvas: pg.GraphicsLayoutWidget, **where) -> pg.ViewBox:
    view = canvas.addViewBox(lockAspect=True, invertY=True, enableMenu=False, **where)
    view.setBorder(pg.mkPen("#c8c8c8"))
    view.disableAutoRange()  # a new picture keeps the zoom; Fit decides when the whole one is shown
    return view


class Fit:
    """Linked views show the whole picture, also after they are resized, until the user zooms or
    pans one (pyqtgraph's own auto range is switched off by any linked view's change)."""

    def __init__(self, lead: pg.ViewBox):
        self.lead = lead
        self.on = True
        self._due = False  # a refit is queued for this turn of the event loop

    def watch(self, view: pg.ViewBox) -> None:
        view.sigResized.connect(self.refit_soon)
        view.sigRangeChangedManually.connect(self.stop)

    def refit_soon(self, *_args) -> None:
        """Once per turn of the event loop, however many views were resized in it: each refit
        moves every linked view, and a relayout resizes them all (46 panels: 2.5 s a tick)."""
        if not self._due:
            self._due = True
            QTimer.singleShot(0, self._refit_due)

    def _refit_due(self) -> None:
        self._due = False
        self.refit()

    def reset(self) -> None:
        self.on = True
        self.refit()

    def refit(self) -> None:
        if self.on:
            self.lead.autoRange(padding=0)

    def stop(self, *_args) -> None:
        self.on = False


class Panel(QWidget):
    """A two-line title over a view box with one picture: the photo, or the map as rendered."""

    def __init__(self, name: str, on_hover, on_click):
        super().__init__()
        self.name = name
        self.title = ElidedLabel("font-weight: bold")
        self.title.setText(name)
        self.detail = ElidedLabel("color: #555; font-size: 8pt")
        self.canvas = pg.GraphicsLayoutWidget()
        self.canvas.ci.setContentsMargins(0, 0, 0, 0)
        self.view = view_box(self.canvas)
        self.picture = pg.ImageItem()
        self.view.addItem(self.picture)
        self.canvas.scene().sigMouseMoved.connect(lambda pos: on_hover(self, pos))
        self.canvas.scene().sigMouseClicked.connect(lambda event: on_click(self, event))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(0)
        layout.addWidget(self.title)
        layout.addWidget(self.detail)
        layout.addWidget(self.canvas, 1)
        self.raw: np.ndarray | None = None
        self.note = ""

    def set_text(self, note: str) -> None:
        self.note = note
        self.detail.setText(note)
        self.detail.setToolTip(note)  # the whole of it where the panel is too narrow

    def set_picture(self, rgb: np.ndarray | None) -> None:
        if rgb is None:
            self.picture.clear()
        else:
            self.picture.setImage(rgb, autoLevels=False, levels=(0, 255))

    def leaveEvent(self, event) -> None:
        self.detail.setText(self.note)
        super().leaveEvent(event)


class LargeView(QDialog):
    """One map large beside the image, both zoomable and linked: zoom or pan one, both follow."""

    def __init__(self, parent):
        super().__init__(parent)
        self.resize(1100, 600)
        self.name: str | None = None
        self.title = QLabel()
        self.title.setStyleSheet("font-weight: bold")
        self.canvas = pg.GraphicsLayoutWidget()
        self.image_view = view_box(self.canvas, row=0, col=0)
        self.map_view = view_box(self.canvas, row=0, col=1)
        self.map_view.setXLink(self.image_view)
        self.map_view.setYLink(self.image_view)
        self.fit = Fit(self.image_view)
        self.fit.watch(self.image_view)
        self.fit.watch(self.map_view)
        self.image = pg.ImageItem()
        self.map = pg.ImageItem()
        self.image_view.addItem(self.image)
        self.map_view.addItem(self.map)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.canvas, 1)

    def show_panels(self, image: Panel, shown: Panel) -> None:
        """Copy what the two panels show (called whenever they are redrawn)."""
        first = self.name != shown.name
        self.name = shown.name
        self.setWindowTitle(f"{shown.name} beside the image")
        self.title.setText(f"{shown.name}   {shown.note}")
        for item, panel in ((self.image, image), (self.map, shown)):
            if panel.picture.image is None:
                item.clear()
            else:
                item.setImage(panel.picture.image, autoLevels=False, levels=(0, 255))
        if first:
            self.fit.reset()
