"""Evaluate tab: pathways across a folder of images, as `prunescope pathways` does: per class the
channels its images' pathways run through, and how much the pathways of two images overlap.
Each finished image is kept in the results folder (Cancel keeps them; Run goes on from there)."""
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QGroupBox, QLineEdit, QSpinBox

from gui.evaluate.jobs import PathwaysRun, pathways_job
from gui.parts.feedback import KeptRunFeedback
from gui.parts.forms import folder_row

OUT_SUFFIX = "-pathways"


class PathwaysBox(KeptRunFeedback, QGroupBox):
    status = Signal(str)
    finished = Signal(object)  # the results folder, complete
    job_key = "pathways"
    done_status = "pathways done"

    def __init__(self, context, parent=None):
        super().__init__("Pathways across a folder", parent)
        self.context = context
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("the open image's folder")
        self.out = QLineEdit()
        self.out.setPlaceholderText("beside the folder")
        self.images = QSpinBox()
        self.images.setRange(1, 1_000_000)
        self.images.setValue(100)
        self.images.setToolTip("The first this many images, in sorted order")
        self.sparsity = QDoubleSpinBox()
        self.sparsity.setRange(0.0, 99.9)
        self.sparsity.setValue(70.0)
        self.sparsity.setSuffix(" %")
        self.overwrite = QCheckBox("Start again (discard the kept images)")
        self._job_widgets("Run", self.run, "Each image's pathway graph; per predicted class, the channels its "
                                            "images run through, and how much two images' pathways overlap.")
        form = QFormLayout(self)
        form.addRow("Images from", folder_row(self.folder))
        form.addRow("Results in", folder_row(self.out))
        form.addRow("Sparsity", self.sparsity)
        form.addRow("Images at most", self.images)
        form.addRow(self.overwrite)
        self._add_job_rows(form)

    def request(self) -> PathwaysRun | None:
        """The run the boxes describe, or None (with the reason on the message line)."""
        model = self.context.current_model()
        text = self.folder.text().strip()
        image = self.context.current_image_path()
        folder = Path(text) if text else (image.parent if image is not None else None)
        problem = ("Load a model first." if model is None else
                   "Choose the folder of images." if folder is None or not folder.is_dir() else None)
        if problem:
            self.message.setText(problem)
            return None
        out = Path(self.out.text().strip()) if self.out.text().strip() else folder.parent / f"{folder.name}{OUT_SUFFIX}"
        return PathwaysRun(model, folder, out, self.images.value(), self.sparsity.value(), self.overwrite.isChecked())

    def run(self) -> None:
        request = self.request()
        if request is None:
            return
        self._start(lambda: pathways_job(request), f"pathways of {request.folder} into {request.out}")
