"""What removed or missing pixels become: the baseline images of the curves and of the methods
that compare the input with a reference (integrated gradients, DeepLIFT, occlusion, SHAP, LIME)."""
import numpy as np
import torch

from core.errors import PruneScopeError

BASELINES = ("mean", "blur", "black")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLUR_SIGMA = 0.05  # of the image side


def baseline_image(x: torch.Tensor, baseline: str = "mean", mean=IMAGENET_MEAN,
                   std=IMAGENET_STD) -> torch.Tensor:
    """What removed pixels become, in the model's normalised input space (same shape as x)."""
    if baseline == "mean":
        return torch.zeros_like(x)  # the dataset mean normalises to 0
    if baseline == "black":
        mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((0.0 - mean_t) / std_t).expand_as(x).clone()
    if baseline == "blur":
        from torchvision.transforms.functional import gaussian_blur  # torchvision: 170 MB resident

        side = min(x.shape[-2:])
        sigma = max(BLUR_SIGMA * side, 0.5)
        # odd kernel of ~3 sigma each side, kept small enough for the reflect padding
        kernel = min(2 * int(np.ceil(3 * sigma)) + 1, 2 * (side - 1) + 1)
        return gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    raise PruneScopeError(f"unknown baseline '{baseline}': choose one of {', '.join(BASELINES)}")
