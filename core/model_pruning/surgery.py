"""Removing channels for real (Torch-Pruning's dependency graph), zeroing weights
(torch.nn.utils.prune), and saving / loading the smaller model.

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

PRUNED_KEY = "prunescope_pruned"  # the checkpoint key core.models.load_model looks for
FORMAT = 1
RESHAPED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)  # the layer kinds load_pruned rebuilds
DEFAULT_INPUT_SIZE = 224  # of checkpoints that do not say theirs: ImageNet models


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
    if mode == "sensitivity":
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


# --- export and load -----------------------------------------------------------------------------

def checkpoint(module: nn.Module, arch: str, info: dict) -> dict:
    """A dict torch.load(weights_only=True) reads: metadata and the state dict. Grouped convs'
    group counts are stored, since a weight's shape alone does not give them."""
    groups = {name: m.groups for name, m in module.named_modules()
              if isinstance(m, nn.Conv2d) and m.groups > 1}
    meta = {"arch": arch, "format": FORMAT, "groups": groups, **info}
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return {PRUNED_KEY: meta, "state_dict": state}


def load_pruned(module: nn.Module, checkpoint: dict) -> nn.Module:
    """Reshape a freshly built base architecture's convs, batch norms and linears to the
    checkpoint's shapes, load its state dict strictly and run it once on a blank input, so that
    a damaged or hostile checkpoint fails here, as one ModelError, and not at its first use."""
    meta, state = pruned_contents(checkpoint)
    groups = meta.get("groups", {})
    try:
        for name, m in module.named_modules():
            prefix = f"{name}." if name else ""
            weight = state.get(prefix + "weight")
            if isinstance(m, nn.Conv2d) and weight is not None:
                _reshape_conv(m, weight, groups.get(name), state.get(prefix + "bias"))
            elif isinstance(m, nn.BatchNorm2d) and prefix + "running_mean" in state:
                _reshape_bn(m, _sized(state[prefix + "running_mean"], 1, prefix + "running_mean").shape[0])
            elif isinstance(m, nn.Linear) and weight is not None:
                m.out_features, m.in_features = _sized(weight, 2, prefix + "weight").shape
                m.weight = nn.Parameter(torch.empty_like(weight))
                if m.bias is not None:
                    m.bias = nn.Parameter(torch.empty(weight.shape[0]))
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as err:
        raise ModelError(f"pruned weights do not fit {meta['arch']}: {_first_line(err)}") from None
    # Checkpoints that save_pruned writes store the input size; a ViT knows its own.
    size = meta.get("input_size") or getattr(module, "image_size", DEFAULT_INPUT_SIZE)
    _trial_forward(module, meta["arch"], size)
    return module


def pruned_contents(checkpoint) -> tuple[dict, dict]:
    """The checkpoint's metadata and state dict, checked: each fault is one ModelError line."""
    meta = checkpoint.get(PRUNED_KEY) if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or not isinstance(state, dict) or not state:
        raise ModelError(f"not a PruneScope pruned-model checkpoint (needs '{PRUNED_KEY}' "
                         "metadata as a dict and a 'state_dict' of tensors)")
    if not isinstance(meta.get("arch"), str) or not meta["arch"]:
        raise ModelError(f"pruned-model metadata: 'arch' must name the architecture, got {meta.get('arch')!r:.40}")
    version = meta.get("format", FORMAT)
    if not _is_int(version) or version > FORMAT or version < 1:
        raise ModelError(f"pruned-model metadata: format {version!r:.20} is not one this PruneScope "
                         f"reads (1..{FORMAT})")
    groups = meta.get("groups", {})
    if not isinstance(groups, dict) or not all(isinstance(k, str) and _is_int(v) and 1 <= v <= 1 << 16
                                               for k, v in groups.items()):
        raise ModelError("pruned-model metadata: 'groups' must map layer names to group counts of "
                         f"at least 1, got {groups!r:.60}")
    size = meta.get("input_size", DEFAULT_INPUT_SIZE)
    if not _is_int(size) or not 8 <= size <= 1024:
        raise ModelError(f"pruned-model metadata: input_size must be 8..1024 pixels, got {size!r:.20}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(f"pruned-model state dict: {key!r:.60} is not a named tensor")
        if value.is_meta or value.layout != torch.strided:
            raise ModelError(f"pruned-model state dict: {key} holds no data ({value.device} "
                             f"{value.layout} tensor)")
    return meta, state


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sized(t: torch.Tensor, dims: int, key: str) -> torch.Tensor:
    if t.dim() != dims or 0 in t.shape:
        raise ValueError(f"{key} has shape {tuple(t.shape)}, expected {dims} non-empty dimensions")
    return t


def _first_line(err: Exception) -> str:
    """load_state_dict's message is a header, then one line per key: the first key is enough."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)


def _trial_forward(module: nn.Module, arch: str, size: int) -> None:
    """Layers whose shapes each load but do not chain (10 channels out, 12 expected in) fail here."""
    training = module.training
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, 3, size, size))
    except Exception as err:
        raise ModelError(f"pruned weights of {arch} do not fit together: {_first_line(err)}") from None
    finally:
        module.train(training)


def _reshape_conv(m: nn.Conv2d, weight: torch.Tensor, groups, bias) -> None:
    out_ch, in_per_group = _sized(weight, 4, "a convolution's weight").shape[:2]
    if groups is None:
        # A depthwise conv stays depthwise when its channels are removed.
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        groups = out_ch if depthwise else m.groups
    if out_ch % groups:
        raise ValueError(f"{out_ch} output channels cannot form {groups} groups")
    m.groups, m.out_channels, m.in_channels = int(groups), int(out_ch), int(in_per_group * groups)
    m.weight = nn.Parameter(torch.empty_like(weight))
    if m.bias is not None or bias is not None:
        m.bias = nn.Parameter(torch.empty(out_ch))


def _reshape_bn(m: nn.BatchNorm2d, n: int) -> None:
    m.num_features = n
    if m.affine:
        m.weight = nn.Parameter(torch.empty(n))
        m.bias = nn.Parameter(torch.empty(n))
    if m.track_running_stats:
        m.running_mean = torch.zeros(n)
        m.running_var = torch.ones(n)
