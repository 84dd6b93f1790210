"""Whole-model pruning: criteria rank known-unimportant channels lowest, pruned models are really
smaller and consistent, exports load back identically, and pruning nothing changes no explanation."""
import copy

import numpy as np
import pytest
import torch
import torchvision
from conftest import CLASSES, DEAD, UNUSED, loaded, tiny_net  # noqa: E402  (the tiny net is shared)
from torch import nn

from core.errors import ImageError, ModelError, PruneScopeError
from core.model_pruning import (Recovery, calibrate, channel_scores, checkpoint, criteria, load_pruned,
                                prune_copy, prune_model, save_pruned, surgery)
from core.model_pruning.measures import count_ops, predict
from core.model_pruning.pipeline import Calibration
from core.model_pruning.sweep import map_similarity, pathway_iou, sweep
from core.models.loading import LoadedModel, imagenet_classes
from core.progress import run


def calibration_of(model: LoadedModel, n: int = 4, seed: int = 0) -> Calibration:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, model.input_size, model.input_size, generator=g)
    if model.name != "tiny":  # the tiny net gets non-negative inputs: its live channels stay active
        x = x * 2 - 1
    return Calibration([], x, None, predict(model.module, x))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- criteria -------------------------------------------------------------------------------------

@pytest.mark.parametrize("criterion", ["taylor", "pathway", "lrp"])
def test_data_driven_criteria_rank_dead_and_unused_channels_lowest(tiny, criterion):
    calib = calibration_of(tiny)
    if criterion == "lrp":  # the tiny net has no LRP canonizer in core.methods.attribution: plain composite
        from zennit.composites import EpsilonGammaBox

        low, high = torch.full_like(calib.x, -1.0), torch.full_like(calib.x, 1.0)
        scores = criteria.lrp_scores(tiny.module, calib.x, calib.targets,
                                     EpsilonGammaBox(low=low, high=high))
    else:
        scores = run(channel_scores(criterion, tiny, calib.x, calib.targets))
    s = scores["conv1"]
    assert set(torch.argsort(s)[:3].tolist()) == {*DEAD, UNUSED}
    assert torch.all(s[[*DEAD, UNUSED]] == 0)
    live = [c for c in range(8) if c not in (*DEAD, UNUSED)]
    assert torch.all(s[live] > 0)


def test_l1_ranks_zero_filters_lowest_and_ignores_what_reads_them(tiny):
    calib = calibration_of(tiny)
    s = run(channel_scores("l1", tiny, calib.x, calib.targets))["conv1"]
    assert set(torch.argsort(s)[:2].tolist()) == set(DEAD)
    assert int(s.argmax()) == UNUSED  # data-free: it cannot know that nothing reads channel 3
    assert s.mean() == pytest.approx(1.0)  # normalised per layer


@pytest.mark.parametrize("criterion", ["l1", "taylor", "pathway"])
def test_structured_pruning_removes_exactly_the_lowest_channels(tiny, criterion):
    calib = calibration_of(tiny)
    expected = set(DEAD) if criterion == "l1" else {*DEAD, UNUSED}
    sparsity = 100.0 * len(expected) / 8
    module, done = run(prune_copy(tiny, calib, criterion, sparsity, "per-layer", protect=["none"]))
    assert set(done.removed["conv1"]) == expected
    assert module.conv1.out_channels == 8 - len(expected)
    assert module.bn1.num_features == 8 - len(expected)
    assert module.conv2.in_channels == 8 - len(expected)
    assert tiny.module.conv1.out_channels == 8  # the original is untouched


def test_removing_dead_and_unused_channels_leaves_the_function_unchanged(tiny):
    calib = calibration_of(tiny)
    scores = run(channel_scores("taylor", tiny, calib.x, calib.targets))
    module = copy.deepcopy(tiny.module)
    # Only conv1 is scored, so only its group (conv1, bn1, conv2's inputs) is cut.
    done = surgery.prune_structured(module, calib.x, {"conv1": scores["conv1"]}, 37.5, "per-layer")
    assert set(done.removed["conv1"]) == {*DEAD, UNUSED}
    assert done.skipped == {"conv2": "no score from this criterion"}
    assert module.conv1.out_channels == 5 and module.conv2.in_channels == 5
    assert torch.allclose(module(calib.x), tiny.module(calib.x), atol=1e-5)


def test_magnitude_zeroes_the_smallest_weights(tiny):
    calib = calibration_of(tiny)
    module, done = run(prune_copy(tiny, calib, "magnitude", 40, "global", protect=["first"]))
    assert done.unit == "weights" and done.protected == ["conv1"]
    before = torch.cat([tiny.module.conv2.weight.flatten(), tiny.module.fc.weight.flatten()]).abs()
    after = torch.cat([module.conv2.weight.flatten(), module.fc.weight.flatten()])
    zeroed = after == 0
    assert int(zeroed.sum()) >= int(0.4 * before.numel())
    assert before[zeroed].max() <= before[~zeroed].min()  # every zeroed weight was among the smallest
    assert torch.equal(module.conv1.weight, tiny.module.conv1.weight)  # protected
    assert module.conv2.weight.shape == tiny.module.conv2.weight.shape  # nothing removed


def test_bad_requests_raise_clear_errors(tiny, tmp_path):
    calib = calibration_of(tiny)
    with pytest.raises(PruneScopeError, match="unknown criterion"):
        run(prune_copy(tiny, calib, "random", 50))
    with pytest.raises(PruneScopeError, match=r"\[0, 100\)"):
        run(prune_copy(tiny, calib, "l1", 100))
    with pytest.raises(PruneScopeError, match="pruning mode"):
        run(prune_copy(tiny, calib, "l1", 50, "everywhere"))
    with pytest.raises(ModelError, match="cannot protect 'nope'"):
        run(prune_copy(tiny, calib, "l1", 50, protect=["nope"]))
    with pytest.raises(ImageError, match="no images"):
        run(calibrate(tiny, tmp_path))
    (tmp_path / "zebra_crossing").mkdir()
    with pytest.raises(ImageError, match="neither a class id"):
        run(calibrate(tiny, tmp_path))
    with pytest.raises(ModelError, match="not a PruneScope pruned-model"):
        load_pruned(tiny_net(), {"state_dict": tiny_net().state_dict()})


# --- real, smaller models --------------------------------------------------------------------------

def test_pruned_parameter_count_is_what_the_ratio_implies(tiny):
    calib = calibration_of(tiny)
    module, _ = run(prune_copy(tiny, calib, "l1", 50, "per-layer", protect=["none"]))

    def count(c1, c2):  # conv1, bn1, conv2, bn2, fc (the classes stay)
        return c1 * 3 * 9 + 2 * c1 + c2 * c1 * 9 + 2 * c2 + CLASSES * c2 + CLASSES

    assert n_params(tiny.module) == count(8, 8)
    assert n_params(module) == count(4, 4)
    assert module(calib.x).shape == (4, CLASSES)
    macs, params = count_ops(module, calib.x)
    assert params == count(4, 4) and 0 < macs < count_ops(tiny.module, calib.x)[0]


def resnet18_model() -> LoadedModel:
    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None).eval().requires_grad_(False)
    return loaded(module, "resnet18", 64, imagenet_classes(), "layer4")


@pytest.mark.parametrize("criterion", ["l1", "lrp"])
def test_resnet18_residual_adds_stay_consistent(criterion):
    model = resnet18_model()
    calib = calibration_of(model, n=2)
    module, done = run(prune_copy(model, calib, criterion, 50, "global"))
    assert module(calib.x).shape == (2, 1000)
    assert n_params(module) < 0.75 * n_params(model.module)
    for stage in (module.layer1, module.layer2, module.layer3, module.layer4):
        for block in stage:
            # The residual add needs conv2 and the shortcut to carry the same channels.
            shortcut = block.downsample[0].out_channels if block.downsample else block.conv1.in_channels
            assert block.conv2.out_channels == shortcut == block.bn2.num_features
            assert block.conv1.out_channels == block.bn1.num_features == block.conv2.in_channels
    assert module.fc.in_features == module.layer4[1].conv2.out_channels
    assert "conv1" in done.protected and "fc" in done.protected
    assert module.conv1.out_channels == 64  # protected "first": its residual stream is kept whole


def test_efficientnet_lite0_depthwise_and_residual_stay_consistent():
    from core.models.efficientnet_lite import EfficientNetLite0

    torch.manual_seed(0)
    model = loaded(EfficientNetLite0().eval().requires_grad_(False), "efficientnet_lite0", 64,
                   imagenet_classes(), "_conv_head")
    calib = calibration_of(model, n=2)
    module, _ = run(prune_copy(model, calib, "taylor", 50, "per-layer"))
    assert module(calib.x).shape == (2, 1000)
    assert n_params(module) < 0.7 * n_params(model.module)
    for block in module._blocks:
        dw = block._depthwise_conv
        assert dw.groups == dw.in_channels == dw.out_channels == block._bn1.num_features
        if block.has_expand:
            assert block._expand_conv.out_channels == dw.in_channels
        assert block._project_conv.in_channels == dw.out_channels
        if block.has_residual:
            assert block._project_conv.out_channels == block._expand_conv.in_channels
    # The export keeps the depthwise group counts: a fresh net takes the shapes back.
    ck = checkpoint(module, "efficientnet_lite0", {})
    fresh = load_pruned(EfficientNetLite0(), ck).eval()
    assert torch.equal(fresh(calib.x), module(calib.x))


def test_vision_transformer_prunes_only_what_load_pruned_can_rebuild():
    from torchvision.models.vision_transformer import VisionTransformer

    def vit():
        torch.manual_seed(0)
        return VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                 hidden_dim=8, mlp_dim=16, num_classes=CLASSES).eval()

    model = loaded(vit().requires_grad_(False), "vit", 32, [f"c{i}" for i in range(CLASSES)],
                   "encoder.layers.encoder_layer_1.ln_1")
    calib = calibration_of(model, n=2)
    module, done = run(prune_copy(model, calib, "taylor", 50, "per-layer", protect=["none"]))
    changed = {name for name, kept, total in done.layers if kept != total}
    assert changed == {f"encoder.layers.encoder_layer_{i}.mlp.0" for i in (0, 1)}  # MLP hidden units
    assert any("LayerNorm" in why or "parameter" in why for why in done.skipped.values())
    fresh = load_pruned(vit(), checkpoint(module, "vit", {})).eval()
    assert torch.equal(fresh(calib.x), module(calib.x))


def test_export_loads_back_with_identical_outputs(tmp_path):
    from core.models.loading import load_model

    model = resnet18_model()
    calib = calibration_of(model, n=2)
    report = run(prune_model(model, "taylor", 40, calib, "per-layer"))
    assert report.after.params < report.before.params and report.after.macs < report.before.macs
    assert report.after.latency_ms > 0 and 0.0 <= report.agreement <= 1.0
    path = tmp_path / "r18.pt"
    sizes = save_pruned(report, path)
    assert sizes[str(path)] == path.stat().st_size > 0
    expected = report.model.module(calib.x)

    raw = torch.load(path, weights_only=True)  # plain PyTorch, no arbitrary unpickling
    assert raw["prunescope_pruned"]["arch"] == "resnet18"
    plain = load_pruned(torchvision.models.resnet18(weights=None), raw).eval()
    assert torch.equal(plain(calib.x), expected)

    again = load_model("resnet18", weights=path, device="cpu")  # --weights / Load model...
    assert torch.equal(again.module(calib.x), expected)
    with pytest.raises(ModelError, match="pruned resnet18, not vgg16"):
        load_model("vgg16", weights=path, device="cpu")


def test_finetune_updates_the_pruned_model_and_never_trains_on_the_held_out_image(tiny, tmp_path, photo):
    from PIL import Image

    for label, name in enumerate(("coffee.png", "chelsea.png")):
        folder = tmp_path / str(label)
        folder.mkdir()
        Image.open(photo(name)).convert("RGB").resize((48, 40)).save(folder / "a.png")
    calib = run(calibrate(tiny, tmp_path))
    assert calib.labels == [0, 1]
    plain = run(prune_model(tiny, "l1", 25, calib, "per-layer", protect=["none"]))
    tuned = run(prune_model(tiny, "l1", 25, calib, "per-layer", protect=["none"],
                            settings=Recovery("finetune", str(tmp_path), epochs=2, lr=0.05)))
    assert tuned.held_out == [str(tmp_path / "1" / "a.png")] and tuned.recovery == "finetune"
    assert not torch.equal(tuned.model.module.conv2.weight, plain.model.module.conv2.weight)
    assert tuned.accuracy_after is not None and not tuned.model.module.training
    with pytest.raises(PruneScopeError, match="regrow"):
        run(prune_model(tiny, "magnitude", 25, calib, settings=Recovery("finetune", str(tmp_path))))
    with pytest.raises(PruneScopeError, match="needs a labelled ImageFolder"):
        run(prune_model(tiny, "l1", 25, calib, settings=Recovery("finetune")))


# --- explanations ---------------------------------------------------------------------------------

def test_pathway_iou_counts_removed_channels_as_not_kept():
    a = [torch.ones(4, 2, 2, dtype=torch.bool)]
    b = [torch.ones(2, 2, 2, dtype=torch.bool)]
    assert pathway_iou(a, b, ["conv"], {"conv": [1, 3]}) == pytest.approx(0.5)
    b2 = [torch.tensor([[[True, False], [False, False]]] * 2)]
    assert pathway_iou(a, b2, ["conv"], {"conv": [0, 1]}) == pytest.approx(2 / 16)
    assert pathway_iou(a, a, [None], {}) == 1.0


def test_map_similarity_is_one_only_for_the_same_map():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(16, 16))
    assert map_similarity(m, m) == {"spearman": 1.0, "ssim": 1.0}
    other = map_similarity(m, rng.normal(size=(16, 16)))
    assert other["spearman"] < 0.5 and other["ssim"] < 0.5


def test_sparsity_zero_changes_no_explanation(tiny):
    calib = calibration_of(tiny, n=2)
    result = run(sweep(tiny, calib, ["l1", "magnitude"], [0, 50],
                       ["gradient", "smoothgrad", "grad-cam", "pathway-gradient"], "per-layer",
                       ["none"], timed=False))
    assert not result.errors and not result.skipped_methods
    zero = [p for p in result.points if p.sparsity == 0]
    assert len(zero) == 2
    for p in zero:
        assert p.agreement == 1.0 and p.pathway_iou == 1.0
        for method, d in p.drift.items():
            assert d == {"spearman": 1.0, "ssim": 1.0}, method
    half = [p for p in result.points if p.sparsity == 50]
    assert any(d["spearman"] < 1.0 for p in half for d in p.drift.values())
    l1_half = next(p for p in half if p.criterion == "l1")
    assert l1_half.params < zero[0].params and l1_half.pathway_iou < 1.0


# --- command line ---------------------------------------------------------------------------------

def test_cli_sweep_writes_json_and_plots_and_reports_a_failed_criterion(tiny_cli, tmp_path, capsys):
    import json

    from main import main

    out = tmp_path / "sweep"
    code = main(["prune-sweep", "--criteria", "l1,lrp,magnitude", "--sparsities", "0,50",
                 "--methods", "gradient,grad-cam", "--calib", str(tiny_cli), "--out", str(out),
                 "--no-latency", "--protect", "none", "--quiet"])
    assert code == 2  # LRP has no canonizer for the tiny net: reported, the others still ran
    err = capsys.readouterr().err
    assert "lrp" in err and "LRP does not support tiny" in err
    data = json.loads((out / "sweep.json").read_text())
    assert {(p["criterion"], p["sparsity"]) for p in data["points"]} == {
        ("l1", 0.0), ("l1", 50.0), ("magnitude", 0.0), ("magnitude", 50.0)}
    assert set(data["errors"]) == {"lrp"}
    for name in ("headline", "cost", "drift", "pathway"):
        assert (out / f"{name}.png").stat().st_size > 0


def test_cli_prune_refuses_bad_input(tiny_cli, tmp_path, capsys):
    from main import main

    assert main(["prune", "--criterion", "l1", "--sparsity", "50", "--calib", str(tmp_path / "none"),
                 "--out", str(tmp_path / "p.pt"), "--quiet"]) == 2
    assert "calibration folder does not exist" in capsys.readouterr().err
    assert main(["prune", "--criterion", "l1", "--sparsity", "50", "--calib", str(tiny_cli),
                 "--out", str(tmp_path / "missing" / "p.pt"), "--quiet"]) == 2
    assert "output folder does not exist" in capsys.readouterr().err
    assert main(["prune", "--criterion", "l1", "--sparsity", "50", "--calib", str(tiny_cli),
                 "--recover", "finetune", "--out", str(tmp_path / "p.pt"), "--quiet"]) == 2
    assert "needs a labelled ImageFolder" in capsys.readouterr().err


def test_the_default_calibration_set_is_natural_photos_only():
    from core.io.resources import calibration_images

    names = [p.name for p in calibration_images()]
    assert len(names) == len(set(names)) == 13 and {"coffee.png", "grace_hopper.jpg", "astronaut.png"} <= set(names)
    # scikit-image ships these beside its photos: a scanned page, text, a CT phantom, microscopy
    assert not {"page.png", "text.png", "phantom.png", "cell.png", "ihc.png", "retina.jpg"} & set(names)


@pytest.mark.slow
def test_cli_prunes_the_embedded_model_and_it_loads_back(tmp_path, capsys):
    import json

    from core.io.resources import calibration_images
    from core.models.loading import load_model
    from main import main

    out, report = tmp_path / "lite0.pt", tmp_path / "lite0.json"
    # bn: reconstruction of Lite0 takes minutes (README); the test of it is test_reconstruct
    assert main(["prune", "--criterion", "taylor", "--sparsity", "30", "--mode", "per-layer", "--recover", "bn",
                 "--out", str(out), "--json", str(report), "--device", "cpu", "--quiet",
                 "--onnx", str(tmp_path / "lite0.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "top-1 agreement" in printed and "MB)" in printed
    assert "onnxruntime equals PyTorch on 13 calibration images" in printed
    data = json.loads(report.read_text())
    assert data["onnx"]["max_abs_diff"] <= 1e-4 and data["onnx"]["onnx_ms"] > 0 and data["onnx"]["torch_ms"] > 0
    assert data["after"]["params"] < 0.85 * data["before"]["params"]
    assert data["after"]["macs"] < data["before"]["macs"]
    photos = calibration_images()  # the bundled samples and the dependencies' photos: every third held out
    assert len(photos) == 13 and data["held_out_count"] == len(photos) // 3 + (len(photos) % 3 > 1)
    assert len(data["calibration_images"]) + data["held_out_count"] == len(photos)
    assert data["recovery"] == "bn" and data["agreement_before_recovery"] is not None
    assert 0 <= data["top5_overlap"] <= 1 and data["kl"] >= 0
    model = load_model("efficientnet_lite0", weights=out, device="cpu")
    assert sum(p.numel() for p in model.module.parameters()) == data["after"]["params"]
    calib = run(calibrate(model))
    assert calib.targets.shape == (len(photos),)


# --- GUI ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_pruning_tab_prunes_compares_exports_and_sweeps(qtbot, tmp_path, photo):
    from core.models.loading import load_model
    from gui.parts.context import AppContext, ModelChoice
    from gui.pruning.tab import ORIGINAL, PRUNED, PruningTab

    timeout = 600_000  # a loaded 2-core machine
    context = AppContext()
    tab = PruningTab(context)
    qtbot.addWidget(tab)
    try:
        with qtbot.waitSignal(context.engine_changed, timeout=timeout):
            context.load_model(ModelChoice("efficientnet_lite0", None, "cpu"))
            context.open_image(photo("coffee.png"))
        assert tab.method.currentData() == "gradient"
        tab.criterion.setCurrentIndex(tab.criterion.findData("l1"))
        tab.sparsity.setValue(20)
        tab.mode.setCurrentIndex(tab.mode.findData("per-layer"))
        # the tab's wiring, not reconstruction (tests/test_reconstruct.py), whose 2 minutes it would add
        tab.recovery.setCurrentIndex(tab.recovery.findData("bn"))
        with qtbot.waitSignal(tab.pruned, timeout=timeout):
            tab.prune()
        report = tab.report
        assert report.after.params < report.before.params
        assert "agreement" in tab.summary.text()
        assert len(tab.bars.rows) == len(report.surgery.layers) == 50  # every conv and the fc
        maps = tab.heatmaps.shown_maps()
        assert set(maps) == {ORIGINAL, PRUNED}
        assert maps[ORIGINAL].shape == maps[PRUNED].shape == (224, 224)
        assert not np.array_equal(maps[ORIGINAL], maps[PRUNED])

        path = tmp_path / "lite0_l1.pt"
        tab.export(path)
        qtbot.waitUntil(lambda: tab.exported == path, timeout=timeout)
        again = load_model("efficientnet_lite0", weights=path, device="cpu")
        assert sum(p.numel() for p in again.module.parameters()) == report.after.params
        tab.export(tmp_path / "lite0_l1.onnx")
        qtbot.waitUntil(lambda: not tab.cancel_button.isEnabled(), timeout=timeout)  # written, or failed
        assert "onnxruntime equals PyTorch" in tab.message.text(), tab.message.text()
        assert (tmp_path / "lite0_l1.onnx").stat().st_size > 1e6 and tab.exported == path

        tab.sweep_sparsities.setText("0,40")
        tab.sweep_methods.setText("gradient")
        for name, check in tab.sweep_criteria.items():
            check.setChecked(name == "l1")
        with qtbot.waitSignal(tab.swept, timeout=timeout):
            tab.run_sweep()
        assert [p.sparsity for p in tab.sweep_result.points] == [0.0, 40.0]
        assert tab.figure_layout.count() == 4
    finally:
        context.shutdown()


# --- hostile checkpoints and global state ---------------------------------------------------------

def _tiny_checkpoint() -> dict:
    return checkpoint(tiny_net(), "tiny", {"input_size": 32})


@pytest.mark.parametrize("case", ["groups 0", "groups abc", "groups 7", "groups as a list",
                                  "format from the future", "no arch", "inconsistent shapes",
                                  "weight of the wrong rank", "meta tensor", "not a tensor",
                                  "input size a string"])
def test_a_hostile_pruned_checkpoint_is_one_model_error(case):
    ck = _tiny_checkpoint()
    meta, state = ck[surgery.PRUNED_KEY], ck["state_dict"]
    if case.startswith("groups"):
        meta["groups"] = {"groups 0": {"conv2": 0}, "groups abc": {"conv2": "abc"},
                          "groups 7": {"conv2": 7}, "groups as a list": [1, 2]}[case]
    elif case == "format from the future":
        meta["format"] = 99
    elif case == "no arch":
        del meta["arch"]
    elif case == "inconsistent shapes":  # conv1 makes 6 channels, bn1 and conv2 expect 8
        state["conv1.weight"] = state["conv1.weight"][:6].clone()
    elif case == "weight of the wrong rank":
        state["conv2.weight"] = torch.zeros(8, 8)
    elif case == "meta tensor":
        state["fc.bias"] = torch.empty(CLASSES, device="meta")
    elif case == "not a tensor":
        state["fc.weight"] = [[1.0] * 8] * CLASSES
    elif case == "input size a string":
        meta["input_size"] = "224"
    with pytest.raises(ModelError) as err:
        load_pruned(tiny_net(), ck)
    assert "\n" not in str(err.value)


def test_fuzzed_pruned_metadata_and_shapes_raise_only_model_errors():
    from hypothesis import given, settings, strategies as st

    leaves = st.none() | st.booleans() | st.integers(-3, 300) | st.floats() | st.text(max_size=6)
    anything = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
    layers = st.sampled_from(["conv1", "conv2", "fc", "bn1", "", "nope"])
    metadata = st.fixed_dictionaries({}, optional={
        "arch": st.just("tiny") | anything, "format": st.just(1) | anything,
        "groups": st.dictionaries(layers, st.integers(-1, 9) | anything, max_size=3) | anything,
        "input_size": st.integers(0, 300) | anything})
    keys = sorted(_tiny_checkpoint()["state_dict"])
    reshaped = st.dictionaries(st.sampled_from(keys), st.lists(st.integers(0, 9), max_size=4), max_size=2)

    @settings(max_examples=250, deadline=None, derandomize=True)
    @given(meta=metadata | anything, shapes=reshaped)
    def check(meta, shapes):
        ck = _tiny_checkpoint()
        ck[surgery.PRUNED_KEY] = meta
        for key, shape in shapes.items():
            ck["state_dict"][key] = torch.zeros(shape)
        try:
            load_pruned(tiny_net(), ck)
        except ModelError as err:
            assert "\n" not in str(err)

    check()


def test_counting_ops_leaves_torch_pruning_s_mapping_as_it_was():
    from torch_pruning.utils import op_counter

    class SameConv(nn.Conv2d):  # a subclass, as EfficientNet's, that the counter maps to Conv2d
        pass

    class Custom(nn.Module):  # a mapping of the caller's own
        def forward(self, x):
            return x

    def count_custom(module, inputs, output):
        module.__flops__ += 1

    module = nn.Sequential(SameConv(3, 4, 3), nn.ReLU())
    mapping = op_counter.CUSTOM_MODULES_MAPPING
    mapping[Custom] = count_custom
    try:
        macs, _ = count_ops(module, torch.zeros(1, 3, 8, 8))
        assert macs >= 4 * 3 * 9 * 36  # the subclass was counted
        assert op_counter.CUSTOM_MODULES_MAPPING is mapping  # Torch-Pruning's {} undone
        assert mapping == {Custom: count_custom}  # the caller's entry kept, no SameConv left
    finally:
        op_counter.CUSTOM_MODULES_MAPPING = mapping
        mapping.pop(Custom, None)


def test_structured_pruning_leaves_frozen_parameters_frozen(tiny):
    module = tiny_net()
    x = torch.rand(2, 3, 32, 32)
    surgery.prune_structured(module, x, criteria.l1_scores(module), 50, "per-layer")
    assert module.conv1.out_channels < 8
    assert not any(p.requires_grad for p in module.parameters())


def test_sweep_and_synthetic_weights_leave_torch_s_random_state_alone(tiny):
    from core.evaluation.synthetic import SmallResNet, reinitialise
    from core.model_pruning.sweep import _maps

    x = torch.rand(2, 3, 32, 32)
    nets = [SmallResNet(2), SmallResNet(2)]  # built (and so randomly initialised) beforehand
    state = torch.random.get_rng_state()
    _maps(tiny, x, predict(tiny.module, x), ["gradient", "smoothgrad"], {}, {})
    first, second = (reinitialise(net, 0).fc.weight for net in nets)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, second)  # still repeatable


# --- ONNX -----------------------------------------------------------------------------------------

def test_onnx_export_runs_in_onnxruntime_as_in_pytorch_at_any_batch(tmp_path):
    import onnxruntime

    from core.model_pruning.deploy import export_onnx

    torch.manual_seed(0)
    net = tiny_net().eval()
    images = torch.rand(5, 3, 32, 32)
    done = export_onnx(net, tmp_path / "tiny.onnx", images)
    assert done.checked_images == 5 and done.max_abs_diff <= 1e-4 and done.bytes == (tmp_path / "tiny.onnx").stat().st_size
    session = onnxruntime.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(7, 3, 32, 32)
    theirs = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(theirs, net(x).detach().numpy(), atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]  # no external data, no partial file


def test_an_onnx_file_that_differs_from_pytorch_is_not_kept(tmp_path, monkeypatch):
    from core.model_pruning import deploy

    monkeypatch.setattr(deploy, "TOLERANCE", -1.0)  # any difference, even none, is too much
    with pytest.raises(PruneScopeError, match="outputs differ from PyTorch's by up to .*: not written"):
        deploy.export_onnx(tiny_net().eval(), tmp_path / "tiny.onnx", torch.rand(2, 3, 32, 32))
    assert list(tmp_path.iterdir()) == []


def test_without_the_onnx_extra_the_error_names_it(tmp_path, monkeypatch, capsys):
    import importlib.util

    from main import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert main(["prune", "--criterion", "l1", "--sparsity", "10", "--out", str(tmp_path / "p.pt"),
                 "--onnx", str(tmp_path / "p.onnx"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == ("prunescope: error: ONNX export needs onnxruntime: "
                                               "pip install 'prunescope[onnx]'")
