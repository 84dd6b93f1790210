"""Where to cut: the per-layer cap of global ranking and the sensitivity-based allocation."""
import copy

import pytest
import torch
from torch import nn

from core.errors import PruneScopeError
from core.model_pruning import surgery
from core.model_pruning.sensitivity import allocate
from tests.test_reconstruct import _residual


def _scores(net):
    torch.manual_seed(3)
    return {name: torch.rand(m.weight.shape[0]) for name, m in net.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_the_budget_goes_first_where_a_channel_costs_least():
    # group 0 is cheap at every level, group 1 dear: 6 channels all come from group 0 ...
    assert allocate([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]], [8, 8], 6) == [6, 0]
    # ... and past the measured levels (6 of 8 each) the rest is taken, one channel kept per group
    assert allocate([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]], [8, 8], 14) == [7, 7]
    # a step larger than what is left takes only what is left
    assert allocate([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], [8, 8], 3) == [3, 0]


def test_global_ranking_takes_at_most_the_cap_of_any_group():
    net = _residual()
    x = torch.rand(8, 3, 12, 12)
    scores = _scores(net)
    scores["conv1"] -= 10  # conv1 ranks lowest everywhere: uncapped, the whole budget comes from it
    uncapped, capped = copy.deepcopy(net), copy.deepcopy(net)
    assert len(surgery.prune_structured(uncapped, x, scores, 40).removed["conv1"]) == 6
    done = surgery.prune_structured(capped, x, scores, 40, cap=50)
    assert len(done.removed["conv1"]) == 4 and len(done.removed["conv0"]) == 2  # the rest elsewhere
    with pytest.raises(PruneScopeError):
        surgery.prune_structured(copy.deepcopy(net), x, scores, 40, cap=0)


def test_sensitivity_allocation_reaches_the_sparsity_and_the_model_runs():
    net = _residual()
    x = torch.rand(8, 3, 12, 12)
    pruned = copy.deepcopy(net)
    done = surgery.prune_structured(pruned, x, _scores(net), 40, "sensitivity")
    assert done.cut == int(done.ranked * 0.4) and done.ranked == 16
    assert pruned(x).shape == (8, 4)
