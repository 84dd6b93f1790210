"""Any classifier: model SPECs, model cards, weights, class names, preprocessing, Grad-CAM layers,
and a user's own 10-class ResNet-18 and grayscale CNN end to end (CLI, pruning, the app)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import main
from core.errors import ModelError
from core.io.images import load_image
from core.methods import attribute
from core.models.loading import load_model, read_labels
from core.models.sources import ModelCard, parse_spec, read_card, write_card
from core.pathway.engine import Engine

ROOT = Path(main.__file__).parent
SAMPLE = ROOT / "resources" / "samples" / "chelsea.png"
SMALL = dict(input_size=64, resize=64)
GRAY_NET = '''
import torch
from torch import nn


def build(num_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.SiLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def broken():
    raise ValueError("no such checkpoint")


def not_a_module():
    return 42


def segmenter():
    return nn.Conv2d(3, 2, 1)
'''

TWO_OUTPUTS = '''
import torch
from torch import nn


class Net(nn.Module):
    """Logits and the features they come from, as much training code returns them."""

    def __init__(self, as_dict):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 3)
        self.as_dict = as_dict

    def forward(self, x):
        features = self.features(x)
        logits = self.head(features)
        return {"logits": logits, "features": features} if self.as_dict else (logits, features)


def pair():
    return Net(as_dict=False)


def named():
    return Net(as_dict=True)
'''


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A 10-class ResNet-18 state dict and its labels, and a grayscale CNN in a .py file."""
    folder = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    torch.save({"state_dict": net.state_dict(), "epoch": 7}, folder / "r18_10.pt")
    (folder / "labels.txt").write_text("\n".join(f"part-{i}" for i in range(10)) + "\n")
    (folder / "gray_net.py").write_text(GRAY_NET)
    (folder / "two_outputs.py").write_text(TWO_OUTPUTS)
    return folder, net


def top_maps(model):
    engine = Engine(model, load_image(SAMPLE))
    return engine, engine.pathway(0.0).map, engine.attribution("gradient")


# --- SPECs and cards ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec, kind", [
    ("efficientnet_lite0", "builtin"), ("torchvision:convnext_tiny", "torchvision"),
    ("timm:resnet50.a1_in1k", "timm"), ("nets/my_net.py:build", "file"),
    ("mypkg.models:build", "module"), ("model.PT2", "program"), ("cards/net.toml", "card")])
def test_specs_are_recognised(spec, kind):
    assert parse_spec(spec)[0] == kind


@pytest.mark.parametrize("spec, message", [
    ("", "empty model SPEC"), ("resnet9000", "unknown model"), ("torchvision:", "name the architecture"),
    ("net.pth", "is a weights file, not a model"), ("net.py:", "unknown model")])
def test_bad_specs_say_what_to_write(spec, message):
    with pytest.raises(ModelError, match=message):
        parse_spec(spec)


def test_card_round_trip_with_paths_relative_to_the_card(tmp_path):
    card = ModelCard(source=str(tmp_path / "net.py") + ":build", weights=str(tmp_path / "w.pt"),
                     labels=str(tmp_path / "l.txt"), input_size=96, resize=110, mean=(0.5,),
                     std=(0.25,), channels=1, interpolation="bicubic", gradcam_layer="1", output="logits",
                     name="mine")
    assert read_card(write_card(card, tmp_path / "card.toml")) == card
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rel.toml").write_text('source = "net.py:build"\nweights = "../w.pt"\n')
    rel = read_card(tmp_path / "sub" / "rel.toml")
    assert rel.source == f"{tmp_path / 'sub' / 'net.py'}:build"
    assert rel.weights == str(tmp_path / "w.pt")


@pytest.mark.parametrize("text, message", [
    ('source = "resnet18"\nweigths = "w.pt"\n', "unknown key 'weigths'"),
    ('weights = "w.pt"\n', "has no 'source'"),
    ('source = "resnet18"\ninput_size = "big"\n', "positive whole number"),
    ('source = "resnet18"\nmean = [0.5, "x"]\n', "list of numbers"),
    ('source = "resnet18"\ninterpolation = "lanczos9"\n', "interpolation"),
    ('source = "resnet18"\n[broken\n', "not a valid TOML"),
    ('source = "other.toml"\n', "cannot be another model card"),
    ('source = "resnet18"\noutput = true\n', "'output' must be an index")])
def test_bad_cards_are_one_line(tmp_path, text, message):
    (tmp_path / "card.toml").write_text(text)
    with pytest.raises(ModelError, match=message) as err:
        load_model(str(tmp_path / "card.toml"))
    assert "\n" not in str(err.value)


def test_labels_files(tmp_path):
    (tmp_path / "a.txt").write_text("cat\ndog\n\n")
    (tmp_path / "b.json").write_text('["cat", "dog"]')
    (tmp_path / "c.json").write_text('{"1": "dog", "0": "cat"}')
    for name in ("a.txt", "b.json", "c.json"):
        assert read_labels(tmp_path / name) == ["cat", "dog"]
    (tmp_path / "gap.json").write_text('{"0": "cat", "2": "dog"}')
    (tmp_path / "blank.txt").write_text("cat\n\ndog\n")
    for name in ("gap.json", "blank.txt", "missing.txt"):
        with pytest.raises(ModelError):
            read_labels(tmp_path / name)


# --- the user's own models ----------------------------------------------------------------------

def test_ten_class_resnet_takes_its_classes_from_the_weights(user_files):
    folder, net = user_files
    model = load_model("torchvision:resnet18", weights=folder / "r18_10.pt",
                       labels=folder / "labels.txt", device="cpu", **SMALL)
    assert model.class_names == [f"part-{i}" for i in range(10)]
    assert (model.input_size, model.resize_size, model.gradcam_layer) == (64, 64, "layer4")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.module(x), net(x))
    plain = load_model("torchvision:resnet18", weights=folder / "r18_10.pt", device="cpu", **SMALL)
    assert plain.class_names[3] == "class 3"
    engine, at_zero, gradient = top_maps(model)
    assert engine.prediction.name.startswith("part-")
    np.testing.assert_array_equal(at_zero, gradient)
    assert not np.array_equal(engine.pathway(70.0).map, gradient)
    with pytest.raises(ModelError, match="11 class names for a model with 10 classes"):
        (folder / "eleven.txt").write_text("\n".join(f"n{i}" for i in range(11)))
        load_model("torchvision:resnet18", weights=folder / "r18_10.pt",
                   labels=folder / "eleven.txt", device="cpu", **SMALL)


def test_safetensors_weights(user_files, tmp_path):
    from safetensors.torch import save_file

    _, net = user_files
    save_file(net.state_dict(), tmp_path / "r18.safetensors")
    model = load_model("resnet18", weights=tmp_path / "r18.safetensors", device="cpu", **SMALL)
    assert torch.equal(model.module.fc.weight, net.fc.weight)


def test_weights_must_be_finite_floats(user_files, tmp_path):
    _, net = user_files
    state = net.state_dict()
    torch.save({**state, "fc.bias": torch.full((10,), float("nan"))}, tmp_path / "nan.pt")
    torch.save({k: v.bool() for k, v in state.items()}, tmp_path / "bool.pt")
    for name, message in (("nan.pt", "fc.bias holds NaN"), ("bool.pt", "torch.bool")):
        with pytest.raises(ModelError, match=message):
            load_model("resnet18", weights=tmp_path / name, device="cpu")


def test_code_running_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="could run code"):
        load_model("resnet18", weights=tmp_path / "evil.pt")
    assert not marker.exists()


def test_grayscale_factory_with_a_card(user_files, tmp_path):
    folder, _ = user_files
    card = write_card(ModelCard(source=f"{folder / 'gray_net.py'}:build", input_size=48, resize=56,
                                name="gray"), tmp_path / "gray.toml")
    model = load_model(str(card), device="cpu")
    assert (model.name, model.channels, model.input_size, len(model.class_names)) == ("gray", 1, 48, 4)
    assert model.mean == (0.5,) and model.gradcam_layer == "3"  # the SiLU after the last conv
    engine, at_zero, gradient = top_maps(model)
    assert engine.x.shape == (1, 1, 48, 48) and engine.view.shape == (48, 48, 3)
    np.testing.assert_array_equal(at_zero, gradient)
    assert attribute("grad-cam", model, engine.x, engine.target).shape == (48, 48)


def test_exported_program(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=5).eval()
    program = torch.export.export(net, (torch.randn(1, 3, 64, 64),), strict=False)  # batch fixed at 1
    torch.export.save(program, tmp_path / "r18.pt2")
    model = load_model(str(tmp_path / "r18.pt2"), device="cpu", **SMALL)
    x = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(model.module(x), net(x))  # batches run one sample at a time
    engine, at_zero, gradient = top_maps(model)
    assert len(engine.layers) == 17  # ReLUs as ATen calls, each call a layer
    np.testing.assert_array_equal(at_zero, gradient)
    assert not np.array_equal(engine.pathway(70.0).map, gradient)
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ModelError, match="carries its own weights"):
        load_model(str(tmp_path / "r18.pt2"), weights=tmp_path / "r18.pt")


def test_timm_preprocessing_comes_from_its_pretrained_config(tmp_path):
    import timm  # a dependency
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), tmp_path / "t.pth")
    model = load_model("timm:resnet18", weights=tmp_path / "t.pth", device="cpu")
    cfg = model.module.pretrained_cfg
    assert model.input_size == cfg["input_size"][-1] == 224
    assert model.resize_size == int(224 / cfg["crop_pct"]) and model.interpolation == "bicubic"
    assert model.mean == tuple(cfg["mean"]) and len(model.class_names) == 3


def test_gradcam_layer_override_and_its_errors(user_files):
    folder, _ = user_files
    spec = f"{folder / 'gray_net.py'}:build"
    assert load_model(spec, gradcam_layer="0", device="cpu", **SMALL).gradcam_layer == "0"
    with pytest.raises(ModelError, match="not a module"):
        load_model(spec, gradcam_layer="features.99", device="cpu", **SMALL)
    with pytest.raises(ModelError, match="gives no N x C x H x W map"):
        load_model(spec, gradcam_layer="6", device="cpu", **SMALL)  # the Linear head


def test_a_model_returning_logits_and_features_is_read_through_output(user_files, tmp_path):
    folder, _ = user_files
    pair, named = f"{folder / 'two_outputs.py'}:pair", f"{folder / 'two_outputs.py'}:named"
    with pytest.raises(ModelError, match=r"returns a tuple of 2 \(1x3, 1x8\).*--output N"):
        load_model(pair, device="cpu", **SMALL)
    with pytest.raises(ModelError, match="returns a dict of 'logits', 'features'.*--output NAME"):
        load_model(named, device="cpu", **SMALL)
    with pytest.raises(ModelError, match="output 'feats' names nothing in what the model returns"):
        load_model(named, output="feats", device="cpu", **SMALL)
    x = torch.randn(2, 3, 64, 64)
    for spec, output in ((pair, 0), (named, "logits")):
        model = load_model(spec, output=output, device="cpu", **SMALL)
        assert len(model.class_names) == 3 and model.gradcam_layer == "features.3"  # names unchanged
        with torch.no_grad():
            logits = model.module(x)
            assert torch.equal(logits, model.module.head(model.module.features(x)))
        engine, at_zero, gradient = top_maps(model)
        np.testing.assert_array_equal(at_zero, gradient)
        assert np.any(gradient) and np.any(engine.attribution("grad-cam"))
    # a card keeps it, and so does a pruned file: it opens without --model and --output
    card = write_card(ModelCard(source=named, output="logits", **SMALL), tmp_path / "named.toml")
    assert len(load_model(str(card), device="cpu").class_names) == 3
    common = ["--input-size", "64", "--resize", "64", "--device", "cpu", "--quiet"]
    assert main.main(["prune", "--criterion", "l1", "--sparsity", "30", "--model", pair, "--output", "0",
                      "--out", str(tmp_path / "p.pt"), *common]) == 0
    assert main.main(["explain", str(SAMPLE), "--weights", str(tmp_path / "p.pt"), "--methods", "gradient",
                      "--steps", "2", "--out", str(tmp_path / "out"), *common]) == 0


def test_the_open_model_dialog_takes_where_the_class_scores_are(qapp):
    from gui.window.model_dialog import OpenModelDialog

    dialog = OpenModelDialog("")
    dialog.spec.setText("net.py:pair")
    assert dialog.card().output is None
    for text, output in (("0", 0), (" logits ", "logits")):
        dialog.output.setText(text)
        assert dialog.card().output == output


def test_pruned_file_remembers_its_source(user_files, tmp_path):
    from core.model_pruning import calibrate, prune_model, save_pruned
    from core.progress import run

    folder, _ = user_files
    model = load_model("torchvision:resnet18", weights=folder / "r18_10.pt",
                       labels=folder / "labels.txt", device="cpu", **SMALL)
    report = run(prune_model(model, "l1", 30, run(calibrate(model)), "global", ["first", "last"]))
    save_pruned(report, tmp_path / "p.pt")
    again = load_model(None, weights=tmp_path / "p.pt", device="cpu")  # no SPEC: the file says
    assert again.class_names == model.class_names and again.input_size == 64
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(again.module(x), report.model.module(x))
    with pytest.raises(ModelError, match="holds a pruned torchvision:resnet18"):
        load_model("resnet18", weights=tmp_path / "p.pt", device="cpu")


# --- the command line ---------------------------------------------------------------------------

def test_cli_explains_prunes_and_explains_again_a_ten_class_model(user_files, tmp_path, capsys):
    folder, _ = user_files
    common = ["--model", "torchvision:resnet18", "--weights", str(folder / "r18_10.pt"),
              "--labels", str(folder / "labels.txt"), "--input-size", "64", "--resize", "64",
              "--device", "cpu", "--quiet"]
    explain = ["explain", str(SAMPLE), "--methods", "pathway-gradient,gradient,grad-cam",
               "--steps", "4", "--out"]
    assert main.main([*explain, str(tmp_path / "out"), *common]) == 0
    report = json.loads((tmp_path / "out" / "chelsea" / "report.json").read_text())
    names = {t["name"] for t in report["top5"]}
    assert names <= {f"part-{i}" for i in range(10)} and len(names) == 5
    assert report["target"]["name"].startswith("part-")
    pruned = tmp_path / "p.pt"
    assert main.main(["prune", "--criterion", "l1", "--sparsity", "30", "--out", str(pruned),
                      *common]) == 0
    again = ["explain", str(SAMPLE), "--methods", "pathway-gradient", "--steps", "4",
             "--weights", str(pruned), "--device", "cpu", "--quiet", "--out", str(tmp_path / "again")]
    assert main.main(again) == 0
    report = json.loads((tmp_path / "again" / "chelsea" / "report.json").read_text())
    assert {t["name"] for t in report["top5"]} <= {f"part-{i}" for i in range(10)}


@pytest.mark.parametrize("model, extra, message", [
    ("missing.py:build", [], "no such Python file"),
    ("{dir}/gray_net.py:broken", [], "the factory raised ValueError: no such checkpoint"),
    ("{dir}/gray_net.py:not_a_module", [], "returned int, not a torch nn.Module"),
    ("{dir}/gray_net.py:nothing", [], "has no callable 'nothing'"),
    ("{dir}/gray_net.py:segmenter", [], "is not a classifier"),
    ("{dir}/two_outputs.py:pair", [], "--output N"),
    ("{dir}/two_outputs.py:pair", ["--output", "2"], "output 2 names nothing"),
    ("{dir}/bad.toml", [], "unknown key 'colour'"),
    ("{dir}/gray_net.py:build", ["--labels", "{dir}/labels.txt"], "10 class names for a model with 4"),
    ("timm:no_such_net_at_all", [], "timm:no_such_net_at_all"),
    ("torchvision:resnet9000", [], "torchvision has no classification model"),
])
def test_cli_bad_specs_cost_one_line_and_exit_2(user_files, tmp_path, capsys, model, extra, message):
    folder, _ = user_files
    (folder / "bad.toml").write_text('source = "resnet18"\ncolour = "blue"\n')
    argv = ["explain", str(SAMPLE), "--out", str(tmp_path), "--model", model.format(dir=folder),
            *[a.format(dir=folder) for a in extra], "--device", "cpu", "--quiet"]
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_registries_need_no_torch():
    code = ("import sys, core.methods, core.models.sources, core.cli.options; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_image_folder_classes_are_the_models_by_name(tmp_path):
    from core.evaluation.sources import folder_source

    for name in ("part-3", "part-1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.png").write_bytes(SAMPLE.read_bytes())
    names = [f"part-{i}" for i in range(10)]
    source = folder_source(tmp_path, class_names=names)
    assert [source.load(i).label for i in range(2)] == [1, 3]
    assert [folder_source(tmp_path, class_names=["x", "y"]).load(i).label for i in range(2)] == [0, 1]


def test_published_googlenet_weights_get_its_input_transform(tmp_path, monkeypatch):
    import core.models.remote

    torch.manual_seed(0)
    torch.save(torchvision.models.googlenet(aux_logits=True, init_weights=True).state_dict(),
               tmp_path / "googlenet.pth")
    monkeypatch.setattr(core.models.remote, "hub_file", lambda name, url: tmp_path / "googlenet.pth")
    assert load_model("torchvision:googlenet", device="cpu", **SMALL).module.transform_input
    own = load_model("torchvision:googlenet", weights=tmp_path / "googlenet.pth", device="cpu", **SMALL)
    assert not own.module.transform_input  # a user's weights: as torchvision builds without weights


def test_pruned_metadata_that_is_not_a_dict_is_one_line(tmp_path):
    torch.save({"prunescope_pruned": "resnet18", "state_dict": {"w": torch.zeros(1)}}, tmp_path / "p.pt")
    with pytest.raises(ModelError, match="p.pt: not a PruneScope pruned-model checkpoint"):
        load_model("resnet18", weights=tmp_path / "p.pt", device="cpu")


THOUSAND = '''
import torch.nn as nn


def build():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))
'''


def test_a_1000_class_factory_gets_imagenet_names_with_a_note(tmp_path, capsys):
    from core.cli.options import model_from_args

    (tmp_path / "thousand.py").write_text(THOUSAND)
    spec = f"{tmp_path / 'thousand.py'}:build"
    args = main.build_parser().parse_args(["explain", "x.png", "--out", str(tmp_path / "o"), "--model", spec])
    model = model_from_args(args, device="cpu")
    assert model.names_assumed and model.class_names[285] == "Egyptian cat"
    assert "class names: ImageNet's, assumed for a model with 1000 classes" in capsys.readouterr().err
    (tmp_path / "names.txt").write_text("\n".join(f"kind {i}" for i in range(1000)))
    named = load_model(spec, device="cpu", labels=str(tmp_path / "names.txt"))
    assert not named.names_assumed and named.class_names[285] == "kind 285"
    assert not load_model("efficientnet_lite0", device="cpu").names_assumed  # ImageNet's by its source
