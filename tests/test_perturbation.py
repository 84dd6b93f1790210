import numpy as np
import pytest
import torch
from torch import nn

from core.errors import PruneScopeError
from core.pathway.curves import (BASELINES, Curves, baseline_image, curves, end_probs, iter_curves,
                                 output_change)
from core.progress import Progress, run

SIDE = 16
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def small_cnn(seed=0, classes=5):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, classes))
    return net.eval()


def important_pixels():
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    mask[5:8, 9:12] = True
    return mask


def toy_model():
    """Class 0's logit is the sum of the input over a known 3x3 patch; nothing else matters."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 2))
    weight = torch.zeros(2, 3, SIDE, SIDE)
    weight[0, :, torch.as_tensor(important_pixels())] = 1.0
    with torch.no_grad():
        net[1].weight.copy_(weight.flatten(1))
        net[1].bias.copy_(torch.tensor([-20.0, 0.0]))
    return net.eval()


def image(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, SIDE, SIDE, generator=generator) + 0.5


def prob(module, x, target):
    with torch.no_grad():
        return torch.softmax(module(x), dim=1)[0, target].item()


class Recorder(nn.Module):
    """Passes inputs to a model and keeps every batch it saw."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.inner(x)


def deletion_loop_reference(module, x, attr_map, target, steps, base):
    """One image per step, pixels flipped in a plain loop (the way Quantus's pixel flipping does)."""
    order = np.argsort(-attr_map.flatten(), kind="stable")
    total = attr_map.size
    deletion, insertion, inputs = [], [], []
    for step in range(steps + 1):
        count = int(round(step * total / steps))
        removed = x.clone()
        revealed = base.clone()
        for flat in order[:count]:
            row, col = divmod(int(flat), attr_map.shape[1])
            removed[0, :, row, col] = base[0, :, row, col]
            revealed[0, :, row, col] = x[0, :, row, col]
        deletion.append(prob(module, removed, target))
        insertion.append(prob(module, revealed, target))
        inputs += [removed, revealed]
    return np.array(deletion), np.array(insertion), inputs


@pytest.mark.parametrize("baseline", BASELINES)
def test_batched_curves_match_one_image_loop(baseline):
    recorder, x = Recorder(small_cnn()), image()
    attr = np.random.default_rng(0).normal(size=(SIDE, SIDE))
    attr[3:6, 3:6] = 0.0  # ties must be broken the same way
    result = curves(recorder, x, attr, target=2, steps=8, baseline=baseline, mean=MEAN, std=STD,
                    batch_size=5)
    batched_inputs = torch.cat(recorder.seen)
    base = baseline_image(x, baseline, MEAN, STD)
    deletion, insertion, loop_inputs = deletion_loop_reference(recorder.inner, x, attr, 2, 8, base)
    # the same perturbed images, bit for bit; the input and the baseline, where both curves start
    # and end, are forwarded once
    assert len(batched_inputs) == 2 + 2 * 7
    assert torch.equal(batched_inputs[:2], torch.cat([x, base]))
    assert torch.equal(batched_inputs[2:9], torch.cat(loop_inputs[0::2][1:-1]))
    assert torch.equal(batched_inputs[9:], torch.cat(loop_inputs[1::2][1:-1]))
    # a batched forward may round differently from a single-image one in the last float bit
    np.testing.assert_allclose(result.deletion, deletion, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.insertion, insertion, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("baseline", BASELINES)
def test_curve_endpoints_and_auc(baseline):
    net, x = small_cnn(), image()
    attr = torch.randn(SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    result = curves(net, x, attr, target=1, steps=10, baseline=baseline, mean=MEAN, std=STD)
    p_input = prob(net, x, 1)
    p_base = prob(net, baseline_image(x, baseline, MEAN, STD), 1)
    assert result.fractions[0] == 0.0 and result.fractions[-1] == 1.0
    assert len(result.deletion) == len(result.insertion) == 11
    assert result.deletion[0] == pytest.approx(p_input, abs=1e-6)
    assert result.insertion[-1] == pytest.approx(p_input, abs=1e-6)
    assert result.deletion[-1] == pytest.approx(p_base, abs=1e-6)
    assert result.insertion[0] == pytest.approx(p_base, abs=1e-6)
    for auc in (result.deletion_auc, result.insertion_auc):
        assert 0.0 <= auc <= 1.0
    assert result.deletion_auc == pytest.approx(np.trapezoid(result.deletion, result.fractions))
    assert result.baseline == baseline and result.steps == 10


def test_perfect_map_beats_reversed_map():
    net, x = toy_model(), image()
    perfect = important_pixels().astype(np.float32)
    good = curves(net, x, perfect, target=0, steps=16)
    bad = curves(net, x, -perfect, target=0, steps=16)
    assert good.deletion_auc < bad.deletion_auc - 0.3
    assert good.insertion_auc > bad.insertion_auc + 0.3
    # the 9 important pixels out of 256 go within the first step
    assert good.deletion[1] == pytest.approx(good.deletion[-1], abs=1e-6)


def test_baseline_values():
    x = image()
    assert torch.equal(baseline_image(x, "mean"), torch.zeros_like(x))
    black = baseline_image(x, "black", MEAN, STD)
    rgb = black * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert torch.allclose(rgb, torch.zeros_like(rgb), atol=1e-6)
    constant = torch.full((1, 3, SIDE, SIDE), 0.7)
    assert torch.allclose(baseline_image(constant, "blur"), constant, atol=1e-6)
    blurred = baseline_image(x, "blur")
    assert blurred.shape == x.shape
    assert blurred.var() < 0.5 * x.var()  # high frequencies are gone
    assert blurred.mean().item() == pytest.approx(x.mean().item(), abs=0.02)
    with pytest.raises(PruneScopeError):
        baseline_image(x, "noise")


@pytest.mark.parametrize("baseline", BASELINES)
def test_removed_pixels_take_baseline_values(baseline):
    recorder, x = Recorder(small_cnn()), image()
    attr = np.arange(SIDE * SIDE, dtype=np.float32).reshape(SIDE, SIDE)  # bottom-right first
    curves(recorder, x, attr, target=0, steps=4, baseline=baseline, mean=MEAN, std=STD)
    inputs = torch.cat(recorder.seen)
    base = baseline_image(x, baseline, MEAN, STD)
    quarter = SIDE // 4  # step 1 of 4 removes the last 4 rows
    deletion_1, insertion_1 = inputs[2], inputs[2 + 3]  # after the input and the baseline
    assert torch.equal(deletion_1[:, -quarter:], base[0, :, -quarter:])
    assert torch.equal(deletion_1[:, :-quarter], x[0, :, :-quarter])
    assert torch.equal(insertion_1[:, -quarter:], x[0, :, -quarter:])
    assert torch.equal(insertion_1[:, :-quarter], base[0, :, :-quarter])


def test_progress_per_batch_and_result():
    net, x = small_cnn(), image()
    job = iter_curves(net, x, np.ones((SIDE, SIDE)), target=0, steps=9, batch_size=6)
    steps = []
    result = run(job, steps.append)
    assert len(steps) == 3  # 16 inner inputs in batches of 6 (the two ends are forwarded first)
    assert all(isinstance(s, Progress) for s in steps)
    assert [s.done for s in steps] == sorted(s.done for s in steps) and steps[-1].done == 1.0
    assert isinstance(result, Curves)
    assert set(result.to_json()) >= {"fractions", "deletion", "insertion", "deletion_auc"}


def test_output_change_lerf_below_morf():
    net, x = toy_model(), image()
    perfect = important_pixels().astype(np.float32)
    lerf = output_change(net, x, perfect, target=0, order="lerf")
    morf = output_change(net, x, perfect, target=0, order="morf")
    assert lerf.shape == morf.shape == (10,)
    assert np.all(lerf < 1e-6)  # only unimportant pixels removed: nothing changes
    assert np.all(morf[2:] > 0.5)
    p = prob(net, x, 0)
    removed = x.clone()
    removed[:, :, torch.as_tensor(important_pixels())] = 0.0
    assert morf[-1] == pytest.approx(abs(p - prob(net, removed, 0)) / p, rel=1e-5)


def test_bad_inputs_raise_clear_errors():
    net, x = small_cnn(), image()
    with pytest.raises(PruneScopeError, match="shape"):
        curves(net, x, np.ones((SIDE, SIDE + 1)), target=0)
    with pytest.raises(PruneScopeError, match="NaN"):
        curves(net, x, np.full((SIDE, SIDE), np.nan), target=0)
    with pytest.raises(PruneScopeError, match="order"):
        output_change(net, x, np.ones((SIDE, SIDE)), target=0, order="random")
    with pytest.raises(PruneScopeError, match="baseline"):
        curves(net, x, np.ones((SIDE, SIDE)), target=0, baseline="white")


def test_deletion_only_with_known_ends_forwards_only_the_inner_steps():
    recorder, x = Recorder(small_cnn()), image()
    attr = np.random.default_rng(1).normal(size=(SIDE, SIDE))
    full = curves(recorder.inner, x, attr, target=1, steps=6)
    ends = end_probs(recorder.inner, x, 1)
    only = run(iter_curves(recorder, x, attr, target=1, steps=6, ends=ends, insertion=False))
    assert len(torch.cat(recorder.seen)) == 5  # deletion steps 1..5
    np.testing.assert_allclose(only.deletion, full.deletion, rtol=1e-6, atol=1e-7)
    assert only.insertion is None and only.insertion_auc is None
    assert only.to_json()["insertion"] is None


def test_a_batch_gives_way_to_a_slider_move_and_is_run_again(monkeypatch):
    """In steps (the app), each layer of a batch's forward asks core.progress.hurry: wanted
    elsewhere, the batch ends there and the next step runs it again; the curves do not change."""
    from core import progress

    net, x = small_cnn(), image()
    attr = np.random.default_rng(2).normal(size=(SIDE, SIDE))
    whole = curves(net, x, attr, target=1, steps=6)
    answers = iter([False, False, True])  # the first batch's third layer: wanted elsewhere
    monkeypatch.setattr(progress, "hurry", lambda: next(answers, False))
    steps = iter_curves(net, x, attr, target=1, steps=6, step_seconds=10.0)
    assert next(steps).done == 0.0  # the ranking and the masks
    given_up = next(steps)
    assert next(answers, "spent") == "spent" and given_up.done == 0.0
    stepped = run(steps)
    np.testing.assert_allclose(stepped.deletion, whole.deletion, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stepped.insertion, whole.insertion, rtol=1e-6, atol=1e-7)
    assert not any(m._forward_pre_hooks for m in net.modules())  # none left behind
