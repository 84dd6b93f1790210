"""Model → Open model…: any classifier by SPEC or file, with its weights, labels and preprocessing.

The dialog stays open until the model has loaded on the worker: an error is shown inside it and
the model in use stays. What opened is saved as a model card (.toml) beside the settings, so that
the model box offers it again under Recent models.
"""
import re
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from core.errors import ModelError
from core.models.sources import ModelCard, parse_output, parse_spec, write_card

SPEC_HINT = "timm:resnet50 · torchvision:convnext_tiny · net.py:build · package.module:build · model.pt2 · card.toml"


class OpenModelDialog(QDialog):
    """Emits `card_ready(card)` when the user asks to open; the window answers with
    `loaded()` (the dialog closes) or `failed(message)` (it stays, showing why)."""

    card_ready = Signal(object)  # core.models.sources.ModelCard

    def __init__(self, folder: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Open model")
        self.setMinimumWidth(620)
        self._folder = folder
        self.spec = QLineEdit()
        self.spec.setPlaceholderText(SPEC_HINT)
        self.spec.setToolTip(SPEC_HINT)
        self.weights = QLineEdit()
        self.weights.setPlaceholderText("optional: .pth, .pt or .safetensors (default: the source's own)")
        self.labels = QLineEdit()
        self.labels.setPlaceholderText("optional: one name per line (.txt), or JSON")
        self.input_size = _size_box("from the model")
        self.resize_to = _size_box("from the model")
        self.mean = QLineEdit()
        self.mean.setPlaceholderText("from the model, e.g. 0.485, 0.456, 0.406")
        self.std = QLineEdit()
        self.std.setPlaceholderText("from the model, e.g. 0.229, 0.224, 0.225")
        self.gradcam_layer = QLineEdit()
        self.gradcam_layer.setPlaceholderText("found automatically, e.g. layer4")
        self.output = QLineEdit()
        self.output.setPlaceholderText("the output itself; of a tuple or list its index (0), of a dict its key")
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #b00020")

        form = QFormLayout()
        form.addRow("Model SPEC or file", _with_browse(self.spec, self._browse_model))
        form.addRow("Weights", _with_browse(self.weights, lambda: self._browse(
            self.weights, "Weights file", "Weights (*.pth *.pt *.safetensors *.bin *.ckpt);;All files (*)")))
        form.addRow("Class names", _with_browse(self.labels, lambda: self._browse(
            self.labels, "Labels file", "Labels (*.txt *.json);;All files (*)")))
        form.addRow("Input size (px)", self.input_size)
        form.addRow("Resize short side to (px)", self.resize_to)
        form.addRow("Mean", self.mean)
        form.addRow("Std", self.std)
        form.addRow("Grad-CAM layer", self.gradcam_layer)
        form.addRow("Class scores", self.output)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self._open)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        note = QLabel("A .py file or module is run to build the model, as torch.hub does: open only "
                      "code you trust. Weights are read without running code.")
        note.setWordWrap(True)
        note.setStyleSheet("color: #555")
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)

    def card(self) -> ModelCard:
        """The card the fields describe; ModelError if one is malformed."""
        spec = self.spec.text().strip()
        parse_spec(spec)
        return ModelCard(
            source=spec, weights=_text(self.weights), labels=_text(self.labels),
            input_size=self.input_size.value() or None, resize=self.resize_to.value() or None,
            mean=_numbers(self.mean, "Mean"), std=_numbers(self.std, "Std"),
            gradcam_layer=_text(self.gradcam_layer),
            output=parse_output(self.output.text()) if _text(self.output) else None)

    def loaded(self) -> None:
        self.accept()

    def failed(self, message: str) -> None:
        self.error.setText(message)
        self.buttons.setEnabled(True)

    def _open(self) -> None:
        try:
            card = self.card()
        except ModelError as err:
            self.failed(str(err))
            return
        self.error.setText("Loading…")
        self.buttons.setEnabled(False)
        self.card_ready.emit(card)

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model file", self._folder,
            "Models (*.py *.pt2 *.toml);;Python (*.py);;torch.export (*.pt2);;Model cards (*.toml)")
        if path:
            # A Python file needs its factory's name after the colon.
            self.spec.setText(f"{path}:" if path.endswith(".py") else path)
            self.spec.setFocus()

    def _browse(self, field: QLineEdit, title: str, filters: str) -> None:
        path, _ = QFileDialog.getOpenFileName(self, title, self._folder, filters)
        if path:
            field.setText(path)


def save_card(card: ModelCard, folder: Path) -> Path:
    """Write `card` into `folder` under a name made from its source."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(card.source.replace(":", "_")).name).strip("._") or "model"
    return write_card(card, folder / f"{stem}.toml")


def _size_box(special: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(0, 4096)
    box.setSpecialValueText(special)  # 0: the model's default
    return box


def _with_browse(field: QLineEdit, browse) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    button = QPushButton("Browse…")
    button.clicked.connect(browse)
    layout.addWidget(field, 1)
    layout.addWidget(button)
    return row


def _text(field: QLineEdit) -> str | None:
    return field.text().strip() or None


def _numbers(field: QLineEdit, label: str) -> tuple[float, ...] | None:
    text = field.text().strip()
    if not text:
        return None
    try:
        return tuple(float(v) for v in re.split(r"[,\s]+", text) if v)
    except ValueError:
        raise ModelError(f"{label}: expected numbers separated by commas, got '{text}'") from None
