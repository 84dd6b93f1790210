"""Batch norms folded into convolutions: the same function, and nothing folded that would not be."""
import threading

import numpy as np
import torch
from torch import nn

from core.io.images import load_image
from core.methods import attribute
from core.models.loading import LoadedModel
from core.network.folding import fold_batchnorm
from core.network.neurons import discover_layers, intercept
from core.pathway.engine import Engine


class ConvBN(nn.Module):
    """conv -> BN -> ReLU twice, then a classifier; `skip` adds the first conv's raw output
    after its BN, which folding that BN would change."""

    def __init__(self, skip: bool = False, shared_norm: bool = False):
        super().__init__()
        self.skip = skip
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.bn2 = self.bn1 if shared_norm else nn.BatchNorm2d(8)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.head = nn.Linear(8, 4)
        generator = torch.Generator().manual_seed(0)
        for norm in (self.bn1, self.bn2):  # statistics far from the identity, so folding matters
            norm.running_mean.uniform_(-1, 1, generator=generator)
            norm.running_var.uniform_(0.5, 2, generator=generator)
            norm.weight.data.uniform_(0.5, 2, generator=generator)
            norm.bias.data.uniform_(-1, 1, generator=generator)

    def forward(self, x):
        y = self.conv1(x)
        a = self.relu1(self.bn1(y) + (y if self.skip else 0))
        b = self.relu2(self.bn2(self.conv2(a)))
        return self.head(b.mean((2, 3)))


def _probe():
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _norms(module):
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def test_folded_network_is_the_same_function_without_its_batch_norms():
    net = ConvBN().eval().requires_grad_(False)
    folded = fold_batchnorm(net, _probe())
    assert folded is not net and _norms(folded) == 0 and _norms(net) == 2
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
    assert [layer.name for layer in discover_layers(folded, x)] == ["relu1", "relu2"]


def test_nothing_is_folded_where_the_result_would_differ():
    probe = _probe()
    skip = ConvBN(skip=True).eval()  # the conv's output is also used without its BN
    shared = ConvBN(shared_norm=True).eval()  # one BN after two convolutions
    training = ConvBN().train()
    half_training = ConvBN().eval()
    half_training.bn2.train()
    before = half_training.bn2.running_mean.clone()
    assert fold_batchnorm(skip, probe) is skip
    assert fold_batchnorm(shared, probe) is shared
    assert fold_batchnorm(training, probe) is training
    assert fold_batchnorm(half_training, probe) is half_training
    assert torch.equal(half_training.bn2.running_mean, before)  # the probe did not update it


def test_a_model_that_cannot_be_copied_is_used_as_it_is():
    net = ConvBN().eval()
    net.lock = threading.Lock()  # deepcopy cannot copy it
    assert fold_batchnorm(net, _probe()) is net


def test_the_embedded_model_folds_and_keeps_its_activations_and_gradient(lite0, photo):
    engine = Engine(lite0, load_image(photo("coffee.png")))
    assert engine.module is not lite0.module and _norms(engine.module) == 0
    acts = {}
    for key, module in (("model", lite0.module), ("folded", engine.module)):
        kept = []
        with torch.no_grad(), intercept(lambda _i, out: kept.append(out) or out):
            kept.append(module(engine.x))
        acts[key] = kept
    assert len(acts["folded"]) == len(acts["model"]) == len(engine.layers) + 1
    for ours, theirs in zip(acts["folded"], acts["model"]):
        assert float((ours - theirs).abs().max()) <= 1e-4 * float(theirs.abs().max())
    # A ReLU6 network's input gradient is as sensitive to rounding as to a 1e-6 change of the
    # input: a few pixels can change, the map as a whole cannot.
    ours, theirs = engine.attribution("gradient"), attribute("gradient", lite0, engine.x, engine.target)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999
    assert np.abs(ours - theirs).mean() < 1e-2 * np.abs(theirs).mean()


def test_a_changed_model_is_folded_again():
    net = ConvBN().eval().requires_grad_(False)
    model = LoadedModel("conv-bn", net, torch.device("cpu"), ["a", "b", "c", "d"], 16, 16,
                        (0.0,) * 3, (1.0,) * 3, None)
    x = _probe()
    first = model.folded(x)
    assert model.folded(x) is first  # made once
    net.bn2.running_mean.add_(3.0)  # in place, as a statistics update or an optimiser step is
    again = model.folded(x)
    assert again is not first
    torch.testing.assert_close(again(x), net(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first(x), net(x))
    net.double()  # the same tensors, converted
    assert next(model.folded(x.double()).parameters()).dtype == torch.float64
