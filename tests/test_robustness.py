"""Hostile inputs, write failures, interrupts and per-item isolation (issue 12): nothing lost, nothing
mixed, no traceback. Most runs use the tiny CNN (conftest.tiny_cli), so each takes a fraction of a
second; the signal tests run the real CLI on the embedded model in a subprocess."""
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main
from core.errors import ImageError
from core.io.images import load_image
from core.io.output import PARTIAL_PREFIX, locked, result_names, staged_folder

ROOT = Path(main.__file__).parent
FAST = ["--methods", "gradient", "--steps", "1", "--quiet"]


def small_photo(photo, name: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lstrip(".").upper().replace("JPG", "JPEG")
    Image.open(photo(name)).convert("RGB").resize((48, 32)).save(path, suffix or "PNG")
    return path


def explain(argv, capsys):
    code = main.main(["explain", *map(str, argv)])
    return code, capsys.readouterr().err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("prunescope: error:")]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(PARTIAL_PREFIX)]


def complete(folder: Path) -> bool:
    """A result folder that looks complete: report.json, and every file it implies."""
    return (folder / "report.json").is_file() and (folder / "comparison.png").is_file()


# --- 1. one result folder per input ----------------------------------------------------------------

def test_inputs_sharing_a_stem_get_a_folder_each_that_names_its_source(tiny_cli, tiny, photo, tmp_path,
                                                                        capsys):
    inputs = [small_photo(photo, "coffee.png", tmp_path / "a" / "photo.png"),
              small_photo(photo, "chelsea.png", tmp_path / "b" / "photo.png"),
              small_photo(photo, "astronaut.png", tmp_path / "a" / "photo.webp"),
              small_photo(photo, "rocket.jpg", tmp_path / "..png")]
    out = tmp_path / "out"
    code, err = explain([*inputs, "--out", out, *FAST], capsys)
    assert code == 0, err
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 4 and not (out / "input.npy").exists()  # "..png" did not write into --out
    sources = {}
    for folder in folders:
        report = json.loads((folder / "report.json").read_text())
        sources[report["source"]] = folder
    assert set(sources) == {str(p.resolve()) for p in inputs}
    for path in inputs:  # each folder holds its own image's input, not the last one's
        x, _ = tiny.preprocess(load_image(path))
        np.testing.assert_array_equal(np.load(sources[str(path.resolve())] / "input.npy"), x.numpy())


def test_result_names_are_distinct_readable_and_never_dots():
    names = result_names(["a/img.tiff", "a/img.webp", "a/img.bmp", "a/x.png", "b/x.png", "..png",
                          "c/X.PNG", ".hidden.png"])
    assert len({n.lower() for n in names}) == len(names)
    assert names[:3] == ["img-tiff", "img-webp", "img-bmp"]
    assert names[5] == "png" and names[7] == "hidden"
    assert all(n not in ("", ".", "..") and "/" not in n for n in names)


def test_an_existing_result_folder_is_refused_or_replaced_whole(tiny_cli, photo, tmp_path, capsys):
    image = small_photo(photo, "coffee.png", tmp_path / "coffee.png")
    out = tmp_path / "out"
    assert explain([image, "--out", out, "--methods", "gradient,grad-cam", "--steps", "1", "--quiet"],
                   capsys)[0] == 0
    before = (out / "coffee" / "report.json").read_bytes()
    code, err = explain([image, "--out", out, *FAST], capsys)
    assert code == 2 and "--overwrite" in err and len(error_lines(err)) == 1
    assert (out / "coffee" / "report.json").read_bytes() == before  # untouched
    code, err = explain([image, "--out", out, "--overwrite", *FAST], capsys)
    assert code == 0, err
    names = {p.name for p in (out / "coffee").iterdir()}
    assert "gradient.npy" in names and "grad-cam.npy" not in names  # replaced whole: nothing stale
    assert not leftovers(out)


def test_a_second_run_into_a_locked_output_folder_is_refused(tiny_cli, photo, tmp_path, capsys):
    image = small_photo(photo, "coffee.png", tmp_path / "coffee.png")
    out = tmp_path / "out"
    out.mkdir()
    with locked(out):  # as another run holds it (flock locks each open file, even in one process)
        code, err = explain([image, "--out", out, *FAST], capsys)
    assert code == 2 and "another PruneScope run is writing here" in err and not list(out.glob("coffee*"))
    assert explain([image, "--out", out, *FAST], capsys)[0] == 0  # free again once it ends


# --- 2. write failures -----------------------------------------------------------------------------

@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("CUDA error: an illegal memory access\nmore lines")])
def test_a_failed_item_costs_one_line_and_leaves_no_folder_that_looks_complete(
        tiny_cli, photo, tmp_path, capsys, monkeypatch, failure):
    import core.reporting.figures

    first = small_photo(photo, "coffee.png", tmp_path / "first.png")
    second = small_photo(photo, "chelsea.png", tmp_path / "second.png")
    real, calls = core.reporting.figures.save, []

    def fails_once(*args, **kwargs):  # comparison.png: after input.npy, the maps and curves.csv
        calls.append(1)
        if len(calls) == 1:
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(core.reporting.figures, "save", fails_once)
    out = tmp_path / "out"
    code, err = explain([first, second, "--out", out, *FAST], capsys)
    assert code == 2 and "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and str(first) in lines[0] and "\n" not in lines[0]
    assert not (out / "first").exists() and not leftovers(out)
    assert complete(out / "second")
    assert "1 of 2 images explained; 1 failed" in err


@pytest.mark.parametrize("command", ["explain", "sanity", "prune-sweep", "evaluate"])
def test_out_that_is_a_file_is_one_line_for_every_command(tiny_cli, photo, tmp_path, capsys, command):
    image = small_photo(photo, "coffee.png", tmp_path / "data" / "coffee.png")
    target = tmp_path / "taken"
    target.write_text("mine")
    argv = {"explain": ["explain", str(image), *FAST],
            "sanity": ["sanity", str(image), "--methods", "gradient", "--quiet"],
            "prune-sweep": ["prune-sweep", "--criteria", "l1", "--sparsities", "50", "--methods",
                            "gradient", "--calib", str(tiny_cli), "--no-latency", "--quiet"],
            "evaluate": ["evaluate", "--dataset", str(image.parent), "--methods", "gradient",
                         "--images", "1", "--sanity-images", "0", "--steps", "1", "--quiet"]}[command]
    code = main.main([*argv, "--out", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not a folder" in err
    assert target.read_text() == "mine"


def test_prune_on_a_full_disk_keeps_the_old_model(tiny_cli, tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.pt"
    out.write_bytes(b"the old model")
    real = torch.save

    def disk_fills(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a mod")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_fills)
    code = main.main(["prune", "--criterion", "l1", "--sparsity", "50", "--calib", str(tiny_cli),
                      "--protect", "none", "--out", str(out), "--quiet"])
    monkeypatch.setattr(torch, "save", real)
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"the old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "model.pt"]


def test_an_interrupt_inside_a_staged_folder_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(tmp_path / "result") as staging:
            (staging / "report.json").write_text("{}")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# --- 3. interrupts ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_a_signal_stops_explain_with_a_message_and_no_partial_folder(tmp_path, signum, code, word):
    images = []
    for i in range(4):
        images.append(tmp_path / f"photo{i}.png")
        Image.open(ROOT / "resources" / "samples" / "coffee.png").save(images[-1])
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "main.py", "explain", *map(str, images), "--out", str(out), "--device", "cpu",
         "--methods", "gradient,grad-cam", "--steps", "5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = proc.stdout.readline()  # the first image is done: the next one is under way
        assert "->" in first, proc.stderr.read()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code and word in err and "Traceback" not in err
    folders = list(out.iterdir())
    assert 1 <= sum(p.is_dir() for p in folders) < len(images)
    contents = {p.name: sorted(f.name for f in p.iterdir()) if p.is_dir() else "file" for p in folders}
    assert all(complete(p) for p in folders if p.is_dir()) and not leftovers(out), contents


# --- 4. images whose resize would take gigabytes ---------------------------------------------------

def test_a_strip_costs_one_line_and_the_next_image_is_explained(tiny_cli, photo, tmp_path, capsys):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (40000, 1), (200, 10, 10)).save(strip)  # 140-odd bytes, 4 GB once resized
    good = small_photo(photo, "coffee.png", tmp_path / "good.png")
    code, err = explain([strip, good, "--out", tmp_path / "out", *FAST], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "aspect ratio" in err
    assert complete(tmp_path / "out" / "good")


# --- 8. per-item and per-method isolation ----------------------------------------------------------

def test_a_failing_method_is_reported_and_the_others_are_kept(tiny_cli, tiny, photo, tmp_path, capsys,
                                                              monkeypatch):
    from core.methods.gradients import GradCam

    def out_of_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(GradCam, "attribute", out_of_memory)
    image = small_photo(photo, "coffee.png", tmp_path / "coffee.png")
    code, err = explain([image, "--out", tmp_path / "out", "--methods", "gradient,grad-cam,pathway-gradient",
                         "--steps", "1", "--quiet"], capsys)
    assert code == 2 and "grad-cam failed: OutOfMemoryError: CUDA out of memory" in err
    report = json.loads((tmp_path / "out" / "coffee" / "report.json").read_text())
    assert set(report["methods"]) == {"gradient", "pathway-gradient"}
    assert report["failed"]["grad-cam"].startswith("OutOfMemoryError")


def test_sanity_goes_on_after_an_image_fails(tiny_cli, photo, tmp_path, capsys, monkeypatch):
    import core.evaluation.sanity

    real, calls = core.evaluation.sanity.iter_cascading_randomization, []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")
        return real(*args, **kwargs)

    monkeypatch.setattr(core.evaluation.sanity, "iter_cascading_randomization", fails_once)
    images = [small_photo(photo, name, tmp_path / name) for name in ("coffee.png", "chelsea.png")]
    code = main.main(["sanity", *map(str, images), "--out", str(tmp_path / "out"), "--methods",
                      "gradient", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(error_lines(err)) == 1 and "coffee.png: RuntimeError: cuDNN" in err
    assert (tmp_path / "out" / "chelsea" / "sanity.json").is_file()
    assert not (tmp_path / "out" / "coffee").exists()


def test_evaluate_goes_on_after_an_image_fails(tiny_cli, photo, tmp_path, capsys, monkeypatch):
    import core.evaluation.benchmark

    real = core.evaluation.benchmark.evaluate_item

    def fails_on_first(model, item, methods, settings, **kwargs):
        if item.name == "astronaut.png":  # the first in sorted order
            raise RuntimeError("DataLoader worker exited unexpectedly")
        return real(model, item, methods, settings, **kwargs)

    monkeypatch.setattr(core.evaluation.benchmark, "evaluate_item", fails_on_first)
    data = tmp_path / "data"
    for name in ("coffee.png", "chelsea.png", "astronaut.png"):
        small_photo(photo, name, data / name)
    out = tmp_path / "out"
    code = main.main(["evaluate", "--dataset", str(data), "--out", str(out), "--methods", "gradient",
                      "--images", "3", "--sanity-images", "0", "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(error_lines(err)) == 1 and "image 0: RuntimeError: DataLoader" in err
    result = json.loads((out / "results.json").read_text())
    assert result["images"] == 2


def test_prune_leaves_out_a_bad_calibration_image_and_still_writes_the_model(tiny_cli, tmp_path, capsys):
    (tiny_cli / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "model.pt"
    code = main.main(["prune", "--criterion", "l1", "--sparsity", "50", "--calib", str(tiny_cli),
                      "--protect", "none", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and out.stat().st_size > 0
    assert len(error_lines(err)) == 1 and "broken.png" in err
    assert "2 of 3 calibration images used; 1 failed" in err


def test_prune_sweep_goes_on_after_a_criterion_fails(tiny, monkeypatch):
    from core.model_pruning import criteria
    from core.model_pruning.measures import predict
    from core.model_pruning.pipeline import Calibration
    from core.model_pruning.sweep import sweep
    from core.progress import run

    real = criteria.channel_scores

    def l1_fails(name, *args, **kwargs):
        if name == "l1":
            raise RuntimeError("MPS backend out of memory")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(criteria, "channel_scores", l1_fails)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calib = Calibration([], x, None, predict(tiny.module, x))
    result = run(sweep(tiny, calib, ["l1", "taylor"], [50], ["gradient"], protect=["none"], timed=False))
    assert result.errors == {"l1": "RuntimeError: MPS backend out of memory"}
    assert [p.criterion for p in result.points] == ["taylor"]


def test_an_unexpected_error_outside_any_item_is_one_line(capsys):
    import argparse

    from core.cli import dispatch

    def crashes(_args):
        raise RuntimeError("Expected all tensors to be on the same device\n  long C++ trace")

    assert dispatch(argparse.Namespace(run=crashes)) == 2
    assert capsys.readouterr().err == ("prunescope: error: RuntimeError: Expected all tensors to be on "
                                       "the same device\n")


def test_an_interrupt_leaves_no_traceback_from_objects_it_cut_half_built(monkeypatch, capsys):
    import argparse

    from core.cli import EXIT_INTERRUPTED, dispatch

    class HalfBuilt:  # as a progress bar interrupted in __init__: its __del__ misses an attribute
        def __del__(self):
            return self.pos

    def interrupted(_args):
        bar = HalfBuilt()  # noqa: F841 (freed when the interrupt's traceback goes)
        raise KeyboardInterrupt

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    assert dispatch(argparse.Namespace(run=interrupted)) == EXIT_INTERRUPTED
    assert reported == [] and "interrupted" in capsys.readouterr().err


def test_a_pruned_checkpoint_with_string_metadata_is_one_line(tmp_path, capsys):
    weights = tmp_path / "pruned.pt"
    torch.save({"prunescope_pruned": "resnet18", "state_dict": {}}, weights)
    code, err = explain(["x.png", "--out", tmp_path / "out", "--weights", weights, "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("prunescope: error:")


# --- 9. options ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["explain", "x.png", "--out", "o", "--steps", "100000"],
    ["explain", "x.png", "--out", "o", "--steps", "0"],
    ["explain", "x.png", "--out", "o", "--methods", ""],
    ["explain", "x.png", "--out", "o", "--methods", " , "],
    ["explain", "x.png", "--out", "o", "--tolerance", "-1"],
    ["explain", "x.png", "--out", "o", "--tolerance", "nan"],
    ["explain", "x.png", "--out", "o", "--tolerance", "101"],
    ["explain", "x.png", "--out", ""],
    ["sanity", "x.png", "--out", " "],
    ["prune", "--criterion", "l1", "--sparsity", "50", "--out", ""],
    ["prune-sweep", "--out", "o", "--sparsities", ","],
    ["prune-sweep", "--out", "o", "--methods", ""],
    ["evaluate", "--dataset", "synthetic", "--out", "o", "--steps", "5000"],
    ["evaluate", "--dataset", "synthetic", "--out", ""],
])
def test_bad_options_are_refused_before_any_work(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main.build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_tolerance_is_in_percent_as_sparsity_is(tiny_cli, tiny, photo, tmp_path, capsys):
    from core.pathway.engine import Engine
    from core.progress import run

    image = small_photo(photo, "coffee.png", tmp_path / "coffee.png")
    code, err = explain([image, "--out", tmp_path / "out", "--sparsity", "auto", "--tolerance", "5",
                         "--methods", "pathway-gradient", "--steps", "1", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "coffee" / "report.json").read_text())
    expected = run(Engine(tiny, load_image(image)).iter_auto_sparsity(0.05)).sparsity
    assert report["settings"]["sparsity"] == expected and report["settings"]["tolerance_percent"] == 5
    assert report["methods"]["pathway-gradient"]["pathway"]["output_change"] <= 0.05


# --- 10. error lines and progress bars -------------------------------------------------------------

def test_an_error_line_never_lands_inside_a_progress_bar(capsys):
    from core.cli import fail
    from core.progress import Progress, StderrBar

    bar = StderrBar("photo.png", delay=0)
    bar(Progress(0.5, "gradient"))
    fail("photo.png: broken")
    bar.close()
    err = capsys.readouterr().err
    # What a terminal shows: each \r starts the line again.
    shown = [segment for line in err.split("\n") for segment in line.split("\r")]
    assert "prunescope: error: photo.png: broken" in shown


def test_the_summary_says_how_many_items_failed(capsys):
    from core.cli import Batch

    batch = Batch(6, "images", "explained")
    batch.done = 5
    batch.item_failed("x.png", ImageError("x.png: empty file"))
    assert batch.finish(quiet=True) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["prunescope: error: x.png: empty file",
                                "prunescope: 5 of 6 images explained; 1 failed"]


# --- 11. global state ------------------------------------------------------------------------------

def test_figures_are_drawn_without_pyplot_or_a_backend_switch(tiny, photo, tmp_path, monkeypatch):
    """pyplot's figure manager and matplotlib.use are global and not thread-safe: the app's worker
    writes these figures, so they must not touch either."""
    import matplotlib
    from matplotlib import pyplot

    from core.model_pruning.measures import predict
    from core.model_pruning.pipeline import Calibration
    from core.model_pruning.sweep import sweep
    from core.pathway.engine import Engine
    from core.progress import run
    from core.reporting import figures
    from core.reporting.report import Look, save_sweep

    def global_state(*_args, **_kwargs):
        raise AssertionError("pyplot or matplotlib.use was called")

    for name in ("figure", "subplots", "close", "savefig"):
        monkeypatch.setattr(pyplot, name, global_state)
    monkeypatch.setattr(matplotlib, "use", global_state)
    engine = Engine(tiny, load_image(small_photo(photo, "coffee.png", tmp_path / "coffee.png")))
    analysis = run(engine.iter_analysis(["gradient"], with_curves=False))
    [comparison] = figures.save(figures.explain(engine.view, analysis, Look()), tmp_path)
    assert comparison.name == "comparison.png" and comparison.stat().st_size > 0
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calib = Calibration([], x, None, predict(tiny.module, x))
    result = run(sweep(tiny, calib, ["l1"], [0], ["gradient"], protect=["none"], timed=False))
    assert [p.name for p in save_sweep(result, tmp_path / "sweep")] == [
        "headline.png", "cost.png", "drift.png", "pathway.png", "sweep.json"]


def test_evaluate_where_every_image_fails_says_why_for_each(tiny_cli, photo, tmp_path, capsys, monkeypatch):
    import core.evaluation.benchmark

    def fails(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(core.evaluation.benchmark, "evaluate_item", fails)
    data = tmp_path / "data"
    for name in ("coffee.png", "chelsea.png"):
        small_photo(photo, name, data / name)
    out = tmp_path / "out"
    code = main.main(["evaluate", "--dataset", str(data), "--out", str(out), "--methods", "gradient",
                      "--images", "2", "--sanity-images", "0", "--quiet"])
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 2 and all("illegal memory access" in line for line in lines)
    assert json.loads((out / "results.json").read_text())["images"] == 0
