"""Concepts in the app. One channel up close: the concept a dissection found for it, its top-activating images in a
reference folder (computed once per model and folder, then cached on disk) and its conditional
map on the current image (the target's gradient through the pathway, through that channel only).
And the Evaluate tab's box that dissects the current model.
"""
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QDialog, QFileDialog, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QLineEdit, QProgressBar, QPushButton, QSizePolicy, QSpinBox, QVBoxLayout)
from superqt import QElidingLabel

from core.io import display
from gui.parts.context import PRIORITY_BACKGROUND, PRIORITY_VIEW
from gui.parts.feedback import JobFeedback
from gui.parts.forms import folder_row

PICTURE_SIDE = 260
CROP_SIDE = 84


def pixmap(rgb: np.ndarray) -> QPixmap:
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    return QPixmap.fromImage(QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy())


def unit_text(dissection, layer_name: str, channel: int) -> str:
    """What the open dissection says of a channel, as rich text."""
    if dissection is None:
        return "No dissection is open (File → Open dissection…): the channel's concept is unknown."
    layer = dissection.layer(layer_name)
    if layer is None or channel >= len(layer.units):
        return f"The open dissection did not dissect {layer_name}."
    unit = layer.units[channel]
    others = ", ".join(f"{name} {iou:.2f}" for name, iou in unit.runners_up)
    if unit.detector:
        return (f"Detects <b>{unit.concept}</b> ({unit.category}), IoU {unit.iou:.2f}"
                + (f"; then {others}" if others else ""))
    return f"Detects no concept (best: {unit.concept}, IoU {unit.iou:.2f} ≤ {dissection.iou_min:g})"


def concepts_line(ranked, count: int = 6) -> str:
    """The concepts a decision runs through (core.dissection.units.pathway_concepts), in one line."""
    if not ranked:
        return "Concepts on the pathway: none of the kept units of the dissected layers detects one"
    parts = [f"{e['concept']} {100 * e['share']:.0f} % ({len(e['units'])} units)" for e in ranked[:count]]
    return "Concepts on the pathway: " + ", ".join(parts)


class ChannelDialog(QDialog):
    """Reused for every click on a channel tile; follows the tab's current engine."""

    def __init__(self, context, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Channel")
        self.context = context
        self.folder: Path | None = None
        self._target = None  # (engine, params, layer index, layer name, channel)
        self._tops: dict = {}  # the last (module, folder, layer) -> (its top images, receptive field)
        self.header = QLabel("")
        self.header.setTextFormat(Qt.TextFormat.RichText)
        self.concept = QLabel("")
        self.concept.setWordWrap(True)
        self.map_title = QLabel("Conditional map on this image")
        self.map_picture = QLabel("computing…")
        self.map_picture.setFixedSize(PICTURE_SIDE, PICTURE_SIDE)
        self.map_picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.map_picture.setToolTip("The target's gradient through the pathway at the current "
                                    "sparsity, let through this channel only")
        self.tops_title = QLabel("Top-activating images")
        self.tops = QGridLayout()
        self.tops.setSpacing(2)
        self.crops = []
        for i in range(9):
            label = QLabel("")
            label.setFixedSize(CROP_SIDE, CROP_SIDE)
            label.setStyleSheet("background: #ddd")
            self.tops.addWidget(label, i // 3, i % 3)
            self.crops.append(label)
        self.folder_label = QElidingLabel("")
        self.folder_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.choose = QPushButton("Reference folder…")
        self.choose.setToolTip("The images to find this channel's top activations in "
                               "(default: the current image's folder)")
        self.choose.clicked.connect(self._choose_folder)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #555")

        left = QVBoxLayout()
        left.addWidget(self.map_title)
        left.addWidget(self.map_picture)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(self.tops_title)
        right.addLayout(self.tops)
        row = QHBoxLayout()
        row.addWidget(self.choose)
        row.addWidget(self.folder_label, 1)
        right.addLayout(row)
        right.addWidget(self.progress)
        pictures = QHBoxLayout()
        pictures.addLayout(left)
        pictures.addLayout(right)
        layout = QVBoxLayout(self)
        layout.addWidget(self.header)
        layout.addWidget(self.concept)
        layout.addLayout(pictures)
        layout.addWidget(self.note)

    def show_channel(self, engine, params, layer_index: int, layer_name: str, channel: int,
                     dissection) -> None:
        self._target = (engine, params, layer_index, layer_name, channel)
        self.header.setText(f"<b>{layer_index}: {layer_name}</b> · channel {channel}")
        self.concept.setText(unit_text(dissection, layer_name, channel))
        self.map_picture.setText("computing…")
        self.note.setText("")
        if self.folder is None:
            image = self.context.current_image_path()
            self.folder = image.parent if image is not None else None
        self.show()
        self.raise_()
        self.context.run_job(lambda: engine.channel_map(layer_index, channel, params.sparsity,
                                                        params.mode, params.selector),
                             lambda m, e=engine: self._show_map(e, m), key="channel-map",
                             priority=PRIORITY_VIEW, on_error=self._map_failed)
        self._request_tops()

    def _choose_folder(self) -> None:
        start = str(self.folder) if self.folder else ""
        folder = QFileDialog.getExistingDirectory(self, "Reference images", start)
        if folder:
            self.folder = Path(folder)
            self._request_tops()

    def _request_tops(self) -> None:
        from core.dissection.units import iter_reference_tops, receptive_field, unit_crops

        for label in self.crops:
            label.clear()
        if self._target is None or self.folder is None:
            self.folder_label.setText("no reference folder")
            return
        engine, _params, _index, layer_name, channel = self._target
        model, folder = engine.model, self.folder
        self.folder_label.setText(str(folder))
        self.tops_title.setText(f"Top-activating images in {folder.name}")
        self.progress.setValue(0)
        self.progress.show()

        known, key = self._tops, (model.module, folder, layer_name)

        def job():  # the worker's only, so the dict needs no lock
            from core.dissection.concepts import image_folder

            if key not in known:
                layer = yield from iter_reference_tops(model, folder, layer_name)
                known.clear()  # one layer's at a time: clicks stay within a layer
                known[key] = layer, receptive_field(model, layer_name)
            layer, side = known[key]
            return layer, unit_crops(model, image_folder(folder), layer, channel, side, CROP_SIDE), side

        self.context.run_job(job, self._show_tops, key="channel-tops", priority=PRIORITY_VIEW,
                             on_progress=lambda p: self.progress.setValue(int(1000 * p.done)),
                             on_error=self._tops_failed, on_end=self.progress.hide)

    def _show_map(self, engine, attr: np.ndarray) -> None:
        if self._target is None or engine is not self._target[0]:
            return
        picture = display.render(engine.view, attr, "map")
        self.map_picture.setPixmap(pixmap(picture).scaled(
            PICTURE_SIDE, PICTURE_SIDE, Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation))
        if not np.any(attr):
            self.note.setText("No evidence reaches the target through this channel at this "
                              "sparsity (its neurons are pruned, or their gradient is zero).")

    def _map_failed(self, err) -> None:
        self.map_picture.setText("")
        self.note.setText(f"Conditional map: {err}")

    def _show_tops(self, result) -> None:
        layer, crops, side = result
        for label, (crop, value, name) in zip(self.crops, crops):
            label.setPixmap(pixmap(crop))
            label.setToolTip(f"{name}: peak activation {value:.3g}")
        self.tops_title.setText(f"Top-activating images in {self.folder.name} "
                                f"(cropped to the {side} px receptive field)")

    def _tops_failed(self, err) -> None:
        self.note.setText(f"Top images: {err}")


class DissectBox(JobFeedback, QGroupBox):
    """Evaluate tab: dissect the current model on concept masks; the result labels the Explain
    tab's channel tiles."""

    status = Signal(str)
    dissected = Signal(object)  # core.dissection.dissect.Dissection
    job_key = "dissect"

    def __init__(self, context, parent=None):
        super().__init__("Network dissection of this model", parent)
        self.context = context
        self.concepts = QLineEdit()
        self.concepts.setPlaceholderText("synthetic, a Broden folder or MASKS/<concept>/<stem>.png")
        self.concepts.setText("synthetic")
        self.concepts.setToolTip("Where the concept masks come from: 'synthetic' (generated scenes), "
                                 "a Broden folder (index.csv), or a mask folder for the images below")
        self.images = QLineEdit()
        self.images.setPlaceholderText("the images a mask folder masks")
        self.limit = QSpinBox()
        self.limit.setRange(1, 100_000)
        self.limit.setValue(200)
        self.limit.setToolTip("At most this many images")
        self._job_widgets("Dissect", self.run, "Concepts per channel, as `prunescope dissect` finds them.")
        form = QFormLayout(self)
        form.addRow("Concepts", folder_row(self.concepts))
        form.addRow("Images", folder_row(self.images))
        form.addRow("Images at most", self.limit)
        self._add_job_rows(form)

    def run(self) -> None:
        model = self.context.current_model()
        if model is None:
            self.message.setText("Load a model first.")
            return
        spec, images, limit = self.concepts.text().strip(), self.images.text().strip() or None, self.limit.value()

        def job():
            from core.dissection.concepts import open_concepts
            from core.dissection.dissect import iter_dissect

            source = open_concepts(spec, images, limit)
            return (yield from iter_dissect(model, source))

        self._busy(True)
        self.context.run_job(job, self._show, self._progressed, self._failed, key=self.job_key,
                             priority=PRIORITY_BACKGROUND)

    def _show(self, dissection) -> None:
        self._busy(False)
        lines = [f"{s['layer']}: {s['detectors']}/{s['units']} units, {s['unique_concepts']} concepts"
                 for s in dissection.summary()]
        self.message.setText(f"{dissection.images} images in {dissection.seconds:.0f} s. "
                             + "; ".join(lines) + ". The Explain tab's channel tiles now show them.")
        self.status.emit("dissection done")
        self.dissected.emit(dissection)
