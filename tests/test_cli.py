"""The headless command line: `explain` writes what it promises; bad input costs one line and exit 2."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_images import png_header

import main
from core.io.images import load_image

METHODS = "pathway-gradient,gradient,grad-cam"


@pytest.fixture(scope="module")
def explained(tmp_path_factory, lite0):
    """One explain run over a real photo and every kind of bad file, shared by the tests below."""
    folder = tmp_path_factory.mktemp("inputs")
    coffee = shutil.copy(Path(__file__).parent.parent / "resources" / "samples" / "coffee.png", folder)
    bad = {
        "missing": folder / "missing.png",
        "text": folder / "notes.png",
        "empty": folder / "empty.jpg",
        "truncated": folder / "truncated.png",
        "bomb": folder / "bomb.png",
    }
    bad["text"].write_text("not an image")
    bad["empty"].write_bytes(b"")
    bad["truncated"].write_bytes(Path(coffee).read_bytes()[:5000])
    bad["bomb"].write_bytes(png_header(40000, 40000))
    out = tmp_path_factory.mktemp("out")
    argv = ["explain", str(coffee), *map(str, bad.values()), "--out", str(out), "--methods", METHODS,
            "--steps", "5", "--sparsity", "80", "--device", "cpu", "--quiet"]
    proc = subprocess.run([sys.executable, "main.py", *argv], cwd=Path(main.__file__).parent,
                          capture_output=True, text=True, timeout=900)
    return proc, out / "coffee", Path(coffee), bad


def test_explain_writes_every_file(explained):
    proc, out, _, _ = explained
    names = {p.name for p in out.iterdir()}
    expected = {"input.npy", "curves.csv", "report.json", "comparison.png"}
    expected |= {f"{m}.{ext}" for m in METHODS.split(",") for ext in ("npy", "png")}
    assert expected <= names, proc.stderr


def test_input_npy_is_the_exact_model_input(explained, lite0):
    _, out, coffee, _ = explained
    x, _ = lite0.preprocess(load_image(coffee))
    saved = np.load(out / "input.npy")
    assert saved.dtype == np.float32 and saved.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(saved, x.numpy())


def test_maps_are_raw_signed_float32_at_input_resolution(explained, lite0):
    _, out, coffee, _ = explained
    from core.pathway.engine import Engine

    engine = Engine(lite0, load_image(coffee))
    gradient = np.load(out / "gradient.npy")
    assert gradient.dtype == np.float32 and gradient.shape == (224, 224)
    assert gradient.min() < 0 < gradient.max()  # signed, not normalised
    np.testing.assert_allclose(gradient, engine.attribution("gradient"), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(np.load(out / "pathway-gradient.npy"), engine.pathway(80.0).map,
                               rtol=1e-5, atol=1e-8)


def test_report_and_curves(explained):
    _, out, _, _ = explained
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "efficientnet_lite0" and report["device"] == "cpu"
    assert report["target"]["name"] == "espresso" and report["target"]["probability"] > 0.9
    assert len(report["top5"]) == 5
    for method in METHODS.split(","):
        entry = report["methods"][method]
        assert 0 <= entry["deletion_auc"] <= 1 and 0 <= entry["insertion_auc"] <= 1
        assert entry["seconds"] > 0 and len(entry["output_change_lerf"]) == 10
    pathway = report["methods"]["pathway-gradient"]["pathway"]
    # the fraction actually pruned: 80 % of the neurons, to within one
    assert pathway["sparsity"] == pytest.approx(80.0, abs=1e-3) and pathway["sparsity_requested"] == 80.0
    assert pathway["output_change"] >= 0
    kept = sum(layer["kept"] for layer in pathway["neurons_kept"])
    total = sum(layer["total"] for layer in pathway["neurons_kept"])
    assert kept / total == pytest.approx(0.2, abs=0.01)
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert len(rows) == 3 * 2 * 6  # methods x (deletion, insertion) x (steps + 1)


def test_each_bad_file_costs_one_line_and_the_rest_goes_on(explained):
    proc, out, _, bad = explained
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("prunescope: error:")]
    assert len(errors) == len(bad)
    for path in bad.values():
        assert sum(str(path) in line for line in errors) == 1
    assert "Traceback" not in proc.stderr
    assert (out / "report.json").exists()


def run_main(argv, capsys):
    code = main.main(argv)
    return code, capsys.readouterr().err


def test_unknown_model_is_exit_2(tmp_path, capsys):
    code, err = run_main(["explain", "x.png", "--out", str(tmp_path), "--model", "alexnet9000"], capsys)
    assert code == 2 and "alexnet9000" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", ["garbage", "empty", "mismatch"])
def test_bad_weights_file_is_exit_2(tmp_path, capsys, content):
    weights = tmp_path / "weights.pth"
    if content == "garbage":
        weights.write_bytes(b"\x00not a checkpoint" * 10)
    elif content == "empty":
        weights.write_bytes(b"")
    else:
        torch.save({"fc.weight": torch.zeros(3, 3)}, weights)
    code, err = run_main(["explain", "x.png", "--out", str(tmp_path), "--model", "resnet18",
                          "--weights", str(weights)], capsys)
    assert code == 2 and err.startswith("prunescope: error:") and len(err.strip().splitlines()) == 1


def test_unknown_method_is_exit_2(tmp_path, capsys):
    code, err = run_main(["explain", "x.png", "--out", str(tmp_path), "--methods", "gradient,telepathy"], capsys)
    assert code == 2 and "telepathy" in err


def test_models_lists_the_embedded_model_as_offline(capsys):
    assert main.main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("efficientnet_lite0"))
    assert "yes" in line


def test_readme_names_every_command_that_takes_model():
    import argparse
    import re

    commands = next(a for a in main.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    taking = {name for name, parser in commands.choices.items()
              if any("--model" in action.option_strings for action in parser._actions)}
    text = (Path(main.__file__).parent / "README.md").read_text()
    start = text.index("Every command that opens a model")
    assert set(re.findall(r"`([a-z-]+)`", text[start:text.index("--model SPEC", start)])) == taking


@pytest.mark.parametrize("mode", ["auto", "map", "blend", "masked", "alpha"])
def test_display_option_draws_the_pngs_in_that_mode(tiny_cli, tiny, photo, tmp_path, capsys, mode):
    from PIL import Image

    from core.io import display
    from core.pathway.engine import Engine

    argv = ["explain", str(photo("coffee.png")), "--out", str(tmp_path), "--methods", "gradient,grad-cam",
            "--steps", "1", "--display", mode, "--display-top", "5", "--quiet"]
    code, err = run_main(argv, capsys)
    assert code == 0, err
    out = tmp_path / "coffee"
    view = Engine(tiny, load_image(photo("coffee.png"))).view
    for method in ("gradient", "grad-cam"):
        raw = np.load(out / f"{method}.npy")
        with Image.open(out / f"{method}.png") as png:
            drawn = np.asarray(png)
        shown = display.mode_for(method, mode)
        np.testing.assert_array_equal(drawn, display.render(view, raw, shown, top_percent=5))
        if shown == "masked":
            assert drawn.any(axis=2).sum() <= round(0.05 * raw.size)
    if mode == "auto":  # gradient alone on black, Grad-CAM blended over the photo
        assert display.mode_for("gradient") == "map" and display.mode_for("grad-cam") == "blend"
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["display"] == mode and report["settings"]["display_top_percent"] == 5


@pytest.mark.parametrize("argv", [["--display", "heat"], ["--display-top", "0"], ["--display-top", "101"],
                                  ["--display-top", "x"]])
def test_bad_display_options_are_refused_with_one_error_line(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main.build_parser().parse_args(["explain", "x.png", "--out", str(tmp_path), *argv])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exit_.value.code == 2 and len(errors) == 1 and "--display" in errors[0]


def test_report_records_each_methods_layer_and_settings(tiny_cli, photo, tmp_path, capsys):
    methods = "grad-cam++,pathway-grad-cam++,occlusion,deeplift,gradient"
    argv = ["explain", str(photo("coffee.png")), "--out", str(tmp_path), "--methods", methods,
            "--steps", "2", "--quiet"]
    code, err = run_main(argv, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "coffee" / "report.json").read_text())
    entries = report["methods"]
    assert entries["grad-cam++"]["layer"] == entries["pathway-grad-cam++"]["layer"] == "conv2"
    assert entries["occlusion"]["params"]["window"] == 5 and entries["occlusion"]["params"]["stride"] == 2
    assert "layer" not in entries["gradient"] and entries["pathway-grad-cam++"]["pathway"]["sparsity"] > 60
    # the tiny net calls torch.relu, which Captum's DeepLIFT cannot hook: skipped with its reason
    assert "deeplift" not in entries and "function call" in report["skipped"]["deeplift"]


def test_method_params_set_each_methods_settings_and_are_recorded(tiny_cli, tiny, photo, tmp_path, capsys):
    from core.methods import BY_NAME
    from core.pathway.engine import Engine

    argv = ["explain", str(photo("coffee.png")), "--out", str(tmp_path), "--methods",
            "occlusion,rise,integrated-gradients", "--steps", "2", "--quiet", "--method-params",
            "occlusion.window=8,occlusion.stride=8,rise.masks=16,rise.seed=5,integrated-gradients.baseline=black"]
    code, err = run_main(argv, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "coffee" / "report.json").read_text())
    entries = report["methods"]
    assert entries["occlusion"]["params"] == {"window": 8, "stride": 8, "baseline": "mean", "batch": 32}
    assert entries["rise"]["params"]["masks"] == 16 and entries["rise"]["params"]["seed"] == 5
    assert entries["integrated-gradients"]["params"]["baseline"] == "black"
    assert report["settings"]["method_params"]["rise"] == {"masks": 16, "seed": 5}
    # the map written is the one those settings give
    engine = Engine(tiny, load_image(photo("coffee.png")), settings=report["settings"]["method_params"])
    np.testing.assert_allclose(np.load(tmp_path / "coffee" / "rise.npy"), engine.attribution("rise"), rtol=1e-5)
    assert BY_NAME["rise"].params["masks"] == 500  # the registry's method keeps its defaults


@pytest.mark.parametrize("params, message", [
    ("occlusion.size=3", "occlusion has no setting 'size': choose from window, stride, baseline"),
    ("rise.masks=0", "rise.masks must be a whole number from 1 to 100000"),
    ("smoothgrad.noise=2", "smoothgrad.noise must be a number from 0 to 1"),
])
def test_bad_method_params_are_one_line_naming_what_is_allowed(tiny_cli, photo, tmp_path, capsys, params, message):
    with pytest.raises(SystemExit) as exit_:
        run_main(["explain", str(photo("coffee.png")), "--out", str(tmp_path), "--method-params", params], capsys)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exit_.value.code == 2 and len(errors) == 1 and message in errors[0]


@pytest.mark.parametrize("command", ["sanity", "prune-sweep"])
def test_sanity_and_the_sweep_explain_with_the_methods_settings(tiny_cli, photo, tmp_path, capsys, monkeypatch,
                                                                command):
    import core.pathway.engine

    asked, real = [], core.pathway.engine.compute_map
    monkeypatch.setattr(core.pathway.engine, "compute_map",
                        lambda *a, settings=None, **k: asked.append(settings) or real(*a, settings=settings, **k))
    params = {"integrated-gradients": {"steps": 2, "baseline": "black"}}
    argv = {"sanity": ["sanity", str(photo("coffee.png")), "--out", str(tmp_path)],
            "prune-sweep": ["prune-sweep", "--criteria", "l1", "--sparsities", "50", "--calib", str(tiny_cli),
                            "--out", str(tmp_path), "--no-latency", "--protect", "none"]}[command]
    code, err = run_main([*argv, "--methods", "integrated-gradients", "--quiet",
                          "--method-params", "integrated-gradients.steps=2,integrated-gradients.baseline=black"],
                         capsys)
    assert code == 0, err
    assert asked and all(settings == params for settings in asked)
    written = next(tmp_path.rglob("sanity.json" if command == "sanity" else "sweep.json"))
    assert json.loads(written.read_text())["method_params"] == params


@pytest.mark.parametrize("command", ["sanity", "roar", "prune-sweep"])
def test_every_command_that_explains_refuses_bad_method_params(tmp_path, capsys, command):
    with pytest.raises(SystemExit) as exit_:
        run_main([command, *(["x.png"] if command == "sanity" else ["--dataset", "synthetic"] * (command == "roar")),
                  "--out", str(tmp_path), "--method-params", "occlusion.size=3"], capsys)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exit_.value.code == 2 and len(errors) == 1 and "occlusion has no setting 'size'" in errors[0]
