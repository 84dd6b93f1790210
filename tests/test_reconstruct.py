"""Post-training reconstruction (core.model_pruning.reconstruct) and composed recovery stages."""
import copy

import pytest
import torch
from torch import nn

from core.errors import PruneScopeError
from core.model_pruning import surgery
from core.model_pruning.names import recovery_stages
from core.model_pruning.pipeline import Recovery
from core.model_pruning.reconstruct import reconstruct
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
    pruned = copy.deepcopy(tiny.module)
    x = torch.rand(6, 3, 32, 32)
    result = run(reconstruct(pruned, tiny.module, x, {}))
    assert result.layers == [] and _same_state(pruned, tiny.module)


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


def test_coupled_groups_keep_their_channel_order_and_get_closer_to_the_original():
    net = _residual()
    x = torch.rand(16, 3, 12, 12)
    pruned = copy.deepcopy(net)
    scores = {name: torch.arange(m.weight.shape[0], dtype=torch.float) for name, m in
              pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    done = surgery.prune_structured(pruned, x, scores, 40)
    assert done.removed["conv0"] == done.removed["conv2"]  # the add couples them
    kept = [c for c in range(8) if c not in done.removed["conv2"]]
    before = (_block_output(pruned, x) - _block_output(net, x)[:, kept]).pow(2).mean()
    result = run(reconstruct(pruned, net, x, done.removed))
    assert result.kept and {f.name for f in result.layers} >= {"conv2", "fc"}
    ours, theirs = _block_output(pruned, x), _block_output(net, x)[:, kept]
    assert (ours - theirs).pow(2).mean() < before
    # channel i is still the original's kept[i]: matched, it is closer than any other pairing
    for i in range(len(kept)):
        errors = [(ours[:, i] - theirs[:, j]).pow(2).mean() for j in range(len(kept))]
        assert min(range(len(kept)), key=lambda j: errors[j]) == i


def test_a_stopped_reconstruction_leaves_the_model_as_it_was():
    net = _residual()
    x = torch.rand(8, 3, 12, 12)
    pruned = copy.deepcopy(net)
    scores = {name: torch.arange(m.weight.shape[0], dtype=torch.float) for name, m in
              pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    done = surgery.prune_structured(pruned, x, scores, 40)
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
