"""The model zoo (issue #9, "explain any image classifier"): every torchvision classification
builder and a spread of timm families build, predict and give a pathway-gradient map.

Weights are random, saved to a file and opened with --weights as a user would (nothing is ever
downloaded). Inputs are small (64 px) where the architecture takes any size; models built for one
resolution run at it. Each model is loaded once (a module-scoped fixture) for all its tests.
"""
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from core.io.images import load_image
from core.methods import input_attribution
from core.models.loading import LoadedModel, load_model
from core.models.sources import build
from core.pathway.engine import Engine

SMALL = 64
# Builders that cannot take 64 px, and why.
TORCHVISION_SIZES = {
    # A ViT is built for the size asked; it must be a multiple of the patch (14 for ViT-H/14).
    "vit_h_14": 56,
    # MaxVit is built for 224: its window and grid partitions need every stage a multiple of 7.
    "maxvit_t": 224,
    # Inception-v3's stem and reductions need at least 75 px.
    "inception_v3": 96,
}
# The default run takes one or two builders of each family (about 3 minutes on 2 cores);
# `python -m pytest -m zoo tests/test_model_zoo.py` takes all 80 (about 15-20 minutes: 5.6
# billion parameters initialised and written out twice).
TORCHVISION_DEFAULT = {"alexnet", "convnext_tiny", "densenet121", "efficientnet_b0",
                       "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5",
                       "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf",
                       "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1",
                       "swin_t", "swin_v2_t", "vgg11", "vit_b_32", "wide_resnet50_2"}
# One small member of each timm family, with the size it accepts; the last ones put SiLU or GELU
# where the others have none (attention, convolution-attention hybrids, MetaFormer blocks).
TIMM_MODELS = {
    "resnet18": SMALL,
    "convnext_atto": SMALL,
    "efficientnet_b0": SMALL,
    "mobilenetv3_small_100": SMALL,
    "regnetx_002": SMALL,
    "vit_tiny_patch16_224": 224,              # fixed patch grid (timm asserts the image size)
    "deit_tiny_distilled_patch16_224": 224,   # two prefix tokens (class and distillation)
    "coatnet_nano_rw_224": 224,               # relative position tables sized for 224
    "maxvit_rmlp_pico_rw_256": 256,           # window and grid partitions of 8 at 256
    "efficientformer_l1": 224,                # attention biases sized for a 7x7 grid
    "mobilevit_xxs": SMALL,                   # SiLU inside transformer blocks between convolutions
}


def _params():
    for arch in tvm.list_models(module=tvm):
        marks = [] if arch in TORCHVISION_DEFAULT else [pytest.mark.zoo]
        yield pytest.param((f"torchvision:{arch}", TORCHVISION_SIZES.get(arch, SMALL)), marks=marks,
                           id=f"torchvision:{arch}")
    for name, size in TIMM_MODELS.items():
        yield pytest.param((f"timm:{name}", size), id=f"timm:{name}")


@dataclass
class Case:
    spec: str
    model: LoadedModel
    engine: Engine
    size: int
    gradient: np.ndarray = field(repr=False)


def save_random_weights(spec: str, size: int, path) -> None:
    """The builder's own random initialisation, saved as a state dict. Parameters initialised to
    all zeros (torchvision ViT's head, timm's zero-initialised last norms of residual blocks) get
    small random values, or the logits would not depend on the input and every map would be 0."""
    torch.manual_seed(0)
    module = build(spec, size).module
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point() and p.numel() > 1 and not p.any():
                p.normal_(0.0, 0.02)
    torch.save(module.state_dict(), path)


@pytest.fixture(scope="module")
def photo_rgb():
    from conftest import photo_path

    return load_image(photo_path("chelsea.png"))


@pytest.fixture(scope="module", params=list(_params()))
def case(request, photo_rgb, tmp_path_factory):
    spec, size = request.param
    path = tmp_path_factory.mktemp("zoo") / "random.pt"
    save_random_weights(spec, size, path)
    model = load_model(spec, weights=path, device="cpu", input_size=size, resize=size)
    path.unlink()  # the largest files are gigabytes
    engine = Engine(model, photo_rgb)
    return Case(spec, model, engine, size, engine.attribution("gradient"))


def test_builds_and_predicts(case):
    model, engine = case.model, case.engine
    assert not model.module.training and not any(p.requires_grad for p in model.module.parameters())
    assert engine.x.shape == (1, 3, case.size, case.size)
    assert len(model.class_names) == 1000 and engine.probs.numel() == 1000
    assert torch.isfinite(engine.probs).all() and abs(float(engine.probs.sum()) - 1) < 1e-4
    prediction = engine.prediction
    assert prediction.target == int(engine.probs.argmax()) and len(prediction.top5) == 5
    assert engine.layers, "no activation layer found"
    with torch.no_grad():  # the engine's passes run on a batch-norm-folded copy: the same function
        torch.testing.assert_close(torch.softmax(model.module(engine.x), 1)[0], engine.probs,
                                   rtol=1e-4, atol=1e-5)


def test_pathway_at_zero_sparsity_is_the_gradient(case):
    path = case.engine.pathway(0.0)
    assert path.map.shape == (case.size, case.size)
    assert all(kept == total for _name, kept, total in path.kept)
    assert np.isfinite(case.gradient).all() and np.any(case.gradient)
    np.testing.assert_array_equal(path.map, case.gradient)
    # The masks themselves, all kept, are the identity: the same gradient up to float rounding
    # (some CPU convolution backwards differ in the last bits from one run to the next).
    engine = case.engine
    x = engine.x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = engine.masked_forward(path.masks)(x)
        (grad,) = torch.autograd.grad(logits[0, engine.target], x)
    plain = input_attribution("gradient", case.model, engine.x, engine.target, module=engine.module)
    torch.testing.assert_close(grad, plain, rtol=1e-3, atol=1e-4 * float(plain.abs().max()))


def test_pathway_at_70_percent_differs(case):
    scores = case.engine.scores()
    zero = sum(int((s == 0).sum()) for s in scores) / sum(s.numel() for s in scores)
    sparsity = 70.0
    if zero >= 0.70:
        # Max-pooling networks (AlexNet, VGG, SqueezeNet, GoogLeNet): a max-pool window passes the
        # gradient to one of its inputs and a ReLU is off for about half, so over 70 % of the
        # neurons score exactly 0, and pruning only zero scores (dead neurons first) may leave
        # the map the gradient; prune half of the others as well.
        sparsity = 100.0 * (1.0 + zero) / 2
    path = case.engine.pathway(sparsity)
    kept = sum(k for _name, k, _total in path.kept)
    total = sum(t for _name, _k, t in path.kept)
    assert kept < total
    assert path.map.shape == (case.size, case.size) and np.isfinite(path.map).all()
    assert not np.array_equal(path.map, case.gradient)


def test_grad_cam(case):
    """Grad-CAM runs, on the layer the probe found, for every builder (torchvision's all have one)."""
    model = case.model
    if case.spec.startswith("torchvision:"):
        assert model.gradcam_layer, model.gradcam_reason
    elif not model.gradcam_layer:
        pytest.skip(f"no Grad-CAM layer: {model.gradcam_reason}")
    cam = case.engine.attribution("grad-cam")
    assert cam.shape == (case.size, case.size) and np.isfinite(cam).all() and cam.min() >= 0
    assert cam.any(), f"the Grad-CAM map of {model.gradcam_layer} is all zero"
