"""What the Explain tab asks the worker for, and when (the jobs themselves are gui.explain.jobs).

The slider's live preview runs as fast as it can, the pathway curves wait until the slider settles
(debounced, in the tab), and every result that no longer matches the engine on screen is dropped
(gui.explain.drawing). Integrated gradients, the curves and the sweep come coarse first, so that
everything is on screen sooner, and are refined once all of it is (the coarse ones are labelled
so; the export keeps full resolution).
"""
from pathlib import Path

from core.methods import BY_NAME
from gui.explain import jobs as explain_jobs
from gui.explain.masks import default_layer
from gui.parts.context import (PRIORITY_BACKGROUND, PRIORITY_CURVES, PRIORITY_LIVE, PRIORITY_SLOW,
                               PRIORITY_VIEW)

COARSE_CURVE_STEPS = 10  # the first curves of an image (labelled coarse); 20 follow once all is shown
COARSE_EVERY = 3  # the first sweep takes every third point and the last (labelled coarse)
COARSE_SWEEP_STEPS = 5  # curve steps per point of the coarse sweep (SWEEP_STEPS when refined)
# After a slider move's map the other work waits this long: a drag's next move comes sooner
DRAG_QUIET_S = 0.3
OPEN_AUTO_STEP = 5.0  # points of sparsity between Auto's probes on opening (the button: 1)


class ExplainRequests:
    """The Explain tab's requests to the worker. A mixin of gui.explain.tab.ExplainTab, whose
    state it reads (context, _engine, params(), methods(), pathways(), _refining, _coarse_maps,
    curve_steps, sweep_sparsities, ...) and whose gui.explain.drawing methods it hands the results.
    """

    def _refine(self) -> None:
        """Full-resolution maps, curves and sweep, as the lowest-priority jobs."""
        self.shown.refining = True
        if self.shown.coarse_maps:  # the curves follow the maps
            self._request_maps(list(self.shown.coarse_maps), PRIORITY_BACKGROUND)
        else:
            self._request_curves()
        self._request_pathway_curves(PRIORITY_BACKGROUND)
        self._request_sweep()

    def _steps(self) -> int:
        return self.curve_steps if self.shown.refining else min(COARSE_CURVE_STEPS, self.curve_steps)

    def _request_live(self, moving: bool = False) -> None:
        """A running live job still in its masked forward gives up for this newer request;
        one in its backward (which cannot be interrupted, and whose map is newer than the one
        shown) is kept, and this request waits behind it, replacing any request that waited
        before it, and starts the moment it ends. A job that took the place of one that gave up
        is always finished. So a drag shows a new map as fast as they can be computed, each for
        the latest value asked when it started. moving: a move of the user's; the other work waits
        DRAG_QUIET_S after its map, so that a drag's next move finds the worker free."""
        engine = self._engine
        if engine is None:
            return
        params, layer, memo = self.params(), self.masks.selected_layer(), self._memo
        stop = self.context.stop_requested
        if layer is None or layer >= len(engine.layers):  # none yet, or the last model had more
            layer = default_layer(len(engine.layers))
        self.context.run_job(lambda: explain_jobs.live(engine, params, layer, memo, stop),
                             self._show_live, key="live", priority=PRIORITY_LIVE, keep_running=True,
                             quiet_s=DRAG_QUIET_S if moving else 0.0)

    def _request_layer(self, index: int) -> None:
        engine = self._engine
        if engine is None:
            return
        params = self.params()
        self.context.run_job(lambda: explain_jobs.layer_at(engine, params, index), self._show_layer,
                             key="layer", priority=PRIORITY_LIVE)

    def _request_maps(self, methods=None, priority: int = PRIORITY_VIEW) -> None:
        """One job per map, the cheap ones first: each is drawn as soon as it is done. Until
        everything is on screen, integrated gradients is computed coarse."""
        engine = self._engine
        if engine is None:
            return
        for method in explain_jobs.cheap_first(self.methods() if methods is None else methods):
            if BY_NAME[method].coarse and not self.shown.refining:
                job = lambda method=method: explain_jobs.coarse_map(engine, method)  # noqa: E731
            else:
                job = lambda method=method: explain_jobs.maps(engine, [method])  # noqa: E731
            slow = not BY_NAME[method].interactive
            progress = (lambda p, method=method: self._map_progress(method, p)) if slow else None
            self.context.run_job(job, self._show_maps, on_progress=progress, key=f"map:{method}",
                                 priority=PRIORITY_SLOW if slow else priority, preemptible=True)

    def _map_progress(self, method: str, progress) -> None:
        """A slow map's progress in its panel: below its coarse map, or a ↝ row's map of an
        earlier position, or instead of a map."""
        if self._engine is None or method not in (*self.methods(), *self.pathways()):
            return
        if method in self.shown.coarse_maps:
            self.heatmaps.set_detail(method, f"coarse, refining: {progress.message}")
        else:
            self.heatmaps.set_detail(method, f"computing: {progress.message}{self._earlier(method)}")

    def _earlier(self, name: str) -> str:
        """What a ↝ row's panel shows while its map is made for another position."""
        at = self.shown.pathway_at.get(name)
        return "" if at is None or name not in self.heatmaps.shown_maps() else f" · shown {at:.1f} %"

    def _request_pathway_maps(self) -> None:
        """The ↝ rows at the current pruning settings, one job for all, after the live map: a
        newer request (the slider moved on) replaces one still waiting or running."""
        engine, names = self._engine, self.pathways()
        if engine is None or not names:
            return
        params = self.params()
        for name in names:
            if name not in self.heatmaps.shown_maps():
                self.heatmaps.set_note(name, "computing…")
            else:  # its map stays until the new one comes
                self.heatmaps.set_detail(name, f"computing {params.sparsity:.1f} %{self._earlier(name)}")
        # the slow methods one job each, in steps, after the others: a cheap row waits for none of them
        cheap = [n for n in names if BY_NAME[n].interactive]
        groups = [("pathway-maps", cheap)] * bool(cheap) + [(f"pathway-maps:{n}", [n]) for n in names
                                                           if n not in cheap]
        for key, group in groups:
            progress = None if group is cheap else lambda p, name=group[0]: self._map_progress(name, p)
            self.context.run_job(lambda group=group: explain_jobs.pathway_maps(engine, params, group),
                                 self._show_pathway_maps, on_progress=progress, key=key,
                                 priority=PRIORITY_CURVES if group is cheap else PRIORITY_SLOW, preemptible=True)

    def _request_curves(self) -> None:
        """The classic maps' curves, of the maps on screen: the slider does not touch them."""
        engine, methods, steps = self._engine, self.methods(), self._steps()
        if engine is None or not methods:
            return
        coarse, priority = dict(self.shown.coarse_maps), PRIORITY_BACKGROUND if self.shown.refining else PRIORITY_CURVES
        self.context.run_job(lambda: explain_jobs.classic_curves(engine, methods, steps, coarse),
                             self._show_curves, key="curves", priority=priority, preemptible=True)

    def _request_pathway_curves(self, priority: int = PRIORITY_CURVES) -> None:
        engine, params, memo, steps = self._engine, self.params(), self._memo, self._steps()
        if engine is None:
            return
        self.context.run_job(lambda: explain_jobs.pathway_curves(engine, params, memo, steps),
                             self._show_curves, key="pathway-curves", priority=priority,
                             preemptible=True)

    def _request_through_curves(self, maps) -> None:
        """Curves of the ↝ rows (methods through the pathway) just drawn, at their settings."""
        engine, steps = self._engine, self._steps()
        self.context.run_job(lambda: explain_jobs.through_curves(engine, maps, steps), self._show_curves,
                             key=f"through-curves:{','.join(maps.maps)}", priority=PRIORITY_CURVES,
                             preemptible=True)

    def _request_sweep(self) -> None:
        """The sweep: coarse (fewer points, fewer curve steps) until everything is on screen,
        then at full resolution, as the lowest-priority job."""
        engine, params, sparsities = self._engine, self.params(), self.sweep_sparsities
        if engine is None:
            return
        steps = explain_jobs.SWEEP_STEPS
        if not self.shown.refining:
            coarse = tuple(sparsities[::COARSE_EVERY])
            sparsities = coarse + tuple(sparsities[-1:]) * (coarse[-1:] != tuple(sparsities[-1:]))
            steps = min(COARSE_SWEEP_STEPS, steps)
        self.context.run_job(lambda: explain_jobs.sweep(engine, params, sparsities, steps),
                             self._show_sweep, key="sweep", priority=PRIORITY_BACKGROUND,
                             preemptible=True)

    def _request_concepts(self) -> None:
        """The concepts the current pathway runs through, by the kept neurons' scores."""
        from gui.parts.dissection import concepts_line

        engine, params, dissection = self._engine, self.params(), self.dissection
        if engine is None or dissection is None:
            return
        self.context.run_job(lambda: explain_jobs.concepts(engine, params, dissection),
                             lambda ranked: self.masks.set_concepts(concepts_line(ranked)),
                             key="concepts", priority=PRIORITY_CURVES, preemptible=True)

    def _request_graph(self) -> None:
        """The pathway graph at the slider's settings, while its tab is shown."""
        engine, params, dissection = self._engine, self.params(), self.dissection
        if engine is None or not self.masks.graph_visible():
            return
        if self.masks.graph.graph is None or self.masks.graph.graph.sparsity != params.sparsity:
            self.masks.graph.note.setText("computing the graph…")
        self.context.run_job(lambda: explain_jobs.graph(engine, params, dissection), self._show_graph,
                             on_error=lambda error: self.masks.graph.clear(f"no graph: {error}"),
                             key="graph", priority=PRIORITY_CURVES, preemptible=True)

    def _request_settled(self) -> None:
        """What waits for the slider to settle: pathway curves, ↝ rows, concepts and the graph."""
        self._request_pathway_curves()
        self._request_pathway_maps()
        self._request_concepts()
        self._request_graph()

    def _auto(self, tolerance: float) -> None:
        engine, params, moves = self._engine, self.params(), self._user_moves
        if engine is None:
            return
        self.status.emit(f"searching the largest sparsity within output change {100 * tolerance:.1f} %…")
        self.context.run_job(lambda: explain_jobs.auto_sparsity(engine, params, tolerance),
                             lambda result: self._show_auto(result, moves), key="auto", priority=PRIORITY_VIEW)

    def _search_on_open(self, engine) -> None:
        """Auto for a new image, class or model, with a coarser grid than the button's: it runs
        right after the first map, before the other maps."""
        tolerance, params, moves = self.controls.tolerance.value(), self.params(), self._user_moves
        self._auto_search = search = object()  # this search, until its result is shown or it ends
        self.controls.auto_note.setText(f"Auto: searching the largest sparsity within {tolerance:g} %…")
        self.context.run_job(
            lambda: explain_jobs.auto_sparsity(engine, params, tolerance / 100, OPEN_AUTO_STEP),
            lambda result: self._show_auto(result, moves), key="auto", priority=PRIORITY_LIVE,
            preemptible=True, on_error=lambda error: self._auto_failed(engine, error),
            on_end=lambda: self._auto_ended(engine, search))

    def _auto_failed(self, engine, error: Exception) -> None:
        if engine is self._engine:
            self.controls.auto_note.setText(f"Auto failed: {error}")

    def _auto_ended(self, engine, search) -> None:
        """The search on opening is over without its result shown (failed, cancelled, replaced
        by the Auto button's): what waits for the sparsity goes ahead at the slider's."""
        if self._auto_search is search:
            self._auto_search = None
            if engine is self._engine:
                self._request_settled()

    # -- export --------------------------------------------------------------------------------
    def export(self, out_dir: Path, on_done, on_error) -> None:
        engine = self._engine
        if engine is None:
            on_error(RuntimeError("nothing to export: open an image first"))
            return
        c = self.controls
        methods, params = self.methods(), self.params()
        image_path, cmap, alpha = self.context.current_image_path(), c.lut_name(), c.opacity.value()
        extra = {"method_params": self._engine.settings, "tolerance_percent": c.tolerance.value(),
                 "colormap": cmap, "opacity": alpha,
                 "values": c.sign.currentText(), "shared_scale": c.scale.currentData(),
                 "display": c.display_mode.currentData(), "display_top_percent": c.top_percent.value()}
        self.context.run_job(
            lambda: explain_jobs.export(engine, methods, params, self.curve_steps, out_dir, image_path,
                                        cmap, alpha, extra),
            on_done, on_error=on_error, key="export", priority=PRIORITY_VIEW,
            preemptible=True)  # a slow map it waits for is computed in steps
