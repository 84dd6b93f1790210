"""Method plug-ins (issue 19): the methods from pytorch-grad-cam and Captum equal the library
they come from, every pathway-<method> equals its method at sparsity 0 and differs when pruned,
and PruneScope works as a library (core.api), with Captum and Quantus."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import installed, photo_path
from torch import nn

from core.api import Attribution, GradCamPlusPlus, PathwayGradient, explain_func
from core.errors import UnsupportedMethod
from core.io.images import load_image
from core.methods import ALL_METHODS, BY_NAME, CLASSIC_METHODS, PATHWAY_METHODS, supports
from core.models.loading import from_module
from core.pathway.engine import Engine
from core.progress import run

SIZE = 64
CAMS = {"grad-cam++": "GradCAMPlusPlus", "xgrad-cam": "XGradCAM", "hires-cam": "HiResCAM",
        "layer-cam": "LayerCAM", "eigen-cam": "EigenCAM", "score-cam": "ScoreCAM",
        "ablation-cam": "AblationCAM"}
NEW = (*CAMS, "occlusion", "rise", "kernel-shap", "lime", "deeplift", "gradient-shap", "guided-grad-cam")


def plain_cnn() -> nn.Module:
    """A VGG-like net of nn.ReLU modules each called once, which every method supports."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


@pytest.fixture(scope="module")
def resnet():
    """A user's ResNet-18 (random weights, 10 classes), in memory as they would have it."""
    torch.manual_seed(0)
    return from_module(torchvision.models.resnet18(num_classes=10), input_size=SIZE)


@pytest.fixture(scope="module")
def cnn():
    return from_module(plain_cnn(), input_size=SIZE, gradcam_layer="5")


@pytest.fixture(scope="module")
def photo_x():
    from core.models.loading import IMAGENET_MEAN, IMAGENET_STD

    rgb = load_image(photo_path("chelsea.png")).astype(np.float32) / 255
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_the_registry_names_every_method_once_with_its_pathway():
    assert set(NEW) <= set(CLASSIC_METHODS)
    for name in CLASSIC_METHODS:
        spec = BY_NAME[name]
        assert spec.family in ("gradient", "cam", "perturbation", "relevance", "attention")
        assert (f"pathway-{name}" in PATHWAY_METHODS) == spec.through_network
    assert {"pathway-lrp", "pathway-deeplift"} <= set(ALL_METHODS)  # every method has its pathway version
    assert all(m.through_network for m in BY_NAME.values() if m.name in CLASSIC_METHODS)
    assert PATHWAY_METHODS["pathway-lime"] == "lime"
    assert len(ALL_METHODS) == len(set(ALL_METHODS))


@pytest.mark.parametrize("method", sorted(CAMS))
def test_cams_equal_pytorch_grad_cam(resnet, photo_x, method):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    engine = Engine.from_tensor(resnet, photo_x, fold=False)
    ours = engine.attribution(method)
    cls = getattr(pytorch_grad_cam, CAMS[method])
    with cls(resnet.module, [resnet.module.get_submodule(resnet.gradcam_layer)]) as cam:
        cam.compute_input_gradient, cam.batch_size = True, 32
        theirs = cam(photo_x.clone(), targets=[ClassifierOutputTarget(engine.target)])[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert ours.shape == (SIZE, SIZE) and ours.max() > 0
    assert BY_NAME[method].settings(resnet)["layer"] == "layer4"


def test_perturbation_methods_equal_captum(resnet, photo_x):
    from captum.attr import KernelShap, Lime, Occlusion

    from core.methods.attribution import collapse_channels
    from core.methods.perturbation import superpixels
    from core.runtime.device import seeded

    engine = Engine.from_tensor(resnet, photo_x, fold=False)
    t, net = engine.target, resnet.module
    window, stride = 9, 4  # 32 and 16 at 224 px, in proportion at 64
    expected = collapse_channels(Occlusion(net).attribute(
        photo_x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0.0,
        target=t))
    np.testing.assert_allclose(engine.attribution("occlusion"), expected, rtol=1e-5, atol=1e-6)
    mask = superpixels(resnet, photo_x).expand(-1, 3, -1, -1)
    assert 10 <= int(mask.max()) + 1 <= 80  # about the 50 superpixels asked for
    for name, cls in (("kernel-shap", KernelShap), ("lime", Lime)):
        with seeded(0):
            theirs = cls(net).attribute(photo_x, baselines=0.0, target=t, feature_mask=mask, n_samples=200,
                                        perturbations_per_eval=32)[0, 0].numpy()
        np.testing.assert_allclose(engine.attribution(name), theirs, rtol=1e-4, atol=1e-6)


def test_gradient_methods_equal_captum(cnn, photo_x):
    from captum.attr import DeepLift, GradientShap, GuidedGradCam

    from core.methods.attribution import collapse_channels
    from core.runtime.device import seeded

    engine = Engine.from_tensor(cnn, photo_x, fold=False)
    t, net, x = engine.target, cnn.module, photo_x.clone().requires_grad_(True)
    np.testing.assert_allclose(engine.attribution("deeplift"),
                               collapse_channels(DeepLift(net).attribute(x, torch.zeros_like(x), target=t)),
                               rtol=1e-5, atol=1e-7)
    with seeded(0):
        spread = 0.09 * float(photo_x.max() - photo_x.min())
        shap = GradientShap(net).attribute(x, torch.zeros_like(x), n_samples=25, stdevs=spread, target=t)
    np.testing.assert_allclose(engine.attribution("gradient-shap"), collapse_channels(shap), rtol=1e-5, atol=1e-7)
    guided = GuidedGradCam(net, net.get_submodule("5")).attribute(x, target=t)
    np.testing.assert_allclose(engine.attribution("guided-grad-cam"), collapse_channels(guided),
                               rtol=1e-4, atol=1e-7)


def test_deeplift_is_refused_where_captum_cannot_run_it(lite0, resnet, photo_x):
    ok, why = supports("deeplift", lite0)
    assert not ok and "ReLU6" in why
    engine = Engine.from_tensor(resnet, photo_x)  # one ReLU module called twice per block
    with pytest.raises(UnsupportedMethod, match="more than once"):
        engine.attribution("deeplift")
    analysis = run(engine.iter_analysis(["deeplift", "gradient"], with_curves=False))
    assert "deeplift" in analysis.skipped and "gradient" in analysis.results


@pytest.mark.parametrize("method", sorted(m for m in set(PATHWAY_METHODS.values())  # ViTs': test_transformers.py,
                                    if BY_NAME[m].family != "attention" and m != "lrp"))  # LRP's: below
def test_pathway_of_every_method_is_the_method_at_zero_and_differs_pruned(cnn, photo_x, method):
    engine = Engine.from_tensor(cnn, photo_x)
    plain = engine.attribution(method)
    at_zero = engine.pathway(0.0, method=method)
    np.testing.assert_array_equal(at_zero.map, plain)
    assert at_zero.output_change == 0.0
    # The masks themselves, all kept, change nothing: the method's own pathway version (its class's
    # `through`) on the masked network gives its map, and the network's logits.
    through, logits = BY_NAME[method].through(cnn, engine.module, engine.masked_forward(at_zero.masks),
                                              engine.x, engine.target)
    np.testing.assert_allclose(through, plain, rtol=1e-4, atol=1e-5 * float(np.abs(plain).max()))
    torch.testing.assert_close(logits, cnn.module(engine.x), rtol=1e-4, atol=1e-5)
    pruned = engine.pathway(70.0, method=method)
    assert pruned.sparsity > 60 and pruned.map.shape == plain.shape and np.isfinite(pruned.map).all()
    if method == "lime":  # its Lasso zeroes every superpixel's weight on this small random CNN, pruned or not
        assert not plain.any() and not pruned.map.any()
        return
    # pruned, the map changes by far more than rounding (1e-7): a thousandth of its range somewhere
    # (RISE averages the output over masks, which the pathway is chosen to keep: 1 % of its range)
    assert np.abs(pruned.map - plain).max() > 1e-3 * np.ptp(plain)


def test_pathway_lrp_is_lrp_through_kept_masks_and_differs_pruned(lite0):
    """zennit canonizes a copy of Lite0 with a mask module after each activation: all kept, it is
    LRP's own map; pruned at 70 %, relevance stops at the pruned neurons."""
    engine = Engine(lite0, load_image(photo_path("coffee.png")))
    plain = engine.attribution("lrp")
    kept = engine.pathway(0.0)
    through, logits = BY_NAME["lrp"].through(lite0, engine.module, engine.masked_forward(kept.masks), engine.x,
                                             engine.target)
    np.testing.assert_allclose(through, plain, rtol=1e-4, atol=1e-5 * float(np.abs(plain).max()))
    torch.testing.assert_close(logits, lite0.module(engine.x), rtol=1e-4, atol=1e-4)
    pruned = engine.pathway(70.0, method="lrp")
    assert pruned.sparsity > 60 and np.isfinite(pruned.map).all()
    assert np.abs(pruned.map - plain).max() > 0.05 * np.ptp(plain)
    with pytest.raises(UnsupportedMethod, match="more than once"):  # a ReLU module called twice per block
        Engine.from_tensor(from_module(torchvision.models.resnet18(num_classes=10), input_size=SIZE),
                           torch.zeros(1, 3, SIZE, SIZE)).pathway(50.0, method="lrp")


def test_new_methods_on_the_embedded_model_and_a_photo(lite0):
    engine = Engine(lite0, load_image(photo_path("coffee.png")))
    assert engine.prediction.name == "espresso"
    for method in ("hires-cam", "layer-cam", "guided-grad-cam"):
        attr = engine.attribution(method)
        assert attr.shape == (224, 224) and np.isfinite(attr).all()
        # The cup fills the middle of the crop: the map must weigh it above the border.
        assert np.abs(attr[56:168, 56:168]).mean() > np.abs(attr[:24]).mean(), method
    pathway = engine.pathway(70.0, method="layer-cam")
    assert not np.array_equal(pathway.map, engine.attribution("layer-cam"))
    # the same as pytorch-grad-cam on the model as loaded (the CAMs do not run on the folded copy)
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    for method in ("grad-cam++", "layer-cam"):
        cls = getattr(pytorch_grad_cam, CAMS[method])
        with cls(lite0.module, [lite0.module.get_submodule(lite0.gradcam_layer)]) as cam:
            cam.compute_input_gradient = True
            theirs = cam(engine.x.clone(), targets=[ClassifierOutputTarget(engine.target)])[0]
        np.testing.assert_allclose(engine.attribution(method), theirs, rtol=1e-5, atol=1e-6)


def test_api_classes_are_batched_and_take_any_module(resnet, photo_x):
    x = torch.cat([photo_x, photo_x.flip(-1)])
    maps = PathwayGradient(resnet.module).attribute(x, target=[3, 4], sparsity=50)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == torch.float32
    alone = PathwayGradient(resnet).attribute(x[1:], target=4, sparsity=50)
    torch.testing.assert_close(maps[1:], alone)
    np.testing.assert_array_equal(PathwayGradient(resnet).attribute(x, target=[3, 4], sparsity=0).numpy(),
                                  Attribution(resnet, "gradient").attribute(x, target=[3, 4]).numpy())
    assert GradCamPlusPlus(resnet).attribute(x).shape == (2, SIZE, SIZE)
    with pytest.raises(Exception, match="unknown method"):
        Attribution(resnet, "no-such-method")
    with pytest.raises(Exception, match="2 targets for 1 inputs|got 2 targets"):
        PathwayGradient(resnet).attribute(photo_x, target=[1, 2])


def test_a_quantus_metric_runs_through_explain_func(resnet, photo_x):
    quantus = installed("quantus")
    x = torch.cat([photo_x, photo_x.flip(-1)]).numpy()
    y = np.array([3, 4])
    metric = quantus.Sparseness(disable_warnings=True, display_progressbar=False)
    scores = metric(model=resnet.module, x_batch=x, y_batch=y, a_batch=None, device="cpu",
                    explain_func=explain_func, explain_func_kwargs={"method": "pathway-gradient", "sparsity": 70})
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
    a = explain_func(resnet.module, x, y, method="gradient")
    assert a.shape == (2, 1, SIZE, SIZE)


def readme_blocks(title: str) -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_python_examples_run():
    installed("quantus")
    blocks = readme_blocks("From Python")
    assert len(blocks) >= 2
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_grad_cam_equals_captums_layer_grad_cam_upsampled(cnn, photo_x):
    from captum.attr import LayerAttribution, LayerGradCam

    target = 2
    ours = BY_NAME["grad-cam"].attribute(cnn, cnn.module, photo_x.clone(), target)
    layer = cnn.module.get_submodule(cnn.gradcam_layer)
    cam = LayerGradCam(cnn.module, layer).attribute(photo_x.clone().requires_grad_(True), target=target,
                                                     relu_attributions=True)
    theirs = LayerAttribution.interpolate(cam, (SIZE, SIZE), interpolate_mode="bilinear")[0, 0].detach().numpy()
    assert float(np.abs(theirs).max()) > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7 * float(np.abs(theirs).max()))


def test_smoothgrad_equals_captums_noise_tunnel(cnn, photo_x):
    from captum.attr import NoiseTunnel, Saliency

    from core.methods.gradients import SMOOTHGRAD_NOISE, SMOOTHGRAD_SAMPLES
    from core.runtime.device import seeded

    target = 1
    ours = BY_NAME["smoothgrad"].attribute(cnn, cnn.module, photo_x.clone(), target)
    with seeded(0):  # smoothgrad's own seed
        theirs = NoiseTunnel(Saliency(cnn.module)).attribute(
            photo_x.clone(), nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES, target=target, abs=False,
            stdevs=SMOOTHGRAD_NOISE * float(photo_x.max() - photo_x.min()))
    from core.methods.attribution import collapse_channels

    theirs = collapse_channels(theirs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6 * float(np.abs(theirs).max()))


class _ReadsLeftHalf(nn.Module):
    """Class 1's logit rises steeply with the mean of the left half of the input; class 0's is 0."""

    def forward(self, x):
        left = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
        return torch.stack([torch.zeros_like(left), 40 * (left - 0.5)], 1)


def test_rise_known_answers():
    from core.methods.perturbation import RISE_KEEP

    x = torch.ones(1, 3, SIZE, SIZE)
    # a model that ignores its input: every pixel's saliency is its probability, 1/2
    constant = from_module(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2)).eval(), input_size=SIZE)
    with torch.no_grad():
        constant.module[1].weight.zero_(), constant.module[1].bias.zero_()
    flat = BY_NAME["rise"].attribute(constant, constant.module, x, 1)
    assert flat.mean() == pytest.approx(0.5, rel=0.05) and flat.std() < 0.05 * flat.mean()
    # a model that reads the left half: kept left pixels raise the probability, the right half is
    # ignored, so its saliency is the mean probability alone and flat
    left = from_module(_ReadsLeftHalf().eval(), input_size=SIZE)
    half = BY_NAME["rise"].attribute(left, left.module, x, 1)
    assert half[:, : SIZE // 2 - 8].mean() > half[:, SIZE // 2 + 8:].mean() + 0.1
    assert RISE_KEEP == 0.5  # the known answer of the first model: its probability, kept or not
