"""Perturbation methods: occlusion, KernelSHAP and LIME from Captum, and RISE.

Each runs many forwards, batched. What is removed becomes 0 in normalised space, the dataset-mean
image. KernelSHAP and LIME perturb scikit-image SLIC superpixels of the image.
"""
from core.methods.base import Method

BATCH = 32         # perturbed inputs per forward
SEGMENTS = 50      # SLIC superpixels asked for (KernelSHAP, LIME)
SHAP_SAMPLES = 200
RISE_MASKS = 500
RISE_CELLS = 7     # each RISE mask is a random 7x7 grid, upsampled with a random shift
RISE_KEEP = 0.5    # probability that a cell is kept


def occlusion_window(side: int) -> tuple[int, int]:
    """Window and stride in pixels: 32 and 16 at 224 px (169 positions), in proportion elsewhere."""
    window = max(2, round(side * 32 / 224))
    return window, max(1, window // 2)


class Occlusion(Method):
    name, family = "occlusion", "perturbation"
    passes = "1 forward per window position (169 at 224 px)"
    interactive = False

    def settings(self, model):
        window, stride = occlusion_window(model.input_size)
        return {"window": window, "stride": stride, "baseline": "zero (the dataset mean)", "batch": BATCH}

    def attribute(self, model, net, x, target):
        import torch
        from captum.attr import Occlusion as CaptumOcclusion

        from core.methods.attribution import collapse_channels

        window, stride = occlusion_window(min(x.shape[-2:]))
        channels = x.shape[1]
        with torch.no_grad():
            attr = CaptumOcclusion(net).attribute(
                x.detach(), sliding_window_shapes=(channels, window, window),
                strides=(channels, stride, stride), baselines=0.0, target=target,
                perturbations_per_eval=BATCH)
        return collapse_channels(attr)


def superpixels(model, x, segments: int = SEGMENTS):
    """1x1xHxW long tensor of SLIC superpixel labels of the image x shows, from 0."""
    import numpy as np
    import torch
    from skimage.segmentation import slic

    rgb = model.unnormalise(x)[0].permute(1, 2, 0).cpu().numpy()
    labels = slic(rgb.astype(np.float64), n_segments=segments, compactness=10, start_label=0,
                  channel_axis=-1 if rgb.shape[-1] > 1 else None)
    return torch.from_numpy(np.ascontiguousarray(labels)).to(x.device).long()[None, None]


class _Superpixels(Method):
    family = "perturbation"
    passes = f"{SHAP_SAMPLES} forwards"
    interactive = False
    params = {"segments": SEGMENTS, "samples": SHAP_SAMPLES, "baseline": "zero (the dataset mean)",
              "seed": 0, "batch": BATCH}
    captum_class = ""

    def attribute(self, model, net, x, target):
        import captum.attr
        import torch

        from core.runtime.device import seeded

        labels = superpixels(model, x)
        mask = labels.expand(-1, x.shape[1], -1, -1)
        explainer = getattr(captum.attr, self.captum_class)(net)
        with torch.no_grad(), seeded(0, x.device):
            attr = explainer.attribute(x.detach(), baselines=0.0, target=target, feature_mask=mask,
                                       n_samples=SHAP_SAMPLES, perturbations_per_eval=BATCH)
        return attr[0, 0].float().cpu().numpy()  # one weight per superpixel, the same in each channel


class KernelShap(_Superpixels):
    name, captum_class = "kernel-shap", "KernelShap"


class Lime(_Superpixels):
    name, captum_class = "lime", "Lime"


class Rise(Method):
    """RISE (Petsiuk et al., BMVC 2018): the target's probability under random smooth masks,
    averaged with the masks as weights. Written here because neither Captum nor pytorch-grad-cam
    has it; a batched forward per BATCH masks."""

    name, family = "rise", "perturbation"
    passes = f"{RISE_MASKS} forwards"
    interactive = False
    params = {"masks": RISE_MASKS, "cells": RISE_CELLS, "keep": RISE_KEEP, "seed": 0, "batch": BATCH}

    def attribute(self, model, net, x, target):
        import torch
        import torch.nn.functional as F

        height, width = x.shape[-2:]
        cell_h, cell_w = -(-height // RISE_CELLS), -(-width // RISE_CELLS)
        generator = torch.Generator(device="cpu").manual_seed(0)
        total = torch.zeros(height, width, device=x.device)
        with torch.no_grad():
            for start in range(0, RISE_MASKS, BATCH):
                n = min(BATCH, RISE_MASKS - start)
                grid = (torch.rand(n, 1, RISE_CELLS, RISE_CELLS, generator=generator) < RISE_KEEP).float()
                up = F.interpolate(grid, size=((RISE_CELLS + 1) * cell_h, (RISE_CELLS + 1) * cell_w),
                                   mode="bilinear", align_corners=False)
                dy = torch.randint(0, cell_h, (n,), generator=generator)
                dx = torch.randint(0, cell_w, (n,), generator=generator)
                masks = torch.stack([up[i, 0, y:y + height, s:s + width]
                                     for i, (y, s) in enumerate(zip(dy.tolist(), dx.tolist()))]).to(x.device)
                probs = torch.softmax(net(x * masks[:, None]).float(), dim=1)[:, target]
                total += (probs.view(-1, 1, 1) * masks).sum(0)
        return (total / (RISE_MASKS * RISE_KEEP)).float().cpu().numpy()
