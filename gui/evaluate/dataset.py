"""Evaluate tab: score methods on a folder of images, as `prunescope evaluate` does.

Every finished image is kept in the results folder at once (core.evaluation.records): Cancel keeps
them, and Run with the same choices goes on from there. The leaderboard of the images done so far
comes with the progress; the whole results folder opens when the run ends.
"""
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLineEdit, QListWidget,
                               QListWidgetItem, QSpinBox)

from core.evaluation import EXTRA_METRICS
from core.methods import ALL_METHODS, DEFAULTS
from gui.evaluate.jobs import DatasetRun, dataset_job
from gui.parts.feedback import KeptRunFeedback
from gui.parts.forms import folder_row

OUT_SUFFIX = "-prunescope"  # the default results folder: beside the dataset, named after it
REFERENCE = ("random",)  # the floor every method must beat: on by default


def default_out(folder: Path) -> Path:
    return folder.parent / f"{folder.name}{OUT_SUFFIX}"


class DatasetBox(KeptRunFeedback, QGroupBox):
    status = Signal(str)
    leaderboard = Signal(object)  # the running leaderboard: {"metrics", "rows", "images"}
    finished = Signal(object)  # the results folder, complete
    job_key = "evaluate-dataset"
    done_status = "dataset evaluation done"

    def __init__(self, context, parent=None):
        super().__init__("Evaluate a dataset", parent)
        self.context = context
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("DIR/<class>/<image> or a flat folder")
        self.folder.textChanged.connect(self._folder_changed)
        self.out = QLineEdit()
        self.out.setPlaceholderText("beside the dataset")
        self.methods = QListWidget()
        self.methods.setMaximumHeight(150)
        self.methods.setToolTip("Methods scored on every image")
        for method in (*ALL_METHODS, *REFERENCE):
            item = QListWidgetItem(method)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            chosen = method in DEFAULTS["evaluate"] or method in REFERENCE
            item.setCheckState(Qt.CheckState.Checked if chosen else Qt.CheckState.Unchecked)
            self.methods.addItem(item)
        self.metrics = {m: QCheckBox(m) for m in EXTRA_METRICS}
        for box in self.metrics.values():
            box.setChecked(True)
        self.images = QSpinBox()
        self.images.setRange(1, 1_000_000)
        self.images.setValue(100)
        self.images.setToolTip("The first this many images, in sorted order")
        self.overwrite = QCheckBox("Start again (discard the kept images)")
        self.overwrite.setToolTip("Needed when the results folder holds a run with other choices")
        self._job_widgets("Run", self.run, "Deletion/insertion, ROAD and the other metrics of every method "
                                            "over a folder; the predicted class is explained.")

        form = QFormLayout(self)
        form.addRow("Images from", folder_row(self.folder))
        form.addRow("Results in", folder_row(self.out))
        form.addRow("Methods", self.methods)
        metrics = QHBoxLayout()
        for box in self.metrics.values():
            metrics.addWidget(box)
        form.addRow("Metrics", metrics)
        form.addRow("Images at most", self.images)
        form.addRow(self.overwrite)
        self._add_job_rows(form)

    def _folder_changed(self, text: str) -> None:
        self.out.setPlaceholderText(str(default_out(Path(text))) if text.strip() else "beside the dataset")

    def request(self) -> DatasetRun | None:
        """The run the boxes describe, or None (with the reason on the message line)."""
        model = self.context.current_model()
        folder = Path(self.folder.text().strip()) if self.folder.text().strip() else None
        methods = tuple(self.methods.item(i).text() for i in range(self.methods.count())
                        if self.methods.item(i).checkState() == Qt.CheckState.Checked)
        problem = ("Load a model first." if model is None else
                   "Choose the folder of images." if folder is None or not folder.is_dir() else
                   "Choose at least one method." if not methods else None)
        if problem:
            self.message.setText(problem)
            return None
        out = Path(self.out.text().strip()) if self.out.text().strip() else default_out(folder)
        return DatasetRun(model, folder, out, methods, tuple(m for m, box in self.metrics.items() if box.isChecked()),
                          self.images.value(), seed=0, sparsity=70.0, overwrite=self.overwrite.isChecked())

    def run(self) -> None:
        request = self.request()
        if request is None:
            return
        self._start(lambda: dataset_job(request), f"evaluating {request.folder} into {request.out}")

    def _progressed(self, step) -> None:
        super()._progressed(step)
        if step.partial is not None:
            self.leaderboard.emit(step.partial)
