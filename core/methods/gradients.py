"""Gradient-family methods, and LRP: PruneScope's original seven through core.methods.attribution
(Captum and zennit), and DeepLIFT, GradientSHAP and Guided Grad-CAM from Captum."""
from core.methods.base import Method

SHAP_SAMPLES = 25
SHAP_NOISE = 0.09  # baseline noise std as a fraction of the input's value range


class _Builtin(Method):
    """One of the methods core.methods.attribution computes itself."""

    def supports(self, model):
        from core.methods.attribution import supports

        return supports(self.name, model)

    def attribute(self, model, net, x, target):
        from core.methods.attribution import attribute

        return attribute(self.name, model, x, target, module=net)


class Gradient(_Builtin):
    name, magnitude_ranked = "gradient", True


class InputXGradient(_Builtin):
    name = "input-x-gradient"


class IntegratedGradients(_Builtin):
    name = "integrated-gradients"
    passes = "50 forward+backward"
    params = {"steps": 50, "baseline": "zero (the dataset mean)"}


class SmoothGrad(_Builtin):
    name, magnitude_ranked = "smoothgrad", True
    passes = "25 forward+backward"
    params = {"samples": 25, "noise": 0.15}


class GuidedBackprop(_Builtin):
    name, magnitude_ranked = "guided-backprop", True


class GradCam(_Builtin):
    name, family = "grad-cam", "cam"

    def layer(self, model):
        return model.gradcam_layer


class Lrp(_Builtin):
    name, family = "lrp", "relevance"
    passes = "1 forward+backward on a canonized copy"
    through_network = False  # zennit rewrites a private copy of the model: no masks reach it


def _zero_baseline(x):
    import torch

    return torch.zeros_like(x)  # the dataset-mean image in normalised space


class DeepLift(Method):
    """Captum's DeepLIFT (rescale rule) from the dataset-mean image. Captum overrides nn.ReLU
    and a few other activation modules; through others (ReLU6, SiLU, GELU, functional calls) it
    would silently pass the plain gradient, and a module called twice (torchvision's ResNet
    blocks) breaks its rule: such models are refused."""

    name = "deeplift"
    passes = "1 forward+backward"
    # Its hooks sit on the same activation modules that carry the pathway's masks, and the two do
    # not compose: through all-kept masks its map differed from its own by up to 30 % (tested).
    through_network = False
    params = {"baseline": "zero (the dataset mean)", "rule": "rescale"}

    def supports(self, model):
        why = _deeplift_unsupported(model.module)
        return (False, f"DeepLIFT does not support {model.name}: {why}") if why else (True, "")

    def attribute(self, model, net, x, target):
        from captum.attr import DeepLift as CaptumDeepLift

        from core.errors import UnsupportedMethod
        from core.methods.attribution import collapse_channels

        why = _unhookable_activation(net, x)
        if why:
            raise UnsupportedMethod(f"DeepLIFT does not support {model.name}: {why}")
        x = x.detach().clone().requires_grad_(True)
        return collapse_channels(CaptumDeepLift(net).attribute(x, _zero_baseline(x), target=target).detach())


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
    from core.network.neurons import layer_modules, trace_layers

    inner = getattr(net, "inner", net)
    layers, _ = trace_layers(inner, x)
    if layer_modules(inner, layers) is None:
        return "an activation is a function call or a module that runs more than once per forward"
    return ""


class GradientShap(Method):
    """Captum's GradientSHAP: expected gradients from the dataset-mean image with Gaussian noise,
    a fixed seed so that the map repeats."""

    name = "gradient-shap"
    passes = f"{SHAP_SAMPLES} forward+backward"
    interactive = False  # 4.6 s on Lite0 in one Captum call the app's worker cannot split
    params = {"samples": SHAP_SAMPLES, "noise": SHAP_NOISE, "seed": 0}

    def attribute(self, model, net, x, target):
        from captum.attr import GradientShap as CaptumGradientShap

        from core.methods.attribution import collapse_channels
        from core.runtime.device import seeded

        spread = SHAP_NOISE * float(x.max() - x.min())
        x = x.detach().clone().requires_grad_(True)
        with seeded(0, x.device):
            grads = CaptumGradientShap(net).attribute(x, _zero_baseline(x), n_samples=SHAP_SAMPLES,
                                                      stdevs=spread, target=target)
        return collapse_channels(grads.detach())


class GuidedGradCam(Method):
    """Guided backpropagation times Grad-CAM upsampled (nearest), per colour channel, as Captum's
    GuidedGradCam computes it. PruneScope's guided backpropagation (core.methods.attribution) stands in
    for Captum's, which only overrides nn.ReLU modules and so gives the plain gradient through
    ReLU6, GELU or functional activations; on a model of nn.ReLU modules the two agree (tested)."""

    name, magnitude_ranked = "guided-grad-cam", True
    passes = "2 forward+backward"

    def supports(self, model):
        from core.methods.attribution import supports

        return supports("grad-cam", model)

    def layer(self, model):
        return model.gradcam_layer

    def attribute(self, model, net, x, target):
        import torch.nn.functional as F

        from core.methods.attribution import collapse_channels, guided_backprop, layer_grad_cam

        cam = layer_grad_cam(model, net, x.detach().clone(), target)
        guided = guided_backprop(net, x.detach().clone().requires_grad_(True), target)
        return collapse_channels(guided * F.interpolate(cam, size=tuple(x.shape[-2:]), mode="nearest"))
