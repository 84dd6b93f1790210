"""Evaluation on the datasets users have: ImageNet's folder and CSV layouts, samples, labels the
model cannot have, and runs that are stopped and go on."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_path
from PIL import Image

from core.errors import PruneScopeError
from core.evaluation.sources import folder_source
from core.models.loading import imagenet_classes

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
WORDNET = {"chelsea.png": ("n02124075", 285), "coffee.png": ("n07920052", 967), "rocket.jpg": ("n03773504", 657)}
MODEL_PY = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 8, stride=8), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 3))
"""


def _save(path: Path, photo: str, size: int = 80) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(photo_path(photo)).convert("RGB").resize((size, size)).save(path)


@pytest.fixture
def wordnet_folders(tmp_path):
    for photo, (wnid, _) in WORDNET.items():
        _save(tmp_path / "data" / wnid / f"{Path(photo).stem}.png", photo)
    return tmp_path / "data"


def test_wordnet_id_folders_are_the_imagenet_classes(wordnet_folders):
    source = folder_source(wordnet_folders, class_names=imagenet_classes(), strict=True)
    labels = {source.load(i).name.split("/")[0]: source.load(i).label for i in range(source.count)}
    assert labels == {wnid: index for wnid, index in WORDNET.values()}
    assert imagenet_classes()[285] == "Egyptian cat"


def test_a_labels_csv_names_classes_by_wordnet_id_index_or_name(tmp_path):
    flat = tmp_path / "val"
    for i, photo in enumerate(PHOTOS):
        _save(flat / f"ILSVRC2012_val_{i:08d}.JPEG".replace(".JPEG", ".png"), photo)
    csv = tmp_path / "labels.csv"
    # ImageNet's own layout: ids without extension, the WordNet ID first in PredictionString
    csv.write_text("ImageId,PredictionString\n"
                   "ILSVRC2012_val_00000000,n02124075 1 2 3 4\n"
                   "ILSVRC2012_val_00000001.png,967\n"
                   "ILSVRC2012_val_00000002,missile\n"
                   "ILSVRC2012_val_00000099,n01440764 5 6 7 8\n")  # a row with no image is fine
    source = folder_source(flat, class_names=imagenet_classes(), labels_csv=csv, strict=True)
    assert [source.load(i).label for i in range(source.count)] == [285, 967, 657]


@pytest.mark.parametrize("label, line", [("n99999999", 2), ("1000", 2), ("zebra-like", 2)])
def test_a_label_the_model_cannot_have_is_refused(tmp_path, label, line):
    _save(tmp_path / "val" / "a.png", "coffee.png")
    csv = tmp_path / "labels.csv"
    csv.write_text(f"image,label\na.png,{label}\n")
    with pytest.raises(PruneScopeError, match=f"labels.csv line {line}: '{label}' is not one of"):
        folder_source(tmp_path / "val", class_names=imagenet_classes(), labels_csv=csv)


def test_an_image_without_a_label_is_refused(tmp_path):
    _save(tmp_path / "val" / "a.png", "coffee.png")
    _save(tmp_path / "val" / "b.png", "coffee.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("a.png,967\n")
    with pytest.raises(PruneScopeError, match="no label for 1 image.*first: b.png"):
        folder_source(tmp_path / "val", class_names=imagenet_classes(), labels_csv=csv)


def test_a_folder_that_names_no_class_is_refused_when_labels_are_explained(wordnet_folders):
    (wordnet_folders / "n02124075").rename(wordnet_folders / "kitty")
    with pytest.raises(PruneScopeError, match="kitty: the folder names none of the model's 1000 classes"):
        folder_source(wordnet_folders, class_names=imagenet_classes(), strict=True)
    # explaining the prediction, the folders are the dataset's own classes, in sorted order
    source = folder_source(wordnet_folders, class_names=imagenet_classes())
    assert source.class_names == ["kitty", "n03773504", "n07920052"]
    assert [source.load(i).label for i in range(source.count)] == [0, 1, 2]


def test_a_model_without_class_names_numbers_folders_in_sorted_order(tmp_path):
    for name in ("b", "a"):
        _save(tmp_path / name / "x.png", "coffee.png")
    source = folder_source(tmp_path, class_names=["class 0", "class 1"], strict=True)
    assert [(source.load(i).name, source.load(i).label) for i in range(2)] == [("a/x.png", 0), ("b/x.png", 1)]
    with pytest.raises(PruneScopeError, match="2 class folders for a model with 1 classes"):
        folder_source(tmp_path, class_names=["class 0"], strict=True)


def test_a_sample_takes_the_classes_in_proportion(tmp_path):
    for name, count in (("a", 30), ("b", 10)):
        for i in range(count):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    source = folder_source(tmp_path, class_names=["a", "b"], sample=8, seed=3)
    labels = [source.load(i).label for i in range(source.count)]
    assert source.count == 8 and labels.count(0) == 6 and labels.count(1) == 2
    again = folder_source(tmp_path, class_names=["a", "b"], sample=8, seed=3)
    assert [again.load(i).name for i in range(8)] == [source.load(i).name for i in range(8)]
    other = folder_source(tmp_path, class_names=["a", "b"], sample=8, seed=4)
    assert [other.load(i).name for i in range(8)] != [source.load(i).name for i in range(8)]


# --- the command: settings kept, runs that go on ---------------------------------------------------

@pytest.fixture
def dataset(tmp_path):
    """A user's model file and 18 photos in three class folders."""
    (tmp_path / "net.py").write_text(MODEL_PY)
    photos = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png", "camera.png")
    for c, name in enumerate(("0", "1", "2")):
        for k in range(6):
            _save(tmp_path / "data" / name / f"{k}.png", photos[(c + k) % len(photos)], 64 + 8 * k)
    return tmp_path


def evaluate_argv(folder: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "main.py", "evaluate", "--dataset", str(folder / "data"), "--out", str(out),
            "--model", f"{folder / 'net.py'}:build", "--input-size", "64", "--resize", "64",
            "--images", "18", "--sanity-images", "1", "--steps", "5", "--target", "label",
            "--methods", "gradient,integrated-gradients,grad-cam,random", "--device", "cpu", "--quiet", *extra]


def _results(out: Path) -> dict:
    result = json.loads((out / "results.json").read_text())
    for key in ("seconds", "timing"):
        result.pop(key)
    return result


@pytest.mark.slow
def test_a_killed_run_goes_on_and_ends_as_an_uninterrupted_one(dataset):
    whole = dataset / "whole"
    done = subprocess.run(evaluate_argv(dataset, whole), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = dataset / "stopped" / "records"
    proc = subprocess.Popen(evaluate_argv(dataset, dataset / "stopped"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and len(list(records.glob("[0-9a-f]*.npz"))) < 4:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    kept = len(list(records.glob("[0-9a-f]*.npz")))
    assert proc.returncode == -signal.SIGKILL and 4 <= kept < 19  # 18 images and a sanity check
    assert not (dataset / "stopped" / "results.json").exists()
    resumed = subprocess.run(evaluate_argv(dataset, dataset / "stopped")[:-1], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    computed = int(re.search(r"(\d+) images computed", resumed.stderr).group(1))
    assert 18 - kept <= computed < 18  # the images finished before the kill are read back
    assert _results(dataset / "stopped") == _results(whole)
    assert not list(records.glob(".partial-*"))


@pytest.mark.slow
def test_a_changed_setting_is_refused_unless_overwritten(dataset):
    out = dataset / "out"
    argv = evaluate_argv(dataset, out, "--images", "2", "--sanity-images", "0")
    first = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    changed = [a if a != "gradient,integrated-gradients,grad-cam,random" else "gradient,random" for a in argv]
    refused = subprocess.run(changed, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f'prunescope: error: {out} holds a run with another methods (["gradient", "integrated-gradients", "grad-cam", '
        f'"random"], now ["gradient", "random"]): run it with the same settings to go on, or start again '
        f'(--overwrite)']
    other_seed = subprocess.run([*argv, "--seed", "5"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert other_seed.returncode == 2 and "another seed (0, now 5)" in other_seed.stderr
    redone = subprocess.run([*changed, "--overwrite"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert redone.returncode == 0, redone.stderr
    assert set(json.loads((out / "results.json").read_text())["methods"]) == {"gradient", "random"}


def test_an_unknown_class_folder_is_refused_before_any_work(dataset):
    (dataset / "data" / "2").rename(dataset / "data" / "7")
    argv = evaluate_argv(dataset, dataset / "out")
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"prunescope: error: {dataset / 'data' / '7'}: class 7 is not one of the model's 3 classes (0..2)"]
    assert not (dataset / "out" / "records").exists()


def test_a_sample_is_scored_whole_and_in_proportion(dataset):
    out = dataset / "out"
    argv = evaluate_argv(dataset, out, "--sample", "6", "--sanity-images", "0", "--methods", "gradient",
                         "--metrics", "none")
    argv = argv[:argv.index("--images")] + argv[argv.index("--images") + 2:]  # no --limit
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    items = json.loads((out / "results.json").read_text())["items"]
    assert len(items) == 6 and sorted(i["label"] for i in items) == [0, 0, 1, 1, 2, 2]


def test_stage_times_and_speed_are_reported(dataset):
    out = dataset / "out"
    proc = subprocess.run(evaluate_argv(dataset, out, "--images", "2", "--sanity-images", "0"),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    timing = json.loads((out / "results.json").read_text())["timing"]
    assert timing["images_computed"] == 2 and timing["images_per_second"] > 0
    assert set(timing["seconds_per_image"]) == {"maps", "curves", "road", "other metrics"}
    assert all(v >= 0 for v in timing["seconds_per_image"].values())
    assert np.isclose(sum(timing["seconds_per_image"].values()) * 2, timing["seconds"], rtol=0.5)


def test_a_sweep_reads_its_finished_points_back(tiny_cli, tmp_path, capsys, monkeypatch):
    import core.model_pruning.pipeline as pipeline
    from main import main

    argv = ["prune-sweep", "--criteria", "l1", "--methods", "gradient", "--calib", str(tiny_cli),
            "--out", str(tmp_path / "sweep"), "--no-latency", "--protect", "none", "--quiet"]
    assert main([*argv, "--sparsities", "20,40"]) == 0
    first = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["points"]
    pruned = []
    real = pipeline.prune_copy
    monkeypatch.setattr(pipeline, "prune_copy", lambda model, used, name, s, *a, **k: (
        pruned.append(s), (yield from real(model, used, name, s, *a, **k)))[1])
    assert main([*argv, "--sparsities", "20,40,60"]) == 0  # one more sparsity: only it is computed
    again = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["points"]
    assert pruned == [60.0] and again[:2] == first and again[2]["sparsity"] == 60.0
    assert main([*argv, "--sparsities", "20", "--mode", "per-layer"]) == 2  # another setting
    assert "another mode" in capsys.readouterr().err


def test_roar_maps_follow_the_methods_settings(tiny, tmp_path, monkeypatch):
    import core.evaluation.roar as roar
    from core.evaluation.records import RecordStore
    from core.evaluation.synthetic import Dataset
    from core.progress import run

    rng = np.random.default_rng(0)
    data = Dataset(rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), np.arange(4) % 4, None, ["a"] * 4)
    monkeypatch.setattr(roar, "roar_job", lambda *a, **k: 0.5)

    def maps(folder, params):
        settings = roar.RoarSettings(methods=["integrated-gradients"], fractions=[0.3], epochs=1,
                                     method_params=params)
        store = RecordStore(folder, roar.run_settings(tiny, settings, "data"))
        result = run(roar.iter_roar(tiny, None, data, data, settings, folder / "maps", "data", store=store))
        assert result["settings"]["method_params"] == params
        return np.load(folder / "maps" / "integrated-gradients.train.npy")

    default = maps(tmp_path / "a", {})
    few = maps(tmp_path / "b", {"integrated-gradients": {"steps": 2, "baseline": "black"}})
    assert not np.allclose(default, few)
    with pytest.raises(PruneScopeError, match="another method_params"):  # the run in a was made without
        maps(tmp_path / "a", {"integrated-gradients": {"steps": 2}})
    with pytest.raises(PruneScopeError, match="another method_params"):  # ... and the one in b with them
        maps(tmp_path / "b", {})


def test_roar_reads_its_finished_jobs_back(tiny, tmp_path, monkeypatch):
    import core.evaluation.roar as roar
    from core.evaluation.records import RecordStore
    from core.evaluation.synthetic import Dataset
    from core.progress import run

    rng = np.random.default_rng(0)
    data = Dataset(rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), np.arange(6) % 4, None, ["a"] * 4)
    trained = []
    monkeypatch.setattr(roar, "roar_job", lambda *a, **k: trained.append(a[5]) or 0.5 + a[5] / 10)  # a[5]: the fraction
    settings = roar.RoarSettings(methods=["gradient"], fractions=[0.3], epochs=1)

    def go(settings):
        store = RecordStore(tmp_path, roar.run_settings(tiny, settings, "data"))
        return run(roar.iter_roar(tiny, None, data, data, settings, tmp_path / "maps", "data", store=store))

    first = go(settings)
    assert len(trained) == 3  # unchanged data, gradient and random at 30 %
    trained.clear()
    second = go(roar.RoarSettings(methods=["gradient"], fractions=[0.3, 0.6], epochs=1))
    assert sorted(trained) == [0.6, 0.6]  # only the new fraction, for gradient and random
    assert second["methods"]["gradient"]["accuracy"][:2] == first["methods"]["gradient"]["accuracy"]
    with pytest.raises(PruneScopeError, match="another epochs"):
        go(roar.RoarSettings(methods=["gradient"], fractions=[0.3], epochs=2))
