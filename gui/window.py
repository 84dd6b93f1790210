"""The main window: menus, model and device, the Explain tab (and extra tabs), the folder strip,
a status bar with progress and Cancel. Settings persist between sessions."""
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import (QComboBox, QFileDialog, QInputDialog, QLabel, QMainWindow,
                               QMessageBox, QProgressBar, QPushButton, QTabWidget, QToolBar,
                               QVBoxLayout, QWidget)

from core.output import result_names
from core.resources import resource_path, sample_images
from gui import jobs
from gui.context import PRIORITY_ENGINE, PRIORITY_VIEW, AppContext, ModelChoice, error_message, \
    is_out_of_memory
from gui.explain_tab import ExplainTab
from gui.model_dialog import OpenModelDialog, save_card
from gui.tabs import extra_tabs
from gui.thumbnails import ThumbnailStrip, folder_job

# core.models.DEFAULT_MODEL, which cannot be imported here: core.models imports torch.
DEFAULT_MODEL = "efficientnet_lite0"  # embedded weights: works offline, preselected
OPEN_MODEL = "Open model…"
LOAD_WEIGHTS = "Load weights file…"
ACTIONS = (OPEN_MODEL, LOAD_WEIGHTS)  # entries of the model box that are not models
RECENT_LIMIT = 10
BUSY_DELAY_MS = 400  # jobs shorter than this show no progress bar (the live slider preview)
SHUTDOWN_WAIT_MS = 1000  # then leave a torch call that is still running behind: closing takes < 2 s


def app_settings() -> QSettings:
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "PruneScope", "prunescope")


class MainWindow(QMainWindow):
    load_failed = Signal(str)  # an image or model could not be opened (message)

    def __init__(self, images=(), model=None, parent=None):
        """model: a core.model_sources.ModelCard to open instead of the last model used."""
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
        self.context.job_error.connect(self._job_failed)
        self.context.busy_changed.connect(self._busy)
        self.context.progress.connect(self._progress)
        self.context.image_changed.connect(self._image_changed)
        self._restore_settings()
        self.explain.controls.prediction.setText("Loading the model…")

        self.context.run_job(jobs.startup, self._started, key="startup", priority=PRIORITY_ENGINE)
        first = ModelChoice(self._saved_model, None, self._saved_device)
        if model is not None:
            first = ModelChoice(self._card_spec(model), None, self._saved_device)
        self.load_model(first, first=True)
        self.open_paths([Path(p) for p in images])

    # -- building ------------------------------------------------------------------------------
    def _build_toolbar(self) -> None:
        bar = QToolBar("Model")
        bar.setObjectName("model-toolbar")
        bar.setMovable(False)
        self.model_box = QComboBox()
        self.model_box.setMinimumWidth(230)
        self.model_box.setToolTip("The classifier to explain: a built-in, a recent one, or any other "
                                  "through Open model…")
        self.model_box.activated.connect(self._model_picked)
        self.device_box = QComboBox()
        self.device_box.setToolTip("Where the model runs; unavailable devices are greyed out")
        self.device_box.activated.connect(self._device_picked)
        self.image_label = QLabel("")
        self.image_label.setStyleSheet("color: #444; padding-left: 12px")
        bar.addWidget(QLabel(" Model "))
        bar.addWidget(self.model_box)
        bar.addWidget(QLabel("  Device "))
        bar.addWidget(self.device_box)
        bar.addWidget(self.image_label)
        self.addToolBar(bar)

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

    # -- model and device ----------------------------------------------------------------------
    def _started(self, info: jobs.StartupInfo) -> None:
        self._startup = info
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for name, description, offline in info.models:
            self._model_labels[name] = name if offline else f"{name}  (weights not downloaded)"
            self.model_box.addItem(self._model_labels[name], name)
            self.model_box.setItemData(self.model_box.count() - 1, description, Qt.ItemDataRole.ToolTipRole)
        self.model_box.insertSeparator(self.model_box.count())
        for spec in _as_list(self.settings.value("models/recent")):
            self.model_box.addItem(_spec_label(spec), spec)
            self.model_box.setItemData(self.model_box.count() - 1, spec, Qt.ItemDataRole.ToolTipRole)
        self.model_box.insertSeparator(self.model_box.count())
        for action in ACTIONS:
            self.model_box.addItem(action, action)
        self.model_box.blockSignals(False)
        self.device_box.clear()
        for name, available in info.devices.items():
            self.device_box.addItem(name, name)
            if not available:
                self.device_box.model().item(self.device_box.count() - 1).setEnabled(False)
        self._show_choice(self.context.current_model_choice()
                          or ModelChoice(self._saved_model, None, self._saved_device))
        methods = self.settings.value("explain/methods")
        self.explain.apply_startup(info, None if methods is None else _as_list(methods))

    def _show_choice(self, choice: ModelChoice) -> None:
        """Put the combo boxes back on the model and device in use."""
        for name, label in self._model_labels.items():
            self.model_box.setItemText(self.model_box.findData(name), label)
        index = self.model_box.findData(choice.name)
        actions = self.model_box.findData(OPEN_MODEL)
        if index < 0 and actions > 0:  # a model opened by SPEC: last of the recent ones
            index = actions - 1  # the separator above the actions moves down
            self.model_box.insertItem(index, _spec_label(choice.name), choice.name)
        if index >= 0:
            self.model_box.setCurrentIndex(index)
            if choice.weights:
                self.model_box.setItemText(index, choice.label())
        index = self.device_box.findData(choice.device)
        if index >= 0:
            self.device_box.setCurrentIndex(index)

    def _model_picked(self, index: int) -> None:
        name = self.model_box.itemData(index)
        current = self.context.current_model_choice()
        device = self.device_box.currentData() or "auto"
        if name == LOAD_WEIGHTS:
            self._choose_weights(device)
        elif name == OPEN_MODEL:
            if current is not None:
                self._show_choice(current)
            self.choose_model()
        elif current is None or name != current.name or current.weights:
            self.load_model(ModelChoice(name, None, device))

    def _choose_weights(self, device: str) -> None:
        current = self.context.current_model_choice()
        path, _ = QFileDialog.getOpenFileName(self, "Load weights file", self._last_folder(),
                                              "PyTorch weights (*.pth *.pt *.bin *.ckpt);;All files (*)")
        names = [self.model_box.itemData(i) for i in range(self.model_box.count())
                 if self.model_box.itemData(i) not in (None, *ACTIONS)]
        if path and names:
            default = names.index(current.name) if current and current.name in names else 0
            name, ok = QInputDialog.getItem(self, "Architecture", "These weights are for:", names,
                                            default, False)
            if ok:
                self.load_model(ModelChoice(name, path, device))
                return
        if current is not None:
            self._show_choice(current)

    def _device_picked(self, _index: int) -> None:
        current = self.context.current_model_choice()
        device = self.device_box.currentData()
        if current is not None and device != current.device:
            self.load_model(ModelChoice(current.name, current.weights, device))

    def _card_spec(self, card) -> str:
        """A SPEC for `card`: its source alone, or the card saved beside the settings."""
        if all(getattr(card, key) is None for key in vars(card) if key != "source"):
            return card.source
        return str(save_card(card, Path(self.settings.fileName()).parent / "models"))

    def choose_dissection(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open dissection", self._last_folder(),
                                              "Dissection (dissection.json *.json)")
        if path:
            self.open_dissection(Path(path))

    def open_dissection(self, path: Path) -> bool:
        """Label the channels with a dissection of the current model (`prunescope dissect`)."""
        import json

        from core.dissection import Dissection
        from core.errors import PruneScopeError

        try:
            dissection = Dissection.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, PruneScopeError) as err:
            self.show_message(f"{Path(path).name}: {getattr(err, 'strerror', None) or err}", error=True)
            return False
        model = self.context.current_model()
        if model is not None and dissection.model != model.name:
            self.show_message(f"{Path(path).name} dissects {dissection.model}, not the current "
                             f"model {model.name}", error=True)
            return False
        self.explain.set_dissection(dissection)
        units = sum(len(layer.detectors()) for layer in dissection.layers)
        self.statusBar().showMessage(f"dissection of {dissection.model} on {dissection.source}: "
                                     f"{units} concept detectors in {len(dissection.layers)} layers", 8000)
        return True

    def choose_model(self) -> None:
        """Open model…: a dialog for any classifier; it closes once the model has loaded."""
        dialog = OpenModelDialog(self._last_folder(), self)

        def requested(card):
            try:
                spec = self._card_spec(card)
            except OSError as err:
                dialog.failed(f"cannot save the model card: {err.strerror or err}")
                return
            self.load_model(ModelChoice(spec, None, self.device_box.currentData() or "auto"),
                            on_loaded=lambda _model: dialog.loaded(),
                            on_failed=lambda message: dialog.failed(message))

        dialog.card_ready.connect(requested)
        dialog.setModal(True)
        dialog.show()
        self.model_dialog = dialog  # for tests, and so that it is not collected while open

    def load_model(self, choice: ModelChoice, first: bool = False, on_loaded=None,
                   on_failed=None) -> None:
        """Load a model on the worker. on_failed(message), when given, takes the place of the
        error dialog; either way the model in use stays."""
        self.show_message(f"Loading {choice.label()} on {choice.device}…")

        def loaded(model):
            self._remember_model(choice)
            self._show_choice(choice)
            self.show_message(f"{choice.label()} on {model.device}")
            if first and self._pending_image is None:
                self.explain.controls.prediction.setText(
                    "Open an image: File → Open, drop files or a folder here, "
                    "or Help → Open sample image")
            if on_loaded is not None:
                on_loaded(model)

        def failed(error):
            previous = self.context.current_model_choice()
            if previous is not None:
                self._show_choice(previous)
            if is_out_of_memory(error):
                self._offer_cpu(error_message(error), choice)
            elif on_failed is not None:
                self.show_message(error_message(error), error=True)
                on_failed(error_message(error))
            else:
                self.error_dialog("Cannot load the model", error)
            self.load_failed.emit(error_message(error))

        self.context.load_model(choice, on_loaded=loaded, on_error=failed)

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
        if self._startup is not None:  # core.images' suffixes, read on the worker
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
        self._remember(path)

    def _remember_model(self, choice: ModelChoice) -> None:
        """Models opened by SPEC or card (not built-ins, not a weights file) become recent."""
        if choice.weights or choice.name in self._model_labels:
            return
        recent = [s for s in _as_list(self.settings.value("models/recent")) if s != choice.name]
        self.settings.setValue("models/recent", [choice.name, *recent][:RECENT_LIMIT])

    def _remember(self, path: Path) -> None:
        recent = [p for p in _as_list(self.settings.value("recent")) if p != str(path)]
        self.settings.setValue("recent", [str(path), *recent][:RECENT_LIMIT])

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = _as_list(self.settings.value("recent"))
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

    def _offer_cpu(self, message: str, choice: ModelChoice | None = None) -> None:
        """Out of GPU memory: ask whether to load the model (choice, or the one in use) on the
        CPU; retrying also reruns the analysis of the current image there."""
        choice = choice or self.context.current_model_choice()
        box = QMessageBox(QMessageBox.Icon.Warning, "Out of GPU memory",
                          f"{message}\n\nRetry on the CPU?",
                          QMessageBox.StandardButton.Retry | QMessageBox.StandardButton.Cancel, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def answered(code: int) -> None:
            if code == QMessageBox.StandardButton.Retry and choice is not None:
                self.load_model(ModelChoice(choice.name, choice.weights, "cpu"))

        box.finished.connect(answered)
        box.open()

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


def _spec_label(spec: str) -> str:
    """A model card by its file's stem, anything else by its SPEC."""
    return Path(spec).stem if spec.lower().endswith(".toml") else spec


def _as_list(value) -> list[str]:
    """QSettings gives a str for a one-item list and None for none."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]
