"""The Evaluate tab: methods scored over a folder of images (gui.evaluate.dataset), the cascading
randomisation sanity check for the image on screen, and a viewer for the results folders that
`evaluate`, `roar` and `sanity` write.

The check re-initialises the model's parameter blocks from the output down (core.evaluation.sanity) and, in
one plot, shows each method's Spearman (solid) and SSIM (dashed) against its map on the trained
model; below, the maps at the steps the user picks. This module builds the widgets and reacts to
the user; the check runs on the context's worker (gui.evaluate.jobs), stoppable at every map, and
gui.evaluate.drawing draws it. This module does not import torch.
"""
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QLineEdit, QListWidget, QListWidgetItem, QPushButton, QScrollArea, QSpinBox,
                               QSplitter, QTabWidget, QVBoxLayout, QWidget)

from core.methods import ALL_METHODS, DEFAULTS
from core.reporting.figures import grid_steps
from gui.evaluate.dataset import DatasetBox
from gui.evaluate.pathways import PathwaysBox
from gui.evaluate.drawing import MapGrid, ResultsView, SimilarityPlot
from gui.evaluate.jobs import SanityShown, sanity_job
from gui.parts.context import PRIORITY_BACKGROUND
from gui.parts.dissection import DissectBox
from gui.parts.feedback import JobFeedback

JOB_KEY = "evaluate-sanity"
DEFAULT_METHODS = DEFAULTS["sanity"]
GRID_COLUMNS = 5  # steps shown in the map grid until the user picks others
NO_IMAGE = "Open an image, then run the check."
READY = "Choose the methods, then Run sanity check on this image."


def parse_steps(text: str, count: int) -> list[int]:
    """'0, 4, 8' -> [0, 4, 8]; ValueError with a clear line for anything outside 0..count-1."""
    try:
        steps = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"steps must be whole numbers separated by commas: {text}") from None
    bad = [s for s in steps if not 0 <= s < count]
    if bad or not steps:
        raise ValueError(f"steps must be between 0 and {count - 1}")
    return sorted(set(steps))


class EvaluateTab(JobFeedback, QWidget):
    status = Signal(str)
    job_key = JOB_KEY
    checked = Signal()  # a sanity check finished and is drawn

    def __init__(self, context, parent=None):
        super().__init__(parent)
        self.context = context
        self.shown: SanityShown | None = None

        controls = QWidget()
        column = QVBoxLayout(controls)
        self.dataset = DatasetBox(context)
        column.addWidget(self.dataset)
        self.pathways = PathwaysBox(context)
        column.addWidget(self.pathways)
        column.addWidget(self._sanity_box())
        self.dissect = DissectBox(context)
        column.addWidget(self.dissect)
        column.addWidget(self._results_box())
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(controls)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(300)

        self.plot = SimilarityPlot()
        self.grid = MapGrid()
        grid_scroll = QScrollArea()
        grid_scroll.setWidget(self.grid)
        grid_scroll.setWidgetResizable(True)
        sanity_page = QSplitter(Qt.Orientation.Vertical)
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.plot, 1)
        top_layout.addWidget(self.plot.hover)
        sanity_page.addWidget(top)
        sanity_page.addWidget(grid_scroll)
        sanity_page.setSizes([500, 350])  # the plot, and room for two rows of maps
        self.results = ResultsView()
        self.views = QTabWidget()
        self.views.addTab(sanity_page, "Sanity check")
        self.views.addTab(self.results, "Results folder")

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(scroll)
        splitter.addWidget(self.views)
        splitter.setStretchFactor(1, 1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

        context.model_changed.connect(self._model_changed)
        context.engine_changed.connect(self._engine_changed)
        self.dataset.leaderboard.connect(self._running_leaderboard)
        for box in (self.dataset, self.pathways):
            box.finished.connect(self.open_results)
            box.status.connect(self.status)

    # -- building ------------------------------------------------------------------------------
    def _sanity_box(self) -> QGroupBox:
        box = QGroupBox("Sanity check of this image")
        form = QFormLayout(box)
        self.methods = QListWidget()
        self.methods.setToolTip("Methods whose maps are compared after each randomisation")
        self.methods.setMaximumHeight(170)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Seed of the random re-initialisation")
        self.sparsity = QDoubleSpinBox()
        self.sparsity.setRange(0, 99)
        self.sparsity.setSingleStep(5)
        self.sparsity.setValue(70)
        self.sparsity.setSuffix(" %")
        self.sparsity.setToolTip("Neurons pruned by the pathway methods")
        self._job_widgets("Run sanity check", self.run_sanity, NO_IMAGE)
        self.run_button.setEnabled(False)
        self.steps = QLineEdit()
        self.steps.setPlaceholderText("e.g. 0,3,6,9")
        self.steps.setToolTip("Steps of the cascade whose maps the grid shows (0 = trained model)")
        self.steps.editingFinished.connect(self._steps_changed)
        form.addRow("Methods", self.methods)
        form.addRow("Seed", self.seed)
        form.addRow("Sparsity", self.sparsity)
        form.addRow(self.run_button)
        form.addRow(self.progress)
        form.addRow(self.message)
        form.addRow(self.cancel_button)
        form.addRow("Maps at steps", self.steps)
        return box

    def _results_box(self) -> QGroupBox:
        box = QGroupBox("Results of evaluate / roar / sanity")
        column = QVBoxLayout(box)
        self.open_button = QPushButton("Open results folder…")
        self.open_button.clicked.connect(self._choose_folder)
        self.folder_label = QLabel("")
        self.folder_label.setWordWrap(True)
        column.addWidget(self.open_button)
        column.addWidget(self.folder_label)
        return box

    # -- state ---------------------------------------------------------------------------------
    def _model_changed(self, _model) -> None:
        if self.methods.count() == 0:
            for method in ALL_METHODS:
                item = QListWidgetItem(method)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if method in DEFAULT_METHODS
                                   else Qt.CheckState.Unchecked)
                self.methods.addItem(item)

    def _engine_changed(self, _engine) -> None:
        checking = self.cancel_button.isEnabled()
        self.run_button.setEnabled(not checking)
        if self.shown is not None:
            self.message.setText("The image or class changed: run the check again for it.")
        elif not checking:  # while checking, the message line shows its progress
            self.message.setText(READY)

    def chosen_methods(self) -> list[str]:
        return [self.methods.item(i).text() for i in range(self.methods.count())
                if self.methods.item(i).checkState() == Qt.CheckState.Checked]

    def set_methods(self, methods) -> None:
        for i in range(self.methods.count()):
            item = self.methods.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in methods
                               else Qt.CheckState.Unchecked)

    def _busy(self, busy: bool) -> None:
        self.run_button.setEnabled(not busy and self.context.current_engine() is not None)
        self.cancel_button.setEnabled(busy)
        if not busy:
            self.progress.setValue(0)

    # -- the check -----------------------------------------------------------------------------
    def run_sanity(self) -> None:
        engine = self.context.current_engine()
        if engine is None:
            self.message.setText("Open an image first.")
            return
        methods, seed, sparsity = self.chosen_methods(), self.seed.value(), self.sparsity.value()
        self._busy(True)
        self.context.run_job(lambda: sanity_job(engine, methods, seed, sparsity), self._show,
                             self._progressed, self._failed, key=JOB_KEY,
                             priority=PRIORITY_BACKGROUND)

    def _show(self, shown: SanityShown) -> None:
        self._busy(False)
        self.shown = shown
        result = shown.result
        self.plot.set_result(result)
        steps = grid_steps(len(result.steps), GRID_COLUMNS)
        self.steps.setText(",".join(map(str, steps)))
        self.grid.show_maps(shown, steps)
        last = ", ".join(f"{m} {result.spearman[m][-1]:.2f}" for m in result.methods)
        skipped = "".join(f"; {m} skipped: {why}" for m, why in shown.skipped.items())
        self.message.setText(f"{shown.label}: Spearman after full randomisation: {last}{skipped}")
        self.status.emit("sanity check done")
        self.checked.emit()

    def _steps_changed(self) -> None:
        if self.shown is None:
            return
        try:
            steps = parse_steps(self.steps.text(), len(self.shown.result.steps))
        except ValueError as err:
            self.message.setText(str(err))
            return
        self.grid.show_maps(self.shown, steps)

    # -- results folders -----------------------------------------------------------------------
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Results folder")
        if folder:
            self.open_results(folder)

    def _running_leaderboard(self, leaderboard: dict) -> None:
        self.results.show_running(leaderboard)
        self.views.setCurrentWidget(self.results)

    def open_results(self, folder) -> None:
        self.results.load(folder)
        self.folder_label.setText(str(folder))
        self.views.setCurrentWidget(self.results)
