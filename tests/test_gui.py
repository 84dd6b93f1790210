"""The desktop app end to end, offscreen, on a real photo and the embedded model (CPU).

One window analyses coffee.png once (module fixture); the tests then drive it as a user would.
Kept lean: one classic method, a 3-point sparsity sweep, 10-step curves."""
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt

from core.io import display
from core.progress import Progress, run
from gui.explain.controls import select_data

ANALYSIS_TIMEOUT_MS = 600_000  # a loaded 2-core machine; normally well under a minute
PATHWAY = "pathway-gradient"


@pytest.fixture(scope="module")
def settings_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("settings")
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder))
    ini = folder / "PruneScope" / "prunescope.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[explain]\nmethods=gradient\nsparsity=70\n[General]\ndevice=cpu\n")
    return folder


def lean_window(images=()):
    from gui.window.main_window import MainWindow

    window = MainWindow()
    window.explain.curve_steps = 10
    window.explain.sweep_sparsities = (0, 50, 90)
    window.show()
    if images:
        window.open_paths(list(images))
    return window


def wait_until(qapp, condition, timeout_ms=ANALYSIS_TIMEOUT_MS):
    deadline = time.monotonic() + timeout_ms / 1000
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the window did not get there in time")
        qapp.processEvents()
        time.sleep(0.01)


def settle(qapp, window):
    """Until what an earlier test's slider move asked for once the slider settled is done."""
    from gui.explain.tab import SETTLE_MS

    deadline = time.monotonic() + (SETTLE_MS + 100) / 1000
    while time.monotonic() < deadline:
        qapp.processEvents()
        time.sleep(0.01)
    wait_until(qapp, lambda: window.context.is_idle() and window.explain.is_complete())


@pytest.fixture(scope="module")
def window(qapp, settings_dir):
    from tests.conftest import photo_path

    win = lean_window([photo_path("coffee.png")])
    wait_until(qapp, win.explain.is_complete)
    yield win
    win.close()



def as_on_worker(compute):
    """The engine's answer computed with the worker's torch thread count: the order of a
    convolution's reductions, and so the last bits of a float map, depend on it."""
    import torch

    from gui.window.jobs import worker_threads

    before = torch.get_num_threads()
    torch.set_num_threads(worker_threads())
    try:
        return compute()
    finally:
        torch.set_num_threads(before)

def test_opening_a_photo_fills_every_view(window):
    tab = window.explain
    assert window.context.current_prediction().name == "espresso"
    assert "espresso" in tab.controls.prediction.text()
    assert tab.controls.top5.count() == 5
    maps = tab.heatmaps.shown_maps()
    assert set(maps) == {PATHWAY, "gradient"}
    for attr in maps.values():
        assert attr.shape == (224, 224) and np.isfinite(attr).all() and np.abs(attr).max() > 0
    kept = tab.masks.kept()
    assert len(kept) == len(window.context.current_engine().layers)
    assert tab.masks.layer() is not None
    assert set(tab.curves.curves()) == {PATHWAY, "gradient"}
    assert window.strip.count() >= 1


def test_a_new_image_opens_at_the_auto_sparsity_unless_the_user_set_one(qapp, settings_dir):
    from gui.explain.requests import OPEN_AUTO_STEP
    from tests.conftest import photo_path

    win = lean_window()
    tab, controls = win.explain, win.explain.controls
    try:
        assert controls.auto_open.isChecked()
        win.open_paths([photo_path("astronaut.png")])
        wait_until(qapp, lambda: win.context.is_idle() and tab.is_complete())
        engine, tolerance = win.context.current_engine(), controls.tolerance.value() / 100
        auto = as_on_worker(lambda: run(engine.iter_auto_sparsity(tolerance, step=OPEN_AUTO_STEP)))
        assert controls.sparsity.value() == auto.sparsity
        assert f"Auto: {auto.sparsity:.1f} %" in controls.auto_note.text()
        live = tab.shown.live  # the map on screen is the pathway at that sparsity, within the tolerance
        assert live.params.sparsity == auto.sparsity and live.output_change <= tolerance
        np.testing.assert_array_equal(tab.heatmaps.panel(PATHWAY).raw,
                                      as_on_worker(lambda: engine.pathway(auto.sparsity).map))
        # the user sets one during the next image's search: theirs stays, for the images after too
        win.open_paths([photo_path("rocket.jpg")])
        wait_until(qapp, lambda: tab._auto_search is not None)
        controls.sparsity.setValue(40.0)
        assert not controls.auto_open.isChecked() and "set by you" in controls.auto_note.text()
        wait_until(qapp, lambda: win.context.is_idle() and tab.is_complete())
        assert controls.sparsity.value() == 40.0 and tab.shown.live.params.sparsity == 40.0
        win.open_paths([photo_path("chelsea.png")])
        wait_until(qapp, lambda: win.context.current_engine().target == 285 and win.context.is_idle()
                   and tab.is_complete())  # Egyptian cat
        assert controls.sparsity.value() == 40.0 and tab.shown.live.params.sparsity == 40.0
    finally:
        win.close()


def test_a_method_through_the_pathway_follows_the_slider(window, qapp):
    tab, slider = window.explain, window.explain.controls.sparsity
    via = tab.controls.pathway_boxes["grad-cam"]
    engine = window.context.current_engine()
    details, set_detail = [], tab.heatmaps.set_detail
    tab.heatmaps.set_detail = lambda name, text: details.append((name, text)) or set_detail(name, text)
    via.setChecked(True)
    try:
        for value in (70.0, 40.0):
            slider.setValue(value)
            # the row follows once the slider settles
            wait_until(qapp, lambda: window.context.is_idle() and tab.is_complete()
                       and f"{value:.1f} % pruned" in tab.heatmaps.panel("pathway-grad-cam").note)
            shown = tab.heatmaps.shown_maps()["pathway-grad-cam"]
            expected = as_on_worker(lambda: engine.pathway(value, method="grad-cam").map)
            np.testing.assert_allclose(shown, expected, rtol=1e-4, atol=1e-6)
        # until the new position's map comes, the panel says which position the one shown is of
        assert ("pathway-grad-cam", "computing 40.0 % · shown 70.0 %") in details
        # its curves too, of the map on screen, told apart from grad-cam's in the legend
        wait_until(qapp, lambda: window.context.is_idle() and "pathway-grad-cam" in tab.curves.curves())
        drawn = tab.curves.curves()["pathway-grad-cam"]  # of the map on screen, at the last position
        expected = as_on_worker(lambda: run(engine.iter_curves("pathway-grad-cam", shown, drawn.steps, cache=False)))
        assert drawn.deletion_auc == pytest.approx(expected.deletion_auc, abs=1e-6)
        legend = tab.curves._legends[tab.curves._plots["deletion"]]
        assert legend.getLabel(tab.curves._lines["deletion", "pathway-grad-cam"]).text.startswith("↝ grad-cam")
    finally:
        tab.heatmaps.set_detail = set_detail
        via.setChecked(False)
        slider.setValue(70.0)
        wait_until(qapp, lambda: window.context.is_idle() and tab.is_complete())
    assert "pathway-grad-cam" not in tab.heatmaps.shown_maps()


def test_fast_slider_ends_on_the_engines_answer_for_the_last_value(window, qapp):
    tab, slider = window.explain, window.explain.controls.sparsity
    shown = []
    original = tab.heatmaps.set_map

    def spy(name, raw, note=""):
        if name == PATHWAY:
            shown.append(tab.shown.live.params.sparsity)
        original(name, raw, note)

    tab.heatmaps.set_map = spy
    try:
        values = [round(v, 1) for v in np.random.default_rng(0).uniform(5, 95, 50)]
        for value in values:
            slider.setValue(value)
            qapp.processEvents()
        final = tab.params()
        wait_until(qapp, lambda: window.context.is_idle() and tab.shown.live.params == final
                   and tab.is_complete())
    finally:
        tab.heatmaps.set_map = original
    assert final.sparsity == values[-1]
    # Results arrive in request order: a stale (older) value is never drawn after a newer one.
    order = [values.index(v) for v in shown]
    assert order == sorted(order) and order[-1] == len(values) - 1

    engine = window.context.current_engine()
    expected = as_on_worker(lambda: engine.pathway(final.sparsity, final.mode, final.selector, final.method))
    panel = tab.heatmaps.panel(PATHWAY)
    np.testing.assert_array_equal(panel.raw, expected.map)
    np.testing.assert_array_equal(panel.picture.image, display.render(
        engine.view, expected.map, "map", cmap=tab._luts[tab.controls.lut_name()]))
    assert tab.masks.kept() == expected.kept
    layer = tab.masks.layer()
    np.testing.assert_array_equal(layer.masks, expected.masks[layer.index].cpu().numpy())
    assert int(layer.kept.sum()) == expected.kept[layer.index][1]
    assert tab.curves.marker.value() == pytest.approx(final.sparsity)


def _process_status(field: str) -> int:
    """A number from /proc/self/status: VmRSS in kB, Threads (the OS's, Qt's and torch's too)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(f"{field}:"))
    return int(line.split()[1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status")
def test_soak_a_thousand_fast_slider_moves(window, qapp):
    """Two fast drags of 500 slider moves. No stale frame: each frame drawn was asked for after
    the one before it, and once a drag settles every view shows its last value (the map is the
    engine's). No exception (pytest-qt fails the test on one in a slot), a bounded number of
    threads, and flat memory: the second 500 moves leave the process no larger than the first
    did, but for a margin far below what keeping anything per move would take."""
    import gc

    tab, slider, context = window.explain, window.explain.controls.sparsity, window.context
    wait_until(qapp, context.is_idle)
    requested, shown = [], []
    original, run_job = tab.heatmaps.set_map, context.run_job

    def spy(name, raw, note=""):
        if name == PATHWAY:
            shown.append(tab.shown.live.params.sparsity)
        original(name, raw, note)

    def spy_job(factory, on_result, *args, key="default", **kwargs):
        if key == "live":
            requested.append(tab.params().sparsity)  # what the job computes
        return run_job(factory, on_result, *args, key=key, **kwargs)

    gc.collect()
    rss, threads = _process_status("VmRSS"), _process_status("Threads")
    values = [round(v, 1) for v in np.random.default_rng(1).uniform(1, 98, 1000)]
    drags = (values[:500], values[500:])
    settled, memory = [], []  # once each drag has settled: the last frame drawn, VmRSS
    tab.heatmaps.set_map, context.run_job = spy, spy_job
    try:
        for drag in drags:
            for i, value in enumerate(drag):
                slider.setValue(value)
                if i % 4 == 0:  # events now and then, as a fast drag delivers them
                    qapp.processEvents()
            final = tab.params()
            wait_until(qapp, lambda: context.is_idle() and tab.shown.live.params == final
                       and tab.is_complete())
            settled.append(shown[-1])
            gc.collect()
            memory.append(_process_status("VmRSS"))
    finally:
        tab.heatmaps.set_map, context.run_job = original, run_job
    assert settled == [drag[-1] for drag in drags] and final.sparsity == values[-1] == requested[-1]
    # Drawn in the order asked: each frame is a request made after the previous frame's.
    position = 0
    for value in shown:
        position = requested.index(value, position) + 1
    engine = window.context.current_engine()
    expected = as_on_worker(lambda: engine.pathway(final.sparsity, final.mode, final.selector, final.method))
    np.testing.assert_array_equal(tab.heatmaps.panel(PATHWAY).raw, expected.map)
    assert tab.masks.kept() == expected.kept  # the masks too are of the last value
    assert tab.curves.marker.value() == pytest.approx(final.sparsity)
    assert _process_status("Threads") <= threads + 2
    assert memory[0] - rss < 100 * 1024  # the first drag: caches and the allocator warm up
    assert memory[1] - memory[0] < 30 * 1024  # the second: flat (a 224 x 224 map kept per move: 100 MB)


def test_display_changes_redraw_without_computing(window, qapp):
    settle(qapp, window)
    tab = window.explain
    submitted = []
    original = window.context.run_job
    window.context.run_job = lambda *a, **k: submitted.append(k.get("key")) or original(*a, **k)
    try:
        tab.controls.sign.setCurrentText("signed")
        tab.controls.colormap.setCurrentText("viridis")
        tab.controls.opacity.setValue(0.3)
        select_data(tab.controls.display_mode, "blend")
        qapp.processEvents()
        panel = tab.heatmaps.panel("gradient")
        view = window.context.current_engine().view
        np.testing.assert_array_equal(panel.picture.image, display.render(
            view, panel.raw, "blend", "signed", cmap=tab._luts["viridis"], opacity=0.3))
    finally:
        window.context.run_job = original
        tab.controls.sign.setCurrentText("absolute")
        tab.controls.colormap.setCurrentText(display.DEFAULT_COLORMAP)
        tab.controls.opacity.setValue(display.DEFAULT_OPACITY)
        select_data(tab.controls.display_mode, display.AUTO)
    assert submitted == []


def test_display_mode_choice_changes_what_a_panel_shows(window, qapp):
    tab = window.explain
    panel = tab.heatmaps.panel("gradient")
    view = window.context.current_engine().view
    # Default (auto): a gradient-type map alone, on black; the photo is nowhere in it.
    alone = panel.picture.image.copy()
    np.testing.assert_array_equal(alone, display.render(view, panel.raw, "map",
                                                        cmap=tab._luts[display.DEFAULT_COLORMAP]))
    assert tab.controls.top_percent.isEnabled() is False
    select_data(tab.controls.display_mode, "masked")
    tab.controls.top_percent.setValue(5)
    qapp.processEvents()
    try:
        masked = panel.picture.image
        top = display.top_pixels(np.abs(panel.raw), 5)
        np.testing.assert_array_equal(masked[top], view[top])
        assert not masked[~top].any() and top.sum() == round(0.05 * top.size)
        assert tab.controls.top_percent.isEnabled()
    finally:
        select_data(tab.controls.display_mode, display.AUTO)
        tab.controls.top_percent.setValue(display.DEFAULT_TOP_PERCENT)
        qapp.processEvents()
    np.testing.assert_array_equal(panel.picture.image, alone)


def test_display_mode_is_saved_and_restored(window, tmp_path):
    tab = window.explain
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    select_data(tab.controls.display_mode, "alpha")
    tab.controls.top_percent.setValue(25)
    tab.save_settings(settings)
    select_data(tab.controls.display_mode, display.AUTO)
    tab.controls.top_percent.setValue(display.DEFAULT_TOP_PERCENT)
    tab.restore_settings(settings)
    try:
        assert tab.controls.display_mode.currentData() == "alpha"
        assert tab.controls.top_percent.value() == 25
    finally:
        select_data(tab.controls.display_mode, display.AUTO)
        tab.controls.top_percent.setValue(display.DEFAULT_TOP_PERCENT)


def test_clicking_a_map_opens_it_large_beside_the_image(window, qapp):
    from PySide6.QtCore import QPoint
    from PySide6.QtTest import QTest

    grid = window.explain.heatmaps
    panel = grid.panel(PATHWAY)
    viewport = panel.canvas.viewport()
    QTest.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=QPoint(viewport.width() // 2,
                                                                       viewport.height() // 2))
    qapp.processEvents()
    large = grid.large
    assert large is not None and large.isVisible() and large.name == PATHWAY
    np.testing.assert_array_equal(large.map.image, panel.picture.image)
    np.testing.assert_array_equal(large.image.image, window.context.current_engine().view)
    large.resize(1100, 600)
    qapp.processEvents()
    assert large.map_view.width() > 400  # larger than any panel of the grid
    large.map_view.setRange(xRange=(40, 90), yRange=(60, 110), padding=0)  # zoom one: both follow
    image_range, map_range = large.image_view.viewRange(), large.map_view.viewRange()
    assert np.ravel(image_range) == pytest.approx(np.ravel(map_range), abs=0.5)
    grid.set_display(grid._lut_rgb, 0.5, "absolute", False, "alpha")  # a redraw reaches it
    np.testing.assert_array_equal(large.map.image, panel.picture.image)
    window.explain._redraw()
    large.close()


def test_panels_grow_with_the_window(window, qapp):
    panel = window.explain.heatmaps.panel(PATHWAY)
    size = window.size()
    window.resize(1400, 900)
    qapp.processEvents()
    small = panel.picture.sceneBoundingRect()  # the square map as drawn fills its panel
    assert small.width() == pytest.approx(min(panel.view.width(), panel.view.height()), abs=2)
    assert small.width() >= 150
    window.resize(2200, 1400)
    qapp.processEvents()
    try:
        assert panel.picture.sceneBoundingRect().width() > small.width() * 1.4
    finally:
        window.resize(size)
        qapp.processEvents()


def test_hover_shows_every_panels_value_and_views_are_linked(window):
    grid = window.explain.heatmaps
    grid.show_value_at(10, 20)
    for name, raw in grid.shown_maps().items():
        assert grid.panel(name).detail.text() == f"(10, 20)  value {raw[20, 10]:+.4g}"
    rgb = window.context.current_engine().view[20, 10]
    assert grid.panel("image").detail.text() == f"(10, 20)  rgb {rgb[0]} {rgb[1]} {rgb[2]}"
    grid.panel("gradient").view.setRange(xRange=(40, 90), yRange=(60, 110), padding=0)
    for name in ("image", PATHWAY):  # same region (each panel keeps square pixels)
        (x0, x1), (y0, y1) = grid.panel(name).view.viewRange()
        assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((65, 85), abs=0.5)
        assert x0 <= 40.5 and x1 >= 89.5 and y0 <= 60.5 and y1 >= 109.5
        assert x1 - x0 < 150 and y1 - y0 < 150  # zoomed in, not the whole 224 px image
    grid.reset_zoom()


def test_hovering_a_channel_tile_names_that_channel(window):
    from PySide6.QtCore import QPointF

    from gui.explain.masks import channel_text

    masks = window.explain.masks
    layer = masks.layer()
    _, tile_h, tile_w = layer.masks.shape
    centre = masks.tile_box.mapViewToScene(QPointF(tile_w / 2, tile_h / 2))
    first = int(layer.order[0])
    assert masks.channel_at(centre) == channel_text(layer, first)
    assert f"channel {first}:" in masks.channel_at(centre)
    assert f"{int(layer.kept[first]):,} of" in masks.channel_at(centre)


@pytest.mark.parametrize("kind", ["neurons", "channels"])
def test_the_bars_of_a_model_with_one_layer_sit_on_a_whole_number_axis(qapp, kind):
    """One activation layer: one bar in the middle of the axis, ticked 0 (not -400..400 x0.001)."""
    if kind == "neurons":
        from gui.explain.masks import MaskView

        view = MaskView()
        view.set_kept([("relu", 30, 40)])
        plot = view.bars
    else:
        from gui.pruning.drawing import ChannelBars

        view = plot = ChannelBars()
        plot.set_rows([("conv", 3, 4)], "channels")
    view.resize(600, 300)
    view.show()
    qapp.processEvents()
    try:
        (x0, x1), _ = plot.viewRange()
        assert x0 == pytest.approx(-x1) and 0.5 < x1 <= 1  # the bar (width 0.8) centred, little else
        axis = plot.getAxis("bottom")
        ticks = [v for _, values in axis.tickValues(x0, x1, axis.width()) for v in values]
        assert 0 in ticks and all(float(v).is_integer() for v in ticks)  # layer indices only
        assert "x0.001" not in axis.labelString() and axis.autoSIPrefixScale == 1.0
    finally:
        view.close()


def test_choosing_a_layer_shows_its_channels(window, qapp):
    tab = window.explain
    engine = window.context.current_engine()
    tab.masks.select_layer(3)
    wait_until(qapp, lambda: tab.masks.layer() is not None and tab.masks.layer().index == 3)
    layer = tab.masks.layer()
    masks = engine.masks(tab.params().sparsity, "global", "taylor")[3].cpu().numpy()
    assert layer.masks.shape == masks.shape
    np.testing.assert_array_equal(layer.count, masks.sum(0))
    assert list(layer.kept[layer.order]) == sorted(layer.kept, reverse=True)


def test_the_pathway_graph_tab_follows_the_slider_opens_channels_and_exports(window, qapp, tmp_path):
    import json

    from core.pathway.graph import pathway_graph

    tab, slider = window.explain, window.explain.controls.sparsity
    graph_view = tab.masks.graph
    tab.masks.views.setCurrentWidget(graph_view)
    try:
        for value in (70.0, 40.0):
            slider.setValue(value)
            wait_until(qapp, lambda: window.context.is_idle() and graph_view.graph is not None
                       and graph_view.graph.sparsity == value)
            shown = graph_view.graph
            expected = as_on_worker(lambda: pathway_graph(window.context.current_engine(), value))
            assert shown.nodes == expected.nodes and len(shown.layers) == 6
            np.testing.assert_allclose([e.weight for e in shown.edges], [e.weight for e in expected.edges],
                                       rtol=1e-4, atol=1e-3)
        node = shown.nodes[0]
        graph_view.node_clicked.emit(node.layer, node.channel)  # as a click on it does
        wait_until(qapp, lambda: tab._channel_dialog is not None and tab._channel_dialog.isVisible())
        tab._channel_dialog.close()
        graph_view.export(tmp_path / "graph.json")
        graph_view.export(tmp_path / "graph.png")
        assert json.loads((tmp_path / "graph.json").read_text())["nodes"][0]["id"] == node.id
        assert (tmp_path / "graph.png").stat().st_size > 20_000
    finally:
        tab.masks.views.setCurrentIndex(0)
        slider.setValue(70.0)
        wait_until(qapp, lambda: window.context.is_idle() and tab.is_complete())


def test_per_layer_threshold_and_intgrad_selector_reach_the_engine(window, qapp):
    from gui.explain.controls import select_data

    tab = window.explain
    select_data(tab.controls.mode, "per-layer")
    select_data(tab.controls.selector, "intgrad")
    try:
        params = tab.params()
        wait_until(qapp, lambda: tab.shown.live.params == params and window.context.is_idle()
                   and tab.is_complete())
        engine = window.context.current_engine()
        expected = as_on_worker(lambda: engine.pathway(params.sparsity, "per-layer", "intgrad"))
        np.testing.assert_array_equal(tab.heatmaps.panel(PATHWAY).raw, expected.map)
        # Per layer, each layer keeps at most its share (fewer where scores tie at the threshold).
        share = 1 - params.sparsity / 100
        shares = [kept / total for _, kept, total in tab.masks.kept()]
        assert max(shares) <= share + 0.001
        assert np.median(shares) == pytest.approx(share, abs=0.002)
    finally:
        select_data(tab.controls.mode, "global")
        select_data(tab.controls.selector, "taylor")
        wait_until(qapp, lambda: window.context.is_idle() and tab.is_complete())


def test_a_corrupt_file_leaves_the_app_running_with_a_message(window, qapp, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50)
    before = window.context.current_image_path()
    window.open_paths([bad])
    wait_until(qapp, lambda: "broken.png" in window.statusBar().currentMessage()
               and window.context.is_idle(), 120_000)
    assert window.isVisible()
    assert window.context.current_image_path() == before
    assert PATHWAY in window.explain.heatmaps.shown_maps()  # the previous results stay


def test_export_writes_every_file(window, qapp, tmp_path):
    window.export_to(tmp_path)
    wait_until(qapp, lambda: window.statusBar().currentMessage().startswith("Exported"))
    out = tmp_path / window.context.current_image_path().stem
    expected = {"input.npy", "report.json", "curves.csv", "comparison.png"}
    for method in (PATHWAY, "gradient"):
        expected |= {f"{method}.npy", f"{method}.png"}
    assert expected <= {p.name for p in out.iterdir()}
    np.testing.assert_array_equal(np.load(out / f"{PATHWAY}.npy"),
                                  window.explain.heatmaps.panel(PATHWAY).raw)
    from PIL import Image

    for method in (PATHWAY, "gradient"):  # the app's panel and the export draw the same picture
        with Image.open(out / f"{method}.png") as png:
            shown = window.explain.heatmaps.panel(method).picture.image
            np.testing.assert_array_equal(np.asarray(png), shown)
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["target"]["name"] == "espresso"
    assert report["settings"]["sparsity"] == window.explain.params().sparsity
    assert report["settings"]["display"] == display.AUTO


def test_the_evaluate_tab_says_what_can_be_run(window, qtbot):
    from gui.evaluate.tab import EvaluateTab
    from gui.parts.context import AppContext

    context = AppContext()  # no image yet
    try:
        fresh = EvaluateTab(context)
        qtbot.addWidget(fresh)
        assert "Open an image" in fresh.message.text() and not fresh.run_button.isEnabled()
    finally:
        context.shutdown()
    tab = next(w for w in map(window.tabs.widget, range(window.tabs.count())) if isinstance(w, EvaluateTab))
    assert tab.shown is None and tab.run_button.isEnabled()  # an image is open, nothing checked yet
    assert "Open an image" not in tab.message.text()
    assert tab.run_button.text() in tab.message.text()  # names what the user can run


def test_bad_weights_show_the_error_and_keep_the_previous_model(window, qapp, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    from gui.parts.context import ModelChoice

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    before = window.context.current_model()
    window.load_model(ModelChoice("resnet18", str(bad), "cpu"))
    wait_until(qapp, lambda: window.findChildren(QMessageBox) and window.context.is_idle(), 120_000)
    dialog = window.findChildren(QMessageBox)[-1]
    assert "bad.pth" in dialog.text()
    dialog.close()
    assert window.context.current_model() is before
    assert window.model_box.currentData() == before.name
    assert PATHWAY in window.explain.heatmaps.shown_maps()


def test_screenshot_of_the_window_is_not_blank(window, tmp_path):
    image = window.grab().toImage()
    assert image.width() >= 1000 and image.height() >= 600
    colours = {image.pixel(x, y) for x in range(0, image.width(), 5) for y in range(0, image.height(), 5)}
    assert len(colours) > 500  # photo, heatmaps and plots, not a blank or single-colour window


def test_clicking_a_top5_class_explains_that_class(window, qapp):
    tab = window.explain
    second = window.context.current_prediction().top5[1]
    tab.controls.top5.itemClicked.emit(tab.controls.top5.item(1))
    wait_until(qapp, lambda: tab._engine.target == second[0] and tab.is_complete())
    assert window.context.current_prediction().name == second[1]
    assert second[1] in tab.controls.prediction.text()
    engine = window.context.current_engine()
    expected = as_on_worker(lambda: engine.pathway(tab.params().sparsity))
    np.testing.assert_array_equal(tab.heatmaps.panel(PATHWAY).raw, expected.map)


def test_integrated_gradients_is_shown_coarse_first_then_refined(window, qapp):
    tab = window.explain
    box = tab.controls.method_boxes["integrated-gradients"]
    at_first = []
    tab.analysis_shown.connect(lambda: at_first.append(tab.heatmaps.panel("integrated-gradients").note))
    box.setChecked(True)
    try:
        other = next(c for c, _, _ in window.context.current_prediction().top5 if c != tab._engine.target)
        window.context.set_target(other)  # a new engine: its first maps and curves come coarse
        wait_until(qapp, lambda: tab._engine.target == other and tab.is_refined())
        assert at_first and "coarse" in at_first[-1]
        engine = window.context.current_engine()
        full = as_on_worker(lambda: engine.attribution("integrated-gradients"))
        np.testing.assert_array_equal(tab.heatmaps.panel("integrated-gradients").raw, full)
        assert tab.heatmaps.panel("integrated-gradients").note == ""
        # the curves shown are the full map's (the engine caches only those)
        cached = engine._cache.curves[("integrated-gradients", tab.curve_steps, "mean")]
        np.testing.assert_array_equal(tab.curves.curves()["integrated-gradients"].deletion, cached.deletion)
    finally:
        box.setChecked(False)


def test_out_of_gpu_memory_offers_to_retry_on_the_cpu(window, qapp):
    from PySide6.QtWidgets import QMessageBox

    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError, matched by its name
        pass

    def oom():
        yield Progress(0.0)
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    engine = window.context.current_engine()
    window.context.run_job(oom, lambda _result: None, key="live")
    wait_until(qapp, lambda: any("Retry on the CPU" in box.text()
                                 for box in window.findChildren(QMessageBox)), 60_000)
    box = next(b for b in window.findChildren(QMessageBox) if "Retry on the CPU" in b.text())
    assert "out of GPU memory" in box.text()
    box.button(QMessageBox.StandardButton.Retry).click()
    wait_until(qapp, lambda: window.context.current_engine() is not engine
               and window.explain.is_complete())
    assert window.context.current_model_choice().device == "cpu"
    assert str(window.context.current_model().device) == "cpu"


def test_closing_during_a_job_ends_the_worker(qapp, settings_dir):
    window = lean_window()
    wait_until(qapp, lambda: window.context.current_model() is not None and window.context.is_idle())
    finished, running = threading.Event(), threading.Event()

    def endless():
        try:
            while True:
                running.set()
                time.sleep(0.02)
                yield Progress(0.5, "busy")
        finally:
            finished.set()

    window.context.run_job(endless, lambda _result: None, key="long")
    assert running.wait(30)
    window.close()
    assert window.worker_stopped  # the job ended at its next step, the thread with it
    assert finished.is_set()
    assert window.context._runner.isFinished()


def test_the_evaluate_tab_runs_a_dataset_and_goes_on_where_it_stopped(window, qapp, tmp_path):
    from PIL import Image

    from gui.evaluate.tab import EvaluateTab
    from tests.conftest import photo_path

    for i, photo in enumerate(("coffee.png", "chelsea.png", "rocket.jpg")):
        (tmp_path / "data" / "n07920052").mkdir(parents=True, exist_ok=True)
        Image.open(photo_path(photo)).convert("RGB").resize((96, 96)).save(tmp_path / "data" / "n07920052" / f"{i}.png")
    tab = next(w for w in map(window.tabs.widget, range(window.tabs.count())) if isinstance(w, EvaluateTab))
    box = tab.dataset
    box.folder.setText(str(tmp_path / "data"))
    for i in range(box.methods.count()):
        item = box.methods.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.text() in ("gradient", "random") else Qt.CheckState.Unchecked)
    for name, check in box.metrics.items():
        check.setChecked(name == "complexity")
    out = tmp_path / "data-prunescope"

    def run(images: int) -> dict:
        box.images.setValue(images)
        box.run_button.click()
        wait_until(qapp, lambda: (out / "results.json").is_file() and box.run_button.isEnabled(), 300_000)
        return json.loads((out / "results.json").read_text())

    first = run(2)
    assert first["images"] == 2 and first["timing"]["images_computed"] == 2
    assert tab.views.currentWidget() is tab.results and tab.results.leaderboard.rowCount() == 2
    (out / "results.json").unlink()
    second = run(3)  # the two finished images are read back: one is computed
    assert second["images"] == 3 and second["timing"]["images_computed"] == 1
    assert second["items"][:2] == first["items"]
    assert "done" in box.message.text()


def test_the_evaluate_tab_draws_pathways_across_the_open_folder(window, qapp, tmp_path):
    from PIL import Image

    from gui.evaluate.tab import EvaluateTab
    from tests.conftest import photo_path

    (tmp_path / "photos").mkdir()
    for photo in ("coffee.png", "chelsea.png", "rocket.jpg"):
        Image.open(photo_path(photo)).convert("RGB").resize((96, 96)).save(tmp_path / "photos" / f"{photo}.png")
    tab = next(w for w in map(window.tabs.widget, range(window.tabs.count())) if isinstance(w, EvaluateTab))
    box = tab.pathways
    box.folder.setText(str(tmp_path / "photos"))
    box.run_button.click()
    out = tmp_path / "photos-pathways"
    wait_until(qapp, lambda: (out / "pathways.json").is_file() and box.run_button.isEnabled(), 300_000)
    data = json.loads((out / "pathways.json").read_text())
    assert data["images"] == 3 and len(data["image_names"]) == 3
    assert tab.views.currentWidget() is tab.results and "pathways: 3 images" in tab.results.summary.text()
    assert [p.name for p in tab.results.shown] == ["pathways.png"]


def test_a_slow_method_runs_in_steps_with_the_settings_chosen_in_the_app(window, qapp, tmp_path):
    from core.methods import checked_settings
    from gui.parts.method_settings import MethodSettingsDialog

    tab = window.explain
    dialog = MethodSettingsDialog({})
    assert dialog.values() == {}  # every method at its defaults
    dialog._fields["occlusion", "window"][0].setValue(112)
    dialog._fields["occlusion", "stride"][0].setValue(112)
    dialog._fields["rise", "masks"][0].setValue(16)
    chosen = dialog.values()
    assert chosen == {"occlusion": {"window": 112, "stride": 112}, "rise": {"masks": 16}}
    dialog.reset()
    assert dialog.values() == {}
    tab.set_method_settings(chosen)
    boxes = [tab.controls.method_boxes["occlusion"], tab.controls.pathway_boxes["rise"]]
    for box in boxes:
        box.setChecked(True)
    try:
        wait_until(qapp, lambda: window.context.is_idle() and tab.is_complete()
                   and {"occlusion", "pathway-rise"} <= set(tab.heatmaps.shown_maps()))
        assert len(tab.heatmaps._order) == len(set(tab.heatmaps._order))  # each map one panel
        engine = window.context.current_engine().with_settings(chosen)
        np.testing.assert_allclose(tab.heatmaps.panel("occlusion").raw,
                                   as_on_worker(lambda: engine.attribution("occlusion")), rtol=1e-4, atol=1e-6)
        value = tab.params().sparsity
        np.testing.assert_allclose(tab.heatmaps.panel("pathway-rise").raw,
                                   as_on_worker(lambda: engine.pathway(value, method="rise").map), rtol=1e-4, atol=1e-6)
        assert tab.heatmaps.panel("occlusion").title.text() == "occlusion · window 112, stride 112, baseline mean"
        assert tab.heatmaps.panel("pathway-rise").title.text().startswith("pathway-rise · masks 16,")
        # remembered, and written with the export
        saved = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
        tab.save_settings(saved)
        tab.method_settings = {}
        tab.restore_settings(saved)
        assert tab.method_settings == checked_settings(chosen)
        (tmp_path / "export").mkdir()
        window.export_to(tmp_path / "export")
        wait_until(qapp, lambda: window.statusBar().currentMessage().startswith("Exported"))
        report = json.loads((tmp_path / "export" / window.context.current_image_path().stem / "report.json").read_text())
        assert report["methods"]["occlusion"]["params"]["window"] == 112
        assert report["settings"]["method_params"] == chosen
    finally:
        for box in boxes:
            box.setChecked(False)
        tab.set_method_settings({})
        wait_until(qapp, lambda: window.context.is_idle() and tab.is_complete())
    assert tab.heatmaps.panel("pathway-gradient").title.text() == "pathway-gradient"
