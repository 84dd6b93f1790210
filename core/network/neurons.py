"""Neurons: every element of every activation output in a forward pass.

Activations are found with a TorchFunctionMode instead of module hooks. One mechanism then
sees modules called several times per forward (torchvision's ResNet reuses one ReLU per
block), in-place activations, and functional calls (DenseNet's final F.relu), and nothing
is left registered on the model afterwards. The n-th activation call of a forward is layer n;
the models we explain have a fixed call order.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from core.errors import PruneScopeError
from core.network import torch_internals
from core.progress import Progress, Stopped

# Element-wise non-linearities whose outputs are neurons. Gates (sigmoid, hardsigmoid,
# softmax) are left out: they scale other neurons rather than carry features.
ACTIVATIONS = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu",
    F.relu6: "relu6", F.hardtanh: "relu6",
    F.gelu: "gelu", torch._C._nn.gelu: "gelu",
    F.silu: "silu", F.hardswish: "hardswish", F.mish: "mish",
    F.elu: "elu", F.selu: "selu", F.celu: "celu", F.leaky_relu: "leaky_relu",
}
# A torch.export program calls the ATen operators themselves.
_ATEN_KINDS = {"relu": "relu", "relu_": "relu", "hardtanh": "relu6", "hardtanh_": "relu6",
               "gelu": "gelu", "gelu_": "gelu", "silu": "silu", "silu_": "silu",
               "hardswish": "hardswish", "hardswish_": "hardswish", "mish": "mish", "mish_": "mish",
               "elu": "elu", "elu_": "elu", "selu": "selu", "selu_": "selu", "celu": "celu",
               "celu_": "celu", "leaky_relu": "leaky_relu", "leaky_relu_": "leaky_relu"}
ACTIVATIONS.update({getattr(torch.ops.aten, op).default: kind for op, kind in _ATEN_KINDS.items()})

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish,
                      nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU)

Transform = Callable[[int, torch.Tensor], torch.Tensor]  # (layer, its output) -> what to use
# what a forward hook does instead: (layer, the activation's input, its output) -> what to use
HookTransform = Callable[[int, torch.Tensor | None, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Layer:
    name: str          # module path, with "#k" for the k-th call of a reused module
    kind: str          # relu, relu6, gelu, ...
    shape: tuple       # one sample's activation shape, e.g. (C, H, W) or (tokens, features)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Intercept(TorchFunctionMode):
    def __init__(self, transform: Transform):
        super().__init__()
        self.transform = transform
        self.count = 0
        self.kinds: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in ACTIVATIONS and isinstance(out, torch.Tensor):
            index = self.count
            self.count += 1
            self.kinds.append(ACTIVATIONS[func])
            out = self.transform(index, out)
        return out


@contextmanager
def intercept(transform: Transform) -> Iterator[_Intercept]:
    """Within the block, every activation output `out` of layer n becomes transform(n, out).

    The count restarts at each `with`; run one forward per block (a batch is one forward).
    """
    with _Intercept(transform) as mode:
        yield mode


def layer_modules(module: nn.Module, layers: list[Layer]) -> list[nn.Module] | None:
    """Each layer's activation module, where every layer is the one call of a module of its own
    (no functional or reused activations); else None. Forward hooks on them can then stand in
    for intercept, whose Python runs on every torch call of a forward (on the embedded model,
    ~15 % of a CPU forward and backward; hooks cost a third of that)."""
    named = dict(module.named_modules())
    found = [named.get(layer.name) for layer in layers]
    if all(isinstance(m, ACTIVATION_MODULES) for m in found) and len({id(m) for m in found}) == len(found):
        return found
    return None


@contextmanager
def hooked(modules: list[nn.Module], transform: HookTransform) -> Iterator[list[int]]:
    """intercept by forward hooks, for layers that are these modules (layer_modules); yields
    the indices of the layers that ran, in call order, to check that all did once."""
    fired: list[int] = []

    def hook_of(index: int):
        def hook(_module, inputs, out):
            fired.append(index)
            return transform(index, inputs[0] if inputs else None, out)  # None: called by keyword
        return hook

    handles = [m.register_forward_hook(hook_of(i)) for i, m in enumerate(modules)]
    try:
        yield fired
    finally:
        for handle in handles:
            handle.remove()


def discover_layers(module: nn.Module, x: torch.Tensor) -> list[Layer]:
    """Run one forward and name every activation layer by the module that produced it."""
    return trace_layers(module, x)[0]


def trace_layers(module: nn.Module, x: torch.Tensor,
                 taps: "Taps | None" = None) -> tuple[list[Layer], torch.Tensor]:
    """discover_layers, also returning the forward's output: without taps, with no gradient;
    with them, the forward that taps.scores completes into Taylor scores, so that an image's
    first pathway map costs one forward less."""
    stack: list[nn.Module] = []
    names = {m: name for name, m in module.named_modules()}
    found: list[tuple[str, tuple]] = []

    def push(m, _inputs):
        stack.append(m)

    def pop(m, _inputs, _output):
        stack.pop()

    def record(index: int, out: torch.Tensor) -> torch.Tensor:
        inner = stack[-1] if stack else module
        # A functional activation inside a bigger module gets the function's kind appended.
        suffix = "" if isinstance(inner, ACTIVATION_MODULES) else "*"
        found.append((names[inner] + suffix, out.shape[1:]))
        return out if taps is None else taps.tap(index, out)

    handles = []
    try:
        for m in names:
            handles.append(m.register_forward_pre_hook(push))
            handles.append(m.register_forward_hook(pop, always_call=True))
        with torch.set_grad_enabled(taps is not None), intercept(record) as mode:
            output = module(x if taps is None else taps.input_of(x))
    finally:
        for h in handles:
            h.remove()
    return _name_layers(found, mode.kinds), output


def _name_layers(found, kinds) -> list[Layer]:
    seen: dict[str, int] = {}
    layers = []
    for (where, shape), kind in zip(found, kinds):
        base = where
        if where.endswith("*"):
            base = f"{where[:-1]}.{kind}" if where != "*" else kind
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        layers.append(Layer(name, kind, tuple(shape)))
    return layers


class _Tap(torch.autograd.Function):
    """Identity that records the gradient reaching this activation output.

    A custom Function rather than a tensor hook: it sees the gradient of exactly this output
    even if the model later modifies the tensor in place, and it cannot be left behind.
    """

    @staticmethod
    def forward(ctx, a, slot):
        ctx.slot = slot
        return a.clone()  # a fresh tensor: in-place ops downstream must not touch `a`

    @staticmethod
    def backward(ctx, grad):
        ctx.slot.append(grad)
        return grad, None


def _input_with_grad(x: torch.Tensor) -> torch.Tensor:
    # Parameters are frozen, so the input is what makes every activation part of the graph.
    return x.detach().requires_grad_(True)


class Taps:
    """The activation outputs of one forward (tap is its Transform), each with the gradient
    that reaches it in the backward from a logit: what Taylor scores are made of."""

    def __init__(self):
        self.acts: dict[int, torch.Tensor] = {}  # by layer: a forward run again overwrites its own
        self.grads: dict[int, list] = {}
        self.input: torch.Tensor | None = None

    def input_of(self, x: torch.Tensor) -> torch.Tensor:
        self.input = _input_with_grad(x)
        return self.input

    def tap(self, index: int, out: torch.Tensor) -> torch.Tensor:
        self.acts[index], self.grads[index] = out.detach(), []
        return _Tap.apply(out, self.grads[index])

    def scores(self, logits: torch.Tensor, target: int,
               layers: list[Layer]) -> tuple[torch.Tensor, torch.Tensor]:
        """s = |a * dy_c/da| and |a| of every neuron of `layers` (one sample), each flat over
        the layers in order. Written into two flat buffers: fresh tensors per layer, then a
        concatenation, cost as much as the backward itself on the CPU."""
        acts = [self.acts.get(i) for i in range(len(layers))]
        if len(self.acts) != len(layers) or any(a is None or a.shape[1:] != layer.shape
                                                for a, layer in zip(acts, layers)):
            raise PruneScopeError("the model's activations differ from one forward to the next")
        torch.autograd.grad(logits[:, target].sum(), self.input)
        sizes = [layer.numel for layer in layers]
        scores, magnitudes = self.input.new_empty(sum(sizes)), self.input.new_empty(sum(sizes))
        grads = [self.grads[i] for i in range(len(layers))]
        for a, g, s, m in zip(acts, grads, scores.split(sizes), magnitudes.split(sizes)):
            torch.abs(a[0].flatten(), out=m)
            if g:
                torch.mul(g[0][0].flatten(), m, out=s)  # |g| |a| = |a g|
                s.abs_()
            else:
                s.zero_()
        self.acts, self.grads = {}, {}
        return scores, magnitudes


def taylor_scores(module: nn.Module, x: torch.Tensor, target: int, layers: list[Layer],
                  modules: list[nn.Module] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Taps.scores from a forward of their own. modules: layer_modules(module, layers), whose
    forward hooks cost less than intercept."""
    taps = Taps()
    with torch.enable_grad():
        logits = transformed(module, modules, taps.tap)(taps.input_of(x))
    return taps.scores(logits, target, layers)


def transformed(module: nn.Module, modules: list[nn.Module] | None, transform: Transform,
                by_hook: HookTransform | None = None):
    """module's forward with every activation output of layer n replaced by transform(n, out):
    by forward hooks on `modules` (layer_modules, the cheaper way) where each of them ran once,
    else by intercept (run again: transform must not mind seeing a layer twice). by_hook: what
    the hooks do instead, where the activation's input helps."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        if modules is not None:
            with hooked(modules, by_hook or (lambda i, _x, out: transform(i, out))) as fired:
                out = module(x)
            if sorted(fired) == list(range(len(modules))):
                return out
        with intercept(transform):
            return module(x)

    return forward


class MaskedForward:
    """module's forward with layer n's activation output multiplied by masks[n] (0/1, in the
    activation's dtype): the pruned network. stop: checked at every layer; when it returns True
    the forward raises Stopped.

    The fast path: where layer n is a ReLU or ReLU6 module that nothing else acts on, its output
    is masked with no multiplication in the backward (_MaskedRectifier, or in place for a ReLU).
    Once a forward writes into a masked output, which the backward reads, every later forward
    multiplies (the plain path)."""

    def __init__(self, module: nn.Module, modules: list[nn.Module] | None, masks: list[torch.Tensor],
                 stop: Callable[[], bool] | None = None):
        self.masks, self.stop, self.modules = masks, stop, modules
        self.tops = [_rectifier_top(m, mask.dtype) for m, mask in zip(modules or [], masks)]
        self.written = False
        self._rectified: list[tuple[torch.Tensor, int]] = []  # what the backward reads, and its version
        self._fast = transformed(module, modules, self._scale, self._by_hook)
        self._plain = transformed(module, modules, self._scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.written:
            return self._plain(x)
        try:
            out = self._fast(x)
            self.written = any(y._version != version for y, version in self._rectified)
        finally:
            self._rectified.clear()
        return self._plain(x) if self.written else out

    def _halt_if_asked(self, i: int) -> None:
        if self.stop is not None and self.stop():
            raise Stopped(f"stopped at layer {i}")

    def _scale(self, i: int, out: torch.Tensor) -> torch.Tensor:
        self._halt_if_asked(i)
        return out * self.masks[i]

    def _fast_way(self, i: int, x: torch.Tensor | None, out: torch.Tensor) -> str | None:
        """The fast path's one predicate: how layer i's output is masked there, or None where it
        is multiplied. Only a rectifier module nothing else acts on, not in place (the model may
        read x again: unmasked, as the multiplied network has it). "in place": a ReLU, whose
        backward reads its output, when autograd keeps saved tensors as they are. "rectifier":
        _MaskedRectifier, computed from an x that needs its gradient."""
        top = self.tops[i]
        if top is None or out is x or not _alone(self.modules[i]):
            return None
        if top == math.inf and torch_internals.saved_tensors_as_is():
            return "in place"
        if x is not None and x.requires_grad and torch.is_grad_enabled():
            return "rectifier"
        return None

    def _by_hook(self, i: int, x: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
        way = self._fast_way(i, x, out)
        if way is None:
            return self._scale(i, out)
        self._halt_if_asked(i)
        if way == "in place":
            # masked in place, unknown to autograd, ReLU's output is the pruned neuron's backward
            # too, and the pass needs no other node
            out.data.mul_(self.masks[i])
            if out.requires_grad:
                self._rectified.append((out, out._version))
            return out
        y = _MaskedRectifier.apply(x, (out.detach(),), self.masks[i], self.tops[i])
        self._rectified.append((y, y._version))
        return y


class MaskedNetwork(nn.Module):
    """The network pruned for one input as a module, for libraries that take one (Captum's
    DeepLIFT, pytorch-grad-cam): `inner` is the network, whose layers keep their names, and the
    forward multiplies every activation by its mask (MaskedForward). The masks are one
    sample's, so a batch of perturbed inputs runs through the same pruned network."""

    wraps_network = True  # unwrapped() looks through it

    def __init__(self, inner: nn.Module, forward: Callable):
        super().__init__()
        self.inner = inner
        self.masked_forward = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masked_forward(x)


def unwrapped(net: nn.Module) -> nn.Module:
    """The network inside PruneScope's wrappers (MaskedNetwork, the app's gated network), whose
    layers keep the model's names."""
    while getattr(net, "wraps_network", False):
        net = net.inner
    return net


def _alone(module: nn.Module) -> bool:
    """Whether nothing but our hook acts on the activation: no other hooks on it, no function
    mode around the forward (guided backprop's intercept, say). They change the activation's
    own backward, which _MaskedRectifier leaves out of the graph."""
    return (len(module._forward_hooks) == 1 and not module._forward_pre_hooks
            and not module._backward_hooks and not module._backward_pre_hooks
            and not torch_internals.global_module_hooks() and not torch_internals.function_mode_active())


def _rectifier_top(module: nn.Module, dtype: torch.dtype) -> float | None:
    """A ReLU's upper bound (inf), or a ReLU6's where it makes a new tensor and the bound is
    exact in dtype (a rounded one would let saturated neurons' gradients through); else None."""
    if type(module) is nn.ReLU:
        return math.inf
    if (type(module) in (nn.ReLU6, nn.Hardtanh) and not module.inplace
            and module.min_val == 0 < module.max_val):
        top = float(module.max_val)
        return top if _exact(top, dtype) else None
    return None


@lru_cache
def _exact(value: float, dtype: torch.dtype) -> bool:
    """Whether dtype holds value exactly (asked of every layer on every masked pass)."""
    return float(torch.tensor(value, dtype=dtype)) == value


class _MaskedRectifier(torch.autograd.Function):
    """y = hardtanh(x, 0, top) * mask for a 0/1 mask. Its derivative is 1 exactly where y lies
    strictly inside (0, top), pruned neurons being 0, so the backward reads y alone: one kernel,
    where multiplying the activation's output takes a multiplication and then the activation's
    own backward, which reads x (the pass got ~3 % faster on the embedded model). The forward
    masks the module's output in place; it comes in a tuple, so that autograd does not take y
    for an input returned as is (a view, which the model could then not write into)."""

    @staticmethod
    def forward(ctx, x, computed, mask, top):
        y = computed[0].mul_(mask)
        ctx.save_for_backward(y)
        ctx.top = top
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, y, 0.0, ctx.top), None, None, None


def intgrad_scores(module: nn.Module, x: torch.Tensor, target: int, n_layers: int,
                   steps: int = 10):
    """Job: s = |a * mean_alpha dy_c/d(alpha a)|, each layer scaled alone, alpha in (0, 1].

    Returns (scores, |a|), a tensor per layer each. The `steps` values of alpha go through the
    network as one batch, so the cost is one batched forward and backward per layer.
    """
    alphas = torch.linspace(1.0 / steps, 1.0, steps, device=x.device)
    xs = _input_with_grad(x.expand(steps, *x.shape[1:]))
    scores, magnitudes = [], []
    for layer in range(n_layers):
        acts: list[torch.Tensor] = []
        slot: list = []

        def scale(index: int, out: torch.Tensor) -> torch.Tensor:
            if index != layer:
                return out
            acts.append(out[:1].detach())
            shaped = alphas.view(-1, *([1] * (out.dim() - 1)))
            return _Tap.apply(out * shaped, slot)

        with torch.enable_grad(), intercept(scale):
            logits = module(xs)
        torch.autograd.grad(logits[:, target].sum(), xs)
        scores.append((acts[0] * slot[0].mean(0, keepdim=True)).abs()[0])
        magnitudes.append(acts[0].abs()[0])
        yield Progress((layer + 1) / n_layers, f"IntGrad scores: layer {layer + 1}/{n_layers}")
    return scores, magnitudes
