"""What the attribution methods share (each method's body is its class: core.methods.gradients,
cams, perturbation): the input checks, collapsing channels, batching within memory, gradient sums
run in resumable steps, guided backpropagation and Grad-CAM; and a map by method name.

Every method returns a raw, signed HxW float32 map at the input's resolution; display scaling is
core.io.display's job. Hooks that any method installs are removed before it returns, also on errors.
"""
import time

import numpy as np
import torch
from torch import nn

from core.errors import ModelError, UnsupportedMethod
from core.network.hooks import hooked
from core.network.neurons import intercept, unwrapped
from core.network.tokens import grid_side
from core.progress import Paused, Progress

# Captum is imported inside the functions: it takes about a second to import. LRP (core.methods.lrp) too:
# zennit brings torchvision, 170 MB resident.

# Bytes one batched forward+backward may use on the CPU. Bigger batches buy no speed there
# (integrated gradients of the embedded model: 2, 4 and 10 images per pass took the same time)
# and cost resident memory (10: +600 MB).
CPU_MEMORY_BUDGET = 512 << 20


def collapse_channels(grad: torch.Tensor) -> np.ndarray:
    """1xCxHxW -> HxW: per pixel the channel value of largest magnitude, sign kept (the first
    channel wins a tie). A comparison per channel: torch's argmax over the 3 channels took
    8 ms of a 224x224 map on a CPU, ~7 % of the slider's masked forward and backward."""
    grad = grad.detach()[0]
    best, best_magnitude = grad[0], grad[0].abs()
    for channel in grad[1:]:
        magnitude = channel.abs()
        stronger = magnitude > best_magnitude
        best = torch.where(stronger, channel, best)
        best_magnitude = torch.where(stronger, magnitude, best_magnitude)
    return best.float().cpu().numpy()


def prepared(method, model, x: torch.Tensor, target: int) -> tuple[torch.Tensor, int]:
    """Checks that `method` (a core.methods.base.Method) runs on the model, the input and the
    target; puts the model in eval mode; returns a private copy of x on the model's device, and
    the target as an int."""
    ok, why = method.supports(model)
    if not ok:
        raise UnsupportedMethod(why)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != 1:
        raise ModelError(f"expected one image as a 1x3xHxW tensor, got {getattr(x, 'shape', type(x).__name__)}")
    classes = len(model.class_names)
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < classes:
        raise ModelError(f"target class {target!r} is not one of {model.name}'s {classes} classes (0 to {classes - 1})")
    model.module.eval()
    return x.detach().to(model.device).clone(), int(target)


# --- integrated gradients in steps ---------------------------------------------------------------

class _SteppedRun:
    """A sum of the target's input gradients over `count` inputs made from x, computed a few
    inputs at a time (as many as take about step_seconds, measured) so that the app's worker can
    stop between them, and a stopped run resumes where it was. Captum computes these sums in
    one call that cannot be interrupted (seconds on a CPU), hence this."""

    label = ""

    def __init__(self, method, model, x: torch.Tensor, target: int, count: int, module: nn.Module | None):
        x, self.target = prepared(method, model, x, target)
        self.module = model.module if module is None else module  # see attribute()
        self.x, self.count = x, count
        self.done = 0
        self.total = torch.zeros_like(x)
        self._per_input = None  # measured seconds of one input's forward and backward
        self._most = batch_size(self.module, x, count)  # inputs per step that fit in memory

    def _inputs(self, rows: slice) -> torch.Tensor:
        raise NotImplementedError

    def _summed(self, grads: torch.Tensor, rows: slice) -> torch.Tensor:
        return grads.sum(0, keepdim=True)

    def _result(self) -> torch.Tensor:
        raise NotImplementedError

    def steps(self, step_seconds: float):
        """Job: advances in chunks of about step_seconds; returns the HxW map. A chunk whose
        network gives up for more urgent work (Paused) is run again at the next step."""
        while self.done < self.count:
            per = self._per_input
            size = 1 if per is None else int(max(1, min(self._most, step_seconds / per)))
            rows = slice(self.done, min(self.done + size, self.count))
            began = time.perf_counter()
            inputs = self._inputs(rows).requires_grad_(True)
            try:
                with torch.enable_grad():
                    out = self.module(inputs)[:, self.target].sum()
                    (grads,) = torch.autograd.grad(out, inputs)
                gave_way = False
            except Paused:  # more urgent work waits: this chunk again at the next step
                gave_way = True
            if gave_way:  # yielded outside the handler, whose traceback would keep the forward's tensors
                yield Progress(self.done / self.count, f"{self.label} {self.done}/{self.count}")
                continue
            self.total += self._summed(grads, rows)
            self._per_input = (time.perf_counter() - began) / (rows.stop - rows.start)
            self.done = rows.stop
            yield Progress(self.done / self.count, f"{self.label} {self.done}/{self.count}")
        return collapse_channels(self._result())


class IntegratedGradientsRun(_SteppedRun):
    """Integrated gradients from the method's baseline, on Captum's default Gauss-Legendre
    nodes, in steps."""

    label = "integrated gradients"

    def __init__(self, method, model, x: torch.Tensor, target: int, steps: int, module: nn.Module | None):
        from core.io.baselines import baseline_image

        super().__init__(method, model, x, target, steps, module)
        self.base = baseline_image(self.x, method.params["baseline"], model.mean, model.std)
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        self.alphas = torch.tensor((nodes + 1) / 2, dtype=self.x.dtype, device=self.x.device)
        self.weights = torch.tensor(weights / 2, dtype=self.x.dtype, device=self.x.device)

    def _inputs(self, rows: slice) -> torch.Tensor:
        return self.base + self.alphas[rows].view(-1, 1, 1, 1) * (self.x - self.base)

    def _summed(self, grads: torch.Tensor, rows: slice) -> torch.Tensor:
        return (grads * self.weights[rows].view(-1, 1, 1, 1)).sum(0, keepdim=True)

    def _result(self) -> torch.Tensor:
        return self.total * (self.x - self.base)


class SmoothGradRun(_SteppedRun):
    """SmoothGrad as Captum's NoiseTunnel(Saliency) computes it (the same noise, drawn at once
    from the same seed), in steps."""

    label = "smoothgrad"

    def __init__(self, method, model, x: torch.Tensor, target: int, samples: int, noise: float, seed: int,
                 module: nn.Module | None):
        super().__init__(method, model, x, target, samples, module)
        stdev = noise * float(self.x.max() - self.x.min())
        generator = torch.Generator(device=self.x.device).manual_seed(seed)
        self.noise = torch.empty((samples, *self.x.shape[1:]), device=self.x.device, dtype=self.x.dtype)
        self.noise.normal_(0.0, 1.0, generator=generator).mul_(stdev)

    def _inputs(self, rows: slice) -> torch.Tensor:
        return self.x + self.noise[rows]

    def _result(self) -> torch.Tensor:
        return self.total / self.count


class GradientShapRun(_SteppedRun):
    """GradientSHAP as Captum's GradientShap computes it, in steps: the same random draws, in the
    same order from the same seed (the baseline's index and the interpolation points from numpy,
    the noise from torch), then the gradients a few points at a time."""

    label = "gradient-shap"

    def __init__(self, method, model, x: torch.Tensor, target: int, module: nn.Module | None):
        from core.io.baselines import baseline_image
        from core.runtime.device import seeded

        p = method.params
        super().__init__(method, model, x, target, p["samples"], module)
        self.base = baseline_image(self.x, p["baseline"], model.mean, model.std)
        spread = p["noise"] * float(self.x.max() - self.x.min())
        with seeded(p["seed"], self.x.device):
            np.random.choice(1, size=self.count)  # Captum draws a baseline per sample (there is one)
            self.noisy = self.x + torch.normal(0, torch.full((self.count, *self.x.shape[1:]), spread,
                                                             device=self.x.device, dtype=self.x.dtype))
            alphas = np.random.uniform(0.0, 1.0, self.count)
        self.alphas = torch.tensor(alphas, device=self.x.device, dtype=self.x.dtype).view(-1, 1, 1, 1)

    def _inputs(self, rows: slice) -> torch.Tensor:
        return self.alphas[rows] * self.noisy[rows] + (1.0 - self.alphas[rows]) * self.base

    def _summed(self, grads: torch.Tensor, rows: slice) -> torch.Tensor:
        return ((self.noisy[rows] - self.base) * grads).sum(0, keepdim=True)

    def _result(self) -> torch.Tensor:
        return self.total / self.count


# --- batching -------------------------------------------------------------------------------------

def batch_size(module: nn.Module, x: torch.Tensor, wanted: int) -> int:
    """How many copies of x one forward+backward may take at once within the memory budget."""
    per_sample = _activation_bytes(module, x)
    if x.device.type == "cuda":
        budget = torch.cuda.mem_get_info(x.device)[0] // 2
    else:
        budget = CPU_MEMORY_BUDGET
    # The backward keeps roughly the activations and their gradients, plus temporaries.
    return int(max(1, min(wanted, budget // max(1, 3 * per_sample))))


def _activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of all leaf-module outputs for one forward of x (a measure of what autograd keeps)."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in module.modules() if not any(True for _ in m.children())]
    handles = [leaf.register_forward_hook(count) for leaf in leaves]
    with hooked(handles), torch.no_grad():
        module(x)
    return total


# --- guided backprop ------------------------------------------------------------------------------

class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward lets only positive gradient through. Wrapped around every
    activation output, the activation's own derivative then gates it: guided backpropagation."""

    @staticmethod
    def forward(ctx, out):
        # A clone, not a view: later in-place ops on the activation must stay legal.
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


def guided_backprop(forward: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    # Captum's GuidedBackprop only overrides nn.ReLU modules, so ReLU6, GELU and functional
    # activations would silently give the plain gradient; core.network.neurons.intercept sees them all.
    from captum.attr import Saliency

    with intercept(lambda _index, out: _PositiveGradient.apply(out)):
        return Saliency(forward).attribute(x, target=target, abs=False).detach()


# --- Grad-CAM -------------------------------------------------------------------------------------

def grad_cam_layer(model, net: nn.Module) -> nn.Module:
    """The model's Grad-CAM layer inside net (the engine's pruned network wraps the module as
    `inner`, where the layer keeps its name)."""
    return unwrapped(net).get_submodule(model.gradcam_layer)


def layer_grad_cam(model, net: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM at the layer's resolution, 1x1xhxw, before upsampling."""
    from captum.attr import LayerGradCam

    layer = grad_cam_layer(model, net)
    x = x.requires_grad_(True)  # parameters are frozen: the input is what puts the layer in the graph
    if getattr(model, "gradcam_tokens", None) is not None:
        return _token_grad_cam(net, layer, x, target, model.gradcam_tokens)
    cam = LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)
    if cam.ndim != 4:
        raise UnsupportedMethod(
            f"Grad-CAM needs a spatial layer; '{model.gradcam_layer}' of {model.name} "
            f"outputs shape {tuple(cam.shape)}")
    return cam.detach()


def grad_cam(model, x: torch.Tensor, target: int, net: nn.Module) -> np.ndarray:
    """Grad-CAM upsampled (bilinear) to x's resolution, as Captum's LayerAttribution does."""
    from captum.attr import LayerAttribution

    cam = LayerAttribution.interpolate(layer_grad_cam(model, net, x, target), tuple(x.shape[-2:]),
                                       interpolate_mode="bilinear")
    return cam[0, 0].float().cpu().numpy()


def _token_grad_cam(module: nn.Module, layer: nn.Module, x: torch.Tensor, target: int,
                    prefix: int) -> torch.Tensor:
    """Grad-CAM on a ViT's patch tokens (after `prefix` class/distillation tokens), laid back onto
    their grid. Hand-written because Captum's LayerGradCam assumes channel-first maps (it would
    average over the embedding, not the patches)."""
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        score = module(x)[0, target]
    finally:
        handle.remove()
    tokens = captured[-1]
    side = grid_side(tokens.shape[1], prefix) if tokens.ndim == 3 else None
    if side is None:
        raise UnsupportedMethod(f"Grad-CAM cannot lay tokens of shape {tuple(tokens.shape)} on a square grid")
    grads, = torch.autograd.grad(score, tokens)
    patches, patch_grads = tokens[:, prefix:], grads[:, prefix:]  # drop the class tokens
    weights = patch_grads.mean(dim=1, keepdim=True)
    cam = torch.relu((patches * weights).sum(dim=-1))
    return cam.reshape(1, 1, side, side).detach()
