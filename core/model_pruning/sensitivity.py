"""Where to cut: how much each group of coupled channels may lose, from what losing them costs.

Global ranking compares scores across layers, and can empty a layer that everything after it
depends on. Here each group's lowest-scored quarter, half and three quarters are removed alone
(their outputs zeroed, which is what removal does to the layers that read them), the change of
the model's output on the calibration images is measured (KL to the unpruned output), and the
channel budget goes first to the groups where a removed channel costs least.
"""
import torch
from torch import nn

from core.network.folding import conv_bn_pairs, fold_batchnorm
from core.network.hooks import hooked

LEVELS = (0.25, 0.5, 0.75)  # shares of a group removed alone to measure its cost
MAX_IMAGES = 8              # of the calibration images, for the measurement


def group_costs(module: nn.Module, x: torch.Tensor, graph, ranked, names: dict) -> list[list[float]]:
    """Per ranked group, the mean KL(unpruned || masked) on x with its lowest-scored LEVELS of
    channels zeroed, one after another."""
    x = x[:MAX_IMAGES]
    module.eval()
    norms = dict(conv_bn_pairs(module, x[:1])[0])  # conv -> the batch norm after it
    # Measured on a folded copy (faster passes), whose folded norms are identities by the same names.
    measured = fold_batchnorm(module, x[:2])
    with torch.no_grad():
        reference = torch.log_softmax(measured(x).double(), 1)
    modules = dict(measured.named_modules())
    costs = []
    for group, scores in ranked:
        order = torch.argsort(scores, stable=True).tolist()
        root = group[0].dep
        row = []
        for level in LEVELS:
            idxs = order[:min(int(len(order) * level), len(order) - 1)]
            zeroed = {}
            for item in graph.get_pruning_group(root.target.module, root.handler, idxs):
                target = item.dep.target.module
                if isinstance(target, (nn.Conv2d, nn.Linear)) and graph.is_out_channel_pruning_fn(item.dep.handler):
                    name = names[target]
                    # a linear's channels are its last axis (tokens, channels-last maps)
                    dim = -1 if isinstance(target, nn.Linear) else 1
                    zeroed[modules[norms.get(name, name)]] = (list(item.idxs), dim)
            row.append(_masked_kl(measured, x, reference, zeroed))
        costs.append(row)
    return costs


def _masked_kl(module: nn.Module, x: torch.Tensor, reference: torch.Tensor, zeroed: dict) -> float:
    def hook(channels, dim):
        def zero(_m, _inputs, out):
            return out.index_fill(dim, torch.tensor(channels, device=out.device), 0)
        return zero

    handles = [m.register_forward_hook(hook(channels, dim)) for m, (channels, dim) in zeroed.items() if channels]
    with hooked(handles), torch.no_grad():
        ours = torch.log_softmax(module(x).double(), 1)
    return float(nn.functional.kl_div(ours, reference, log_target=True, reduction="batchmean"))


def allocate(costs: list[list[float]], sizes: list[int], budget: int) -> list[int]:
    """Channels to remove per group, `budget` in all: greedily, the next level of the group whose
    next channels cost least each (the last step taking only what the budget has left); every
    group keeps at least one channel."""
    steps, paid = [], []
    for n, row in zip(sizes, costs):
        # levels that remove no more channels than the one before (small groups) are skipped
        counts_at, costs_at = [0], [0.0]
        for level, cost in zip(LEVELS, row):
            count = min(int(n * level), n - 1)
            if count > counts_at[-1]:
                counts_at.append(count)
                costs_at.append(cost)
        steps.append(counts_at)
        paid.append(costs_at)
    at = [0] * len(sizes)
    counts = [0] * len(sizes)
    left = budget
    while left > 0:
        options = [(max(paid[g][at[g] + 1] - paid[g][at[g]], 0.0) / (steps[g][at[g] + 1] - steps[g][at[g]]), g)
                   for g in range(len(sizes))
                   if at[g] + 1 < len(steps[g]) and steps[g][at[g] + 1] > steps[g][at[g]]]
        if not options:
            break
        _, g = min(options)
        more = min(steps[g][at[g] + 1] - counts[g], left)
        counts[g] += more
        left -= more
        at[g] += 1
    # past the measured levels: the groups whose last measured channels cost least, first
    last = sorted(range(len(sizes)), key=lambda g: (paid[g][-1] - paid[g][-2]) / max(steps[g][-1] - steps[g][-2], 1)
                  if len(steps[g]) > 1 else 0.0)
    for g in last:
        more = min(sizes[g] - 1 - counts[g], left)
        counts[g] += max(more, 0)
        left -= max(more, 0)
    return counts
