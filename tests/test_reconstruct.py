"""Post-training reconstruction (core.model_pruning.reconstruct) and composed recovery stages."""
import copy

import pytest
import torch
from torch import nn

from core.errors import PruneScopeError
from core.model_pruning import surgery
from core.model_pruning.names import recovery_stages
from core.model_pruning.pipeline import Recovery
from core.model_pruning.reconstruct import NO_WEIGHT_CALL, OWN_FORWARD, reconstruct
from core.progress import run


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Chain(nn.Module):
    """Two 1x1 convolutions with nothing between them: conv2 is linear in conv1's output."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.conv2(self.conv1(x)).mean((2, 3))


def _cut_inputs(net: Chain, keep: list[int]) -> Chain:
    """net with conv1's outputs (and conv2's inputs) cut to `keep`, by hand."""
    pruned = copy.deepcopy(net)
    with torch.no_grad():
        pruned.conv1 = nn.Conv2d(3, len(keep), 1)
        pruned.conv1.weight.copy_(net.conv1.weight[keep])
        pruned.conv1.bias.copy_(net.conv1.bias[keep])
        pruned.conv2 = nn.Conv2d(len(keep), 5, 1)
        pruned.conv2.weight.copy_(net.conv2.weight[:, keep])
        pruned.conv2.bias.copy_(net.conv2.bias)
    return pruned.eval()


def test_the_fit_recovers_a_linear_layer_exactly_from_exact_data():
    """conv1's 8 outputs are affine in 3 inputs, so any 4 of them carry all 8: conv2 refitted on
    the 4 kept reproduces the original's output (known answer), though cutting moved it."""
    torch.manual_seed(0)
    net = Chain().eval()
    pruned = _cut_inputs(net, [0, 2, 5, 7])
    x = torch.randn(8, 3, 6, 6)
    with torch.no_grad():
        assert (pruned(x) - net(x)).abs().max() > 0.1
    result = run(reconstruct(pruned, net, x, {"conv1": [1, 3, 4, 6]}))
    with torch.no_grad():
        torch.testing.assert_close(pruned.conv2(pruned.conv1(x)), net.conv2(net.conv1(x)), atol=1e-3, rtol=1e-3)
    assert result.kept and [f.name for f in result.layers] == ["conv2"]
    assert result.layers[0].error_after < 1e-4 < result.layers[0].error_before


def test_reconstructing_an_unpruned_model_changes_nothing(tiny):
    import dataclasses

    from core.model_pruning.measures import predict
    from core.model_pruning.pipeline import Calibration, prune_copy, recover

    pruned = copy.deepcopy(tiny.module)
    x = torch.rand(6, 3, 32, 32)
    result = run(reconstruct(pruned, tiny.module, x, {}))
    assert result.layers == [] and _same_state(pruned, tiny.module)
    # the default stages on a 0 % cut, through the pipeline
    calib = Calibration([], x, None, predict(tiny.module, x))
    module, done = run(prune_copy(tiny, calib, "l1", 0))
    run(recover(tiny.module, dataclasses.replace(tiny, module=module), Recovery(), calib, calib, None, done))
    assert _same_state(module, tiny.module)


class Residual(nn.Module):
    """conv0 -> bn -> relu, then a block whose conv2 output is added to its input: conv0 and conv2
    are one coupled group in Torch-Pruning's graph."""

    def __init__(self):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn0(self.conv0(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(y)))
        return self.fc(x.mean((2, 3)))


def _residual() -> Residual:
    torch.manual_seed(1)
    net = Residual()
    for bn in (net.bn0, net.bn1, net.bn2):
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.2, 0.2)
    return net.eval().requires_grad_(False)


def _block_output(net: Residual, x):
    with torch.no_grad():
        a = torch.relu(net.bn0(net.conv0(x)))
        return a + net.bn2(net.conv2(torch.relu(net.bn1(net.conv1(a)))))


def _cut(net: Residual, x) -> tuple[Residual, surgery.Surgery]:
    """A copy of net with 40 % of its channels removed, the lowest-numbered of each group first."""
    pruned = copy.deepcopy(net)
    scores = {name: torch.arange(m.weight.shape[0], dtype=torch.float) for name, m in
              pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    return pruned, surgery.prune_structured(pruned, x, scores, 40)


def test_coupled_groups_keep_their_channel_order_and_get_closer_to_the_original():
    net = _residual()
    x = torch.rand(16, 3, 12, 12)
    pruned, done = _cut(net, x)
    assert done.removed["conv0"] == done.removed["conv2"]  # the add couples them
    kept = [c for c in range(8) if c not in done.removed["conv2"]]
    before = (_block_output(pruned, x) - _block_output(net, x)[:, kept]).pow(2).mean()
    result = run(reconstruct(pruned, net, x, done.removed))
    assert result.kept and any(f.name == "conv2" and f.strength is not None for f in result.layers)
    ours, theirs = _block_output(pruned, x), _block_output(net, x)[:, kept]
    assert (ours - theirs).pow(2).mean() < before
    # channel i is still the original's kept[i]: matched, it is closer than any other pairing
    for i in range(len(kept)):
        errors = [(ours[:, i] - theirs[:, j]).pow(2).mean() for j in range(len(kept))]
        assert min(range(len(kept)), key=lambda j: errors[j]) == i


def test_a_stopped_reconstruction_leaves_the_model_as_it_was():
    net = _residual()
    x = torch.rand(8, 3, 12, 12)
    pruned, done = _cut(net, x)
    cut = copy.deepcopy(pruned)
    job = reconstruct(pruned, net, x, done.removed)
    next(job)  # the first layer is refitted ...
    assert not _same_state(pruned, cut)
    job.close()  # ... and the user stops
    assert _same_state(pruned, cut)


@pytest.mark.parametrize("text, stages", [
    ("bn+reconstruct", ("bn", "reconstruct")), ("reconstruct+bn", ("bn", "reconstruct")),
    ("distill", ("bn", "distill")), ("reconstruct+distill", ("bn", "reconstruct", "distill")),
    ("none", ()), ("finetune", ("finetune",))])
def test_recovery_stages_run_in_a_fixed_order(text, stages):
    assert recovery_stages(text) == stages


@pytest.mark.parametrize("text", ["", "bogus", "bn+bogus", "distill+finetune", "none+bn"])
def test_unknown_recovery_stages_are_refused(text):
    with pytest.raises(PruneScopeError):
        Recovery(text).check()


class SelfPadded(nn.Conv2d):
    """TensorFlow's "same" padding in the forward, then F.conv2d with padding 0, as
    efficientnet_pytorch's Conv2dDynamicSamePadding (and timm's Conv2dSame) do."""

    def forward(self, x):
        h, w = x.shape[-2:]
        pad_h = max((-(-h // self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - h, 0)
        pad_w = max((-(-w // self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - w, 0)
        x = nn.functional.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Rescaled(nn.Conv2d):
    """A layer that transforms its convolution's result: not the affine map of its weight."""

    def forward(self, x):
        return torch.tanh(super().forward(x))


class OwnWeight(nn.Conv2d):
    """A layer that convolves with a weight computed from its own (a reparametrisation by hand)."""

    def forward(self, x):
        return self._conv_forward(x, self.weight * 2, self.bias)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2),
    nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.Conv2d(4, 4, 5, padding=2, groups=4),
    nn.Conv2d(4, 6, (1, 3), padding="same"), nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect"),
    nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular", bias=False)])
def test_the_fit_models_each_kind_of_convolution_exactly(conv):
    from core.model_pruning.reconstruct import _Layer, _not_linear_here

    net = nn.Sequential(nn.Conv2d(3, 4, 1), conv, nn.BatchNorm2d(conv.out_channels)).eval()
    with torch.no_grad():
        net[2].running_mean.uniform_(-1, 1), net[2].running_var.uniform_(0.5, 2)
    layer = _Layer("1", conv, conv, net[2], None)
    assert _not_linear_here(net, layer, net[2], torch.rand(2, 3, 9, 9)) == ""


def _cut_self_padded(kind: type, stride: int = 1):
    """(original, pruned with conv 0's channels 4 and 5 cut, by hand) of a 1x1 conv, then a 3x3 `kind`."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 1), kind(6, 4, 3, stride=stride)).eval()
    pruned = copy.deepcopy(net)
    with torch.no_grad():
        pruned[0] = nn.Conv2d(3, 4, 1)
        pruned[0].weight.copy_(net[0].weight[:4]), pruned[0].bias.copy_(net[0].bias[:4])
        pruned[1] = kind(4, 4, 3, stride=stride)
        pruned[1].weight.copy_(net[1].weight[:, :4]), pruned[1].bias.copy_(net[1].bias)
    return net, pruned.eval()


@pytest.mark.parametrize("stride", [1, 2])
def test_a_convolution_that_pads_in_its_forward_is_reconstructed(stride):
    from core.model_pruning.reconstruct import _distance

    net, pruned = _cut_self_padded(SelfPadded, stride)
    x = torch.rand(8, 3, 9, 9)
    assert net(x).shape[-1] == -(-9 // stride)  # "same": the output keeps ceil(9 / stride) columns
    before = _distance(pruned, net, x)
    result = run(reconstruct(pruned, net, x, {"0": [4, 5]}))
    assert result.skipped == {} and [fit.name for fit in result.layers] == ["1"] and result.kept
    assert _distance(pruned, net, x) < 0.5 * before


@pytest.mark.parametrize("kind, why", [(Rescaled, OWN_FORWARD), (OwnWeight, NO_WEIGHT_CALL)])
def test_a_layer_is_left_as_it_was_only_when_its_weight_s_call_is_not_its_output(kind, why):
    net, pruned = _cut_self_padded(kind)
    before = copy.deepcopy(pruned)
    result = run(reconstruct(pruned, net, torch.rand(8, 3, 8, 8), {"0": [4, 5]}))
    assert result.skipped == {"1": why} and _same_state(pruned, before)


class Tokens(nn.Module):
    """An MLP on tokens (batch x tokens x channels), as in a ViT block."""

    def __init__(self, hidden=16):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.fc1, self.fc2 = nn.Linear(8, hidden), nn.Linear(hidden, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = t + self.fc2(torch.relu(self.fc1(t)))
        return self.head(t.mean(1))


def test_linear_layers_on_tokens_are_fitted_on_their_channels():
    torch.manual_seed(0)
    net = Tokens().eval()
    keep = list(range(10))
    pruned = copy.deepcopy(net)
    with torch.no_grad():
        pruned.fc1 = nn.Linear(8, 10)
        pruned.fc1.weight.copy_(net.fc1.weight[keep]), pruned.fc1.bias.copy_(net.fc1.bias[keep])
        pruned.fc2 = nn.Linear(10, 8)
        pruned.fc2.weight.copy_(net.fc2.weight[:, keep]), pruned.fc2.bias.copy_(net.fc2.bias)
    x = torch.rand(12, 3, 16, 16)
    with torch.no_grad():
        before = (pruned(x) - net(x)).pow(2).mean()
    result = run(reconstruct(pruned.eval(), net, x, {"fc1": list(range(10, 16))}))
    assert result.kept and not result.skipped
    assert any(f.name == "fc2" and f.strength is not None for f in result.layers)
    with torch.no_grad():
        assert (pruned(x) - net(x)).pow(2).mean() < before


def test_fidelity_has_known_answers():
    from core.model_pruning.measures import fidelity, logits

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7)).eval()
    x = torch.rand(4, 3, 2, 2)
    same = fidelity(net, logits(net, x), x)
    assert same["top5_overlap"] == 1.0 and abs(same["kl"]) < 1e-9
    flipped = nn.Sequential(net, nn.Flatten()).eval()
    with torch.no_grad():
        other = fidelity(flipped, -logits(net, x), x)  # the reference ranks classes the other way round
    assert other["top5_overlap"] == 3 / 5 and other["kl"] > 0.1  # 7 classes: two tops of 5 share 3


def test_prune_reports_what_reconstruction_did(tiny):
    from core.model_pruning.measures import predict
    from core.model_pruning.pipeline import Calibration, prune_model

    torch.manual_seed(0)
    x = torch.rand(12, 3, 32, 32)
    calib = Calibration([], x, None, predict(tiny.module, x))
    report = run(prune_model(tiny, "l1", 30, calib, protect=["none"], settings=Recovery("bn+reconstruct")))
    done = report.summary()["reconstruction"]
    assert report.recovery == "bn+reconstruct" and done["layers"] == 2  # conv2 and fc, after conv1's cut
    # conv2 and fc read conv1's kept channels through affine maps: both are refitted, and the fit
    # brings the outputs closer to the original's, so it is kept (not undone)
    assert done["refitted"] == 2 and done["undone"] is False and done["skipped"] == {}
    assert {"top5_overlap", "kl", "top5_overlap_before_recovery", "kl_before_recovery"} <= set(report.summary())
