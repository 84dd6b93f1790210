import json

import numpy as np
import pytest
import torch
import torchvision
from scipy import ndimage
from torch import nn

from core.errors import PruneScopeError
from core.evaluation.sanity import (SanityResult, cascading_randomization, iter_cascading_randomization,
                                    parameter_blocks, spearman_abs, ssim_abs)
from core.models.efficientnet_lite import EfficientNetLite0
from core.progress import Progress, run


def small_cnn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 5))
    with torch.no_grad():  # trained-looking BN statistics, so a reset is visible
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def image():
    return torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))


def gradient(module, x, target, method):
    x = x.clone().requires_grad_(True)
    module(x)[0, target].backward()
    return x.grad[0].abs().amax(0).numpy()


def edge_map(module, x, target, method):
    """Ignores the model entirely: the Sobel edge magnitude of the input."""
    gray = x[0].mean(0).numpy()
    return np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))


def explain_both(module, x, target, method):
    return gradient(module, x, target, method) if method == "gradient" else edge_map(module, x, target, method)


def names(blocks):
    return [name for name, _ in blocks]


def assert_each_parameter_once(module, blocks):
    owned = [id(p) for _, subs in blocks for sub in subs for p in sub.parameters(recurse=False)]
    assert len(owned) == len(set(owned))
    assert set(owned) == {id(p) for p in module.parameters()}


def test_blocks_of_resnet18():
    net = torchvision.models.resnet18(weights=None)
    blocks = parameter_blocks(net)
    assert names(blocks) == ["conv1+bn1", "layer1.0", "layer1.1", "layer2.0", "layer2.1",
                             "layer3.0", "layer3.1", "layer4.0", "layer4.1", "fc"]
    assert blocks[0][1] == [net.conv1, net.bn1]
    assert_each_parameter_once(net, blocks)


def test_blocks_of_efficientnet_lite0():
    net = EfficientNetLite0()
    blocks = parameter_blocks(net)
    assert names(blocks) == (["_conv_stem+_bn0"] + [f"_blocks.{i}" for i in range(16)]
                             + ["_conv_head+_bn1", "_fc"])
    assert_each_parameter_once(net, blocks)


class Tokens(nn.Module):
    """A container that holds a parameter itself, as ViT's class token and position embedding."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.ones(4))
        self.proj = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)


def test_blocks_with_container_parameters():
    net = Tokens()
    blocks = parameter_blocks(net)
    assert names(blocks) == ["token", "proj+ln"]
    assert blocks[0][1] == [net]
    assert_each_parameter_once(net, blocks)
    with pytest.raises(PruneScopeError):
        parameter_blocks(nn.ReLU())


def test_weight_independent_method_stays_correlated():
    net, x = small_cnn(), image()
    result = cascading_randomization(net, x, 1, ["edges", "gradient"], explain_both)
    assert result.steps == list(range(len(result.blocks) + 1)) and len(result.blocks) == 4
    assert result.spearman["edges"] == [1.0] * 5
    assert result.ssim["edges"] == pytest.approx([1.0] * 5)
    # the same run shows plain gradient is not weight independent
    assert result.spearman["gradient"][0] == 1.0
    assert max(result.spearman["gradient"][1:]) < 0.9


def test_gradient_decorrelates_and_randomises_top_down():
    net, x = small_cnn(), image()
    original = {name: t.clone() for name, t in net.state_dict().items()}
    changed = []

    def recording_gradient(module, x, target, method):
        changed.append(sorted(name.split(".")[0] for name, t in module.state_dict().items()
                              if not torch.equal(t, original[name])))
        return gradient(module, x, target, method)

    result = cascading_randomization(net, x, 1, ["gradient"], recording_gradient)
    assert result.blocks == ["9", "5", "3", "0+1"]
    assert [sorted(set(c)) for c in changed] == [[], ["9"], ["5", "9"], ["3", "5", "9"],
                                                 ["0", "1", "3", "5", "9"]]
    assert result.spearman["gradient"][-1] < 0.5
    assert result.ssim["gradient"][-1] < 0.5
    assert len(result.maps["gradient"]) == 5 and result.maps["gradient"][0].shape == (24, 24)


def test_callers_model_and_rng_untouched():
    net, x = small_cnn(), image()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    cascading_randomization(net, x, 1, ["gradient"], gradient)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(rng, torch.get_rng_state())
    assert not net.training


def test_deterministic_for_a_seed():
    net, x = small_cnn(), image()
    first = cascading_randomization(net, x, 1, ["gradient"], gradient, seed=3)
    again = cascading_randomization(net, x, 1, ["gradient"], gradient, seed=3)
    other = cascading_randomization(net, x, 1, ["gradient"], gradient, seed=4)
    assert first.spearman == again.spearman and first.ssim == again.ssim
    assert all(np.array_equal(a, b) for a, b in zip(first.maps["gradient"], again.maps["gradient"]))
    assert not np.array_equal(first.maps["gradient"][-1], other.maps["gradient"][-1])


def test_progress_json_and_errors():
    net, x = small_cnn(), image()
    job = iter_cascading_randomization(net, x, 1, ["gradient", "edges"], explain_both)
    steps = []
    result = run(job, steps.append)
    assert len(steps) == 10 and all(isinstance(s, Progress) for s in steps)
    assert steps[-1].done == 1.0 and "0+1" in steps[-1].message
    assert isinstance(result, SanityResult)
    data = json.loads(json.dumps(result.to_json()))
    assert data["blocks"] == result.blocks and set(data["spearman"]) == {"gradient", "edges"}
    with pytest.raises(PruneScopeError):
        cascading_randomization(net, x, 1, [], gradient)


def test_similarity_measures():
    rng = np.random.default_rng(0)
    a = rng.random((16, 16))
    assert spearman_abs(a, -a) == 1.0  # magnitudes are compared
    assert spearman_abs(a, 2 * a + 1) == pytest.approx(1.0)
    assert spearman_abs(a, a.max() + 1 - a) == pytest.approx(-1.0)
    assert spearman_abs(a, np.zeros_like(a)) == 0.0
    assert ssim_abs(a, 3 * a) == pytest.approx(1.0)  # scale-free: each map is scaled by its max
    assert ssim_abs(a, rng.random((16, 16))) < 0.3


@pytest.mark.slow
def test_cli_writes_results_and_reports_bad_images(photo, tmp_path, capsys):
    from main import main

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code = main(["sanity", str(photo("chelsea.png")), str(bad), str(tmp_path / "missing.png"),
                 "--out", str(out), "--methods", "gradient,grad-cam", "--device", "cpu", "--quiet"])
    assert code == 2  # the bad images, after the good one was written
    errors = capsys.readouterr().err.strip().splitlines()
    assert len([e for e in errors if "error" in e]) == 2
    assert any("broken.jpg" in e for e in errors) and any("missing.png" in e for e in errors)
    folder = out / "chelsea"
    data = json.loads((folder / "sanity.json").read_text())
    assert data["model"] == "efficientnet_lite0" and data["methods"] == ["gradient", "grad-cam"]
    assert data["blocks"][0] == "_fc" and data["blocks"][-1] == "_conv_stem+_bn0"
    for method in ("gradient", "grad-cam"):
        assert len(data["spearman"][method]) == len(data["blocks"]) + 1
        assert data["spearman"][method][0] == 1.0
    assert data["spearman"]["gradient"][-1] < 0.5
    for name in ("spearman.png", "ssim.png", "maps.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_unknown_method(photo, tmp_path, capsys):
    from main import main

    code = main(["sanity", str(photo("coffee.png")), "--out", str(tmp_path), "--methods", "gradient,magic",
                 "--quiet"])
    assert code == 2
    assert "magic" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
