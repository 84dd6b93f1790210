"""Ground-truth metrics, the benchmark, ROAR and the evaluate/roar commands."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import PruneScopeError, UnsupportedMethod
from core.evaluation.benchmark import BenchmarkSettings, iter_benchmark
from core.evaluation.metrics import pointing_game, reference_map, relevance_mass
from core.evaluation.roar import RoarSettings, iter_cached_maps, iter_roar, remove_top
from core.evaluation.sources import folder_source, prepare, synthetic_source
from core.evaluation.synthetic import SmallResNet, SyntheticConfig, make_item, make_split, reinitialise
from core.progress import run
from tests.test_synthetic import synthetic_cache, trained  # noqa: F401  (session fixture)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def one_thread():
    """Torch on one thread for the heavy tests: on a shared machine competing threads slow small
    convolutions down several times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- metrics on known answers ----------------------------------------------------------------

def test_pointing_game_known_answers():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    values = np.zeros((8, 8))
    values[3, 3] = 1.0
    assert pointing_game(values, mask)
    values[7, 7] = 2.0
    assert not pointing_game(values, mask)
    assert not pointing_game(np.zeros((8, 8)), mask)  # a flat map points nowhere
    tie = np.zeros((8, 8))
    tie[2, 2] = tie[6, 6] = 1.0  # a tie reaching outside the object is a miss
    assert not pointing_game(tie, mask)
    with pytest.raises(PruneScopeError):
        pointing_game(np.zeros((4, 4)), mask)


def test_relevance_mass_known_answers():
    mask = np.zeros((4, 4), bool)
    mask[0, :] = True
    values = np.ones((4, 4))
    assert relevance_mass(values, mask) == pytest.approx(0.25)
    values[1:, :] = -5.0  # negative relevance is counter-evidence: not counted
    assert relevance_mass(values, mask) == pytest.approx(1.0)
    assert relevance_mass(-np.ones((4, 4)), mask) == 0.0


def test_remove_top_replaces_exactly_the_most_relevant_pixels():
    images = np.full((2, 4, 4, 3), 200, np.uint8)
    values = np.arange(32, dtype=np.float64).reshape(2, 4, 4)
    out = remove_top(images, values, 0.25, np.array([1, 2, 3], np.uint8), seed=0, split="train")
    removed = (out != images).any(axis=3)
    assert removed.sum(axis=(1, 2)).tolist() == [4, 4]
    assert removed[0].ravel()[-4:].all()  # the four largest values of image 0
    assert np.array_equal(out[0][removed[0]], np.tile([1, 2, 3], (4, 1)))
    # ties are broken at random, but the same way every time
    flat = np.zeros((1, 8, 8))
    a = remove_top(np.zeros((1, 8, 8, 3), np.uint8), flat, 0.5, np.full(3, 9, np.uint8), 0, "t")
    b = remove_top(np.zeros((1, 8, 8, 3), np.uint8), flat, 0.5, np.full(3, 9, np.uint8), 0, "t")
    assert np.array_equal(a, b) and (a[..., 0] == 9).sum() == 32
    assert not (a[0, :4, :, 0] == 9).all()  # not simply the first rows


# ---- the synthetic benchmark's references: oracle perfect, random at chance -------------------

def test_oracle_scores_perfectly_and_random_at_chance():
    source = synthetic_source(SyntheticConfig(), "test", 300)
    hits, masses, areas, oracle_hits, oracle_masses = [], [], [], [], []
    for i in range(source.count):
        item = source.load(i)
        rnd = reference_map("random", item.mask.shape, None, seed=i)
        oracle = reference_map("oracle", item.mask.shape, item.mask, seed=i)
        hits.append(pointing_game(rnd, item.mask))
        masses.append(relevance_mass(rnd, item.mask))
        oracle_hits.append(pointing_game(oracle, item.mask))
        oracle_masses.append(relevance_mass(oracle, item.mask))
        areas.append(item.mask.mean())
    assert np.mean(oracle_hits) == 1.0 and np.mean(oracle_masses) == 1.0
    chance = np.mean(areas)
    assert abs(np.mean(hits) - chance) < 0.04
    assert np.mean(masses) == pytest.approx(chance, abs=0.01)


def test_a_map_holding_all_relevance_inside_the_mask_scores_100_percent():
    source = synthetic_source(SyntheticConfig(), "test", 50)
    for i in range(source.count):
        item = source.load(i)
        inside = item.mask * np.random.default_rng(i).random(item.mask.shape)
        assert pointing_game(inside, item.mask)
        assert relevance_mass(inside, item.mask) == pytest.approx(1.0)


# ---- the benchmark on the trained CNN ---------------------------------------------------------

@pytest.mark.slow
def test_benchmark_on_the_trained_model(trained, one_thread):  # noqa: F811
    model = trained.model
    source = synthetic_source(SyntheticConfig(), "test")
    settings = BenchmarkSettings(methods=["gradient", "grad-cam", "pathway-gradient", "random",
                                          "oracle"], images=24, sanity_images=1, steps=10)
    result = run(iter_benchmark(model, source, settings))
    methods = result["methods"]
    assert result["images"] == 24 and not result["errors"]
    assert methods["oracle"]["pointing_game"] == 1.0
    for method in ("gradient", "grad-cam", "pathway-gradient"):
        # the trained model's evidence is the object: real methods beat the random map
        assert methods[method]["pointing_game"] > methods["random"]["pointing_game"] + 0.3
        assert methods[method]["relevance_mass"] > 2 * methods["random"]["relevance_mass"]
        assert methods[method]["deletion_auc"] < methods["random"]["deletion_auc"]
    sanity = result["sanity"]
    assert set(sanity["spearman"]) == {"gradient", "grad-cam", "pathway-gradient"}
    assert all(v[0] == pytest.approx(1.0) for v in sanity["spearman"].values())
    assert len(result["items"]) == 24 and result["items"][0]["index"] == 0


def test_unknown_method_and_oracle_without_masks_are_refused():
    model_free = synthetic_source(SyntheticConfig(), "test", 2)
    with pytest.raises(UnsupportedMethod, match="unknown method"):
        run(iter_benchmark(None, model_free, BenchmarkSettings(methods=["gradient", "nonsense"])))
    model_free.has_masks = False
    with pytest.raises(PruneScopeError, match="ground-truth masks"):
        run(iter_benchmark(None, model_free, BenchmarkSettings(methods=["oracle"])))


# ---- a user's image folder with masks ---------------------------------------------------------

def _write_folder(root: Path, count: int = 4) -> tuple[Path, Path]:
    from PIL import Image

    config = SyntheticConfig()
    images, masks = root / "data", root / "data_masks"
    for i in range(count):
        rgb, label, mask = make_item(config, "test", i)
        name = config.class_names[label]
        (images / name).mkdir(parents=True, exist_ok=True)
        (masks / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).resize((128, 96)).save(images / name / f"img{i}.jpg")
        Image.fromarray(mask.astype(np.uint8) * 255).resize((128, 96), Image.NEAREST).save(
            masks / name / f"img{i}.png")
    return images, masks


def test_folder_masks_follow_the_models_resize_and_crop(tmp_path, lite0):
    images, masks = _write_folder(tmp_path, 2)
    source = folder_source(images, masks)
    assert source.count == 2 and source.has_masks
    item = source.load(0)
    prepared = prepare(lite0, item, "predicted")
    view, mask = prepared.view, prepared.mask
    assert view.shape == (224, 224, 3) and mask.shape == (224, 224)
    assert prepared.target == prepared.predicted == int(prepared.logits.argmax())
    # the object is a flat colour: inside the aligned mask the view barely varies, and it differs
    # from the surroundings
    inside = view[mask].astype(float)
    ring = view[np.logical_xor(mask, _dilate(mask, 12))].astype(float)
    assert inside.std(0).max() < 25
    assert np.abs(inside.mean(0) - ring.mean(0)).max() > 30


def _dilate(mask, r):
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=r)


def test_folder_without_images_or_mask_is_an_error(tmp_path):
    with pytest.raises(PruneScopeError, match="no such dataset folder"):
        folder_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PruneScopeError, match="no images"):
        folder_source(tmp_path / "empty")
    images, masks = _write_folder(tmp_path, 1)
    next(masks.rglob("*.png")).unlink()
    source = folder_source(images, masks)
    with pytest.raises(PruneScopeError, match="no mask"):
        source.load(0)


# ---- ROAR --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_roar_small_setting_random_degrades_less_than_the_oracle(trained, tmp_path, one_thread):  # noqa: F811
    config = SyntheticConfig()
    model = trained.model
    train = make_split(config, "train", 600)
    test = make_split(config, "test", 300)
    settings = RoarSettings(methods=["oracle", "gradient"], fractions=[0.1, 0.9])  # 7 trainings
    result = run(iter_roar(model, lambda seed: reinitialise(SmallResNet(config.classes), seed),
                           train, test, settings, tmp_path / "maps", "small"))
    table = result["methods"]
    assert set(table) == {"oracle", "gradient", "random"}
    assert result["unchanged_accuracy"] > 0.75
    assert table["random"]["auc"] > table["oracle"]["auc"]
    # removing 10 % by the oracle takes the whole object: chance level
    assert table["oracle"]["accuracy"][1] < 1 / config.classes + 0.15
    for entry in table.values():
        assert entry["fractions"] == [0.0, 0.1, 0.9]
        assert entry["accuracy"][0] == result["unchanged_accuracy"]
    # maps are cached: a second request reads the file instead of computing
    cached = tmp_path / "maps" / "gradient.train.npy"
    stamp = cached.stat().st_mtime_ns
    key = json.loads(cached.with_suffix(".json").read_text())["key"]
    values = run(iter_cached_maps(None, train.images, train.labels, None, "train", "gradient",
                                  settings, tmp_path / "maps", key))
    assert values.shape == (600, 64, 64) and cached.stat().st_mtime_ns == stamp


# ---- the commands -----------------------------------------------------------------------------

def _main(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "main.py", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_evaluate_command_writes_json_and_plots(trained, tmp_path, tmp_path_factory):  # noqa: F811
    out = tmp_path / "eval"
    done = _main("evaluate", "--dataset", "synthetic", "--out", out, "--images", 6,
                 "--sanity-images", 1, "--methods", "gradient,grad-cam,random,oracle",
                 "--steps", 5, "--cache-dir", synthetic_cache(tmp_path_factory), "--device", "cpu",
                 "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "results.json").read_text())
    assert result["model"]["cached"] and result["images"] == 6
    assert result["methods"]["oracle"]["pointing_game"] == 1.0
    for name in ("bars.png", "curves.png", "sanity_spearman.png", "sanity_ssim.png",
                 "sanity_maps.png", "maps.png", "leaderboard.png"):
        assert (out / name).stat().st_size > 1000
    with (out / "leaderboard.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [row["method"] for row in table] == [row["method"] for row in result["leaderboard"]["rows"]]
    assert {row["method"] for row in table} == {"gradient", "grad-cam", "random", "oracle"}
    for column in ("road_morf", "average_drop", "faithfulness_correlation", "sparseness", "rank",
                   "deletion_auc_ci", "pointing_game"):
        assert all(row[column] != "" for row in table), column
    assert table[0]["rank"] == "1" and table[-1]["method"] in ("random", "grad-cam")
    lo, hi = json.loads(table[0]["deletion_auc_ci"])
    assert lo <= float(table[0]["deletion_auc"]) <= hi


@pytest.mark.slow
def test_evaluate_and_roar_on_an_image_folder_with_masks(tmp_path):
    images, _ = _write_folder(tmp_path, 12)  # masks in the default place, data_masks
    out = tmp_path / "eval"
    done = _main("evaluate", "--dataset", images, "--out", out, "--methods", "gradient,oracle",
                 "--images", 3, "--sanity-images", 0, "--steps", 4, "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "results.json").read_text())
    assert result["model"]["name"] == "efficientnet_lite0" and result["images"] == 3
    assert result["methods"]["oracle"]["pointing_game"] == 1.0  # masks were found and aligned
    assert result["accuracy"] is None  # folder indices are not ImageNet classes
    assert result["items"][0]["name"].endswith("img0.jpg")
    out = tmp_path / "roar"
    done = _main("roar", "--dataset", images, "--out", out, "--methods", "gradient",
                 "--fractions", "50", "--epochs", 1, "--batch-size", 4, "--device", "cpu",
                 "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "roar.json").read_text())
    assert (result["train_images"], result["test_images"]) == (9, 3)  # every fifth is a test image
    assert set(result["methods"]) == {"gradient", "random"}
    assert (out / "roar.png").stat().st_size > 1000
    assert (out / "maps" / "gradient.train.npy").is_file()


def test_command_defaults_match_the_library_and_help_does_not_load_torch():
    from core.cli.evaluate import EVALUATE_DEFAULT
    from core.evaluation.benchmark import DEFAULT_METHODS

    assert EVALUATE_DEFAULT == DEFAULT_METHODS
    code = ("import sys; from main import build_parser; build_parser(); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_commands_refuse_bad_input(tmp_path):
    done = _main("evaluate", "--dataset", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert done.returncode == 2 and "not 'synthetic' and not a folder" in done.stderr
    done = _main("roar", "--dataset", "synthetic", "--out", tmp_path / "o", "--fractions", "0,50")
    assert done.returncode == 2 and "fractions" in done.stderr
    for model in (["--model", "vgg16"], ["--output", "0"]):
        done = _main("evaluate", "--dataset", "synthetic", "--out", tmp_path / "o", *model)
        assert done.returncode == 2 and "image folder" in done.stderr


# ---- the Evaluate tab ---------------------------------------------------------------------------

@pytest.fixture
def context(qtbot):
    from gui.parts.context import AppContext

    ctx = AppContext()
    yield ctx
    ctx.shutdown()


@pytest.mark.slow
def test_evaluate_tab_runs_the_sanity_check_of_the_image_on_screen(qtbot, context, photo,
                                                                  one_thread):
    from gui.evaluate.tab import EvaluateTab
    from gui.parts.context import ModelChoice

    tab = EvaluateTab(context)
    qtbot.addWidget(tab)
    with qtbot.waitSignal(context.engine_changed, timeout=300_000):
        context.load_model(ModelChoice("efficientnet_lite0", device="cpu"))
        context.open_image(photo("coffee.png"))
    assert tab.run_button.isEnabled()
    tab.set_methods(["gradient", "grad-cam"])
    with qtbot.waitSignal(tab.checked, timeout=600_000):
        tab.run_sanity()
        assert tab.cancel_button.isEnabled()
    result = tab.shown.result
    assert result.methods == ["gradient", "grad-cam"]
    assert len(result.steps) == len(result.blocks) + 1 > 10
    # one plot: a Spearman and an SSIM line per method
    assert len(tab.plot.getPlotItem().listDataItems()) == 4
    # the grid shows the chosen steps; typing others redraws it without recomputing
    assert {step for _, step in tab.grid.cells} == set(map(int, tab.steps.text().split(",")))
    tab.steps.setText("0,2")
    tab.steps.editingFinished.emit()
    assert set(tab.grid.cells) == {(m, s) for m in result.methods for s in (0, 2)}
    tab.steps.setText("0,999")
    tab.steps.editingFinished.emit()
    assert "between 0 and" in tab.message.text()
    assert result.spearman["gradient"][0] == pytest.approx(1.0)


def test_evaluate_tab_shows_a_results_folder(qtbot, context, tmp_path):
    from core.io.display import save_png
    from gui.evaluate.tab import EvaluateTab

    tab = EvaluateTab(context)
    qtbot.addWidget(tab)
    (tmp_path / "roar.json").write_text(json.dumps({
        "train_images": 600, "methods": {
            "gradient": {"fractions": [0, 0.5], "accuracy": [0.99, 0.41], "auc": 0.35},
            "random": {"fractions": [0, 0.5], "accuracy": [0.99, 0.8], "auc": 0.45}}}))
    save_png(tmp_path / "roar.png", np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "notes.png").write_text("not a picture")
    tab.open_results(tmp_path)
    text = tab.results.summary.text()
    assert "gradient" in text and "0.410" in text and "0.450" in text
    assert tab.results.shown == [tmp_path / "roar.png"]  # the unreadable one is left out
    tab.open_results(tmp_path / "empty")
    assert "No results.json" in tab.results.summary.text()
