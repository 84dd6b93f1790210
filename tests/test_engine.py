"""The pathway engine: neurons, scores, masks and maps, against known answers and invariants."""
import gc
import math
import warnings

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import IntegratedGradients
from torch import nn

from core.errors import PruneScopeError
from core.io.images import load_image
from core.methods.attribution import collapse_channels
from core.models.loading import LoadedModel
from core.network.neurons import (Layer, MaskedForward, discover_layers, intercept, layer_modules,
                                  taylor_scores)
from core.pathway.engine import Engine, compute_map
from core.pathway.ranking import Ranking, select
from core.progress import Stopped, run


def wrap(module: nn.Module, name: str = "test-net", classes: int = 10) -> LoadedModel:
    module.eval().requires_grad_(False)
    return LoadedModel(name, module, torch.device("cpu"), [f"class {i}" for i in range(classes)], 8, 8,
                       (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "")


def tiny_pathway_net() -> nn.Module:
    """12 inputs -> 4 hidden ReLU neurons -> 2 classes, with a known critical pathway.

    Hidden neuron i copies input pixel i (value 1). Class 0 reads hidden neurons 0 and 1 with
    weights 3 and 2, and neurons 2 and 3 with weights 0.01 and 0.02: the scores |a * dy/da| are
    3, 2, 0.01, 0.02, so at 50 % sparsity the pathway is {0, 1}.
    """
    first = nn.Linear(12, 4, bias=False)
    first.weight.data.zero_()
    for i in range(4):
        first.weight.data[i, i] = 1.0
    last = nn.Linear(4, 2, bias=False)
    last.weight.data = torch.tensor([[3.0, 2.0, 0.01, 0.02], [1.0, 1.0, 1.0, 1.0]])
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), last)


def test_tiny_net_gives_the_known_pathway():
    model = wrap(tiny_pathway_net(), classes=2)
    x = torch.ones(1, 3, 2, 2)
    engine = Engine.from_tensor(model, x, target=0)
    np.testing.assert_allclose(engine.scores()[0].numpy(), [3.0, 2.0, 0.01, 0.02], rtol=1e-6)
    (mask,) = engine.masks(50.0)
    assert mask.tolist() == [True, True, False, False]
    # Through neurons 0 and 1 only, dy0/dx is 3 on input 0, 2 on input 1 and 0 elsewhere.
    expected = torch.zeros(1, 12)
    expected[0, 0], expected[0, 1] = 3.0, 2.0
    np.testing.assert_array_equal(engine.pathway(50.0).map, collapse_channels(expected.view(1, 3, 2, 2)))
    # The plain gradient also carries the weak neurons.
    assert engine.pathway(0.0).map[1, 0] == pytest.approx(0.01)


def test_intgrad_selector_equals_taylor_when_the_rest_is_linear():
    # After the ReLU the net is linear, so dy/d(alpha a) does not depend on alpha.
    model = wrap(tiny_pathway_net(), classes=2)
    engine = Engine.from_tensor(model, torch.rand(1, 3, 2, 2), target=0)
    taylor = engine.scores("taylor")[0]
    intgrad = run(engine.iter_scores("intgrad")).per_layer[0]
    torch.testing.assert_close(intgrad, taylor)


def test_intgrad_selector_differs_on_a_nonlinear_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    engine = Engine.from_tensor(wrap(net), torch.randn(1, 3, 8, 8), target=1)
    first_t, first_i = engine.scores("taylor")[0], run(engine.iter_scores("intgrad")).per_layer[0]
    assert first_t.shape == first_i.shape == (8, 6, 6)
    assert not torch.allclose(first_t, first_i)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return wrap(torchvision.models.resnet18(weights=None, num_classes=10), "resnet18")


@pytest.fixture(scope="module")
def resnet_engine(resnet):
    torch.manual_seed(1)
    return Engine.from_tensor(resnet, torch.randn(1, 3, 64, 64))


def test_sparsity_zero_is_exactly_the_plain_gradient(resnet_engine):
    x = resnet_engine.x.clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(resnet_engine.module(x)[0, resnet_engine.target], x)
    result = resnet_engine.pathway(0.0)
    np.testing.assert_array_equal(result.map, collapse_channels(grad))
    assert result.output_change == 0.0
    assert all(kept == total for _, kept, total in result.kept)


def test_a_stopped_pathway_raises_in_its_forward_and_changes_nothing(lite0, photo):
    engine = Engine(lite0, load_image(photo("coffee.png")))
    assert engine._layer_modules is not None  # the hooked path, whose hooks must come off
    calls = []

    def stop_at_third_layer():
        calls.append(1)
        return len(calls) == 3

    expected = engine.pathway(60.0)
    with pytest.raises(Stopped):
        engine.pathway(45.0, stop=stop_at_third_layer)
    assert len(calls) == 3  # checked at every layer until it said stop
    assert all(not m._forward_hooks for m in engine.module.modules())
    assert torch._C._len_torch_function_stack() == 0
    again = engine.pathway(60.0, stop=lambda: False)
    np.testing.assert_array_equal(again.map, expected.map)


def test_sparsity_zero_is_exactly_the_plain_gradient_on_the_embedded_model(lite0, photo):
    engine = Engine(lite0, load_image(photo("coffee.png")))
    x = engine.x.clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(engine.module(x)[0, engine.target], x)
    np.testing.assert_array_equal(engine.pathway(0.0).map, collapse_channels(grad))
    assert engine.prediction.name == "espresso"


def _pooled(tensors, mode):
    flat = [t.flatten() for t in tensors]
    return [torch.cat(flat)] if mode == "global" else flat


@pytest.mark.parametrize("mode", ["global", "per-layer"])
@pytest.mark.parametrize("sparsity", [10.0, 50.0, 90.0, 99.0])
def test_exact_ties_prune_the_fraction_asked_dead_neurons_first(resnet_engine, mode, sparsity):
    scores = resnet_engine.scores()
    ranked = resnet_engine._cache.scores["taylor"]
    magnitudes = ranked.per_layer_views(ranked.magnitudes)
    masks = resnet_engine.masks(sparsity, mode)
    for values, size, kept in zip(_pooled(scores, mode), _pooled(magnitudes, mode), _pooled(masks, mode)):
        assert values.numel() - int(kept.sum()) == int(sparsity / 100 * values.numel())
        if bool(kept.all()) or not bool((~kept).any()):
            continue
        top_pruned, low_kept = values[~kept].max(), values[kept].min()
        assert top_pruned <= low_kept  # never a higher score pruned before a lower one
        tied = values == low_kept
        if bool((tied & ~kept).any()) and float(low_kept) == 0.0:
            # among zero scores: dead ones go before live ones, then smaller |a| first
            assert size[tied & ~kept].max() <= size[tied & kept].min()


def _reference_kept(scores, magnitudes, sparsity):
    """The exact order by a full sort: score, then |a| among zero scores (dead first), then
    position; the first floor(p % of n) go."""
    n = scores.numel()
    secondary = torch.where(scores == 0, magnitudes, torch.zeros_like(magnitudes))
    order = np.lexsort((np.arange(n), secondary.numpy(), scores.numpy()))
    kept = torch.ones(n, dtype=torch.bool)
    kept[torch.from_numpy(order[:int(sparsity / 100 * n)])] = False
    return kept


def test_selected_and_sorted_thresholds_equal_a_full_sort_on_many_ties():
    # Small integers: long ties among zero and non-zero scores and among |a|, cut everywhere.
    generator = torch.Generator().manual_seed(3)
    shapes = [(4, 5, 5), (7, 3), (50,)]
    scores = [torch.randint(0, 4, s, generator=generator).float() for s in shapes]
    magnitudes = [torch.randint(0, 3, s, generator=generator).float() for s in shapes]
    magnitudes = [torch.where(s > 0, a + 1, a) for s, a in zip(scores, magnitudes)]  # live if scored
    flat_s, flat_a = torch.cat([s.flatten() for s in scores]), torch.cat([a.flatten() for a in magnitudes])
    layers = [Layer(f"layer{i}", "relu", shape) for i, shape in enumerate(shapes)]
    sorted_once = Ranking(flat_s, flat_a, layers)
    sorted_once.masks(50.0, "global")  # the first request selects; the next ones read a sort
    for sparsity in np.arange(0.0, 100.0, 1.7):
        selected = Ranking(flat_s, flat_a, layers).masks(sparsity, "global")
        expected = _reference_kept(flat_s, flat_a, sparsity)
        for masks in (selected, sorted_once.masks(sparsity, "global")):
            assert torch.equal(torch.cat([m.flatten() for m in masks]), expected), sparsity
        per_layer = Ranking(flat_s, flat_a, layers).masks(sparsity, "per-layer")
        for mask, s, a in zip(per_layer, scores, magnitudes):
            assert torch.equal(mask.flatten(), _reference_kept(s.flatten(), a.flatten(), sparsity)), sparsity


@pytest.mark.parametrize("ties", ["exact", "paper"])
@pytest.mark.parametrize("mode", ["global", "per-layer"])
def test_kept_counts_known_without_counting_are_the_masks_counts(mode, ties):
    generator = torch.Generator().manual_seed(4)
    shapes = [(4, 5, 5), (7, 3), (50,)]
    scores = [torch.randint(0, 400, s, generator=generator).float() * (torch.rand(s, generator=generator) > 0.4)
              for s in shapes]  # 40 % zeros and some ties among the others
    magnitudes = [torch.randint(0, 3, s, generator=generator).float() + (v > 0) for s, v in zip(shapes, scores)]
    ranked = Ranking(torch.cat([v.flatten() for v in scores]), torch.cat([a.flatten() for a in magnitudes]),
                     [Layer(f"layer{i}", "relu", shape) for i, shape in enumerate(shapes)])
    known = 0
    for sparsity in np.arange(0.0, 100.0, 1.3):  # the first one selects, the later ones search
        counts = ranked.counts(sparsity, mode, ties)
        masks = ranked.masks(sparsity, mode, ties)
        if counts is not None:
            known += 1
            assert counts == [int(m.sum()) for m in masks], sparsity
    assert known >= 30  # of 77: all but the zero scores, and cuts inside a tie, across layers


def test_an_images_first_map_waits_for_no_sort_and_the_next_ones_count_by_search():
    generator = torch.Generator().manual_seed(5)
    flat = torch.rand(3000, generator=generator) * (torch.rand(3000, generator=generator) > 0.3)
    ranked = Ranking(flat, flat + 1, [Layer("a", "relu", (1000,)), Layer("b", "relu", (2000,))])
    ranked.kept(60.0, "global", dtype=torch.float32)
    order = ranked._ranked("global")[0]._nonzero
    assert ranked.counts(60.0, "global") is None and order._sorted is None  # asked again: still selected
    masks = ranked.masks(80.0, "global")
    assert order._sorted is not None
    assert ranked.counts(80.0, "global") == [int(m.sum()) for m in masks]


@pytest.mark.parametrize("values", [
    torch.rand(300_000, generator=torch.Generator().manual_seed(0)),
    torch.randint(0, 50, (300_000,), generator=torch.Generator().manual_seed(1)).float(),  # long ties
    torch.cat([torch.zeros(200_000), torch.full((1000,), math.inf), torch.rand(99_000)]),  # tiers' layout
])
def test_selection_by_sampling_equals_a_sort(values):
    ordered = values.sort().values
    for rank in (0, 1, 1234, 150_000, 199_999, 200_000, 250_000, values.numel() - 1):
        cut, below, equal = select(values, rank)
        assert cut == float(ordered[rank])
        assert below == int((values < cut).sum()) and equal == int((values == cut).sum())


def test_exact_ties_give_every_slider_position_its_own_pathway(lite0, photo):
    engine = Engine(lite0, load_image(photo("chelsea.png")))
    zeros = float(torch.cat([s.flatten() for s in engine.scores()]).eq(0).float().mean())
    assert zeros > 0.4  # the tie the paper's rule prunes as a whole
    kept = [sum(int(m.sum()) for m in engine.masks(p)) for p in (5, 10, 20, 30, 40, 50, 60)]
    assert len(set(kept)) == len(kept)
    paper = engine.with_ties("paper")
    assert len({sum(int(m.sum()) for m in paper.masks(p)) for p in (5, 10, 20, 30, 40)}) == 1
    result = engine.pathway(30.0)
    assert result.sparsity == pytest.approx(30.0, abs=1e-4) and result.requested == 30.0
    assert paper.pathway(30.0).sparsity == pytest.approx(100 * zeros, abs=1e-4)


def test_auto_sparsity_does_not_assume_a_monotone_output_change(resnet_engine, monkeypatch):
    # within tolerance up to 40 %, out of it from 40 to 60 %, within again up to 75.3 %
    change = lambda p, *_: 0.0 if p <= 40 or 60 <= p <= 75.3 else 1.0  # noqa: E731
    monkeypatch.setattr(resnet_engine, "output_change", change)
    auto = run(resnet_engine.iter_auto_sparsity(0.1))
    assert auto.sparsity == pytest.approx(75.3, abs=0.1)
    assert "scanned" in auto.how and "bisected" in auto.how


@pytest.mark.parametrize("mode", ["global", "per-layer"])
@pytest.mark.parametrize("sparsity", [10.0, 50.0, 90.0, 99.0])
def test_paper_ties_keep_the_requested_fraction_up_to_ties(resnet_engine, mode, sparsity):
    scores = resnet_engine.scores()
    masks = resnet_engine.with_ties("paper").masks(sparsity, mode)
    groups = [torch.cat([s.flatten() for s in scores])] if mode == "global" else [s.flatten() for s in scores]
    kept_groups = [torch.cat([m.flatten() for m in masks])] if mode == "global" else [m.flatten() for m in masks]
    for values, kept in zip(groups, kept_groups):
        n = values.numel()
        pruned = n - int(kept.sum())
        wanted = int(sparsity / 100 * n)
        threshold = values.sort().values[wanted - 1]
        ties = int((values == threshold).sum())
        assert wanted <= pruned <= wanted + ties
        assert bool((values[kept] > threshold).all())


def test_pathway_map_changes_with_sparsity_and_keeps_the_kept_counts(resnet_engine):
    half, most = resnet_engine.pathway(50.0), resnet_engine.pathway(90.0)
    assert not np.array_equal(half.map, most.map)
    assert sum(k for _, k, _ in most.kept) < sum(k for _, k, _ in half.kept)
    for (name, kept, total), mask, layer in zip(most.kept, most.masks, resnet_engine.layers):
        assert name == layer.name and kept == int(mask.sum()) and total == layer.numel


def test_pathway_integrated_gradients_at_zero_sparsity_is_captum_ig(resnet_engine):
    ours = resnet_engine.pathway(0.0, method="integrated-gradients").map
    ig = IntegratedGradients(resnet_engine.model.module).attribute(
        resnet_engine.x, target=resnet_engine.target, n_steps=50, internal_batch_size=10)
    np.testing.assert_allclose(ours, collapse_channels(ig), rtol=1e-4, atol=1e-6)


def test_pathway_input_x_gradient_is_input_times_pathway_gradient(resnet_engine):
    x = resnet_engine.x
    masks = resnet_engine.masks(60.0)
    forward = resnet_engine.masked_forward(masks)
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(forward(xg)[0, resnet_engine.target], xg)
    np.testing.assert_allclose(resnet_engine.pathway(60.0, method="input-x-gradient").map,
                               collapse_channels(grad * x), rtol=1e-6)


def test_auto_sparsity_stays_within_the_tolerance(resnet_engine):
    auto = run(resnet_engine.iter_auto_sparsity(tolerance=0.10))
    assert 0.0 <= auto.sparsity <= 99.9
    assert resnet_engine.output_change(auto.sparsity) == auto.output_change <= 0.10


def test_coarse_integrated_gradients_is_kept_apart_from_the_full_map(resnet):
    named = LoadedModel("resnet18", resnet.module, torch.device("cpu"), [f"c{i}" for i in range(10)],
                        8, 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "")
    engine = Engine.from_tensor(named, torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    coarse = run(engine.iter_attribution("integrated-gradients", 0.05, coarse=True))  # 16 nodes
    assert "integrated-gradients" not in engine._cache.maps  # not taken for the method's own map
    np.testing.assert_allclose(coarse, engine.with_settings({"integrated-gradients": {"steps": 16}})
                               .attribution("integrated-gradients"), rtol=1e-5, atol=1e-7)
    full = engine.attribution("integrated-gradients")
    expected = compute_map(engine.model, engine.x, engine.target, "integrated-gradients")
    np.testing.assert_allclose(full, expected, rtol=1e-5, atol=1e-7)
    assert coarse is not full and np.abs(coarse - full).max() <= 0.05 * np.abs(full).max()
    # once the full map exists, it is what a coarse request gets
    assert run(engine.iter_attribution("integrated-gradients", 0.05, coarse=True)) is full


def test_another_target_reuses_the_forward_and_gives_another_map(resnet_engine):
    other_target = (resnet_engine.target + 1) % 10
    other = resnet_engine.with_target(other_target)
    assert other.probs is resnet_engine.probs and other.target == other_target
    assert not np.array_equal(other.pathway(50.0).map, resnet_engine.pathway(50.0).map)


def test_bad_requests_raise_clear_errors(resnet_engine):
    with pytest.raises(PruneScopeError, match="sparsity"):
        resnet_engine.masks(100.0)
    with pytest.raises(PruneScopeError, match="mode"):
        resnet_engine.masks(10.0, mode="sideways")
    with pytest.raises(PruneScopeError, match="selector"):
        resnet_engine.masks(10.0, selector="magic")
    with pytest.raises(PruneScopeError, match="method"):
        resnet_engine.attribution("astrology")
    with pytest.raises(PruneScopeError, match="target"):
        resnet_engine.with_target(10)


@pytest.mark.parametrize("name, calls", [
    ("resnet18", 17),            # one ReLU module called twice per block
    ("vgg16", 15),               # in-place ReLUs
    ("densenet121", 121),        # 120 modules plus the functional F.relu before pooling
    ("mobilenet_v3_large", 40),  # Hardswish and ReLU modules
    ("vit_b_16", 12),            # GELU over (token, feature)
])
def test_every_activation_call_is_a_layer(name, calls):
    module = getattr(torchvision.models, name)(weights=None).eval()
    size = 224 if name == "vit_b_16" else 64
    layers = discover_layers(module, torch.randn(1, 3, size, size))
    assert len(layers) == calls
    assert len({layer.name for layer in layers}) == calls
    if name == "resnet18":
        assert [layer.name for layer in layers[1:3]] == ["layer1.0.relu", "layer1.0.relu#2"]
    if name == "densenet121":
        assert layers[-1].name == "relu" and layers[-1].shape == (1024, 2, 2)
    if name == "vit_b_16":
        assert layers[0].shape == (197, 3072)


def test_in_place_activations_are_scored_from_their_own_output():
    # VGG's in-place ReLU overwrites its input; the score must use the ReLU's output.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.randn(1, 3, 8, 8)
    net.requires_grad_(False)
    layers = discover_layers(net, x)
    act = torch.relu(net[0](x))
    grad = net[3].weight[0].view(4, 6, 6) * (act[0] > 0)
    for modules in (None, [net[1]]):  # intercept, then forward hooks
        scores, magnitudes = taylor_scores(net, x, 0, layers, modules)
        torch.testing.assert_close(scores, (act[0] * grad).abs().flatten())
        torch.testing.assert_close(magnitudes, act[0].flatten())


def test_scores_from_the_trace_equal_scores_of_their_own_forward(lite0, photo):
    engine = Engine(lite0, load_image(photo("coffee.png")))
    assert engine._taps is not None  # its first scores reuse the trace's forward
    traced = run(engine.iter_scores())
    assert engine._taps is None
    scores, magnitudes = taylor_scores(engine.module, engine.x, engine.target, engine.layers)
    torch.testing.assert_close(traced.flat, scores)
    torch.testing.assert_close(traced.magnitudes, magnitudes)
    # another tie rule takes the trace over (the app makes one per request); other selectors drop it
    fresh = Engine(lite0, load_image(photo("coffee.png")))
    paper = fresh.with_ties("paper")
    assert fresh._taps is None and paper._taps is not None
    torch.testing.assert_close(run(paper.iter_scores()).flat, scores)
    other = Engine(lite0, load_image(photo("coffee.png")))
    run(other.iter_scores("intgrad", steps=2))
    assert other._taps is None


def _hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in module.modules())


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() touches deprecated torch.distributed aliases
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_no_hooks_or_tensors_are_left_behind(resnet):
    x = torch.randn(1, 3, 32, 32)
    compute_map(resnet, x, 0, "pathway-gradient", sparsity=50.0)  # warm-up: lazy imports, caches
    before = _live_tensors()
    for i in range(100):
        compute_map(resnet, x, i % 10, "pathway-gradient", sparsity=float(i % 95))
    assert _hook_count(resnet.module) == 0
    assert not torch._C._is_torch_function_mode_enabled()
    assert _live_tensors() <= before + 5


def test_hooks_stand_in_for_intercept_where_each_layer_is_its_own_module(lite0, photo, resnet_engine):
    engine = Engine(lite0, load_image(photo("coffee.png")))
    assert engine._layer_modules is not None  # Lite0: one ReLU6 module per layer
    assert resnet_engine._layer_modules is None  # ResNet calls each block's ReLU twice
    masks = engine.masks(70.0)
    with torch.no_grad():
        by_hooks = engine.masked_forward(masks)(engine.x)
        engine._layer_modules = None
        by_intercept = engine.masked_forward(masks)(engine.x)
    assert torch.equal(by_hooks, by_intercept)
    assert _hook_count(lite0.module) == 0


class _WritesIntoItsActivation(nn.Module):
    def __init__(self, activation):
        super().__init__()
        self.conv, self.act, self.head = nn.Conv2d(3, 4, 3, padding=1), activation(), nn.Linear(4 * 36, 3)
        self.scale = nn.Linear(4 * 36, 4 * 36)

    def forward(self, x):
        a = self.act(self.conv(x))
        b = self.scale(a.flatten(1))  # a read before it is written into
        a.mul_(0.5)  # into the masked output, which the rectifier's backward reads
        return self.head(a.flatten(1) + b)


def _stack(activation):
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), activation(), nn.Conv2d(6, 4, 3, padding=1),
                         activation(), nn.Flatten(), nn.Linear(4 * 36, 3))


def _graph_nodes(tensor):
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [next_node for next_node, _ in node.next_functions]
    return {type(node).__name__ for node in seen}


class _CallsByKeyword(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6(), nn.Linear(4 * 36, 3)

    def forward(self, x):
        return self.head(self.act(input=self.conv(x)).flatten(1))


def _linear_stack(activation, dtype):
    return nn.Sequential(nn.Flatten(), nn.Linear(108, 32), activation(), nn.Linear(32, 16), activation(),
                         nn.Linear(16, 3)).to(dtype)


@pytest.mark.parametrize("make, unmultiplied", [
    (lambda: _stack(nn.ReLU), True), (lambda: _stack(lambda: nn.ReLU(inplace=True)), False),
    (lambda: _stack(nn.ReLU6), True), (lambda: _stack(lambda: nn.Hardtanh(0.0, 0.5)), True),
    (lambda: _stack(nn.SiLU), False), (lambda: _stack(lambda: nn.ReLU6(inplace=True)), False),
    (lambda: _WritesIntoItsActivation(nn.ReLU6), False), (lambda: _WritesIntoItsActivation(nn.ReLU), False),
    (_CallsByKeyword, False),
    (lambda: _linear_stack(lambda: nn.Hardtanh(0.0, 0.5), torch.float16), True),
    # 0.3 and 0.7 are not float16 or bfloat16 numbers: a rounded bound would let saturated neurons through
    (lambda: _linear_stack(lambda: nn.Hardtanh(0.0, 0.3), torch.float16), False),
    (lambda: _linear_stack(lambda: nn.Hardtanh(0.0, 0.7), torch.bfloat16), False),
], ids=["relu", "relu-in-place", "relu6", "hardtanh-0-0.5", "silu", "relu6-in-place", "relu6-written-into",
        "relu-written-into", "called-by-keyword", "half-hardtanh-0-0.5", "half-hardtanh-0-0.3", "bfloat16-hardtanh-0-0.7"])
def test_masked_rectifiers_give_exactly_the_multiplied_networks_output_and_gradient(make, unmultiplied):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = make()
    net.eval().requires_grad_(False)
    dtype = next(net.parameters()).dtype
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)).to(dtype)
    layers = discover_layers(net, x)
    generator = torch.Generator().manual_seed(1)
    masks = [(torch.rand(layer.shape, generator=generator) > 0.5).to(dtype) for layer in layers]

    def output_and_gradient(forward):
        xg = x.clone().requires_grad_(True)
        logits = forward(xg)
        return logits.detach(), torch.autograd.grad(logits[:, 1].sum(), xg)[0], _graph_nodes(logits)

    def multiplied(xg):
        with intercept(lambda i, out: out * masks[i]):
            return net(xg)

    expected, expected_grad, _ = output_and_gradient(multiplied)
    forward = MaskedForward(net, layer_modules(net, layers), masks)
    logits, grad, nodes = output_and_gradient(forward)
    assert torch.equal(logits, expected) and torch.equal(grad, expected_grad)
    assert ("MulBackward0" not in nodes) == unmultiplied  # the masks left out of the backward
    assert grad.abs().sum() > 0
    with torch.inference_mode():  # no gradients, and no version counters
        assert torch.equal(forward(x), expected)
    with torch.autograd.graph.saved_tensors_hooks(torch.clone, lambda saved: saved):  # copies, when saved
        assert torch.equal(output_and_gradient(forward)[1], expected_grad)


def test_intercept_restores_the_plain_forward():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    x = torch.randn(2, 3)
    with intercept(lambda i, out: out * 0):
        assert net(x).abs().sum() == 0
    assert net(x).abs().sum() > 0


def test_the_torch_we_ship_for_has_the_private_names_the_fast_path_reads():
    from core.network import torch_internals

    assert torch_internals._HAVE_GLOBAL_HOOKS and torch_internals._function_mode_enabled is not None
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    # torch 2.5 has no _top_saved_tensors_default_hooks: its ReLUs are masked through
    # _MaskedRectifier instead of in place (the maps are the same: the test below)
    assert torch_internals.FOUND or version < (2, 14)


@pytest.mark.parametrize("make", [lambda: torchvision.models.resnet18(num_classes=10),
                                  lambda: torchvision.models.mobilenet_v2(num_classes=10)],
                         ids=["relu", "relu6"])
def test_without_the_private_names_the_masks_are_multiplied_and_the_maps_the_same(make, monkeypatch):
    from core.network import torch_internals

    torch.manual_seed(0)
    model = wrap(make(), "net")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    fast = Engine.from_tensor(model, x)
    expected = {m: fast.pathway(70.0, method=m) for m in ("gradient", "integrated-gradients")}
    # torch as a release that renamed every private name the fast path reads
    monkeypatch.setattr(torch_internals, "_HAVE_GLOBAL_HOOKS", False)
    monkeypatch.setattr(torch_internals, "_function_mode_enabled", None)
    monkeypatch.setattr(torch_internals, "_top_saved_tensors_hooks", None)
    slow = Engine.from_tensor(model, x)
    for method, result in expected.items():
        again = slow.pathway(70.0, method=method)
        np.testing.assert_allclose(again.map, result.map, rtol=1e-5, atol=1e-7 * np.abs(result.map).max())
        assert again.prob == pytest.approx(result.prob, rel=1e-6)
    masks = [torch.ones(layer.shape) for layer in slow.layers]
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = MaskedForward(model.module, layer_modules(model.module, slow.layers), masks)(xg)
    assert "MulBackward0" in _graph_nodes(logits)  # the plain multiplied mask was used
