"""The Explain tab's left panel: prediction and top-5, pruning settings, methods, display."""
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QGroupBox,
                               QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QSizePolicy,
                               QVBoxLayout, QWidget)
from superqt import QLabeledDoubleSlider

from core.io import display
from core.methods import BY_NAME, DEFAULTS, PATHWAY, PATHWAY_METHODS

PATHWAY_VARIANTS = (("gradient", "gradient"), ("input × gradient", "input-x-gradient"),
                    ("integrated gradients", "integrated-gradients"))
SELECTORS = (("Taylor  |a · ∂y/∂a|", "taylor"), ("IntGrad (integrated)", "intgrad"))
TIES = (("exact: dead first, then |a|", "exact"), ("paper: tied scores together", "paper"))
MODES = (("global threshold", "global"), ("per-layer threshold", "per-layer"))
# Per-map first: methods differ in units (Grad-CAM's values dwarf gradients'), so a shared scale
# is for comparing maps of one kind, e.g. the pathway gradient against the plain gradient.
SCALES = (("per-map scale", False), ("shared scale", True))
DISPLAY_MODES = (("auto", display.AUTO), ("map alone", "map"), ("blend", "blend"),
                 ("masked image", "masked"), ("alpha", "alpha"))
DEFAULT_METHODS = DEFAULTS["app"]


def _combo(items, tooltip: str) -> QComboBox:
    combo = QComboBox()
    for label, value in items:
        combo.addItem(label, value)
    combo.setToolTip(tooltip)
    return combo


def select_data(combo: QComboBox, value) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


class ControlPanel(QWidget):
    sparsity_changed = Signal(float)
    pruning_changed = Signal()  # threshold mode, selector or pathway variant
    methods_changed = Signal()
    display_changed = Signal()
    auto_requested = Signal(float)  # tolerance: the output change allowed, as a fraction
    settings_requested = Signal()  # the methods' settings dialog
    target_clicked = Signal(int)  # a class id from the top-5

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self._prediction_box())
        layout.addWidget(self._pruning_box())
        layout.addWidget(self._methods_box())
        layout.addWidget(self._display_box())
        layout.addStretch(1)

    # -- groups --------------------------------------------------------------------------------
    def _prediction_box(self) -> QGroupBox:
        box = QGroupBox("Prediction")
        self.prediction = QLabel("Open an image (File → Open, or drop one here)")
        self.prediction.setWordWrap(True)
        self.prediction.setTextFormat(Qt.TextFormat.RichText)
        self.top5 = QListWidget()
        self.top5.setToolTip("Click a class to explain it instead")
        self.top5.setFixedHeight(5 * 19 + 8)
        self.top5.itemClicked.connect(
            lambda item: self.target_clicked.emit(int(item.data(Qt.ItemDataRole.UserRole))))
        layout = QVBoxLayout(box)
        layout.addWidget(self.prediction)
        layout.addWidget(self.top5)
        return box

    def _pruning_box(self) -> QGroupBox:
        box = QGroupBox("Pruning for this input")
        self.sparsity = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.sparsity.setRange(0.0, 99.9)
        self.sparsity.setDecimals(1)
        self.sparsity.setSingleStep(0.5)
        self.sparsity.setValue(70.0)
        self.sparsity.setToolTip("Percent of neurons pruned (lowest scores first)")
        self.sparsity.valueChanged.connect(self.sparsity_changed.emit)
        self.auto = QPushButton("Auto")
        self.auto.setToolTip("The largest sparsity whose output change stays within the tolerance")
        self.tolerance = QDoubleSpinBox()
        self.tolerance.setRange(1, 90)  # percent, as the sparsity and the CLI's --tolerance
        self.tolerance.setDecimals(1)
        self.tolerance.setSingleStep(5)
        self.tolerance.setValue(15)
        self.tolerance.setPrefix("tolerance ")
        self.tolerance.setSuffix(" %")
        self.tolerance.setToolTip("Output change allowed: |p' - p| / p, in percent")
        self.auto.clicked.connect(lambda: self.auto_requested.emit(self.tolerance.value() / 100))
        auto_row = QHBoxLayout()
        auto_row.addWidget(self.auto)
        auto_row.addWidget(self.tolerance, 1)
        self.auto_open = QCheckBox("Auto for each new image")
        self.auto_open.setChecked(True)
        self.auto_open.setToolTip("Open each image (or class, or model) at the largest sparsity within "
                                  "the tolerance. Setting the sparsity yourself turns this off.")
        self.auto_note = QLabel("")
        self.auto_note.setWordWrap(True)
        self.auto_note.setStyleSheet("color: #444")
        self.mode = _combo(MODES, "Threshold over all layers pooled, or inside each layer")
        self.selector = _combo(SELECTORS, "How neurons are scored")
        self.variant = _combo(PATHWAY_VARIANTS, "What is taken through the pruned network")
        self.ties = _combo(TIES, "Equal neuron scores (often exactly 0): prune exactly the percent "
                                 "asked, dead neurons first then by |activation|, or all tied "
                                 "scores together as the paper's code does")
        for combo in (self.mode, self.selector, self.variant, self.ties):
            combo.currentIndexChanged.connect(lambda _i: self.pruning_changed.emit())
        self.pruned_status = QLabel("")
        self.pruned_status.setWordWrap(True)
        self.pruned_status.setStyleSheet("color: #444")
        form = QFormLayout(box)
        form.addRow("Sparsity %", self.sparsity)
        form.addRow(auto_row)
        form.addRow(self.auto_open)
        form.addRow(self.auto_note)
        form.addRow("Threshold", self.mode)
        form.addRow("Selector", self.selector)
        form.addRow("Pathway", self.variant)
        form.addRow("Ties", self.ties)
        form.addRow(self.pruned_status)
        return box

    def _methods_box(self) -> QGroupBox:
        box = QGroupBox("Compare with")
        outer = QVBoxLayout(box)
        self._methods_layout = QGridLayout()
        self._methods_layout.setVerticalSpacing(2)
        self.method_boxes: dict[str, QCheckBox] = {}
        self.pathway_boxes: dict[str, QCheckBox] = {}
        self._methods_note = QLabel("loading…")
        self._methods_layout.addWidget(self._methods_note)
        self.method_settings = QPushButton("Method settings…")
        self.method_settings.setToolTip("Occlusion's window, sample and mask counts, IG's steps, SmoothGrad's "
                                        "noise, the baselines, ...: the same as explain's --method-params")
        self.method_settings.clicked.connect(self.settings_requested.emit)
        outer.addLayout(self._methods_layout)
        outer.addWidget(self.method_settings)
        return box

    def _display_box(self) -> QGroupBox:
        box = QGroupBox("Display")
        self.display_mode = _combo(DISPLAY_MODES, "How each map is drawn. map: alone, on black; "
                                                  "blend: over the image; masked image: only the "
                                                  "image's top pixels; alpha: the image faded where "
                                                  "the map is weak; auto: map, and blend for Grad-CAM")
        self.top_percent = QDoubleSpinBox()
        self.top_percent.setRange(0.1, 100)
        self.top_percent.setDecimals(1)
        self.top_percent.setValue(display.DEFAULT_TOP_PERCENT)
        self.top_percent.setPrefix("top ")
        self.top_percent.setSuffix(" %")
        self.top_percent.setToolTip("Percent of pixels, largest |map| first, that the masked image shows")
        self.display_mode.currentIndexChanged.connect(self._on_display_mode)
        self.top_percent.valueChanged.connect(lambda _v: self.display_changed.emit())
        self.colormap = QComboBox()
        self.colormap.addItems(list(display.COLORMAPS))
        self.colormap.setCurrentText(display.DEFAULT_COLORMAP)
        self.opacity = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0.0, 1.0)
        self.opacity.setDecimals(2)
        self.opacity.setValue(display.DEFAULT_OPACITY)
        self.opacity.setToolTip("Opacity of the map blended over the image")
        self.sign = QComboBox()
        self.sign.addItems(list(display.SIGNS))
        self.sign.setToolTip("absolute: |map|; positive: evidence for the class; signed: both")
        self.scale = _combo(SCALES, "One colour scale for all maps, or each map its own")
        self.colormap.currentIndexChanged.connect(lambda _i: self.display_changed.emit())
        self.opacity.valueChanged.connect(lambda _v: self.display_changed.emit())
        self.sign.currentIndexChanged.connect(lambda _i: self.display_changed.emit())
        self.scale.currentIndexChanged.connect(lambda _i: self.display_changed.emit())
        form = QFormLayout(box)
        mode_row = QHBoxLayout()
        mode_row.addWidget(self.display_mode, 1)
        mode_row.addWidget(self.top_percent)
        form.addRow("Mode", mode_row)
        form.addRow("Colours", self.colormap)
        form.addRow("Opacity", self.opacity)
        form.addRow("Values", self.sign)
        form.addRow("Scale", self.scale)
        self._on_display_mode()
        return box

    def _on_display_mode(self) -> None:
        self.top_percent.setEnabled(self.display_mode.currentData() == "masked")
        self.display_changed.emit()

    # -- state ---------------------------------------------------------------------------------
    def set_methods(self, methods, checked, through=()) -> None:
        """Offer these classic methods (from core), with `checked` ticked; beside each that has a
        pathway version, a ↝ box for it (the pathway-<method> names in `through` ticked)."""
        self._methods_note.hide()
        for method in methods:
            if method in self.method_boxes:
                continue
            box = QCheckBox(method)
            spec = BY_NAME[method]
            box.setToolTip(f"{spec.passes}" + ("" if spec.interactive else
                                               ": computed in steps while you work, coarse first where it can be"))
            box.setChecked(method in checked)
            box.toggled.connect(lambda _on: self.methods_changed.emit())
            row = len(self.method_boxes)  # one per row: the ↝ boxes make two columns too wide
            self.method_boxes[method] = box
            self._methods_layout.addWidget(box, row, 0)
            if PATHWAY + method in PATHWAY_METHODS:
                via = QCheckBox("↝")
                via.setToolTip(f"also {PATHWAY}{method}: {method} through the network pruned for this "
                               "input, following the slider")
                via.setChecked(PATHWAY + method in through)
                via.toggled.connect(lambda _on: self.methods_changed.emit())
                self.pathway_boxes[method] = via
                self._methods_layout.addWidget(via, row, 1)

    def chosen_methods(self) -> list[str]:
        return [m for m, box in self.method_boxes.items() if box.isChecked()]

    def chosen_pathways(self) -> list[str]:
        """The pathway-<method> rows asked for with the ↝ boxes."""
        return [PATHWAY + m for m, box in self.pathway_boxes.items() if box.isChecked()]

    def set_prediction(self, prediction, predicted_id: int, names_assumed: bool = False) -> None:
        """core.pathway.engine.Prediction of the engine in use; its target is marked in the top-5.
        names_assumed: ImageNet's class names were given to a model that named none."""
        self.prediction.setText(
            f"<span style='font-size:13pt'><b>{prediction.name}</b></span> "
            f"&nbsp;{100 * prediction.prob:.1f} %"
            + ("" if prediction.target == predicted_id else
               "<br><span style='color:#a33'>explaining a class other than the prediction</span>")
            + ("" if not names_assumed else
               "<br><span style='color:#666'>ImageNet class names, assumed for 1000 classes "
               "(File → Open model… takes a class names file)</span>"))
        self.top5.clear()
        for class_id, name, prob in prediction.top5:
            item = QListWidgetItem(f"{100 * prob:5.1f} %   {name}")
            item.setData(Qt.ItemDataRole.UserRole, class_id)
            if class_id == prediction.target:
                font = item.font()
                font.setBold(True)
                item.setFont(font)
            self.top5.addItem(item)

    def set_pruned_status(self, output_change: float, prob: float, kept: int, total: int) -> None:
        self.pruned_status.setText(
            f"kept {kept:,} of {total:,} neurons ({100 * kept / max(total, 1):.1f} %)<br>"
            f"pruned net: p′ = {prob:.3f}, output change {100 * output_change:.1f} %")

    def lut_name(self) -> str:
        return self.colormap.currentText()
