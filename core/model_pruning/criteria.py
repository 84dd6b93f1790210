"""How much each output channel of each conv/linear layer matters, by five criteria.

A score dict maps a producer's module path (a Conv2d or Linear, subclasses included) to one
non-negative score per output channel, on the CPU. Data-driven criteria are computed over a
calibration batch, each image explaining the class the unpruned model predicts for it.
"Weight magnitude" is unstructured: it ranks single weights and has no channel scores.
"""
import copy
from contextlib import contextmanager

import torch
from torch import nn

from core.errors import PruneScopeError, UnsupportedMethod
from core.model_pruning.names import CRITERIA
from core.network.hooks import hooked
from core.progress import Job, Progress

PATHWAY_SPARSITY = 70.0  # the per-image pathway whose membership frequency ranks channels
CHUNK = 8  # calibration images per forward/backward: bounds memory for large folders

Scores = dict[str, torch.Tensor]


def check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise PruneScopeError(f"unknown criterion '{criterion}': choose one of {', '.join(CRITERIA)}")


def producers(module: nn.Module) -> dict[str, nn.Module]:
    """The layers whose output channels can be ranked and removed: convs and linears."""
    return {name: m for name, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def forward_order(module: nn.Module, x: torch.Tensor) -> list[str]:
    """Producer names in the order the forward first calls them."""
    order: list[str] = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
               for name, m in producers(module).items()]
    with hooked(handles), torch.no_grad():
        module(x[:1])
    return list(dict.fromkeys(order))


def normalise(scores: Scores) -> Scores:
    """Each layer divided by its mean, so that global ranking compares a channel with its own
    layer rather than layers of different scale with each other. An all-zero layer stays zero."""
    out = {}
    for name, s in scores.items():
        mean = s.mean()
        out[name] = s / mean if mean > 0 else torch.zeros_like(s)
    return out


def l1_scores(module: nn.Module) -> Scores:
    return {name: m.weight.detach().abs().flatten(1).sum(1).float().cpu()
            for name, m in producers(module).items()}


def _channel_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over everything but the channel axis: dim 1 for NxC(xHxW), the last for NxTxC tokens."""
    channel = t.dim() - 1 if t.dim() == 3 else 1
    return t.transpose(0, channel).flatten(1).sum(1) if t.dim() > 1 else t


@contextmanager
def _capture_outputs(module: nn.Module):
    """Within the block, every producer's output of each forward is kept in the yielded dict
    (name -> list of tensors). The model goes on with a clone, so an in-place activation after
    the layer (VGG's ReLU) cannot overwrite the tensor we take the gradient at."""
    kept: dict[str, list[torch.Tensor]] = {}

    def hook(_m, _inputs, out, name):
        kept.setdefault(name, []).append(out)
        return out.clone()

    handles = [m.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
               for name, m in producers(module).items()]
    with hooked(handles):
        yield kept


def _backward_scores(module: nn.Module, x: torch.Tensor, targets: torch.Tensor, combine,
                     start_with_logit: bool = False) -> Scores:
    """One forward and backward of the target logits; combine(out, grad) -> per-channel scores.
    start_with_logit: the backward starts from the target logit's value rather than 1 (LRP's
    initial relevance, as core.methods.attribution's LRP map)."""
    x = x.detach().requires_grad_(True)  # parameters are frozen: the input puts layers in the graph
    with torch.enable_grad(), _capture_outputs(module) as kept:
        logits = module(x)
        outs = [(name, t) for name, ts in kept.items() for t in ts]
        one_hot = torch.zeros_like(logits)
        one_hot[torch.arange(len(targets)), targets] = 1
        if start_with_logit:
            one_hot = one_hot * logits.detach()
        grads = torch.autograd.grad(logits, [t for _, t in outs], grad_outputs=one_hot, allow_unused=True)
    scores: Scores = {}
    for (name, out), grad in zip(outs, grads):
        s = torch.zeros(out.shape[1 if out.dim() != 3 else -1]) if grad is None else \
            _channel_sum(combine(out.detach(), grad)).float().cpu()
        scores[name] = scores[name] + s if name in scores else s
    return scores


def taylor_scores(module: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> Scores:
    """sum over the batch and the channel's map of |a * dy_t/da| at each producer's output."""
    return _backward_scores(module, x, targets, lambda a, g: (a * g).abs())


def lrp_scores(module: nn.Module, x: torch.Tensor, targets: torch.Tensor, composite) -> Scores:
    """sum over the batch and the channel's map of |R|, the LRP relevance at each producer's
    output. Under a zennit composite every layer's backward returns relevance in place of the
    gradient, so the "gradient" reaching a tensor is its relevance."""
    private = copy.deepcopy(module).eval()  # canonizers rewrite weights while active
    with composite.context(private):
        return _backward_scores(private, x, targets, lambda _a, r: r.abs(), start_with_logit=True)


def lrp_composite(model, module: nn.Module, x: torch.Tensor):
    """zennit's EpsilonGammaBox with the canonizers core.methods.lrp uses for this architecture,
    so pruning ranks channels by the same relevance the LRP map shows."""
    from zennit.composites import EpsilonGammaBox

    from core.methods.gradients import Lrp
    from core.methods.lrp import lrp_canonizers

    ok, why = Lrp().supports(model)
    if not ok:
        raise UnsupportedMethod(why)
    mean = torch.tensor(model.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(model.std, device=x.device).view(1, -1, 1, 1)
    low = ((0 - mean) / std).expand(x.shape[0], -1, *x.shape[2:])
    high = ((1 - mean) / std).expand(x.shape[0], -1, *x.shape[2:])
    return EpsilonGammaBox(low=low, high=high, canonizers=lrp_canonizers(module))


def activation_producers(module: nn.Module, x: torch.Tensor) -> list[str | None]:
    """For each activation layer (core.network.neurons order), the producer whose output channels it
    carries: the producer that ran last before it, if its output has the activation's shape
    (conv -> BN -> ReLU; ResNet's add -> ReLU shares the channels of the last conv, which pruning
    couples with the rest of the residual stream anyway). None where no producer fits."""
    from core.network.neurons import intercept

    events: list[tuple[str, tuple]] = []
    last: list = [None]

    def seen(_m, _i, out, name):
        last[0] = (name, tuple(out.shape))

    def act(_index: int, out: torch.Tensor) -> torch.Tensor:
        prev = last[0]
        events.append(prev[0] if prev is not None and prev[1] == tuple(out.shape) else None)
        return out

    handles = [m.register_forward_hook(lambda m, i, o, name=name: seen(m, i, o, name))
               for name, m in producers(module).items()]
    with hooked(handles), torch.no_grad(), intercept(act):
        module(x[:1])
    return events


def pathway_scores(model, x: torch.Tensor, targets: torch.Tensor,
                   sparsity: float = PATHWAY_SPARSITY) -> Job[Scores]:
    """Per producer channel: the fraction of its neurons in each image's critical pathway
    (engine masks, per-layer threshold), averaged over the images. Channels that never pass
    through an activation (EfficientNet's linear bottlenecks) get no score: NeuronMCT cannot
    prune them either."""
    from core.pathway.engine import Engine

    owner = activation_producers(model.module, x)
    sums: Scores = {}
    n = x.shape[0]
    for i in range(n):
        engine = Engine.from_tensor(model, x[i:i + 1], int(targets[i]))
        masks = engine.masks(sparsity, mode="per-layer")
        for name, mask, layer in zip(owner, masks, engine.layers):
            if name is None:
                continue
            m = mask.reshape(layer.shape).float()
            channel = m.dim() - 1 if m.dim() == 2 else 0  # (tokens, C) or (C, H, W) / (C,)
            freq = m.transpose(0, channel).flatten(1).mean(1).cpu() if m.dim() > 1 else m.cpu()
            sums[name] = sums[name] + freq if name in sums else freq
        yield Progress((i + 1) / n, f"pathway of calibration image {i + 1}/{n}")
    return {name: s / n for name, s in sums.items()}


def channel_scores(criterion: str, model, x: torch.Tensor, targets: torch.Tensor,
                   pathway_sparsity: float = PATHWAY_SPARSITY) -> Job[Scores]:
    """The criterion's per-layer-normalised channel scores over the calibration batch x
    (targets: the unpruned model's top-1 per image)."""
    check_criterion(criterion)
    if criterion == "magnitude":
        raise PruneScopeError("weight magnitude ranks single weights, not channels")
    module = model.module
    if criterion == "l1":
        yield Progress(1.0, "filter norms")
        return normalise(l1_scores(module))
    if criterion == "pathway":
        scores = yield from pathway_scores(model, x, targets, pathway_sparsity)
        return normalise(scores)
    total: Scores = {}
    for start in range(0, x.shape[0], CHUNK):
        xs, ts = x[start:start + CHUNK], targets[start:start + CHUNK]
        if criterion == "taylor":
            part = taylor_scores(module, xs, ts)
        else:
            part = lrp_scores(module, xs, ts, lrp_composite(model, module, xs))
        for name, s in part.items():
            total[name] = total[name] + s if name in total else s
        done = min(start + CHUNK, x.shape[0])
        yield Progress(done / x.shape[0], f"{criterion} scores: {done}/{x.shape[0]} images")
    return normalise(total)
