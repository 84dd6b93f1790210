"""How the Explain tab draws the worker's results: each is drawn only while it still matches
the engine on screen, and once everything is on screen the tab announces it and refines."""
from dataclasses import dataclass, field

from core.methods import BY_NAME
from gui.explain import jobs as explain_jobs


def _coarse_note(method: str) -> str:
    fewer = ", ".join(f"{key} {value}" for key, value in BY_NAME[method].coarse.items())
    return f"coarse ({fewer}), refining…"


@dataclass
class Shown:
    """What the Explain tab shows for the current engine: one object, made anew for each engine.
    The maps come coarse first (fewer nodes, a coarse curve grid), then refined."""
    maps: dict = field(default_factory=dict)         # method -> its map on screen
    unavailable: dict = field(default_factory=dict)  # method -> the note its panel shows instead of a map
    live: object = None                              # the latest explain_jobs.LiveResult drawn
    curves: dict = field(default_factory=dict)       # method -> Curves drawn: classic and pathway come from two jobs
    coarse_maps: dict = field(default_factory=dict)  # method -> a map shown for now, coarser than its own
    coarse_curves: set = field(default_factory=set)  # methods whose curves shown are of a coarse map
    pathway_at: dict = field(default_factory=dict)   # ↝ row -> the sparsity its map on screen was made at
    announced: bool = False                          # the first complete analysis was announced
    refining: bool = False     # everything was on screen: full-resolution maps, curves and sweep follow
    sweep_fine: bool = False   # the sweep shown has every sparsity of the fine grid


class ExplainDrawing:
    """The Explain tab's drawing of results. A mixin of gui.explain.tab.ExplainTab: it draws into
    the tab's views (controls, heatmaps, curves, masks) and keeps what is shown in the tab's state
    (its Shown)."""

    def _check_complete(self) -> None:
        if not self.shown.announced and self.is_complete():
            self.shown.announced = True
            self.analysis_shown.emit()
            self._refine()

    def _show_live(self, result: explain_jobs.LiveResult) -> None:
        if result.engine is not self._engine:
            return
        self.shown.live = result
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

    def _show_layer(self, result: explain_jobs.LayerDone) -> None:
        if result.engine is self._engine:
            self.masks.set_layer(result.view)

    def _show_maps(self, result: explain_jobs.Maps) -> None:
        maps, skipped, failed = result.maps, result.skipped, result.failed
        if result.engine is not self._engine:
            return
        self.shown.maps.update(maps)
        for method, attr in maps.items():
            if self.shown.refining:
                self.shown.coarse_maps.pop(method, None)
            elif method in result.coarse:
                self.shown.coarse_maps[method] = attr
        for method in maps:  # a retry that worked
            self.shown.unavailable.pop(method, None)
        self.shown.unavailable.update({m: "not available for this model" for m in skipped})
        self.shown.unavailable.update({m: "failed (see the status bar)" for m in failed})
        self._draw_maps()
        for method, why in skipped.items():
            self.status.emit(f"{method} skipped: {why}")
        for method, why in failed.items():
            self.status.emit(f"{method} failed: {why}")
        if all(m in self.shown.maps or m in self.shown.unavailable for m in self.methods()):
            self._request_curves()
        self._check_complete()

    def _show_pathway_maps(self, result: explain_jobs.Maps) -> None:
        skipped = result.skipped
        if result.engine is not self._engine or result.params != self.params():
            return  # the slider moved on: the newer request is on its way
        for name, path in result.maps.items():
            self.shown.pathway_at[name] = path.sparsity
            self.heatmaps.set_map(name, path.map,
                                  f"{path.sparsity:.1f} % pruned · Δp {100 * path.output_change:.1f} %")
        for name, why in {**skipped, **result.failed}.items():
            self.shown.unavailable[name] = "not available for this model" if name in skipped else "failed"
            self.heatmaps.set_note(name, self.shown.unavailable[name])
            self.status.emit(f"{name}: {why}")
        if result.maps:
            # the ↝ rows' curves of an earlier position go; theirs follow
            self.shown.curves = {m: c for m, c in self.shown.curves.items() if m not in result.maps}
            self.curves.set_curves(self.shown.curves)
            self._request_through_curves(result)
        self._check_complete()

    def _draw_maps(self) -> None:
        self.heatmaps.set_maps({m: (self.shown.maps[m], _coarse_note(m) if m in self.shown.coarse_maps else "")
                                for m in self.methods() if m in self.shown.maps})
        for method in self.methods():
            if method in self.shown.unavailable:
                self.heatmaps.set_note(method, self.shown.unavailable[method])

    def _show_curves(self, result: explain_jobs.CurvesDone) -> None:
        curves = result.curves
        if result.engine is not self._engine or result.params not in (None, self.params()):
            return
        self.shown.coarse_curves = (self.shown.coarse_curves - set(curves)) | result.of_coarse
        self.shown.curves = {m: c for m, c in self.shown.curves.items() if m in self._curve_names()}
        self.shown.curves.update(curves)
        self.curves.set_curves(self.shown.curves)
        coarse = sorted({c.steps for c in self.shown.curves.values() if c.steps < self.curve_steps})
        if coarse:
            self.curves.set_note(f"coarse ({', '.join(map(str, coarse))} steps), refining…")
        else:
            self.curves.set_note("of coarse maps, refining…" if self.shown.coarse_curves else "")
        self._check_complete()

    def _show_graph(self, result: explain_jobs.GraphDone) -> None:
        if result.engine is self._engine and result.params == self.params():
            self.masks.graph.set_graph(result.graph)

    def _show_sweep(self, result: explain_jobs.SweepDone) -> None:
        params, sweep = result.params, result.sweep
        if result.engine is not self._engine:
            return
        self.shown.sweep_fine = len(sweep.sparsities) == len(self.sweep_sparsities)
        coarse = "" if self.shown.sweep_fine else f"coarse ({len(sweep.sparsities)} points), refining…"
        self.curves.set_sweep_title(params.mode, params.selector, coarse)
        self.curves.set_sweep(sweep)
        self._check_complete()

    def _show_auto(self, result: explain_jobs.AutoDone, moves: int) -> None:
        """Auto's sparsity, unless the user has moved the slider since it was asked for."""
        auto = result.auto
        if result.engine is not self._engine or moves != self._user_moves:
            return
        self._auto_search = None
        self.controls.auto_note.setText(f"Auto: {auto.sparsity:.1f} % for this image, output change "
                                        f"{100 * auto.output_change:.1f} % (tolerance "
                                        f"{self.controls.tolerance.value():g} %)")
        before = self.controls.sparsity.value()
        self._set_sparsity(auto.sparsity)
        if self.controls.sparsity.value() == before:
            self._request_settled()  # the slider did not move, so it asked for nothing
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
