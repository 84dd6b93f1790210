"""The main window: menus, the Explain tab (and extra tabs), the folder strip, a status bar with
progress and Cancel. Settings persist between sessions. The model and device boxes, and loading a
model, are gui.window.models'; the start-up job, gui.window.jobs'."""
import gc
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import (QFileDialog, QLabel, QMainWindow, QMessageBox, QProgressBar, QPushButton,
                               QTabWidget, QVBoxLayout, QWidget)

from core.io.output import result_names
from core.io.resources import resource_path, sample_images
from core.models.sources import DEFAULT_MODEL
from gui.explain.tab import ExplainTab
from gui.parts.context import PRIORITY_ENGINE, PRIORITY_VIEW, AppContext, ModelChoice
from gui.parts.feedback import error_message, is_out_of_memory
from gui.window import jobs as window_jobs
from gui.window.models import ModelChoosing
from gui.window.settings import app_settings, as_list, remember
from gui.window.tabs import extra_tabs
from gui.window.thumbnails import ThumbnailStrip, folder_job

BUSY_DELAY_MS = 400  # jobs shorter than this show no progress bar (the live slider preview)
SHUTDOWN_WAIT_MS = 1000  # then leave a torch call that is still running behind: closing takes < 2 s


class MainWindow(ModelChoosing, QMainWindow):
    load_failed = Signal(str)  # an image or model could not be opened (message)

    def __init__(self, images=(), model=None, parent=None):
        """model: a core.models.sources.ModelCard to open instead of the last model used."""
        super().__init__(parent)
        self.setWindowTitle("PruneScope")
        self.setWindowIcon(QIcon(str(resource_path("icons", "prunescope.png"))))
        self.setAcceptDrops(True)
        self.settings = app_settings()
        self.context = AppContext(self)
        self.worker_stopped = True
        self._startup = None
        self._model_labels: dict[str, str] = {}  # built-in model name -> its entry in the model box
        self._pending_image: Path | None = None
        self._frozen = False
        try:
            self._build(images, model)
        except BaseException:
            self.context.shutdown()  # no worker thread may outlive a window that failed to open
            raise

    def _build(self, images, model) -> None:
        self.explain = ExplainTab(self.context)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.explain, "Explain")
        for title, widget in extra_tabs(self.context):
            self.tabs.addTab(widget, title)
        self.strip = ThumbnailStrip()
        self.strip.image_chosen.connect(self.open_image)
        self.strip.hide()  # until a folder is open
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(2)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.strip)
        self.setCentralWidget(central)

        self._build_toolbar()
        self._build_menus()
        self._build_status_bar()
        for index in range(self.tabs.count()):  # every tab has a status line for the status bar
            widget = self.tabs.widget(index)
            widget.status.connect(self.show_message)
            if hasattr(widget, "dissect"):  # a dissection computed in the Evaluate tab
                widget.dissect.status.connect(self.show_message)
                widget.dissect.dissected.connect(self.explain.set_dissection)
        self.explain.analysis_shown.connect(self._freeze_long_lived)
        self.context.job_error.connect(self._job_failed)
        self.context.busy_changed.connect(self._busy)
        self.context.progress.connect(self._progress)
        self.context.image_changed.connect(self._image_changed)
        self._restore_settings()
        self.explain.controls.prediction.setText("Loading the model…")

        self.context.run_job(window_jobs.startup, self._started, key="startup", priority=PRIORITY_ENGINE)
        first = ModelChoice(self._saved_model, None, self._saved_device)
        if model is not None:
            first = ModelChoice(self._card_spec(model), None, self._saved_device)
        self.load_model(first, first=True)
        self.open_paths([Path(p) for p in images])

    def _freeze_long_lived(self) -> None:
        """Once the first analysis is on screen, what the app has imported and built so far (the
        model, the libraries the first maps imported) goes out of the cyclic collector's sight, as
        at start-up (gui.window.jobs.startup): full collections scanned it for 0.1-0.2 s each,
        holding the GUI thread."""
        if not self._frozen:
            gc.freeze()
            self._frozen = True

    # -- building ------------------------------------------------------------------------------
    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self._action(file_menu, "&Open images…", self.choose_images, QKeySequence.StandardKey.Open)
        self._action(file_menu, "Open &folder…", self.choose_folder, "Ctrl+Shift+O")
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        file_menu.addSeparator()
        self._action(file_menu, "Open &model…", self.choose_model, "Ctrl+M")
        self._action(file_menu, "Open &dissection…", self.choose_dissection)
        file_menu.addSeparator()
        self._action(file_menu, "&Export results…", self.choose_export, "Ctrl+E")
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        view_menu = self.menuBar().addMenu("&View")
        self._action(view_menu, "&Next image", lambda: self.step_image(1), "Ctrl+Right")
        self._action(view_menu, "&Previous image", lambda: self.step_image(-1), "Ctrl+Left")
        self._action(view_menu, "Reset &zoom", self.explain.heatmaps.reset_zoom, "Ctrl+0")
        help_menu = self.menuBar().addMenu("&Help")
        samples = help_menu.addMenu("Open &sample image")
        for path in sample_images():
            self._action(samples, path.name, lambda p=path: self.open_paths([p]))
        self._action(help_menu, "&About PruneScope", self._about)

    def _action(self, menu, text, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(lambda _checked=False: slot())
        menu.addAction(action)
        return action

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setFixedWidth(220)
        self.progress_bar.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the computation that is running now")
        self.cancel_button.clicked.connect(self.context.cancel_running)
        self.job_label = QLabel("")
        self.job_label.setStyleSheet("color: #444")
        for widget in (self.job_label, self.progress_bar, self.cancel_button):
            bar.addPermanentWidget(widget)
            widget.hide()
        self._busy_timer = QTimer(self)
        self._busy_timer.setSingleShot(True)
        self._busy_timer.timeout.connect(self._show_busy)
        self.show_message("Loading the model…")

    # -- images --------------------------------------------------------------------------------
    def open_image(self, path) -> None:
        """Analyse one image file (what File → Open, drops, the strip and samples call)."""
        path = Path(path)
        self._pending_image = path
        self.show_message(f"Opening {path.name}…")

        def failed(error):
            if is_out_of_memory(error):
                self._offer_cpu(error_message(error))
                self.load_failed.emit(error_message(error))
            else:
                self._open_failed(error_message(error))

        self.context.open_image(path, on_error=failed)

    def choose_images(self) -> None:
        filters = "All files (*)"
        if self._startup is not None:  # core.io.images' suffixes, read on the worker
            patterns = " ".join(f"*{suffix}" for suffix in self._startup.image_suffixes)
            filters = f"Images ({patterns});;{filters}"
        paths, _ = QFileDialog.getOpenFileNames(self, "Open images", self._last_folder(), filters)
        self.open_paths([Path(p) for p in paths])

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open folder", self._last_folder())
        if folder:
            self.open_paths([Path(folder)])

    def open_paths(self, paths: list[Path]) -> None:
        """Files: open the first, list them all; a folder: list its images and open the first."""
        if not paths:
            return
        if paths[0].is_dir():
            self._show_folder(paths[0], None, open_first=True)
            return
        self.open_image(paths[0])
        self._show_folder(paths[0].parent, paths if len(paths) > 1 else None)

    def _show_folder(self, folder: Path, files: list[Path] | None, open_first: bool = False) -> None:
        self.settings.setValue("last_folder", str(folder))

        def shown(result):
            shown_folder, paths, previews = result
            self.strip.set_images(shown_folder, paths, previews)
            self.strip.setVisible(bool(paths))
            self.strip.mark_current(self.context.current_image_path())
            if open_first:
                if paths:
                    self.open_image(paths[0])
                else:
                    self._open_failed(f"No images in {shown_folder}")

        self.context.run_job(lambda: folder_job(folder, files), shown, key="folder",
                             priority=PRIORITY_VIEW,
                             on_error=lambda e: self._open_failed(error_message(e)))

    def _open_failed(self, message: str) -> None:
        self.show_message(message, error=True)
        self.load_failed.emit(message)

    def step_image(self, step: int) -> None:
        path = self.strip.neighbour(self.context.current_image_path(), step)
        if path is not None:
            self.open_image(path)

    def _image_changed(self, path: Path) -> None:
        self.image_label.setText(f"{path.name}  ·  {path.parent}")
        self.setWindowTitle(f"{path.name} — PruneScope")
        self.strip.mark_current(path)
        remember(self.settings, "recent", str(path))

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = as_list(self.settings.value("recent"))
        for text in recent:
            self._action(self.recent_menu, text, lambda p=text: self.open_paths([Path(p)]))
        if not recent:
            self.recent_menu.addAction("(none)").setEnabled(False)

    def _last_folder(self) -> str:
        return str(self.settings.value("last_folder", str(Path.home())))

    # -- drag and drop -------------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [Path(url.toLocalFile()) for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)

    # -- export --------------------------------------------------------------------------------
    def choose_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export results to", self._last_folder())
        if folder:
            self.export_to(Path(folder))

    def export_to(self, folder: Path) -> None:
        """Write maps, PNGs, curves, report and comparison figure into folder/<image stem>/."""
        image = self.context.current_image_path()
        out = folder / (result_names([image])[0] if image else "export")

        def done(written):
            self.show_message(f"Exported {len(written)} files to {out}")

        self.show_message(f"Exporting to {out}…")
        self.explain.export(out, done, lambda e: self.error_dialog("Export failed", e))

    # -- feedback ------------------------------------------------------------------------------
    def show_message(self, text: str, error: bool = False) -> None:
        self.statusBar().setStyleSheet("color: #b00020" if error else "")
        self.statusBar().showMessage(text)

    def error_dialog(self, title: str, error: Exception) -> None:
        self.show_message(error_message(error), error=True)
        box = QMessageBox(QMessageBox.Icon.Warning, title, error_message(error),
                          QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()  # window-modal without a nested event loop: the worker's results keep arriving

    def _job_failed(self, message: str, error: Exception) -> None:
        if is_out_of_memory(error):
            self._offer_cpu(message)
        else:
            self.show_message(message, error=True)

    def _busy(self, busy: bool) -> None:
        if busy:
            self._busy_timer.start(BUSY_DELAY_MS)
        else:
            self._busy_timer.stop()
            for widget in (self.job_label, self.progress_bar, self.cancel_button):
                widget.hide()
            if self.statusBar().currentMessage().endswith("…"):
                self.statusBar().clearMessage()

    def _show_busy(self) -> None:
        if not self.context.is_idle():
            for widget in (self.job_label, self.progress_bar, self.cancel_button):
                widget.show()

    def _progress(self, key: str, step) -> None:
        self.progress_bar.setValue(int(1000 * min(max(step.done, 0.0), 1.0)))
        self.job_label.setText(step.message or key)
        self.cancel_button.setEnabled(key != "startup")  # the model list and colours come from it

    def _about(self) -> None:
        QMessageBox.about(self, "About PruneScope",
                          "<b>PruneScope</b><br>Explains image classifiers by pruning the network "
                          "for one input (NeuronMCT, Khakzar et al., CVPR 2021), side by side with "
                          "classic attribution methods and their deletion/insertion curves.")

    # -- settings and closing ------------------------------------------------------------------
    def _restore_settings(self) -> None:
        s = self.settings
        self._saved_model = str(s.value("model", DEFAULT_MODEL))
        self._saved_device = str(s.value("device", "auto"))
        self.model_box.addItem(self._saved_model, self._saved_model)
        self.device_box.addItem(self._saved_device, self._saved_device)
        geometry = s.value("window/geometry")
        if geometry is None or not self.restoreGeometry(geometry):
            self.resize(1400, 900)
        state = s.value("window/state")
        if state is not None:
            self.restoreState(state)
        self.explain.restore_settings(s)

    def save_settings(self) -> None:
        s = self.settings
        choice = self.context.current_model_choice()
        if choice is not None and not choice.weights:
            s.setValue("model", choice.name)
            s.setValue("device", choice.device)
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        self.explain.save_settings(s)
        s.sync()

    def closeEvent(self, event) -> None:
        self.save_settings()
        self.worker_stopped = self.context.shutdown(SHUTDOWN_WAIT_MS)
        super().closeEvent(event)
