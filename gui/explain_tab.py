"""The Explain tab: controls on the left; heatmaps and curves above, neuron masks below.

It turns user actions into jobs (gui.jobs) on the context's worker and draws their results:
the slider's live preview runs as fast as it can, the pathway curves wait until the slider settles
(debounced), and every result that no longer matches the engine on screen is dropped. Integrated
gradients, the curves and the sweep come coarse first, so that everything is on screen sooner,
and are refined once all of it is (the coarse ones are labelled so; the export keeps full
resolution).
"""
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QScrollArea, QSplitter, QWidget
from superqt.utils import qdebounced

from core import display
from gui import jobs
from gui.context import PRIORITY_BACKGROUND, PRIORITY_CURVES, PRIORITY_LIVE, PRIORITY_VIEW
from gui.controls import DEFAULT_METHODS, ControlPanel, select_data
from gui.curves import CurvesView
from gui.heatmaps import HeatmapGrid
from gui.masks import MaskView, default_layer

CURVE_STEPS = 20  # as `prunescope explain`'s default, so exported curves match the CLI's
COARSE_CURVE_STEPS = 10  # the first curves of an image (labelled coarse); 20 follow once all is shown
SWEEP_SPARSITIES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99)
COARSE_EVERY = 3  # the first sweep takes every third point and the last (labelled coarse)
COARSE_SWEEP_STEPS = 5  # curve steps per point of the coarse sweep (jobs.SWEEP_STEPS when refined)
SETTLE_MS = 350  # the slider counts as settled after this long without a move


class ExplainTab(QWidget):
    analysis_shown = Signal()  # heatmaps, masks, curves and sweep of the current engine are all drawn
    live_shown = Signal(object)  # the jobs.LiveResult just drawn
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
        self._maps: dict = {}
        self._unavailable: dict = {}  # method -> the note its panel shows instead of a map
        self._live = None  # the latest jobs.LiveResult drawn
        self._memo = jobs.LiveMemo()  # used on the worker only
        self._curves: dict = {}  # method -> Curves drawn: classic and pathway come from two jobs
        self._coarse_maps: dict = {}  # method -> a map shown for now, coarser than its own
        self._coarse_curves: set = set()  # methods whose curves shown are of a coarse map
        self._sweep_fine = False
        self._announced = False
        self._refining = False  # everything was on screen: full-resolution maps, curves and sweep follow
        self.curve_steps = CURVE_STEPS
        self.sweep_sparsities = SWEEP_SPARSITIES

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
        c.target_clicked.connect(self._explain_class)
        self.masks.layer_selected.connect(self._request_layer)
        self.masks.channel_clicked.connect(self._open_channel)
        self.dissection = None  # core.dissection.Dissection of the current model, when open
        self._channel_dialog = None
        context.engine_changed.connect(self._on_engine)

    # -- state ---------------------------------------------------------------------------------
    def params(self) -> jobs.Params:
        c = self.controls
        return jobs.Params(round(c.sparsity.value(), 2), c.mode.currentData(),
                           c.selector.currentData(), c.variant.currentData(), c.ties.currentData())

    def methods(self) -> list[str]:
        return self.controls.chosen_methods()

    def pathways(self) -> list[str]:
        """The pathway rows asked for (↝), but the live one, which the slider draws itself."""
        live = self.params().method_name
        return [m for m in self.controls.chosen_pathways() if m != live]

    def apply_startup(self, info: jobs.StartupInfo, checked_methods) -> None:
        self._luts = info.luts
        wanted = DEFAULT_METHODS if checked_methods is None else checked_methods
        self.controls.set_methods(info.classic_methods, [m for m in wanted if m in info.classic_methods],
                                  [m for m in wanted if m.startswith("pathway-")])
        self._show_panels()
        self._redraw()

    def _panel_names(self) -> list[str]:
        return [*self._curve_names(), *self.pathways()]

    def _curve_names(self) -> list[str]:
        """The maps that get curves: the live pathway map and the classic ones."""
        return [self.params().method_name, *self.methods()]

    def _show_panels(self) -> None:
        self.heatmaps.set_methods(self._panel_names())
        self.curves.set_methods(self._curve_names())

    def is_complete(self) -> bool:
        """Everything of the current engine is on screen: maps, masks, curves and sweep (coarse
        ones count, labelled as such)."""
        if self._engine is None or self._live is None or self.masks.layer() is None:
            return False
        shown = self.heatmaps.shown_maps()
        if not all(m in shown or m in self._unavailable for m in self._panel_names()):
            return False
        return self.curves.ready([m for m in self._curve_names() if m in shown])

    def is_refined(self) -> bool:
        """is_complete, and the curves and sweep are at full resolution."""
        return (self.is_complete() and self._sweep_fine and not self._coarse_maps
                and not self._coarse_curves & set(self.methods())
                and all(c.steps == self.curve_steps for c in self.curves.curves().values()))

    def _check_complete(self) -> None:
        if not self._announced and self.is_complete():
            self._announced = True
            self.analysis_shown.emit()
            self._refine()

    def _refine(self) -> None:
        """Full-resolution maps, curves and sweep, as the lowest-priority jobs."""
        self._refining = True
        if self._coarse_maps:  # the curves follow the maps
            self._request_maps(list(self._coarse_maps), PRIORITY_BACKGROUND)
        else:
            self._request_curves()
        self._request_pathway_curves(PRIORITY_BACKGROUND)
        self._request_sweep()

    def _steps(self) -> int:
        return self.curve_steps if self._refining else min(COARSE_CURVE_STEPS, self.curve_steps)

    # -- a new engine: new image, model or class -----------------------------------------------
    def _on_engine(self, engine) -> None:
        self._engine = engine
        if self.dissection is not None and self.dissection.model != engine.model.name:
            self.set_dissection(None)
            self.status.emit("the dissection was of another model: its concepts are no longer shown")
        self._maps, self._unavailable, self._live, self._curves = {}, {}, None, {}
        self._coarse_maps, self._coarse_curves = {}, set()
        self._announced = self._refining = self._sweep_fine = False
        prediction = self.context.current_prediction()
        predicted = prediction.top5[0][0] if prediction.top5 else prediction.target
        self.controls.set_prediction(prediction, predicted)
        self.heatmaps.set_image(engine.view, prediction.name, f"p = {prediction.prob:.3f}")
        self.masks.set_image(engine.view)
        self.masks.clear()
        self.curves.clear()
        self._show_panels()
        for method in self._panel_names():
            self.heatmaps.set_note(method, "computing…")
        self._request_live()
        self._request_maps()  # their curves follow them
        self._request_pathway_curves()
        self._request_pathway_maps()
        self._request_sweep()
        self._request_concepts()

    def _explain_class(self, class_id: int) -> None:
        prediction = self.context.current_prediction()
        if prediction is None or class_id == prediction.target:
            return
        self.context.set_target(None if class_id == prediction.top5[0][0] else class_id)

    # -- requests ------------------------------------------------------------------------------
    def _on_sparsity(self, value: float) -> None:
        self.curves.set_marker(value)
        self.context.cancel("pathway-curves")  # of a sparsity being left behind: not wanted
        self._request_live()  # not throttled: a request only replaces the one waiting
        self._settled()

    @qdebounced(timeout=SETTLE_MS)
    def _settled(self) -> None:
        self._request_pathway_curves()
        self._request_pathway_maps()
        self._request_concepts()

    def _on_pruning(self) -> None:
        self._show_panels()
        self._request_live()
        self._request_pathway_curves()
        self._request_pathway_maps()
        self._request_sweep()
        self._request_concepts()

    def _on_methods(self) -> None:
        self._show_panels()
        self._draw_maps()
        self._request_maps()  # their curves follow them
        self._request_pathway_maps()

    def _request_live(self) -> None:
        """A running live job still in its masked forward gives up for this newer request;
        one in its backward (which cannot be interrupted, and whose map is newer than the one
        shown) is kept, and this request waits behind it, replacing any request that waited
        before it, and starts the moment it ends. A job that took the place of one that gave up
        is always finished. So a drag shows a new map as fast as they can be computed, each for
        the latest value asked when it started."""
        engine = self._engine
        if engine is None:
            return
        params, layer, memo = self.params(), self.masks.selected_layer(), self._memo
        stop = self.context.stop_requested
        if layer is None or layer >= len(engine.layers):  # none yet, or the last model had more
            layer = default_layer(len(engine.layers))
        self.context.run_job(lambda: jobs.live(engine, params, layer, memo, stop), self._show_live,
                             key="live", priority=PRIORITY_LIVE, keep_running=True)

    def _request_layer(self, index: int) -> None:
        engine = self._engine
        if engine is None:
            return
        params = self.params()
        self.context.run_job(lambda: jobs.layer_at(engine, params, index), self._show_layer,
                             key="layer", priority=PRIORITY_LIVE)

    def _request_maps(self, methods=None, priority: int = PRIORITY_VIEW) -> None:
        """One job per map, the cheap ones first: each is drawn as soon as it is done. Until
        everything is on screen, integrated gradients is computed coarse."""
        engine = self._engine
        if engine is None:
            return
        for method in jobs.cheap_first(self.methods() if methods is None else methods):
            if method == "integrated-gradients" and not self._refining:
                job = lambda method=method: jobs.coarse_map(engine, method)  # noqa: E731
            else:
                job = lambda method=method: jobs.maps(engine, [method])  # noqa: E731
            self.context.run_job(job, self._show_maps, key=f"map:{method}", priority=priority,
                                 preemptible=True)

    def _request_pathway_maps(self) -> None:
        """The ↝ rows at the current pruning settings, one job for all, after the live map: a
        newer request (the slider moved on) replaces one still waiting or running."""
        engine, names = self._engine, self.pathways()
        if engine is None or not names:
            return
        for name in names:
            if name not in self.heatmaps.shown_maps():
                self.heatmaps.set_note(name, "computing…")
        params = self.params()
        self.context.run_job(lambda: jobs.pathway_maps(engine, params, names), self._show_pathway_maps,
                             key="pathway-maps", priority=PRIORITY_CURVES, preemptible=True)

    def _request_curves(self) -> None:
        """The classic maps' curves, of the maps on screen: the slider does not touch them."""
        engine, methods, steps = self._engine, self.methods(), self._steps()
        if engine is None or not methods:
            return
        coarse, priority = dict(self._coarse_maps), PRIORITY_BACKGROUND if self._refining else PRIORITY_CURVES
        self.context.run_job(lambda: jobs.classic_curves(engine, methods, steps, coarse), self._show_curves,
                             key="curves", priority=priority, preemptible=True)

    def _request_pathway_curves(self, priority: int = PRIORITY_CURVES) -> None:
        engine, params, memo, steps = self._engine, self.params(), self._memo, self._steps()
        if engine is None:
            return
        self.context.run_job(lambda: jobs.pathway_curves(engine, params, memo, steps), self._show_curves,
                             key="pathway-curves", priority=priority, preemptible=True)

    def _request_sweep(self) -> None:
        """The sweep: coarse (fewer points, fewer curve steps) until everything is on screen,
        then at full resolution, as the lowest-priority job."""
        engine, params, sparsities = self._engine, self.params(), self.sweep_sparsities
        if engine is None:
            return
        steps = jobs.SWEEP_STEPS
        if not self._refining:
            coarse = tuple(sparsities[::COARSE_EVERY])
            sparsities = coarse + tuple(sparsities[-1:]) * (coarse[-1:] != tuple(sparsities[-1:]))
            steps = min(COARSE_SWEEP_STEPS, steps)
        self.context.run_job(lambda: jobs.sweep(engine, params, sparsities, steps), self._show_sweep,
                             key="sweep", priority=PRIORITY_BACKGROUND, preemptible=True)

    def set_dissection(self, dissection) -> None:
        """Concepts for the channel tiles and the pathway (None: close the dissection)."""
        self.dissection = dissection
        self.masks.set_dissection(dissection)
        self._request_concepts()

    def _request_concepts(self) -> None:
        """The concepts the current pathway runs through, by the kept neurons' scores."""
        from core.dissection import pathway_concepts
        from gui.dissection import concepts_line

        engine, params, dissection = self._engine, self.params(), self.dissection
        if engine is None or dissection is None:
            return

        def job():
            masks = engine.masks(params.sparsity, params.mode, params.selector)
            return pathway_concepts(dissection, engine.layers, masks, engine.scores(params.selector))

        self.context.run_job(job, lambda ranked: self.masks.set_concepts(concepts_line(ranked)),
                             key="concepts", priority=PRIORITY_CURVES, preemptible=True)

    def _open_channel(self, layer: int, channel: int) -> None:
        from gui.dissection import ChannelDialog

        engine = self._engine
        if engine is None:
            return
        if self._channel_dialog is None:
            self._channel_dialog = ChannelDialog(self.context, self)
        self._channel_dialog.show_channel(engine, self.params(), layer, engine.layers[layer].name,
                                          channel, self.dissection)

    def _auto(self, tolerance: float) -> None:
        engine, params = self._engine, self.params()
        if engine is None:
            return
        self.status.emit(f"searching the largest sparsity within output change {100 * tolerance:.1f} %…")
        self.context.run_job(lambda: jobs.auto_sparsity(engine, params, tolerance),
                             self._show_auto, key="auto", priority=PRIORITY_VIEW)

    # -- results -------------------------------------------------------------------------------
    def _show_live(self, result: jobs.LiveResult) -> None:
        if result.engine is not self._engine:
            return
        self._live = result
        p = result.params
        kept = sum(k for _, k, _ in result.kept)
        total = sum(t for _, _, t in result.kept)
        self.controls.set_pruned_status(result.output_change, result.prob, kept, total)
        self.heatmaps.set_map(p.method_name, result.map,
                              f"{result.sparsity:.1f} % pruned · Δp {100 * result.output_change:.1f} %")
        self.masks.set_kept(result.kept)
        if result.layer is not None:
            self.masks.set_layer(result.layer)
        self.live_shown.emit(result)
        self._check_complete()

    def _show_layer(self, result) -> None:
        engine, _params, layer = result
        if engine is self._engine:
            self.masks.set_layer(layer)

    def _show_maps(self, result) -> None:
        engine, maps, skipped, failed = result
        if engine is not self._engine:
            return
        self._maps.update(maps)
        for method, attr in maps.items():
            if self._refining:
                self._coarse_maps.pop(method, None)
            elif method == "integrated-gradients":
                self._coarse_maps[method] = attr
        for method in maps:  # a retry that worked
            self._unavailable.pop(method, None)
        self._unavailable.update({m: "not available for this model" for m in skipped})
        self._unavailable.update({m: "failed (see the status bar)" for m in failed})
        self._draw_maps()
        for method, why in skipped.items():
            self.status.emit(f"{method} skipped: {why}")
        for method, why in failed.items():
            self.status.emit(f"{method} failed: {why}")
        if all(m in self._maps or m in self._unavailable for m in self.methods()):
            self._request_curves()
        self._check_complete()

    def _show_pathway_maps(self, result) -> None:
        engine, params, maps, skipped, failed = result
        if engine is not self._engine or params != self.params():
            return  # the slider moved on: the newer request is on its way
        for name, path in maps.items():
            self.heatmaps.set_map(name, path.map,
                                  f"{path.sparsity:.1f} % pruned · Δp {100 * path.output_change:.1f} %")
        for name, why in {**skipped, **failed}.items():
            self._unavailable[name] = "not available for this model" if name in skipped else "failed"
            self.heatmaps.set_note(name, self._unavailable[name])
            self.status.emit(f"{name}: {why}")
        self._check_complete()

    def _draw_maps(self) -> None:
        coarse = f"coarse ({jobs.COARSE_IG_NODES} nodes), refining…"
        self.heatmaps.set_maps({m: (self._maps[m], coarse if m in self._coarse_maps else "")
                                for m in self.methods() if m in self._maps})
        for method in self.methods():
            if method in self._unavailable:
                self.heatmaps.set_note(method, self._unavailable[method])

    def _show_curves(self, result) -> None:
        engine, curves, of_coarse_maps = result
        if engine is not self._engine:
            return
        self._coarse_curves = (self._coarse_curves - set(curves)) | of_coarse_maps
        pathway = self.params().method_name
        self._curves = {m: c for m, c in self._curves.items() if m in self.methods() or m == pathway}
        self._curves.update(curves)
        self.curves.set_curves(self._curves)
        coarse = sorted({c.steps for c in self._curves.values() if c.steps < self.curve_steps})
        if coarse:
            self.curves.set_note(f"coarse ({', '.join(map(str, coarse))} steps), refining…")
        else:
            self.curves.set_note("of coarse maps, refining…" if self._coarse_curves else "")
        self._check_complete()

    def _show_sweep(self, result) -> None:
        engine, params, sweep = result
        if engine is not self._engine:
            return
        self._sweep_fine = len(sweep.sparsities) == len(self.sweep_sparsities)
        coarse = "" if self._sweep_fine else f"coarse ({len(sweep.sparsities)} points), refining…"
        self.curves.set_sweep_title(params.mode, params.selector, coarse)
        self.curves.set_sweep(sweep)
        self._check_complete()

    def _show_auto(self, result) -> None:
        engine, auto = result
        if engine is self._engine:
            self.controls.sparsity.setValue(auto.sparsity)
            self.status.emit(f"auto sparsity: {auto.sparsity:.1f} %, output change "
                             f"{100 * auto.output_change:.1f} % ({auto.how})")

    # -- display -------------------------------------------------------------------------------
    def _redraw(self) -> None:
        """Colour map, opacity, display mode or normalisation changed: redraw, compute nothing."""
        c = self.controls
        lut = self._luts.get(c.lut_name())
        if lut is None:
            return
        self.heatmaps.set_display(lut, c.opacity.value(), c.sign.currentText(),
                                  c.scale.currentData(), c.display_mode.currentData(),
                                  c.top_percent.value())
        self.masks.set_colors(lut)

    # -- export --------------------------------------------------------------------------------
    def export(self, out_dir: Path, on_done, on_error) -> None:
        engine = self._engine
        if engine is None:
            on_error(RuntimeError("nothing to export: open an image first"))
            return
        c = self.controls
        methods, params = self.methods(), self.params()
        image_path, cmap, alpha = self.context.current_image_path(), c.lut_name(), c.opacity.value()
        extra = {"tolerance_percent": c.tolerance.value(), "colormap": cmap, "opacity": alpha,
                 "values": c.sign.currentText(), "shared_scale": c.scale.currentData(),
                 "display": c.display_mode.currentData(), "display_top_percent": c.top_percent.value()}
        self.context.run_job(
            lambda: jobs.export(engine, methods, params, self.curve_steps, out_dir, image_path, cmap,
                                alpha, extra),
            on_done, on_error=on_error, key="export", priority=PRIORITY_VIEW)

    # -- settings ------------------------------------------------------------------------------
    def save_settings(self, settings) -> None:
        c = self.controls
        settings.setValue("explain/methods", [*self.methods(), *self.controls.chosen_pathways()])
        settings.setValue("explain/sparsity", c.sparsity.value())
        settings.setValue("explain/mode", c.mode.currentData())
        settings.setValue("explain/selector", c.selector.currentData())
        settings.setValue("explain/ties", c.ties.currentData())
        settings.setValue("explain/variant", c.variant.currentData())
        settings.setValue("explain/tolerance_percent", c.tolerance.value())
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
        c.sparsity.setValue(float(settings.value("explain/sparsity", 70.0)))
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
