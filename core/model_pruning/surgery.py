"""Removing channels for real (Torch-Pruning's dependency graph), zeroing weights
(torch.nn.utils.prune). The saved format is core.models.pruned's.

Sparsity here is the fraction of rankable output channels removed (structured) or of weights
zeroed (unstructured). Coupled channels, those tied by residual additions, depthwise convs or
batch norms, form one group in the dependency graph; a group is ranked by the mean score of its
producers and removed together.
"""
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from core.errors import ModelError, PruneScopeError
from core.model_pruning.criteria import Scores, forward_order, producers
from core.model_pruning.names import MODES
from core.models.pruned import PRUNED_KEY, checkpoint, load_pruned  # noqa: F401  (the package's exports)

RESHAPED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)  # the layer kinds load_pruned rebuilds


@dataclass
class Surgery:
    """What one pruning did to a model."""
    removed: dict[str, list[int]]          # producer -> output channels removed (original numbering)
    layers: list[tuple[str, int, int]]     # (producer, kept, total) in forward order
    unit: str                              # "channels" or "weights"
    protected: list[str] = field(default_factory=list)     # producers kept whole on request
    skipped: dict[str, str] = field(default_factory=dict)  # group root -> why it was kept whole
    ranked: int = 0                        # channels of the groups that were ranked (structured)
    cut: int = 0                           # of which removed: sparsity reached = cut / ranked
    # batch norm -> channels the last pruning removed from it (numbered as before that pruning),
    # so that recovery knows which of the source's channels each batch norm kept
    norms: dict[str, list[int]] = field(default_factory=dict)

    def then(self, later: "Surgery") -> "Surgery":
        """This pruning followed by `later` (on the pruned model), in the original numbering."""
        totals = {name: total for name, _, total in self.layers}
        removed = {}
        for name in set(self.removed) | set(later.removed):
            gone = set(self.removed.get(name, []))
            kept = [c for c in range(totals[name]) if c not in gone]
            removed[name] = sorted(gone | {kept[i] for i in later.removed.get(name, [])})
        layers = [(name, kept, totals[name]) for name, kept, _ in later.layers]
        return Surgery(removed, layers, self.unit, self.protected, {**self.skipped, **later.skipped},
                       self.ranked, self.cut + later.cut, later.norms)


def check_sparsity(sparsity: float, mode: str) -> None:
    if not 0.0 <= float(sparsity) < 100.0:
        raise PruneScopeError(f"sparsity must be in [0, 100) percent, got {sparsity}")
    if mode not in MODES:
        raise PruneScopeError(f"unknown pruning mode '{mode}': choose {' or '.join(MODES)}")


def resolve_protected(module: nn.Module, x: torch.Tensor, tokens) -> set[str]:
    """'first' / 'last' (in forward order) or producer module paths -> producer names."""
    order = forward_order(module, x)
    names = set(producers(module))
    protected = set()
    for token in tokens:
        token = token.strip()
        if token in ("", "none"):
            continue
        if token == "first":
            protected.add(order[0])
        elif token == "last":
            protected.add(order[-1])
        elif token in names:
            protected.add(token)
        else:
            raise ModelError(f"cannot protect '{token}': not a conv or linear layer of this model "
                             "(use first, last, none or a module path such as layer1.0.conv1)")
    return protected


def _dependency_graph(module: nn.Module, x: torch.Tensor):
    import torch_pruning as tp

    # The graph is traced through autograd, which frozen parameters would leave empty.
    module.requires_grad_(True)
    with torch.enable_grad(), warnings.catch_warnings():
        # Groups with bare parameters (a ViT's class token) are kept whole: no need to warn.
        warnings.filterwarnings("ignore", "Unwrapped parameters detected", UserWarning)
        return tp.DependencyGraph().build_dependency(module, example_inputs=x[:1])


@contextmanager
def _grad_flags_kept(module: nn.Module):
    """Put back which parameters were frozen, by name: pruning replaces the parameter objects."""
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    try:
        yield
    finally:
        for name, p in module.named_parameters():
            p.requires_grad_(name not in frozen)


def _group_scores(DG, group, scores: Scores, names: dict) -> torch.Tensor | None:
    """The mean score of the group's producers per channel, or None if none has a score."""
    total = torch.zeros(len(group[0].idxs))
    count = torch.zeros(len(group[0].idxs))
    for item in group:
        dep, idxs = item.dep, item.idxs
        name = names.get(dep.target.module)
        if name not in scores or not DG.is_out_channel_pruning_fn(dep.handler):
            continue
        s = scores[name]
        if len(idxs) != len(item.root_idxs) or max(idxs, default=-1) >= len(s):
            continue
        root = torch.as_tensor(item.root_idxs)
        total.index_add_(0, root, s[torch.as_tensor(idxs)])
        count.index_add_(0, root, torch.ones(len(idxs)))
    if count.sum() == 0:
        return None
    return total / count.clamp(min=1)


def _unreshapable(group) -> str | None:
    """The first member with weights of a kind load_pruned does not rebuild (layer norms,
    attention, bare parameters such as a ViT's class token), if any."""
    for item in group:
        target = item.dep.target.module
        if isinstance(target, nn.Parameter):
            return "a bare parameter"
        if isinstance(target, nn.Module) and not isinstance(target, RESHAPED) \
                and any(True for _ in target.parameters(recurse=False)):
            return type(target).__name__
    return None


def _choose(ranked: list[tuple[object, torch.Tensor]], ratio: float, mode: str, cap: float = 1.0,
            counts: list[int] | None = None) -> list[list[int]]:
    """Channels to remove per group: the lowest-scored ratio of each group (per-layer), `counts`
    of each (sensitivity), or the lowest-scored ratio of all groups together (global), taking at
    most `cap` of any group's channels; every group keeps at least one channel."""
    if mode != "global":
        chosen = []
        for k, (_, s) in enumerate(ranked):
            n = min(counts[k] if counts is not None else int(len(s) * ratio), len(s) - 1)
            chosen.append(sorted(torch.argsort(s, stable=True)[:n].tolist()))
        return chosen
    flat = torch.cat([s for _, s in ranked]) if ranked else torch.zeros(0)
    owner = torch.cat([torch.full((len(s),), g) for g, (_, s) in enumerate(ranked)]) if ranked else flat
    local = torch.cat([torch.arange(len(s)) for _, s in ranked]) if ranked else flat
    budget = int(len(flat) * ratio)
    left = [len(s) for _, s in ranked]
    floor = [max(1, len(s) - int(len(s) * cap)) for _, s in ranked]  # channels each group keeps
    chosen: list[list[int]] = [[] for _ in ranked]
    for i in torch.argsort(flat, stable=True).tolist():
        if budget <= 0:
            break
        g = int(owner[i])
        if left[g] > floor[g]:
            chosen[g].append(int(local[i]))
            left[g] -= 1
            budget -= 1
    return [sorted(c) for c in chosen]


def prune_structured(module: nn.Module, x: torch.Tensor, scores: Scores, sparsity: float,
                     mode: str = "global", protected=frozenset(), cap: float = 100.0) -> Surgery:
    """Remove the lowest-scored sparsity % of output channels from `module`, in place, at most
    `cap` % of any one group's (global mode); which parameters are frozen stays as it was.
    sensitivity: each group's share set by what removing its channels alone costs on x."""
    check_sparsity(sparsity, mode)
    if not 0.0 < float(cap) <= 100.0:
        raise PruneScopeError(f"the per-layer cap must be in (0, 100] percent, got {cap}")
    order = forward_order(module, x)
    if float(sparsity) == 0.0:  # nothing to remove: spare tracing the graph
        return Surgery({}, _channel_table(module, order, {}), "channels", sorted(protected))
    with _grad_flags_kept(module):
        return _remove_channels(module, x, scores, float(sparsity), mode, protected, order, float(cap) / 100.0)


def prune_unscored(module: nn.Module, x: torch.Tensor, scores: Scores, protected=frozenset()) -> Surgery:
    """Remove, in place, every channel whose score is 0 from the groups that have scores, each
    group keeping at least one: the channels a set of kept channels leaves out. Groups without a
    score stay whole."""
    order = forward_order(module, x)
    with _grad_flags_kept(module):
        return _remove_channels(module, x, scores, 0.0, ZEROS, protected, order)


ZEROS = "zeros"  # _remove_channels' mode for prune_unscored


def _remove_channels(module, x, scores: Scores, sparsity: float, mode: str, protected,
                     order: list[str], cap: float = 1.0) -> Surgery:
    names = {m: n for n, m in module.named_modules()}
    DG = _dependency_graph(module, x)
    out_layer = module.get_submodule(order[-1])  # its outputs are the classes: never removed
    prunable = (nn.Conv2d, nn.Linear)
    ranked, skipped = [], {}
    rank = {name: i for i, name in enumerate(order)}
    for group in DG.get_all_groups(ignored_layers=[out_layer], root_module_types=list(prunable)):
        # Named by its first producer in forward order (the graph's root can be any member).
        root = min((names[item.dep.target.module] for item in group
                    if isinstance(item.dep.target.module, prunable)
                    and DG.is_out_channel_pruning_fn(item.dep.handler)),
                   key=lambda n: rank.get(n, len(rank)))
        touched = {names.get(item.dep.target.module) for item in group}
        if touched & set(protected):
            skipped[root] = "protected"
            continue
        if any(isinstance(item.dep.target.module, nn.Conv2d)
               and 1 < item.dep.target.module.groups < item.dep.target.module.out_channels
               for item in group):
            skipped[root] = "grouped convolution"
            continue
        odd = _unreshapable(group)
        if odd:
            skipped[root] = f"couples {odd}, which load_pruned cannot reshape"
            continue
        s = _group_scores(DG, group, scores, names)
        if s is None:
            skipped[root] = "no score from this criterion"
            continue
        ranked.append((group, s))
    counts = None
    if mode == ZEROS:
        counts, mode = [int((s <= 0).sum()) for _, s in ranked], "per-layer"
    elif mode == "sensitivity":
        from core.model_pruning.sensitivity import allocate, group_costs

        costs = group_costs(module, x, DG, ranked, names)
        counts = allocate(costs, [len(s) for _, s in ranked], int(sum(len(s) for _, s in ranked) * sparsity / 100.0))
    chosen = _choose(ranked, float(sparsity) / 100.0, mode, cap, counts)
    removed: dict[str, list[int]] = {}
    # A batch norm after a concatenation is in several groups, and a later group numbers its
    # channels after the earlier cuts: the channels still there, in the original numbering.
    alive: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    for (group, _), idxs in zip(ranked, chosen):
        if not idxs:
            continue
        root = group[0].dep
        pruning = DG.get_pruning_group(root.target.module, root.handler, idxs)
        for item in pruning:
            target = item.dep.target.module
            name = names.get(target)
            if isinstance(target, prunable) and DG.is_out_channel_pruning_fn(item.dep.handler):
                removed[name] = sorted(set(removed.get(name, [])) | set(item.idxs))
            elif isinstance(target, _BatchNorm):
                sizes.setdefault(name, target.num_features)
                channels = alive.setdefault(name, list(range(target.num_features)))
                gone = set(item.idxs)
                alive[name] = [c for i, c in enumerate(channels) if i not in gone]
        pruning.prune()
    norms = {name: sorted(set(range(sizes[name])) - set(channels)) for name, channels in alive.items()}
    return Surgery(removed, _channel_table(module, order, removed), "channels", sorted(protected), skipped,
                   sum(len(s) for _, s in ranked), sum(len(c) for c in chosen), norms)


def _channel_table(module: nn.Module, order: list[str], removed: dict) -> list[tuple[str, int, int]]:
    table = []
    for name in order:
        m = module.get_submodule(name)
        kept = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        table.append((name, kept, kept + len(removed.get(name, []))))
    return table


def prune_unstructured(module: nn.Module, x: torch.Tensor, sparsity: float, mode: str = "global",
                       protected=frozenset()) -> Surgery:
    """Zero the smallest-magnitude sparsity % of conv/linear weights (all layers ranked
    together, or each layer alone), in place and permanently."""
    from torch.nn.utils import prune

    check_sparsity(sparsity, mode)
    amount = float(sparsity) / 100.0
    order = forward_order(module, x)
    targets = [(module.get_submodule(n), "weight") for n in order if n not in protected]
    if targets and amount > 0:
        if mode != "per-layer":  # sensitivity allocates channels; single weights rank globally
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
        else:
            for m, attr in targets:
                prune.l1_unstructured(m, attr, amount=amount)
        for m, attr in targets:
            prune.remove(m, attr)
    table = [(n, int(module.get_submodule(n).weight.count_nonzero()), module.get_submodule(n).weight.numel())
             for n in order]
    return Surgery({}, table, "weights", sorted(protected))
