"""Gradient-family methods, Grad-CAM and LRP: Captum's gradients, integrated gradients, SmoothGrad
and DeepLIFT, PruneScope's guided backpropagation, zennit's LRP, and GradientSHAP and Guided
Grad-CAM from Captum. Each method's body is its class; core.methods.attribution holds what they share."""
from core.methods.base import BASELINE, SEED, Method, Setting

IG_STEPS = 50
SMOOTHGRAD_SAMPLES = 25
SMOOTHGRAD_NOISE = 0.15  # noise std as a fraction of the input's value range (Smilkov et al. 2017)
SHAP_SAMPLES = 25
SHAP_NOISE = 0.09  # baseline noise std as a fraction of the input's value range


def _samples(default: int) -> Setting:
    return Setting("samples", default, 1, 1000, help="noisy copies averaged (each a forward+backward)")


def _noise(default: float) -> Setting:
    return Setting("noise", default, 0.0, 1.0, help="noise std, as a fraction of the input's value range")


class GradientMethod(Method):
    """A map made of the target's input gradients: 1x3xHxW, collapsed to HxW per pixel (the channel
    of largest magnitude). opts: the method's own settings (steps, samples, noise, seed)."""

    def attribute(self, model, net, x, target, **opts):
        from core.methods.attribution import collapse_channels

        return collapse_channels(self.input_attribution(model, net, x, target, **opts))

    def input_attribution(self, model, net, x, target, **opts):
        """The 1x3xHxW attribution, before the channels are collapsed."""
        import torch

        from core.methods.attribution import prepared

        x, target = prepared(self, model, x, target)
        with torch.enable_grad():
            return self._gradients(net, x.requires_grad_(True), target, **opts)

    def _gradients(self, net, x, target, **opts):
        raise NotImplementedError


def _plain_gradient_through(forward, x, target, times_input: bool):
    """The pathway version of the gradient and input x gradient: one masked forward and backward,
    whose logits are the pruned network's (no second forward on the slider's path)."""
    import torch

    from core.methods.attribution import collapse_channels

    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(xg)
        (grad,) = torch.autograd.grad(logits[0, target], xg)
    return collapse_channels(grad * x if times_input else grad), logits.detach()


class Gradient(GradientMethod):
    name, magnitude_ranked, one_pass = "gradient", True, True

    def _gradients(self, net, x, target):
        from captum.attr import Saliency

        return Saliency(net).attribute(x, target=target, abs=False).detach()

    def through(self, model, inner, forward, x, target):
        return _plain_gradient_through(forward, x, target, times_input=False)


class InputXGradient(GradientMethod):
    name, one_pass = "input-x-gradient", True

    def _gradients(self, net, x, target):
        from captum.attr import InputXGradient as CaptumInputXGradient

        return CaptumInputXGradient(net).attribute(x, target=target).detach()

    def through(self, model, inner, forward, x, target):
        return _plain_gradient_through(forward, x, target, times_input=True)


class IntegratedGradients(GradientMethod):
    name = "integrated-gradients"
    passes = f"{IG_STEPS} forward+backward"
    options = (Setting("steps", IG_STEPS, 1, 1000, help="points on the path (each a forward+backward)"),
               BASELINE)

    sums, coarse = True, {"steps": 16}  # the app's first map: 16 of the 50 nodes

    def input_attribution(self, model, net, x, target, steps: int | None = None):
        from core.io.baselines import baseline_image

        base = baseline_image(x.detach(), self.params["baseline"], model.mean, model.std)
        return super().input_attribution(model, net, x, target, steps=steps or self.params["steps"], base=base)

    def _gradients(self, net, x, target, steps: int, base):
        from captum.attr import IntegratedGradients as CaptumIntegratedGradients

        from core.methods.attribution import batch_size

        return CaptumIntegratedGradients(net).attribute(
            x, baselines=base.to(x.device), target=target, n_steps=steps,
            internal_batch_size=batch_size(net, x, steps)).detach()

    def stepped(self, model, net, x, target, step_seconds=None, private=None, detach=False):
        # on the worker, in steps of its own: the network needs no copy, nothing runs beside it
        from core.methods.attribution import IntegratedGradientsRun

        return IntegratedGradientsRun(self, model, x, target, self.params["steps"], net)

    def through(self, model, inner, forward, x, target):
        import torch
        from captum.attr import IntegratedGradients as CaptumIntegratedGradients

        from core.io.baselines import baseline_image
        from core.methods.attribution import batch_size, collapse_channels

        steps = self.params["steps"]
        grads = CaptumIntegratedGradients(forward).attribute(
            x, baselines=baseline_image(x, self.params["baseline"], model.mean, model.std), target=target,
            n_steps=steps, internal_batch_size=batch_size(inner, x, steps))
        with torch.no_grad():
            logits = forward(x)
        return collapse_channels(grads), logits


class SmoothGrad(GradientMethod):
    name, magnitude_ranked = "smoothgrad", True
    passes = f"{SMOOTHGRAD_SAMPLES} forward+backward"
    options = (_samples(SMOOTHGRAD_SAMPLES), _noise(SMOOTHGRAD_NOISE), SEED)

    sums = True

    def _gradients(self, net, x, target, samples: int | None = None, noise: float | None = None,
                   seed: int | None = None):
        from captum.attr import NoiseTunnel, Saliency

        from core.methods.attribution import batch_size
        from core.runtime.device import seeded

        p = self.params
        samples, noise, seed = samples or p["samples"], p["noise"] if noise is None else noise, \
            p["seed"] if seed is None else seed
        spread = noise * float(x.detach().max() - x.detach().min())
        # A fixed seed makes the map repeatable (caches, tests) without touching the caller's RNG.
        with seeded(seed, x.device):
            return NoiseTunnel(Saliency(net)).attribute(
                x, nt_type="smoothgrad", nt_samples=samples, stdevs=spread, target=target, abs=False,
                nt_samples_batch_size=batch_size(net, x, samples)).detach()

    def stepped(self, model, net, x, target, step_seconds=None, private=None, detach=False):
        # on the worker, in steps of its own: the network needs no copy, nothing runs beside it
        from core.methods.attribution import SmoothGradRun

        p = self.params
        return SmoothGradRun(self, model, x, target, p["samples"], p["noise"], p["seed"], net)


class GuidedBackprop(GradientMethod):
    name, magnitude_ranked, one_pass = "guided-backprop", True, True

    def _gradients(self, net, x, target):
        from core.methods.attribution import guided_backprop

        return guided_backprop(net, x, target)


def gradcam_support(model) -> tuple[bool, str]:
    """Whether the model has a Grad-CAM layer (the CAM family's too); if not, why."""
    if not model.gradcam_layer:
        return False, f"Grad-CAM has no layer in {model.name}: {model.gradcam_reason or 'none set'}"
    try:
        model.module.get_submodule(model.gradcam_layer)
    except AttributeError:
        return False, f"Grad-CAM layer '{model.gradcam_layer}' does not exist in {model.name}"
    return True, ""


class GradCam(Method):
    name, family = "grad-cam", "cam"
    runs_on_loaded, one_pass = True, True

    def supports(self, model):
        return gradcam_support(model)

    def layer(self, model):
        return model.gradcam_layer

    def attribute(self, model, net, x, target):
        import torch

        from core.methods.attribution import grad_cam, prepared

        x, target = prepared(self, model, x, target)
        with torch.enable_grad():
            return grad_cam(model, x, target, net)


class Lrp(Method):
    name, family = "lrp", "relevance"
    passes = "1 forward+backward on a canonized copy"
    runs_on_loaded = True

    def supports(self, model):
        from core.methods.lrp import unsupported_reason

        why = unsupported_reason(model.module)
        return (False, f"LRP does not support {model.name}: {why}") if why else (True, "")

    def attribute(self, model, net, x, target):
        import torch

        from core.methods.attribution import prepared
        from core.methods.lrp import lrp

        x, target = prepared(self, model, x, target)
        with torch.enable_grad():
            return lrp(model, x, target)

    def through(self, model, inner, forward, x, target):
        """zennit canonizes a copy of the model as loaded in which each activation module is gated
        by its mask (core.network.mask_modules.masked_copy): relevance passes a kept neuron and stops at
        a pruned one."""
        import torch

        from core.methods.attribution import prepared
        from core.methods.lrp import lrp
        from core.network.mask_modules import masked_copy, masked_names

        x, target = prepared(self, model, x, target)
        masked = getattr(forward, "masked_forward", forward)  # the app's run wraps it (library_run)
        pruned = masked_copy(model.module, masked_names(inner, masked), masked.masks)
        with torch.enable_grad():
            relevance = lrp(model, x, target, pruned)
        with torch.no_grad():
            return relevance, forward(x)


class DeepLift(Method):
    """Captum's DeepLIFT (rescale rule) from the dataset-mean image. Captum overrides nn.ReLU
    and a few other activation modules; through others (ReLU6, SiLU, GELU, functional calls) it
    would silently pass the plain gradient, and a module called twice (torchvision's ResNet
    blocks) breaks its rule: such models are refused."""

    name = "deeplift"
    passes = "1 forward+backward"
    options = (BASELINE,)
    fixed = {"rule": "rescale"}

    def supports(self, model):
        why = _deeplift_unsupported(model.module)
        return (False, f"DeepLIFT does not support {model.name}: {why}") if why else (True, "")

    def attribute(self, model, net, x, target):
        from captum.attr import DeepLift as CaptumDeepLift

        from core.errors import UnsupportedMethod
        from core.io.baselines import baseline_image
        from core.methods.attribution import collapse_channels

        why = _unhookable_activation(net, x)
        if why:
            raise UnsupportedMethod(f"DeepLIFT does not support {model.name}: {why}")
        x = x.detach().clone().requires_grad_(True)
        base = baseline_image(x.detach(), self.params["baseline"], model.mean, model.std)
        return collapse_channels(CaptumDeepLift(net).attribute(x, base, target=target).detach())

    def through(self, model, inner, forward, x, target):
        """Captum's hooks sit on the activation modules, where the slider's masks are hooks too,
        and the two do not compose (through all-kept masks the map moved by up to 30 %). So it
        runs on a copy of the network in which each mask is a module of its own that gates its
        activation's input (core.network.mask_modules.masked_copy): a linear step, which DeepLIFT's
        rescale rule passes as its gradient."""
        import torch

        from core.network.mask_modules import masked_copy, masked_names

        masked = getattr(forward, "masked_forward", forward)  # the app's run wraps it (library_run)
        pruned = masked_copy(inner, masked_names(inner, masked), masked.masks)
        attr_map = self.attribute(model, pruned, x, target)
        with torch.no_grad():
            return attr_map, forward(x)


def _deeplift_unsupported(module) -> str:
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    from core.network.neurons import ACTIVATION_MODULES

    for name, m in module.named_modules():
        if isinstance(m, ACTIVATION_MODULES) and type(m) not in SUPPORTED_NON_LINEAR:
            return f"{type(m).__name__} ('{name}') is not one of Captum's DeepLIFT non-linearities"
    return ""


def _unhookable_activation(net, x) -> str:
    """Why Captum's module hooks would miss an activation of net, or '': one that is a function
    call rather than a module of its own, or a module called more than once."""
    from core.network.neurons import layer_modules, trace_layers, unwrapped

    inner = unwrapped(net)
    layers, _ = trace_layers(inner, x)
    if layer_modules(inner, layers) is None:
        return "an activation is a function call or a module that runs more than once per forward"
    return ""


class GradientShap(Method):
    """Captum's GradientSHAP: expected gradients from the dataset-mean image with Gaussian noise,
    a fixed seed so that the map repeats."""

    name = "gradient-shap"
    passes = f"{SHAP_SAMPLES} forward+backward"
    interactive = False  # 4.6 s on Lite0: the app runs it in steps (stepped())
    options = (_samples(SHAP_SAMPLES), _noise(SHAP_NOISE), BASELINE, SEED)

    sums = True

    def attribute(self, model, net, x, target):
        from captum.attr import GradientShap as CaptumGradientShap

        from core.io.baselines import baseline_image
        from core.methods.attribution import collapse_channels
        from core.runtime.device import seeded

        p = self.params
        spread = p["noise"] * float(x.max() - x.min())
        x = x.detach().clone().requires_grad_(True)
        base = baseline_image(x.detach(), p["baseline"], model.mean, model.std)
        with seeded(p["seed"], x.device):
            grads = CaptumGradientShap(net).attribute(x, base, n_samples=p["samples"], stdevs=spread,
                                                      target=target)
        return collapse_channels(grads.detach())

    def stepped(self, model, net, x, target, step_seconds=None, private=None, detach=False):
        # on the worker, in steps of its own: the network needs no copy, nothing runs beside it
        from core.methods.attribution import GradientShapRun

        return GradientShapRun(self, model, x, target, net)


class GuidedGradCam(Method):
    """Guided backpropagation times Grad-CAM upsampled (nearest), per colour channel, as Captum's
    GuidedGradCam computes it. PruneScope's guided backpropagation (core.methods.attribution) stands in
    for Captum's, which only overrides nn.ReLU modules and so gives the plain gradient through
    ReLU6, GELU or functional activations; on a model of nn.ReLU modules the two agree (tested)."""

    name, magnitude_ranked = "guided-grad-cam", True
    passes = "2 forward+backward"

    def supports(self, model):
        return gradcam_support(model)

    def layer(self, model):
        return model.gradcam_layer

    def attribute(self, model, net, x, target):
        import torch.nn.functional as F

        from core.methods.attribution import collapse_channels, guided_backprop, layer_grad_cam

        cam = layer_grad_cam(model, net, x.detach().clone(), target)
        guided = guided_backprop(net, x.detach().clone().requires_grad_(True), target)
        return collapse_channels(guided * F.interpolate(cam, size=tuple(x.shape[-2:]), mode="nearest"))
