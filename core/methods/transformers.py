"""Transformer methods: attention rollout (Abnar & Zuidema, ACL 2020) and gradient-weighted rollout
(Chefer et al., "Generic Attention-model Explainability", ICCV 2021), for timm's and torchvision's
ViTs and DeiTs. Written here: no maintained library provides them for these models.

The attention weights are read from the explained forward itself, computed explicitly even where the
model ships with fused attention: timm's `Attention` runs its unfused path (its post-softmax weights
are what its `attn_drop` receives), torchvision's `nn.MultiheadAttention` is asked for its per-head
weights. Either way they stay in the graph, so that their gradients can be read too.
"""
from contextlib import contextmanager

from core.errors import UnsupportedMethod
from core.methods.base import Method


def attention_modules(module) -> list:
    """The attention layers of a ViT, in forward order: timm Attention (qkv, attn_drop, fused_attn)
    or torch's nn.MultiheadAttention."""
    from torch import nn

    return [m for m in module.modules()
            if isinstance(m, nn.MultiheadAttention)
            or (hasattr(m, "fused_attn") and hasattr(m, "attn_drop") and hasattr(m, "qkv"))]


@contextmanager
def explicit_attention(modules, seen: list):
    """During the block, every attention layer's per-head weights are appended to `seen` in forward
    order, as (the tensor in the graph, its batch x heads x N x N shape): torch's returns a view made
    after its use, so the tensor kept is the one the attention was computed with."""
    from torch import nn

    from core.network.hooks import hooked

    handles, fused = [], []
    for m in modules:
        if isinstance(m, nn.MultiheadAttention):
            handles.append(m.register_forward_pre_hook(_ask_weights, with_kwargs=True))
            handles.append(m.register_forward_hook(lambda _m, _args, out: seen.append(_in_graph(out[1]))))
        else:
            fused.append((m, m.fused_attn))
            m.fused_attn = False  # timm's explicit path: softmax(q k^T) goes through attn_drop
            handles.append(m.attn_drop.register_forward_hook(lambda _m, _args, out: seen.append((out, out.shape))))
    try:
        with hooked(handles):
            yield
    finally:
        for m, was in fused:
            m.fused_attn = was


def _in_graph(weights):
    return (weights if weights._base is None else weights._base), weights.shape


def _ask_weights(_module, args, kwargs):
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


class _Rollout(Method):
    family = "attention"
    runs_on_loaded = True  # reads the model's attention modules
    needs_gradient = False

    def supports(self, model):
        if not attention_modules(model.module):
            return False, f"{self.name} needs attention layers (a ViT); {model.name} has none"
        return True, ""

    def attribute(self, model, net, x, target):
        import torch
        import torch.nn.functional as F

        from core.methods.attribution import prepared
        from core.network.neurons import unwrapped
        from core.network.tokens import grid_side

        x, target = prepared(self, model, x, target)
        seen: list = []
        inner = unwrapped(net)
        # the parameters are frozen: the input needing its gradient puts the attention in the graph
        with torch.set_grad_enabled(self.needs_gradient), explicit_attention(attention_modules(inner), seen):
            score = net(x.requires_grad_(self.needs_gradient))[0, target]
        if not seen:
            raise UnsupportedMethod(f"{self.name}: no attention weights reached the forward")
        grads = torch.autograd.grad(score, [t for t, _ in seen]) if self.needs_gradient else [None] * len(seen)
        relevance = self.rollout([t.detach().reshape(shape)[0] for t, shape in seen],
                                 [g if g is None else g.reshape(shape)[0] for g, (_, shape) in zip(grads, seen)])
        prefix = model.gradcam_tokens if model.gradcam_tokens is not None else 1
        tokens = relevance.shape[-1]
        side = grid_side(tokens, prefix)
        if side is None:
            raise UnsupportedMethod(f"{self.name}: {tokens} tokens do not lie on a square grid after "
                                         f"{prefix} prefix tokens")
        row = relevance[0, prefix:] if prefix else relevance.mean(0)
        grid = row.reshape(1, 1, side, side).float()
        return F.interpolate(grid, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0].cpu().numpy()

    def rollout(self, attentions, gradients):
        raise NotImplementedError


class AttentionRollout(_Rollout):
    """R = Â_L ... Â_1, Â = rows-normalised (mean over heads of A + I) / 2: how attention mixes the
    tokens through the residual stream; the class token's row, over the patches."""

    name = "attention-rollout"
    passes = "1 forward"
    fixed = {"heads": "mean", "residual": "0.5 A + 0.5 I"}

    def rollout(self, attentions, gradients):
        import torch

        n = attentions[0].shape[-1]
        eye = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device)
        result = eye
        for a in attentions:
            mixed = 0.5 * a.mean(0) + 0.5 * eye
            result = (mixed / mixed.sum(-1, keepdim=True)) @ result
        return result


class GradRollout(_Rollout):
    """R = I, then for each block R += mean over heads of (dy/dA ⊙ A)⁺ · R: attention weighted by
    its gradient, positive part, through the blocks."""

    name = "grad-rollout"
    passes = "1 forward+backward"
    fixed = {"heads": "mean of (dy/dA * A)+"}
    needs_gradient = True

    def rollout(self, attentions, gradients):
        import torch

        n = attentions[0].shape[-1]
        result = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device)
        for a, g in zip(attentions, gradients):
            result = result + (g * a).clamp(min=0).mean(0) @ result
        return result
