"""Recovery after pruning without labels: batch-norm re-estimation has a known answer,
distillation brings a pruned model's accuracy back, iterative schedules end at the target, and
nothing is measured on an image it was calibrated or trained on."""
import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from core.model_pruning import Recovery, calibrate, load_pruned, prune_model, save_pruned
from core.model_pruning.pipeline import Calibration, predict
from core.model_pruning.recovery import distill, held_out_split, recalibrate_bn, without
from core.progress import run

from conftest import tiny_net  # noqa: E402


def test_bn_recalibration_has_the_known_answer_and_keeps_the_predictions(tiny):
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    module = copy.deepcopy(tiny.module)
    run(recalibrate_bn(module, x, passes=1, batch=8, augmented=False))
    first = tiny.module.conv1(x)
    assert torch.allclose(module.bn1.running_mean, first.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(module.bn1.running_var, first.var((0, 2, 3), unbiased=True), atol=1e-5)
    assert not module.training and module.bn1.momentum == tiny.module.bn1.momentum

    # A model whose statistics are those of its data keeps its predictions when re-estimated on
    # that data, exactly without augmentation and nearly with flips and crops.
    own = predict(module, x)
    again = copy.deepcopy(module)
    run(recalibrate_bn(again, x, passes=1, batch=8, augmented=False))
    assert torch.allclose(again(x), module(x), atol=1e-5)
    run(recalibrate_bn(again, x))
    assert float((predict(again, x) == own).float().mean()) >= 0.75


def test_held_out_images_are_never_calibrated_or_distilled_on(tiny_cli, tiny):
    calib = run(calibrate(tiny, tiny_cli))
    used, held = held_out_split(calib)
    assert [p.name for p in held.paths] == ["coffee.png"] and [p.name for p in used.paths] == ["chelsea.png"]
    assert without(calib, held).paths == used.paths
    report = run(prune_model(tiny, "l1", 25, calib, "per-layer", ["none"],
                             settings=Recovery("distill", str(tiny_cli), steps=2)))
    assert report.held_out == [str(held.paths[0])]
    assert report.recovery_images == report.calibration == [str(used.paths[0])]
    assert not set(report.held_out) & set(report.recovery_images)
    assert report.agreement_before_recovery is not None and report.agreement is not None


def test_iterative_pruning_ends_at_the_target_and_each_step_loads(tiny, tmp_path):
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calib = Calibration([Path(f"{i}.png") for i in range(6)], x, None, predict(tiny.module, x))
    report = run(prune_model(tiny, "l1", 50, calib, protect=["none"], settings=Recovery("bn"), iterations=3))
    assert [round(s.sparsity_reached, 2) for s in report.steps] == [12.5, 31.25, 50.0]  # 2, 5, 8 of 16
    assert report.sparsity_reached == 50.0 and report.surgery.cut == 8
    kept = sum(kept for _, kept, _ in report.surgery.layers[:2])
    assert kept == 8  # conv1 and conv2: 16 channels, 8 left
    for k in range(3):
        path = tmp_path / f"step{k}.pt"
        save_pruned(report.at_step(k), path)
        module = load_pruned(tiny_net(), torch.load(path, weights_only=True))
        assert torch.equal(module(x), report.steps[k].module(x))
    assert json.loads(json.dumps(report.summary()))["held_out_count"] == 2


class Stripes(nn.Module):
    """A small CNN for 4 stripe patterns."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def stripes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 images of horizontal or vertical stripes or a checkerboard (classes 0-2; class 3
    unused), with random period, phase, colours and noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    u = torch.arange(16.0).view(1, 16, 1)
    v = torch.arange(16.0).view(1, 1, 16)
    period = 4 + 2 * torch.rand(n, 1, 1, generator=g)
    phase = 6.28 * torch.rand(n, 1, 1, generator=g)
    rows, cols = torch.sin(u * 6.28 / period + phase), torch.sin(v * 6.28 / period + phase)
    waves = torch.stack([rows.expand(n, 16, 16), cols.expand(n, 16, 16), rows * cols], 1)
    pattern = waves[torch.arange(n), labels] > 0
    fg, bg = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
    x = torch.where(pattern.unsqueeze(1), fg, bg) + 0.05 * torch.randn(n, 3, 16, 16, generator=g)
    return x, labels


@pytest.mark.slow
def test_distillation_on_unlabelled_images_recovers_a_pruned_models_accuracy(tiny):
    import dataclasses

    torch.manual_seed(0)
    net = Stripes()
    x, y = stripes(640, seed=0)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    for epoch in range(4):
        for rows in torch.randperm(len(y)).split(32):
            loss = nn.functional.cross_entropy(net(x[rows]), y[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    net.eval().requires_grad_(False)
    test_x, test_y = stripes(300, seed=1)
    accuracy = lambda m: float((predict(m, test_x) == test_y).float().mean())  # noqa: E731
    original = accuracy(net)
    assert original > 0.9

    model = dataclasses.replace(tiny, module=net, name="stripes", input_size=16, resize_size=16,
                                class_names=[str(i) for i in range(4)])
    calib_x, _ = stripes(64, seed=2)  # unlabelled
    calib = Calibration([], calib_x, None, predict(net, calib_x))
    pruned = run(prune_model(model, "l1", 50, calib, "per-layer", ["none"], settings=Recovery("none")))
    one_shot = accuracy(pruned.model.module)
    student = pruned.model.module
    run(recalibrate_bn(student, calib_x))
    unlabelled, _ = stripes(512, seed=3)
    run(distill(student, net, unlabelled, steps=150, lr=3e-3, batch=32))
    recovered = accuracy(student)
    print(f"accuracy: original {original:.3f}, pruned 50 % by L1 {one_shot:.3f}, distilled {recovered:.3f}")
    # Measured: 98.0 % original, 55.7 % pruned, 94.7 % distilled (150 steps): a 3.3-point gap,
    # not the 2 points hoped for; the bound leaves room for thread-count differences.
    assert one_shot < original - 0.2  # pruning did cost accuracy ...
    assert recovered >= original - 0.05  # ... and distillation without labels brought most back


def test_pruning_tab_recovers_with_progress_cancel_and_summary(qtbot, tiny, tiny_cli, monkeypatch):
    from gui.context import AppContext
    from gui.pruning_tab import PruningTab

    context = AppContext()
    monkeypatch.setattr(context, "current_model", lambda: tiny)
    tab = PruningTab(context)
    qtbot.addWidget(tab)
    try:
        assert (tab.criterion.currentData(), tab.sparsity.value(), tab.recovery.currentData()) == \
            ("pathway", 10, "bn")  # the defaults
        tab.calib.setText(str(tiny_cli))
        tab.protect.setText("none")
        tab.recovery.setCurrentIndex(tab.recovery.findData("distill"))
        tab.recovery_steps.setValue(100_000)  # far too long: cancelled below
        seen = []
        tab.progress.valueChanged.connect(seen.append)
        tab.prune()
        qtbot.waitUntil(lambda: "distilling" in tab.message.text(), timeout=120_000)
        tab.cancel()
        assert tab.message.text() == "cancelled" and tab.prune_button.isEnabled()
        assert tab.report is None and any(0 < v < 1000 for v in seen)

        tab.recovery_steps.setValue(3)
        tab.iterations.setValue(2)
        with qtbot.waitSignal(tab.pruned, timeout=120_000):
            tab.prune()
        report = tab.report
        assert report.recovery == "distill" and report.iterations == 2 and len(report.steps) == 2
        text = tab.summary.text()
        assert "after distill" in text and "1 held-out images" in text
        assert (tab.message.text().startswith("Warning:")) == (report.agreement < 0.5)
    finally:
        context.shutdown()


def test_cli_prunes_in_steps_writes_each_step_and_reports_the_held_out_images(tiny_cli, tmp_path, capsys):
    from main import main

    out, report = tmp_path / "p.pt", tmp_path / "p.json"
    assert main(["prune", "--criterion", "l1", "--sparsity", "50", "--iterations", "2", "--save-steps",
                 "--calib", str(tiny_cli), "--protect", "none", "--out", str(out), "--json", str(report),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "in 2 steps" in printed and "1 held-out images" in printed and "after bn" in printed
    data = json.loads(report.read_text())
    assert data["held_out_count"] == 1 and len(data["steps"]) == 2 and data["sparsity_reached"] == 50.0
    assert (tmp_path / "p.step1.pt").stat().st_size > 0
