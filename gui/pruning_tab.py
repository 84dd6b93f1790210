"""The Model pruning tab: prune the whole model by a criterion, compare the original's and the
pruned model's map of the current image side by side, see the channels each layer kept, run a
sparsity sweep, export the smaller model and open it in the app.

Everything heavy runs on the context's worker (core.model_pruning jobs, cancellable at each
step); this module does not import torch.
"""
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                               QGroupBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QScrollArea, QSpinBox, QSplitter, QTabWidget, QVBoxLayout, QWidget)

from core import display
from core.methods import ALL_METHODS
from core.model_pruning.names import (CRITERIA, DEFAULT_PROTECT, DESCRIPTIONS, LOW_AGREEMENT, MODES,
                                      RECOVERIES, SWEEP_METHODS, SWEEP_SPARSITIES)
from core.progress import Progress
from gui.context import PRIORITY_BACKGROUND, PRIORITY_VIEW, JobFeedback, ModelChoice, error_message
from gui.heatmaps import HeatmapGrid

ORIGINAL, PRUNED = "original", "pruned"
JOB_KEY = "model-pruning"  # prune, sweep and export: one at a time, Cancel stops it
MAPS_KEY = "model-pruning-maps"
MAP_COLORMAP = "inferno"
MAP_OPACITY = 0.6
# The defaults: what kept most of EfficientNet-Lite0's decisions on held-out photos (README:
# at 10 % with bn, pathway kept 3 of 6 and Taylor 4; at 30 % no criterion kept more than 1).
DEFAULT_CRITERION, DEFAULT_SPARSITY, DEFAULT_RECOVERY, DEFAULT_STEPS = "pathway", 10, "bn", 60
RECOVERY_TIPS = {
    "bn": "correct batch-norm statistics for the shift pruning made, measured on the calibration images "
          "(seconds, no labels)",
    "distill": "batch norm, then distil the original model on unlabelled images (minutes, no labels)",
    "finetune": "fine-tune on a labelled ImageFolder (Recovery images)",
    "none": "no recovery: the one-shot pruned model",
}


@dataclass
class SideBySide:
    """The current image explained by the original and by the pruned model (worker result)."""
    method: str
    view: np.ndarray
    original: np.ndarray
    pruned: np.ndarray
    original_label: str
    pruned_label: str
    lut: np.ndarray


def side_by_side(engine, pruned_model, method: str):
    """Job: one method's map of the engine's image and class, from both models."""
    import torch

    from core.engine import compute_map

    yield Progress(0.0, f"{method} of the original model")
    original = engine.attribution(method)
    yield Progress(0.5, f"{method} of the pruned model")
    pruned = compute_map(pruned_model, engine.x, engine.target, method)
    with torch.no_grad():
        probs = torch.softmax(pruned_model.module(engine.x).float(), dim=1)[0].cpu()
    top = int(probs.argmax())
    names = pruned_model.class_names
    first = engine.prediction
    lut = display.colorize(np.linspace(0.0, 1.0, 256, dtype=np.float32), MAP_COLORMAP)
    return SideBySide(method, engine.view, original, pruned,
                      f"{first.top5[0][1]} ({first.top5[0][2]:.2f})",
                      f"{names[top] if top < len(names) else top} ({float(probs[top]):.2f})", lut)


def _left_out(skipped: dict) -> str:
    """Calibration images that could not be used, for the message line."""
    if not skipped:
        return ""
    from core.errors import about

    return f"; {len(skipped)} calibration image(s) left out ({about(*next(iter(skipped.items())))})"


def render_sweep(result) -> dict[str, bytes]:
    """The sweep's figures (the CLI's) as PNG bytes (matplotlib Agg, on the worker)."""
    from core import figures

    pngs = {}
    for name, fig in figures.sweep(result).items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        pngs[name] = buffer.getvalue()
    return pngs


class ChannelBars(pg.PlotWidget):
    """Per layer, the fraction of channels (or weights) kept; hover names the layer."""

    def __init__(self):
        super().__init__()
        self.setLabel("left", "fraction kept")
        self.setLabel("bottom", "layer (forward order)")
        self.setYRange(0, 1.02, padding=0)
        self.showGrid(y=True, alpha=0.25)
        self.setMenuEnabled(False)
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush="#1f77b4")
        self.addItem(self.bars)
        self.rows: list = []
        self.hover = QLabel("")
        self.scene().sigMouseMoved.connect(self._moved)

    def set_rows(self, rows, unit: str) -> None:
        self.rows = list(rows)
        fractions = [kept / total if total else 0.0 for _, kept, total in self.rows]
        self.bars.setOpts(x=np.arange(len(fractions)), height=fractions, width=0.8)
        self.setTitle(f"{unit} kept per layer", size="10pt")
        self.setXRange(-1, max(len(fractions), 1), padding=0)

    def _moved(self, pos) -> None:
        x = self.getPlotItem().vb.mapSceneToView(pos).x()
        i = int(round(x))
        if 0 <= i < len(self.rows):
            name, kept, total = self.rows[i]
            self.hover.setText(f"{name}: {kept} of {total} kept")


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
        self.mode.setToolTip("Rank channels over all layers together, or take the ratio from each layer")
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
        for i, name in enumerate(RECOVERIES):
            self.recovery.addItem(name, name)
            self.recovery.setItemData(i, RECOVERY_TIPS[name], Qt.ItemDataRole.ToolTipRole)
        self.recovery.setCurrentIndex(RECOVERIES.index(DEFAULT_RECOVERY))
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
        s = self._settings()
        method = self.method.currentData() or "gradient"
        context = self.context

        def job():
            from core.model_pruning import Recovery, calibrate, prune_model
            from core.progress import scaled

            model = context.current_model()
            if model is None:
                from core.errors import ModelError

                raise ModelError("no model is loaded: choose a model first")
            settings = Recovery(*s["recovery"])
            settings.check()
            calib = yield from scaled(calibrate(model, s["folder"]), 0.0, 0.1)
            report = yield from scaled(prune_model(model, s["criterion"], s["sparsity"], calib,
                                                   s["mode"], s["protect"], settings=settings,
                                                   iterations=s["iterations"]), 0.1, 0.85)
            engine = context.current_engine()
            shown = None
            if engine is not None and engine.model is model:
                shown = yield from scaled(side_by_side(engine, report.model, method), 0.85, 1.0)
            return report, shown, calib.skipped

        self._busy(True)
        self.context.run_job(job, self._show_pruned, self._progressed, self._failed, key=JOB_KEY,
                             priority=PRIORITY_BACKGROUND)

    def _show_pruned(self, result) -> None:
        self._busy(False)
        self.report, shown, left_out = result
        self.exported = None
        self.export_button.setEnabled(True)
        self.open_button.setEnabled(False)
        self.summary.setText(summary_html(self.report))
        self.bars.set_rows(self.report.surgery.layers, self.report.surgery.unit)
        warning = self.report.warning
        self.message.setText(f"Warning: {warning}." if warning else "pruned" + _left_out(left_out))
        if shown is not None:
            self._draw(shown)
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
        self.context.run_job(lambda: side_by_side(engine, report.model, method), self._draw,
                             on_error=lambda e: self.heatmaps.set_note(PRUNED, error_message(e)),
                             key=MAPS_KEY, priority=PRIORITY_VIEW)

    def _draw(self, shown: SideBySide) -> None:
        self.heatmaps.set_image(shown.view, "<b>image</b>", "")
        self.heatmaps.set_display(shown.lut, MAP_OPACITY, "absolute", False, display.mode_for(shown.method))
        self.heatmaps.set_map(ORIGINAL, shown.original, f"{shown.method} · {shown.original_label}")
        self.heatmaps.set_map(PRUNED, shown.pruned, f"{shown.method} · {shown.pruned_label}")

    # -- export --------------------------------------------------------------------------------
    def _choose_export(self) -> None:
        if self.report is None:
            return
        r = self.report
        name = f"{r.model.name}_{r.criterion}{r.sparsity:g}.pt"
        path, _ = QFileDialog.getSaveFileName(self, "Export pruned model", name, "PyTorch model (*.pt)")
        if path:
            self.export(Path(path))

    def export(self, path: Path) -> None:
        report = self.report

        def job():
            from core.model_pruning import save_pruned

            yield Progress(0.0, f"writing {path.name}")
            return save_pruned(report, path)

        def done(sizes):
            self._busy(False)
            self.exported = path
            self.open_button.setEnabled(True)
            text = ", ".join(f"{Path(p).name} {size / 1e6:.2f} MB" for p, size in sizes.items())
            self.message.setText(f"wrote {text}")
            self.status.emit(f"wrote {text}")

        self._busy(True)
        self.context.run_job(job, done, self._progressed, self._failed, key=JOB_KEY)

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
        s = self._settings()
        chosen = [name for name, check in self.sweep_criteria.items() if check.isChecked()]
        sparsities_text, methods_text = self.sweep_sparsities.text(), self.sweep_methods.text()
        context = self.context

        def job():
            from core.errors import PruneScopeError
            from core.model_pruning import Recovery, calibrate
            from core.model_pruning.sweep import sweep
            from core.progress import scaled

            try:
                sparsities = [float(t) for t in sparsities_text.split(",") if t.strip()]
            except ValueError:
                raise PruneScopeError(f"sparsities must be comma-separated numbers: {sparsities_text}") from None
            if not chosen or not sparsities:
                raise PruneScopeError("choose at least one criterion and one sparsity")
            methods = [m.strip() for m in methods_text.split(",") if m.strip()]
            model = context.current_model()
            calib = yield from scaled(calibrate(model, s["folder"]), 0.0, 0.05)
            settings = Recovery(*s["recovery"])
            settings.check()
            result = yield from scaled(sweep(model, calib, chosen, sparsities, methods, s["mode"],
                                             s["protect"], settings=settings), 0.05, 0.98)
            yield Progress(0.99, "drawing")
            return result, render_sweep(result), calib.skipped

        self._busy(True)
        self.context.run_job(job, self._show_sweep, self._progressed, self._failed, key=JOB_KEY)

    def _show_sweep(self, result) -> None:
        self._busy(False)
        self.sweep_result, pngs, left_out = result
        while self.figure_layout.count():
            item = self.figure_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        for name, data in pngs.items():
            label = QLabel()
            pixmap = QPixmap()
            pixmap.loadFromData(data, "PNG")
            label.setPixmap(pixmap)
            label.setObjectName(name)
            self.figure_layout.addWidget(label)
        errors = "; ".join(f"{c}: {why}" for c, why in self.sweep_result.errors.items())
        low = [f"{p.criterion} {p.sparsity:g} %" for p in self.sweep_result.points if p.agreement < LOW_AGREEMENT]
        warning = (f". Warning: agreement on held-out images below {LOW_AGREEMENT:.0%} at {', '.join(low)}"
                   if low else "")
        self.message.setText(f"sweep done{' (' + errors + ')' if errors else ''}" + warning + _left_out(left_out))
        self.save_sweep_button.setEnabled(True)
        self.views.setCurrentIndex(2)
        self.swept.emit()

    def _choose_sweep_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save sweep (sweep.json and plots)")
        if folder:
            self.save_sweep(Path(folder))

    def save_sweep(self, folder: Path) -> None:
        result = self.sweep_result

        def job():
            from core.report import save_sweep

            yield Progress(0.0, f"writing to {folder}")
            return save_sweep(result, folder)

        def done(paths):
            self._busy(False)
            self.message.setText(f"wrote sweep.json and {len(paths) - 1} plots to {folder}")

        self._busy(True)
        self.context.run_job(job, done, self._progressed, self._failed, key=JOB_KEY)


def summary_html(report) -> str:
    """Before and after, as a small table."""
    b, a = report.before, report.after

    def row(label, before, after):
        return f"<tr><td>{label}</td><td align=right>{before}</td><td align=right>{after}</td></tr>"

    zeroed = report.surgery.unit == "weights"
    params = (lambda s: f"{s.nonzero:,}") if zeroed else (lambda s: f"{s.params:,}")
    rows = [row("parameters" + (" (non-zero)" if zeroed else ""), params(b), params(a)),
            row("MACs", f"{b.macs / 1e6:.1f} M", f"{a.macs / 1e6:.1f} M"),
            row("latency", f"{b.latency_ms:.1f} ms", f"{a.latency_ms:.1f} ms")]
    if report.accuracy_after is not None:
        rows.append(row("accuracy", f"{report.accuracy_before:.1%}", f"{report.accuracy_after:.1%}"))
    kept = ", ".join(f"{n} ({why})" for n, why in report.surgery.skipped.items()) or "none"
    steps = f" in {report.iterations} steps" if report.iterations > 1 else ""
    return (f"<b>{report.model.name}</b>: {report.criterion}, {report.sparsity_reached:.3g} % of "
            f"{report.surgery.unit}{steps}, {report.mode}<table cellspacing=4>"
            f"<tr><th></th><th>original</th><th>pruned</th></tr>{''.join(rows)}</table>"
            f"{_agreement_html(report)}<br><small>kept whole: {kept}</small>")


def _agreement_html(report) -> str:
    if report.agreement is None:
        return "top-1 agreement: not measured (one image: none left to hold out)"
    held = f"{len(report.held_out)} held-out images, {len(report.calibration)} used to calibrate"
    if report.recovery == "none":
        return f"top-1 agreement with the original: <b>{report.agreement:.0%}</b> ({held})"
    return (f"top-1 agreement with the original: {report.agreement_before_recovery:.0%} pruned, "
            f"<b>{report.agreement:.0%}</b> after {report.recovery} ({report.recovery_s:.0f} s; {held})")
