"""The methods' settings in the app: one form per method that has any, built from what the method
declares (core.methods.base.Setting), so that the app offers exactly what --method-params takes."""
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QGroupBox,
                               QLabel, QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget)

from core.methods import PLAIN, checked_settings

AUTO = "auto"


class MethodSettingsDialog(QDialog):
    """Every method's settings; values() gives the ones that differ from the defaults, in
    core.methods.checked_settings' form."""

    def __init__(self, settings: dict, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Method settings")
        self._fields: dict[tuple[str, str], tuple] = {}  # (method, key) -> (widget, Setting)
        body = QWidget()
        layout = QVBoxLayout(body)
        for method in (m for m in PLAIN if m.options):
            current = method.configured(settings.get(method.name, {})).params
            box = QGroupBox(method.name)
            form = QFormLayout(box)
            for option in method.options:
                widget = _editor(option, current[option.key])
                widget.setToolTip(option.help)
                form.addRow(option.key, widget)
                self._fields[method.name, option.key] = (widget, option)
            layout.addWidget(box)
        scroll = QScrollArea()
        scroll.setWidget(body)
        scroll.setWidgetResizable(True)
        defaults = QPushButton("Defaults")
        defaults.setToolTip("Every method back to its own settings")
        defaults.clicked.connect(self.reset)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.addButton(defaults, QDialogButtonBox.ButtonRole.ResetRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        outer = QVBoxLayout(self)
        outer.addWidget(QLabel("Maps are computed again with the new settings; the others are kept."))
        outer.addWidget(scroll, 1)
        outer.addWidget(buttons)
        self.resize(380, 560)

    def values(self) -> dict:
        chosen: dict = {}
        for (method, key), (widget, option) in self._fields.items():
            chosen.setdefault(method, {})[key] = _value(widget, option)
        return checked_settings(chosen)

    def reset(self) -> None:
        for widget, option in self._fields.values():
            _set(widget, option, option.default)


def _editor(option, value) -> QWidget:
    if option.choices:
        widget = QComboBox()
        widget.addItems(list(option.choices))
    elif option.whole:
        widget = QSpinBox()
        widget.setRange(int(option.low) - (option.default is None), int(option.high))
        if option.default is None:  # the step below the range reads "auto"
            widget.setSpecialValueText(AUTO)
    else:
        widget = QDoubleSpinBox()
        widget.setDecimals(3)
        widget.setSingleStep(0.01)
        widget.setRange(float(option.low), float(option.high))
    _set(widget, option, value)
    return widget


def _set(widget, option, value) -> None:
    if option.choices:
        widget.setCurrentText(str(value))
    elif value is None:
        widget.setValue(widget.minimum())
    else:
        widget.setValue(value)


def _value(widget, option):
    if option.choices:
        return widget.currentText()
    if option.default is None and widget.value() == widget.minimum():
        return AUTO
    return widget.value()
