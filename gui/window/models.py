"""The model in the main window: the model and device boxes, loading a model (a built-in, a
recent one, any other through Open model…, or a weights file), retrying on the CPU when the GPU
runs out of memory, and opening a dissection of the model."""
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QFileDialog, QInputDialog, QLabel, QMessageBox, QToolBar

from gui.parts.context import ModelChoice
from gui.parts.feedback import error_message, is_out_of_memory
from gui.window.jobs import StartupInfo
from gui.window.model_dialog import OpenModelDialog, save_card
from gui.window.settings import as_list, remember

OPEN_MODEL = "Open model…"
LOAD_WEIGHTS = "Load weights file…"
ACTIONS = (OPEN_MODEL, LOAD_WEIGHTS)  # entries of the model box that are not models


class ModelChoosing:
    """The main window's model and device: its toolbar (which also names the open image) and
    what the start-up job offers. A mixin of gui.window.main_window.MainWindow, whose context, settings,
    explain tab, status messages and load_failed signal it uses."""

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

    def _started(self, info: StartupInfo) -> None:
        self._startup = info
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for name, description, offline in info.models:
            self._model_labels[name] = name if offline else f"{name}  (weights not downloaded)"
            self.model_box.addItem(self._model_labels[name], name)
            self.model_box.setItemData(self.model_box.count() - 1, description, Qt.ItemDataRole.ToolTipRole)
        self.model_box.insertSeparator(self.model_box.count())
        for spec in as_list(self.settings.value("models/recent")):
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
        self.explain.apply_startup(info, None if methods is None else as_list(methods))

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

        from core.dissection.dissect import Dissection
        from core.errors import PruneScopeError

        try:
            dissection = Dissection.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, PruneScopeError) as err:
            self.show_message(f"{Path(path).name}: {getattr(err, 'strerror', None) or err}", error=True)
            return False
        model = self.context.current_model()
        problem = None if model is None else dissection.mismatch(model)
        if problem:
            self.show_message(f"{Path(path).name} {problem}", error=True)
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

    def _remember_model(self, choice: ModelChoice) -> None:
        """Models opened by SPEC or card (not built-ins, not a weights file) become recent."""
        if choice.weights or choice.name in self._model_labels:
            return
        remember(self.settings, "models/recent", choice.name)

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


def _spec_label(spec: str) -> str:
    """A model card by its file's stem, anything else by its SPEC."""
    return Path(spec).stem if spec.lower().endswith(".toml") else spec
