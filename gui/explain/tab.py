"""The Explain tab: controls on the left; heatmaps and curves above, neuron masks below.

This module builds the tab's widgets, holds what it shows (the engine, its maps and curves) and
turns the user's actions into requests. What it asks the worker for, and when, is in
gui.explain.requests (the jobs themselves, which run on the worker, in gui.explain.jobs); how each
result is drawn, in gui.explain.drawing.
"""
import json

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QScrollArea, QSplitter, QWidget
from superqt.utils import qdebounced

from core.errors import PruneScopeError
from core.io import display
from core.methods import PATHWAY, checked_settings, configured
from gui.explain import jobs as explain_jobs
from gui.explain.controls import DEFAULT_METHODS, ControlPanel, select_data
from gui.explain.curves import CurvesView
from gui.explain.drawing import ExplainDrawing, Shown
from gui.explain.masks import MaskView
from gui.explain.requests import ExplainRequests
from gui.parts.heatmaps import HeatmapGrid
from gui.window.jobs import StartupInfo

CURVE_STEPS = 20  # as `prunescope explain`'s default, so exported curves match the CLI's
# the sparsities of the live sweep plot (its map and curves at each): not the pruning sweep's
EXPLAIN_SWEEP = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99)
SETTLE_MS = 350  # the slider counts as settled after this long without a move


class ExplainTab(ExplainRequests, ExplainDrawing, QWidget):
    analysis_shown = Signal()  # heatmaps, masks, curves and sweep of the current engine are all drawn
    live_shown = Signal(object)  # the explain_jobs.LiveResult just drawn
    status = Signal(str)  # a line for the status bar

    def __init__(self, context, parent=None):
        super().__init__(parent)
        self.context = context
        self.controls = ControlPanel()
        self.heatmaps = HeatmapGrid()
        self.curves = CurvesView()
        self.masks = MaskView()
        self._engine = None
        self._luts: dict = {}
        self.shown = Shown()  # what is on screen for the current engine
        self._memo = explain_jobs.LiveMemo()  # used on the worker only
        self.curve_steps = CURVE_STEPS
        self.sweep_sparsities = EXPLAIN_SWEEP
        self._setting = False  # the app, not the user, is moving the slider
        self._user_moves = 0  # the user's own slider moves: an auto result older than the last is dropped
        self._auto_search = None  # the Auto search on opening under way (a token)
        self.method_settings: dict = {}  # the methods' settings (core.methods.checked_settings)

        scroll = QScrollArea()
        scroll.setWidget(self.controls)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(self.controls.minimumSizeHint().width() + 18)
        self.upper = QSplitter(Qt.Orientation.Horizontal)
        self.upper.addWidget(self.heatmaps)
        self.upper.addWidget(self.curves)
        self.upper.setSizes([600, 480])
        self.upper.setStretchFactor(0, 1)  # a larger window grows the maps, not the curves
        self.right = QSplitter(Qt.Orientation.Vertical)
        self.right.addWidget(self.upper)
        self.right.addWidget(self.masks)
        self.right.setSizes([480, 240])
        self.right.setStretchFactor(0, 1)
        self.outer = QSplitter(Qt.Orientation.Horizontal)
        self.outer.addWidget(scroll)
        self.outer.addWidget(self.right)
        self.outer.setStretchFactor(1, 1)
        self.outer.setSizes([300, 1100])
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.outer)
        self.curves.setMinimumWidth(420)

        c = self.controls
        c.sparsity_changed.connect(self._on_sparsity)
        c.pruning_changed.connect(self._on_pruning)
        c.methods_changed.connect(self._on_methods)
        c.display_changed.connect(self._redraw)
        c.auto_requested.connect(self._auto)
        c.settings_requested.connect(self._edit_method_settings)
        c.auto_open.toggled.connect(self._on_auto_open)
        c.target_clicked.connect(self._explain_class)
        self.masks.layer_selected.connect(self._request_layer)
        self.masks.channel_clicked.connect(self._open_channel)
        self.masks.graph_wanted.connect(self._request_graph)
        self.masks.graph.status.connect(self.status)
        self.dissection = None  # core.dissection.dissect.Dissection of the current model, when open
        self._channel_dialog = None
        context.engine_changed.connect(self._on_engine)

    # -- state ---------------------------------------------------------------------------------
    def params(self) -> explain_jobs.Params:
        c = self.controls
        return explain_jobs.Params(round(c.sparsity.value(), 2), c.mode.currentData(),
                                   c.selector.currentData(), c.variant.currentData(),
                                   c.ties.currentData())

    def methods(self) -> list[str]:
        return self.controls.chosen_methods()

    def pathways(self) -> list[str]:
        """The pathway rows asked for (↝), but the live one, which the slider draws itself."""
        live = self.params().method_name
        return [m for m in self.controls.chosen_pathways() if m != live]

    def apply_startup(self, info: StartupInfo, checked_methods) -> None:
        self._luts = info.luts
        wanted = DEFAULT_METHODS if checked_methods is None else checked_methods
        self.controls.set_methods(info.classic_methods, [m for m in wanted if m in info.classic_methods],
                                  [m for m in wanted if m.startswith(PATHWAY)])
        self._show_panels()
        self._redraw()

    def _panel_names(self) -> list[str]:
        """Every map on screen: every map has its curves."""
        return self._curve_names()

    def _curve_names(self) -> list[str]:
        """The maps that get curves: the live pathway map, the classic ones and the ↝ rows."""
        live = self.params().method_name
        return [live, *self.methods(), *(p for p in self.pathways() if p != live)]

    def _show_panels(self) -> None:
        self.heatmaps.set_methods(self._panel_names())
        self.curves.set_methods(self._curve_names(), live=self.params().method_name)
        for name in self._panel_names():  # the settings a map was made with, beside its title
            summary = configured(name, self.method_settings).summary()
            self.heatmaps.set_title(name, f"{name} · {summary}" if summary else name)

    def is_complete(self) -> bool:
        """Everything of the current engine is on screen: maps, masks, curves and sweep (coarse
        ones count, labelled as such)."""
        if (self._engine is None or self.shown.live is None or self.masks.layer() is None
                or self._auto_search is not None):
            return False
        shown = self.heatmaps.shown_maps()
        if not all(m in shown or m in self.shown.unavailable for m in self._panel_names()):
            return False
        return self.curves.ready([m for m in self._curve_names() if m in shown])

    def is_refined(self) -> bool:
        """is_complete, and the curves and sweep are at full resolution."""
        return (self.is_complete() and self.shown.sweep_fine and not self.shown.coarse_maps
                and not self.shown.coarse_curves & set(self.methods())
                and all(c.steps == self.curve_steps for c in self.curves.curves().values()))

    # -- a new engine: new image, model or class -----------------------------------------------
    def _on_engine(self, engine) -> None:
        self._engine = engine = engine.with_settings(self.method_settings) if self.method_settings else engine
        self._auto_search = None  # a search for the engine before, if any, is of no use now
        if self.dissection is not None and self.dissection.mismatch(engine.model):
            self.set_dissection(None)
            self.status.emit("the dissection was of another model: its concepts are no longer shown")
        self.shown = Shown()
        prediction = self.context.current_prediction()
        predicted = prediction.top5[0][0] if prediction.top5 else prediction.target
        self.controls.set_prediction(prediction, predicted, engine.model.names_assumed)
        self.heatmaps.set_image(engine.view, prediction.name, f"p = {prediction.prob:.3f}")
        self.masks.set_image(engine.view)
        self.masks.clear()
        self._analyse(search=self.controls.auto_open.isChecked())

    def _analyse(self, search: bool) -> None:
        """Everything of the current engine asked for anew, each panel saying so until its map
        comes. search: Auto first (what depends on the sparsity follows its result)."""
        self.curves.clear()
        self._show_panels()
        for method in self._panel_names():
            self.heatmaps.set_note(method, "computing…")
        self._request_live()  # at the sparsity shown until Auto has found this image's
        if search:
            self._search_on_open(self._engine)
        self._request_maps()  # their curves follow them
        self._request_sweep()
        if self._auto_search is None:
            self._request_settled()

    def _explain_class(self, class_id: int) -> None:
        prediction = self.context.current_prediction()
        if prediction is None or class_id == prediction.target:
            return
        self.context.set_target(None if class_id == prediction.top5[0][0] else class_id)

    # -- the user's changes --------------------------------------------------------------------
    def _on_sparsity(self, value: float) -> None:
        self.curves.set_marker(value)
        self.context.cancel("pathway-curves")  # of a sparsity being left behind: not wanted
        self._request_live(moving=not self._setting)  # not throttled: a request only replaces the one waiting
        if self._setting:  # Auto's result: nothing to wait for
            self._request_settled()
            return
        self._user_moves += 1
        self.context.cancel("auto")
        if self._auto_search is not None:
            self._auto_search = None
            self.controls.auto_note.setText("")
        if self.controls.auto_open.isChecked():  # the user set one: new images keep it
            self.controls.auto_open.setChecked(False)
            self.controls.auto_note.setText("Sparsity set by you: new images open at it.")
        self._settled()

    def _set_sparsity(self, value: float) -> None:
        self._setting = True
        try:
            self.controls.sparsity.setValue(value)
        finally:
            self._setting = False

    @qdebounced(timeout=SETTLE_MS)
    def _settled(self) -> None:
        self._request_settled()

    def _on_auto_open(self, checked: bool) -> None:
        if checked and self._engine is not None:
            self._search_on_open(self._engine)

    def _on_pruning(self) -> None:
        self._show_panels()
        self._request_live()
        self._request_sweep()
        if self._auto_search is not None:  # search again under the new settings
            self._search_on_open(self._engine)
        else:
            self._request_settled()

    def _on_methods(self) -> None:
        for method in set(self.controls.method_boxes) - set(self.methods()):
            self.context.cancel(f"map:{method}")  # a slow map's run is kept: ticked again, it resumes
        for method in set(self.controls.pathway_boxes) - {p.removeprefix(PATHWAY) for p in self.pathways()}:
            self.context.cancel(f"pathway-maps:{PATHWAY}{method}")
        self._show_panels()
        self._draw_maps()
        self._request_maps()  # their curves follow them
        self._request_pathway_maps()

    # -- the methods' settings -----------------------------------------------------------------
    def _edit_method_settings(self) -> None:
        from gui.parts.method_settings import MethodSettingsDialog

        dialog = MethodSettingsDialog(self.method_settings, self)
        if dialog.exec():
            self.set_method_settings(dialog.values())

    def set_method_settings(self, settings: dict) -> None:
        """New settings (checked): the maps they change are computed again, the others kept (the
        engine's caches are shared, and keyed by each method's settings)."""
        if settings == self.method_settings:
            return
        self.method_settings = settings
        if self._engine is None:
            self._show_panels()
            return
        self._engine = self._engine.with_settings(settings)
        self.shown = Shown()
        if self._auto_search is not None:  # it was for the engine before: its result is not shown
            self._auto_search = None
            self.controls.auto_note.setText("")
        self._analyse(search=False)
        changed = ", ".join(sorted(settings)) or "none: every method at its defaults"
        self.status.emit(f"method settings changed ({changed})")

    # -- concepts ------------------------------------------------------------------------------
    def set_dissection(self, dissection) -> None:
        """Concepts for the channel tiles and the pathway (None: close the dissection)."""
        self.dissection = dissection
        self.masks.set_dissection(dissection)
        self._request_concepts()
        self._request_graph()

    def _open_channel(self, layer: int, channel: int) -> None:
        from gui.parts.dissection import ChannelDialog

        engine = self._engine
        if engine is None:
            return
        if self._channel_dialog is None:
            self._channel_dialog = ChannelDialog(self.context, self)
        self._channel_dialog.show_channel(engine, self.params(), layer, engine.layers[layer].name,
                                          channel, self.dissection)

    # -- settings ------------------------------------------------------------------------------
    def save_settings(self, settings) -> None:
        c = self.controls
        settings.setValue("explain/methods", [*self.methods(), *self.controls.chosen_pathways()])
        settings.setValue("explain/method_settings", json.dumps(self.method_settings))
        settings.setValue("explain/sparsity", c.sparsity.value())
        settings.setValue("explain/mode", c.mode.currentData())
        settings.setValue("explain/selector", c.selector.currentData())
        settings.setValue("explain/ties", c.ties.currentData())
        settings.setValue("explain/variant", c.variant.currentData())
        settings.setValue("explain/tolerance_percent", c.tolerance.value())
        settings.setValue("explain/auto_open", "1" if c.auto_open.isChecked() else "0")
        settings.setValue("display/colormap", c.lut_name())
        settings.setValue("display/opacity", c.opacity.value())
        settings.setValue("display/sign", c.sign.currentText())
        settings.setValue("display/shared", "1" if c.scale.currentData() else "0")
        settings.setValue("display/mode", c.display_mode.currentData())
        settings.setValue("display/top_percent", c.top_percent.value())
        for name in ("outer", "right", "upper"):
            settings.setValue(f"layout/{name}", getattr(self, name).saveState())
        settings.setValue("layout/masks", self.masks.splitter.saveState())

    def restore_settings(self, settings) -> None:
        c = self.controls
        try:  # settings an older or newer version wrote may no longer be allowed: the defaults then
            self.method_settings = checked_settings(json.loads(str(settings.value("explain/method_settings", "{}"))))
        except (ValueError, TypeError, AttributeError, PruneScopeError):
            self.method_settings = {}
        self._set_sparsity(float(settings.value("explain/sparsity", 70.0)))
        c.auto_open.setChecked(settings.value("explain/auto_open", "1") == "1")
        select_data(c.mode, settings.value("explain/mode", "global"))
        select_data(c.selector, settings.value("explain/selector", "taylor"))
        select_data(c.ties, settings.value("explain/ties", "exact"))
        select_data(c.variant, settings.value("explain/variant", "gradient"))
        c.tolerance.setValue(float(settings.value("explain/tolerance_percent", 15.0)))
        c.colormap.setCurrentText(str(settings.value("display/colormap", c.lut_name())))
        c.opacity.setValue(float(settings.value("display/opacity", c.opacity.value())))
        c.sign.setCurrentText(str(settings.value("display/sign", "absolute")))
        select_data(c.scale, settings.value("display/shared", "0") == "1")
        select_data(c.display_mode, settings.value("display/mode", display.AUTO))
        c.top_percent.setValue(float(settings.value("display/top_percent", display.DEFAULT_TOP_PERCENT)))
        for name in ("outer", "right", "upper"):
            state = settings.value(f"layout/{name}")
            if state is not None:
                getattr(self, name).restoreState(state)
        state = settings.value("layout/masks")
        if state is not None:
            self.masks.splitter.restoreState(state)
