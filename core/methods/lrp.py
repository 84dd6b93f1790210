"""LRP through zennit: the canonizers that make each supported architecture's LRP exact, and the
relevance map. Imported where LRP is asked for: zennit imports torchvision (170 MB resident)."""
import copy

import numpy as np
import torch
from torch import nn
from torchvision.models import VGG, DenseNet, MobileNetV3, ResNet, VisionTransformer
from zennit.attribution import Gradient
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox
from zennit.layer import Sum
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

from core.models.efficientnet_lite import EfficientNetLite0, MBConvBlock


def unsupported_reason(module: nn.Module) -> str:
    if isinstance(module, (ResNet, VGG, EfficientNetLite0)):
        return ""
    if isinstance(module, DenseNet):
        return "batch norms before convolutions and concatenated features have no zennit canonizer"
    if isinstance(module, MobileNetV3):
        return "Hardswish and squeeze-excitation gating are not piecewise linear, so no LRP rule applies"
    if isinstance(module, VisionTransformer):
        return "attention and layer norm need transformer-specific rules that zennit does not provide"
    return f"no LRP canonizer is known for {type(module).__name__}"


def lrp_canonizers(module: nn.Module) -> list:
    # In all three every conv is followed directly by its batch norm (if any) in module order.
    if isinstance(module, ResNet):
        return [ExactMergeBatchNorm(), ResNetBasicBlockCanonizer(), ResNetBottleneckCanonizer()]
    if isinstance(module, VGG):
        return [ExactMergeBatchNorm()]
    return [ExactMergeBatchNorm(), MBConvResidualCanonizer()]


def lrp(model, x: torch.Tensor, target: int, module: nn.Module | None = None) -> np.ndarray:
    """Relevance by LRP (zennit's EpsilonGammaBox: z-box at the input, gamma for convolutions,
    epsilon for dense layers), starting from the target logit; summed over the colour channels
    because relevance is additive (the map's sum approximates the logit). module: a private copy
    of the model's module to run on (the pruned network's); by default a copy is made."""
    # zennit's canonizers rewrite weights in place while active; a private copy keeps the shared
    # model correct for anything else running on it meanwhile.
    module = (copy.deepcopy(model.module) if module is None else module).eval()
    mean = torch.tensor(model.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(model.std, device=x.device).view(1, -1, 1, 1)
    low = ((0 - mean) / std).expand_as(x)
    high = ((1 - mean) / std).expand_as(x)
    composite = EpsilonGammaBox(low=low, high=high, canonizers=lrp_canonizers(module))
    one_hot = torch.zeros(1, len(model.class_names), device=x.device)
    one_hot[0, target] = 1
    with Gradient(module, composite) as attributor:
        _, relevance = attributor(x.clone().requires_grad_(True), lambda out: (out * one_hot).detach())
    return relevance[0].sum(dim=0).float().cpu().numpy()


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """zennit's SequentialMergeBatchNorm leaves a merged batch norm computing x / sqrt(1 + eps); with
    EfficientNet's eps = 1e-3 over 49 layers that moves the logits by about 0.2%. A running variance
    of 1 - eps makes it the identity, so the canonized model computes exactly what the model does."""

    @staticmethod
    def merge_batch_norm(modules, batch_norm):
        SequentialMergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 1 - batch_norm.eps)


class MBConvResidualCanonizer(AttributeCanonizer):
    """Sends EfficientNet-Lite's residual addition through a zennit Sum module so that LRP splits
    relevance between both branches rather than copying it into each (zennit ships this only for
    torchvision ResNets)."""

    def __init__(self):
        super().__init__(self._attribute_map)

    def copy(self):
        return MBConvResidualCanonizer()

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, MBConvBlock) and module.has_residual:
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x):
        # MBConvBlock.forward with `out + x` as a stacked Sum; a test checks that they agree.
        out = x
        if self.has_expand:
            out = self._relu0(self._bn0(self._expand_conv(out)))
        out = self._relu1(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return self.canonizer_sum(torch.stack([out, x], dim=-1))
