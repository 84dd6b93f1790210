"""The Model pruning tab: prune the whole model by a criterion, compare the original's and the
pruned model's map of the current image side by side, see the channels each layer kept, run a
sparsity sweep, export the smaller model and open it in the app.

This module builds the widgets and reacts to the user; what it asks the worker for is in
gui.pruning.jobs (core.model_pruning jobs, cancellable at each step), how the results are drawn in
gui.pruning.drawing. It does not import torch.
"""
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox,
                               QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QScrollArea,
                               QSpinBox, QSplitter, QTabWidget, QVBoxLayout, QWidget)

from core.methods import ALL_METHODS
from core.model_pruning.names import (CRITERIA, DEFAULT_MODE, DEFAULT_PROTECT, DEFAULT_RECOVERY, DESCRIPTIONS,
                                      MODES, RECOVERY_CHOICES, SWEEP_METHODS, SWEEP_SPARSITIES)
from gui.parts.context import PRIORITY_BACKGROUND, PRIORITY_VIEW, ModelChoice
from gui.parts.feedback import JobFeedback, error_message
from gui.parts.heatmaps import HeatmapGrid
from gui.pruning import jobs as pruning_jobs
from gui.pruning.drawing import (ORIGINAL, PRUNED, ChannelBars, draw_maps, left_out, show_figures,
                                 summary_html, sweep_message)

JOB_KEY = "model-pruning"  # prune, sweep and export: one at a time, Cancel stops it
MAPS_KEY = "model-pruning-maps"
PT_FILTER, ONNX_FILTER = "PyTorch model (*.pt)", "ONNX model, checked with onnxruntime (*.onnx)"
# The defaults: what kept most of EfficientNet-Lite0's decisions on held-out photos (README's
# pruning table); the recovery is names.DEFAULT_RECOVERY.
DEFAULT_CRITERION, DEFAULT_SPARSITY, DEFAULT_STEPS = "pathway", 10, 60


class PruningTab(JobFeedback, QWidget):
    status = Signal(str)
    job_key = JOB_KEY
    pruned = Signal()  # a pruning finished and its maps are drawn (or there is no image)
    swept = Signal()

    def __init__(self, context, parent=None):
        super().__init__(parent)
        self.context = context
        self.report = None  # core.model_pruning.PruneReport of the current model
        self.sweep_result = None
        self.exported: Path | None = None

        controls = QWidget()
        column = QVBoxLayout(controls)
        column.addWidget(self._prune_box())
        column.addWidget(self._sweep_box())
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        column.addWidget(self.progress)
        column.addWidget(self.message)
        column.addWidget(self.cancel_button)
        self.summary = QLabel("Prune the current model to compare it with the original.")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        column.addWidget(self.summary)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(controls)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(320)

        self.heatmaps = HeatmapGrid()
        self.heatmaps.set_methods([ORIGINAL, PRUNED])
        self.bars = ChannelBars()
        bars_page = QWidget()
        bars_layout = QVBoxLayout(bars_page)
        bars_layout.addWidget(self.bars, 1)
        bars_layout.addWidget(self.bars.hover)
        self.figures = QWidget()
        self.figure_layout = QVBoxLayout(self.figures)
        figure_scroll = QScrollArea()
        figure_scroll.setWidget(self.figures)
        figure_scroll.setWidgetResizable(True)
        self.views = QTabWidget()
        self.views.addTab(self.heatmaps, "Original vs pruned")
        self.views.addTab(bars_page, "Channels kept")
        self.views.addTab(figure_scroll, "Sweep")

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(scroll)
        splitter.addWidget(self.views)
        splitter.setStretchFactor(1, 1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

        context.model_changed.connect(self._model_changed)
        context.engine_changed.connect(lambda _engine: self.request_maps())

    # -- building ------------------------------------------------------------------------------
    def _prune_box(self) -> QGroupBox:
        box = QGroupBox("Prune the model")
        form = QFormLayout(box)
        self.criterion = QComboBox()
        for i, name in enumerate(CRITERIA):
            self.criterion.addItem(name, name)
            self.criterion.setItemData(i, DESCRIPTIONS[name], Qt.ItemDataRole.ToolTipRole)
        self.criterion.setCurrentIndex(CRITERIA.index(DEFAULT_CRITERION))
        self.sparsity = QDoubleSpinBox()
        self.sparsity.setRange(0, 99)
        self.sparsity.setSingleStep(5)
        self.sparsity.setValue(DEFAULT_SPARSITY)
        self.sparsity.setSuffix(" %")
        self.sparsity.setToolTip("Channels removed (weights zeroed, for magnitude)")
        self.mode = QComboBox()
        for mode in MODES:
            self.mode.addItem(mode, mode)
        self.mode.setCurrentIndex(MODES.index(DEFAULT_MODE))
        self.mode.setToolTip("Rank channels over all layers together, take the ratio from each layer, or give "
                             "each layer a share by what removing its channels alone costs (sensitivity)")
        self.protect = QLineEdit(",".join(DEFAULT_PROTECT))
        self.protect.setToolTip("Layers kept whole: first, last, none, or module paths, comma-separated")
        self.calib = QLineEdit()
        self.calib.setPlaceholderText("bundled sample photos")
        self.calib.setToolTip("Calibration images: a folder, or an ImageFolder (subfolders named "
                              "by class id or name) to also get accuracy")
        browse = QPushButton("…")
        browse.setFixedWidth(28)
        browse.clicked.connect(self._browse_calib)
        calib_row = QHBoxLayout()
        calib_row.addWidget(self.calib, 1)
        calib_row.addWidget(browse)
        self.recovery = QComboBox()
        for i, (name, tip) in enumerate(RECOVERY_CHOICES.items()):
            self.recovery.addItem(name, name)
            self.recovery.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
        self.recovery.setCurrentIndex(list(RECOVERY_CHOICES).index(DEFAULT_RECOVERY))
        self.recovery_steps = QSpinBox()
        self.recovery_steps.setRange(1, 100_000)
        self.recovery_steps.setValue(DEFAULT_STEPS)
        self.recovery_steps.setToolTip("Distillation steps of 8 images")
        self.recovery_images = QLineEdit()
        self.recovery_images.setPlaceholderText("the calibration images")
        self.recovery_images.setToolTip("distill: a folder of unlabelled images; finetune: a labelled "
                                        "ImageFolder. Held-out images are never trained on.")
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 20)
        self.iterations.setToolTip("Reach the sparsity in this many pruning steps, recovering after each")
        self.method = QComboBox()
        self.method.setToolTip("The map compared side by side")
        self.method.currentIndexChanged.connect(lambda _i: self.request_maps())
        self.prune_button = QPushButton("Prune")
        self.prune_button.clicked.connect(self.prune)
        self.export_button = QPushButton("Export pruned model…")
        self.export_button.clicked.connect(self._choose_export)
        self.export_button.setEnabled(False)
        self.open_button = QPushButton("Open exported model in the app")
        self.open_button.clicked.connect(self.open_exported)
        self.open_button.setEnabled(False)
        form.addRow("Criterion", self.criterion)
        form.addRow("Sparsity", self.sparsity)
        form.addRow("Ranking", self.mode)
        form.addRow("Protect", self.protect)
        form.addRow("Calibration", calib_row)
        form.addRow("Recovery", self.recovery)
        form.addRow("Distil steps", self.recovery_steps)
        form.addRow("Recovery images", self.recovery_images)
        form.addRow("Iterations", self.iterations)
        form.addRow("Compare map", self.method)
        form.addRow(self.prune_button)
        form.addRow(self.export_button)
        form.addRow(self.open_button)
        return box

    def _sweep_box(self) -> QGroupBox:
        box = QGroupBox("Sparsity sweep")
        form = QFormLayout(box)
        self.sweep_criteria = {}
        row = QHBoxLayout()
        for name in CRITERIA:
            check = QCheckBox(name)
            check.setChecked(True)
            check.setToolTip(DESCRIPTIONS[name])
            self.sweep_criteria[name] = check
            row.addWidget(check)
        self.sweep_sparsities = QLineEdit(",".join(str(s) for s in SWEEP_SPARSITIES))
        self.sweep_methods = QLineEdit(",".join(SWEEP_METHODS))
        self.sweep_button = QPushButton("Run sweep")
        self.sweep_button.clicked.connect(self.run_sweep)
        self.save_sweep_button = QPushButton("Save sweep…")
        self.save_sweep_button.clicked.connect(self._choose_sweep_folder)
        self.save_sweep_button.setEnabled(False)
        form.addRow(row)
        form.addRow("Sparsities %", self.sweep_sparsities)
        form.addRow("Maps", self.sweep_methods)
        form.addRow(self.sweep_button)
        form.addRow(self.save_sweep_button)
        return box

    # -- state ---------------------------------------------------------------------------------
    def _model_changed(self, model) -> None:
        if self.method.count() == 0:
            for method in ALL_METHODS:
                self.method.addItem(method, method)
            self.method.setCurrentIndex(self.method.findData("gradient"))
        if self.report is not None and self.report.model.name != model.name:
            self.report = None  # pruned from another model: no longer comparable
        self.export_button.setEnabled(self.report is not None)
        self.request_maps()

    def _settings(self) -> dict:
        return {"criterion": self.criterion.currentData(), "sparsity": self.sparsity.value(),
                "mode": self.mode.currentData(),
                "protect": [t.strip() for t in self.protect.text().split(",") if t.strip()],
                "folder": self.calib.text().strip() or None, "iterations": self.iterations.value(),
                "recovery": (self.recovery.currentData(), self.recovery_images.text().strip() or None,
                             self.recovery_steps.value())}

    def _browse_calib(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Calibration images")
        if folder:
            self.calib.setText(folder)

    def _busy(self, busy: bool) -> None:
        for button in (self.prune_button, self.sweep_button):
            button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if not busy:
            self.progress.setValue(0)

    # -- pruning -------------------------------------------------------------------------------
    def prune(self) -> None:
        s, method = self._settings(), self.method.currentData() or "gradient"
        # read here, on the GUI thread: the job never reads the context's state
        model, engine = self.context.current_model(), self.context.current_engine()
        self._busy(True)
        self.context.run_job(lambda: pruning_jobs.prune_job(model, engine, s, method), self._show_pruned,
                             self._progressed, self._failed, key=JOB_KEY, priority=PRIORITY_BACKGROUND)

    def _show_pruned(self, result) -> None:
        self._busy(False)
        self.report, shown, skipped = result
        self.exported = None
        self.export_button.setEnabled(True)
        self.open_button.setEnabled(False)
        self.summary.setText(summary_html(self.report))
        self.bars.set_rows(self.report.surgery.layers, self.report.surgery.unit)
        warning = self.report.warning
        self.message.setText(f"Warning: {warning}." if warning else "pruned" + left_out(skipped))
        if shown is not None:
            draw_maps(self.heatmaps, shown)
        self.status.emit(f"pruned {self.report.model.name}: {self.report.criterion}, "
                         f"{self.report.sparsity:g} %")
        self.pruned.emit()

    def request_maps(self) -> None:
        """Redraw both maps for the current image and compare method."""
        report, engine = self.report, self.context.current_engine()
        method = self.method.currentData()
        if report is None or engine is None or method is None:
            return
        if engine.model.name != report.model.name:
            return
        for name in (ORIGINAL, PRUNED):
            self.heatmaps.set_note(name, "computing…")
        self.context.run_job(lambda: pruning_jobs.side_by_side(engine, report.model, method),
                             lambda shown: draw_maps(self.heatmaps, shown),
                             on_error=lambda e: self.heatmaps.set_note(PRUNED, error_message(e)),
                             key=MAPS_KEY, priority=PRIORITY_VIEW)

    # -- export --------------------------------------------------------------------------------
    def _choose_export(self) -> None:
        if self.report is None:
            return
        r = self.report
        name = f"{r.model.name}_{r.criterion}{r.sparsity:g}.pt"
        path, chosen = QFileDialog.getSaveFileName(self, "Export pruned model", name,
                                                   f"{PT_FILTER};;{ONNX_FILTER}")
        if path:
            path = Path(path)
            if chosen == ONNX_FILTER and path.suffix.lower() != ".onnx":
                path = path.with_suffix(".onnx")
            self.export(path)

    def export(self, path: Path) -> None:
        report = self.report

        def done(text: str):
            self._busy(False)
            if path.suffix.lower() != ".onnx":  # an ONNX file does not open as the app's model
                self.exported = path
                self.open_button.setEnabled(True)
            self.message.setText(text)
            self.status.emit(text)

        self._busy(True)
        self.context.run_job(lambda: pruning_jobs.export_job(report, path), done, self._progressed,
                             self._failed, key=JOB_KEY)

    def open_exported(self) -> None:
        """Load the exported file as the app's model (as Load weights file… would)."""
        if self.exported is None or self.report is None:
            return
        current = self.context.current_model_choice()
        same = current is not None and self.context.current_model() is self.report.model
        # The SPEC that opened the pruned model's original; the file records it too.
        spec = current.name if same else self.report.model.card.source if self.report.model.card \
            else self.report.model.name
        choice = ModelChoice(spec, str(self.exported), current.device if current else "auto")
        loader = getattr(self.window(), "load_model", None) or self.context.load_model
        loader(choice)

    # -- sweep ---------------------------------------------------------------------------------
    def run_sweep(self) -> None:
        s, model = self._settings(), self.context.current_model()
        chosen = [name for name, check in self.sweep_criteria.items() if check.isChecked()]
        sparsities_text, methods_text = self.sweep_sparsities.text(), self.sweep_methods.text()
        self._busy(True)
        self.context.run_job(
            lambda: pruning_jobs.sweep_job(model, s, chosen, sparsities_text, methods_text),
            self._show_sweep, self._progressed, self._failed, key=JOB_KEY)

    def _show_sweep(self, result) -> None:
        self._busy(False)
        self.sweep_result, pngs, skipped = result
        show_figures(self.figure_layout, pngs)
        self.message.setText(sweep_message(self.sweep_result, skipped))
        self.save_sweep_button.setEnabled(True)
        self.views.setCurrentIndex(2)
        self.swept.emit()

    def _choose_sweep_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save sweep (sweep.json and plots)")
        if folder:
            self.save_sweep(Path(folder))

    def save_sweep(self, folder: Path) -> None:
        result = self.sweep_result

        def done(paths):
            self._busy(False)
            self.message.setText(f"wrote sweep.json and {len(paths) - 1} plots to {folder}")

        self._busy(True)
        self.context.run_job(lambda: pruning_jobs.save_sweep_job(result, folder), done,
                             self._progressed, self._failed, key=JOB_KEY)
