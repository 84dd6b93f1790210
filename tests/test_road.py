"""ROAD's imputation on the device (core.evaluation.road) against pytorch-grad-cam's scipy solve."""
import numpy as np
import pytest
import torch
from conftest import photo_path
from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric,
                                                              RemoveLeastRelevantFirst,
                                                              RemoveMostRelevantFirst)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

from core.evaluation import road as imputation
from core.evaluation.faithfulness import road

SIZE = 96


@pytest.fixture(scope="module")
def image():
    from PIL import Image

    rgb = np.asarray(Image.open(photo_path("chelsea.png")).convert("RGB").resize((SIZE, SIZE)), np.float32)
    return torch.from_numpy((rgb / 255 - 0.45) / 0.225).permute(2, 0, 1).contiguous()


def maps() -> dict[str, np.ndarray]:
    """A smooth map (large holes: the hard case for iterative solvers), a scattered one, and one
    with ties (a CAM upsampled from 6 x 6)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    blob = np.exp(-((yy - 40) ** 2 + (xx - 55) ** 2) / (2 * 22.0 ** 2))
    noise = np.random.default_rng(0).random((SIZE, SIZE))
    blocks = np.kron(np.random.default_rng(1).random((6, 6)), np.ones((SIZE // 6, SIZE // 6)))
    return {"smooth": blob, "scattered": 0.5 * noise + 0.5 * blob, "ties": blocks}


def library_imputations(image: torch.Tensor, cam: torch.Tensor) -> list[torch.Tensor]:
    imputer = NoisyLinearImputer(noise=0.0)
    return [removal(p, imputer)(image, cam) for removal in (RemoveMostRelevantFirst, RemoveLeastRelevantFirst)
            for p in imputation.PERCENTILES]


@pytest.mark.parametrize("name", ["smooth", "scattered", "ties"])
def test_imputation_equals_the_library_per_pixel(image, name):
    cam = imputation.unit(torch.from_numpy(maps()[name])[None])
    keep = imputation.kept_pixels(cam)[0].flatten(0, 1)
    theirs = torch.stack(library_imputations(image, cam[0]))
    ours = imputation.impute(image, keep, noise=0.0)
    assert ours.shape == theirs.shape
    span = float(image.max() - image.min())
    assert float((ours - theirs).abs().max()) <= 1e-3 * span
    # the kept pixels are the library's: exactly the image there
    assert torch.equal(ours[keep[:, None].expand_as(ours)], theirs[keep[:, None].expand_as(theirs)])


def test_noise_lands_on_the_imputed_pixels_only(image):
    cam = imputation.unit(torch.from_numpy(maps()["smooth"])[None])
    keep = imputation.kept_pixels(cam)[0].flatten(0, 1)
    quiet = imputation.impute(image, keep, noise=0.0)
    noisy = imputation.impute(image, keep, noise=0.01, generators=[torch.Generator().manual_seed(0)])
    difference = (noisy - quiet)[(~keep)[:, None].expand_as(quiet)]
    assert torch.equal(noisy[keep[:, None].expand_as(noisy)], quiet[keep[:, None].expand_as(quiet)])
    assert 0.008 < float(difference.std()) < 0.012


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.fc = nn.Linear(16 * 16, 5)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@pytest.mark.parametrize("name", ["smooth", "scattered"])
def test_road_scores_equal_the_library(image, name):
    model, x, target = SmallCnn().eval(), image[None], 3
    values = maps()[name]
    cams, targets = imputation.unit(torch.from_numpy(values)[None]).numpy(), [ClassifierOutputSoftmaxTarget(target)]
    scores = {}
    for order, removal in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)):
        metric = [PerturbationConfidenceMetric(removal(p, NoisyLinearImputer(noise=0.0)))
                  for p in imputation.PERCENTILES]
        scores[order] = np.mean([m(x, cams, targets, model)[0] for m in metric])
    ours = road(model, x, values, target, noise=0.0)
    assert ours == pytest.approx((scores["morf"], scores["lerf"]), abs=0.005)


def test_a_flat_map_imputes_without_failing(image):
    cam = imputation.unit(torch.ones(1, SIZE, SIZE, dtype=torch.float64))
    assert float(cam.abs().max()) == 0.0
    keep = imputation.kept_pixels(cam)[0].flatten(0, 1)
    out = imputation.impute(image, keep, noise=0.0)
    assert torch.isfinite(out).all()
