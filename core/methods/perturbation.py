"""Perturbation methods: occlusion, KernelSHAP and LIME from Captum, and RISE.

Each runs many forwards, batched. What is removed becomes 0 in normalised space, the dataset-mean
image. KernelSHAP and LIME perturb scikit-image SLIC superpixels of the image.
"""
from core.methods.base import BASELINE, SEED, Method, Setting

BATCH = 32         # perturbed inputs per forward
SEGMENTS = 50      # SLIC superpixels asked for (KernelSHAP, LIME)
SHAP_SAMPLES = 200
RISE_MASKS = 500
RISE_CELLS = 7     # each RISE mask is a random 7x7 grid, upsampled with a random shift
RISE_KEEP = 0.5    # probability that a cell is kept


def occlusion_window(side: int, window: int | None = None, stride: int | None = None) -> tuple[int, int]:
    """Window and stride in pixels; by default 32 and 16 at 224 px (169 positions), in proportion
    elsewhere, and the stride half the window."""
    from core.errors import PruneScopeError

    window = max(2, round(side * 32 / 224)) if window is None else window
    stride = max(1, window // 2) if stride is None else stride
    if window > side or stride > side:
        raise PruneScopeError(f"occlusion's window ({window}) and stride ({stride}) must fit the "
                              f"{side}-pixel input")
    return window, stride


class Occlusion(Method):
    name, family = "occlusion", "perturbation"
    passes = "1 forward per window position (169 at 224 px)"
    interactive = False
    options = (Setting("window", None, 2, 1024, help="side of the square occluded, in pixels (auto: 1/7 of the input)"),
               Setting("stride", None, 1, 1024, help="pixels between window positions (auto: half the window)"),
               BASELINE)
    fixed = {"batch": BATCH}

    def settings(self, model):
        window, stride = occlusion_window(model.input_size, self.params["window"], self.params["stride"])
        return {**self.params, "window": window, "stride": stride}

    def forwards(self, model, x) -> int:
        side = min(x.shape[-2:])
        window, stride = occlusion_window(side, self.params["window"], self.params["stride"])
        return ((side - window) // stride + 1) ** 2 + 1

    def attribute(self, model, net, x, target):
        import torch
        from captum.attr import Occlusion as CaptumOcclusion

        from core.io.baselines import baseline_image
        from core.methods.attribution import collapse_channels

        window, stride = occlusion_window(min(x.shape[-2:]), self.params["window"], self.params["stride"])
        channels = x.shape[1]
        with torch.no_grad():
            attr = CaptumOcclusion(net).attribute(
                x.detach(), sliding_window_shapes=(channels, window, window),
                strides=(channels, stride, stride),
                baselines=baseline_image(x.detach(), self.params["baseline"], model.mean, model.std),
                target=target, perturbations_per_eval=BATCH)
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
    options = (Setting("segments", SEGMENTS, 2, 1000, help="SLIC superpixels asked for: the features switched on and off"),
               Setting("samples", SHAP_SAMPLES, 10, 10000, help="perturbed images (each a forward)"),
               BASELINE, SEED)
    fixed = {"batch": BATCH}
    coarse = {"samples": 50}  # the app's first map
    random_draws = True  # Captum samples each perturbation between forwards
    captum_class = ""

    def forwards(self, model, x) -> int:
        return self.params["samples"] + 1

    def attribute(self, model, net, x, target):
        import captum.attr
        import torch

        from core.io.baselines import baseline_image
        from core.runtime.device import seeded

        p = self.params
        labels = superpixels(model, x, p["segments"])
        mask = labels.expand(-1, x.shape[1], -1, -1)
        explainer = getattr(captum.attr, self.captum_class)(net)
        with torch.no_grad(), seeded(p["seed"], x.device):
            attr = explainer.attribute(x.detach(), target=target, feature_mask=mask, n_samples=p["samples"],
                                       baselines=baseline_image(x.detach(), p["baseline"], model.mean, model.std),
                                       perturbations_per_eval=BATCH)
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
    options = (Setting("masks", RISE_MASKS, 1, 100000, help="random masks (each a forward)"),
               Setting("cells", RISE_CELLS, 2, 64, help="each mask is a random cells x cells grid, upsampled"),
               Setting("keep", RISE_KEEP, 0.01, 0.99, help="probability that a cell is kept"),
               SEED)
    fixed = {"batch": BATCH}
    coarse = {"masks": 100}  # the app's first map: the first 100 of the same masks

    def forwards(self, model, x) -> int:
        return self.params["masks"]

    def attribute(self, model, net, x, target):
        import torch
        import torch.nn.functional as F

        p = self.params
        masks_n, cells, keep = p["masks"], p["cells"], p["keep"]
        height, width = x.shape[-2:]
        cell_h, cell_w = -(-height // cells), -(-width // cells)
        generator = torch.Generator(device="cpu").manual_seed(p["seed"])
        total = torch.zeros(height, width, device=x.device)
        with torch.no_grad():
            for start in range(0, masks_n, BATCH):
                n = min(BATCH, masks_n - start)
                grid = (torch.rand(n, 1, cells, cells, generator=generator) < keep).float()
                up = F.interpolate(grid, size=((cells + 1) * cell_h, (cells + 1) * cell_w),
                                   mode="bilinear", align_corners=False)
                dy = torch.randint(0, cell_h, (n,), generator=generator)
                dx = torch.randint(0, cell_w, (n,), generator=generator)
                masks = torch.stack([up[i, 0, y:y + height, s:s + width]
                                     for i, (y, s) in enumerate(zip(dy.tolist(), dx.tolist()))]).to(x.device)
                probs = torch.softmax(net(x * masks[:, None]).float(), dim=1)[:, target]
                total += (probs.view(-1, 1, 1) * masks).sum(0)
        return (total / (masks_n * keep)).float().cpu().numpy()
