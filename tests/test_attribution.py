"""Classic attribution methods: parity with Captum / autograd, known answers, invariants, clean-up."""
import copy

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import DenseNet, VisionTransformer
from torchvision.models.resnet import BasicBlock, ResNet

from core.errors import ModelError, UnsupportedMethod
from core.methods import attribute, input_attribution, lrp, supports
from core.methods.attribution import collapse_channels
from core.models.loading import LoadedModel

CLASSES = 10

# The methods of core.methods.gradients that PruneScope computes itself or through Captum's and
# zennit's basic calls (the rest are compared with their libraries in test_methods).
OURS = ("gradient", "input-x-gradient", "integrated-gradients", "smoothgrad", "guided-backprop", "grad-cam", "lrp")


def loaded(module: nn.Module, gradcam_layer: str = "", name: str = "tiny") -> LoadedModel:
    module.eval().requires_grad_(False)
    return LoadedModel(name=name, module=module, device=torch.device("cpu"),
                       class_names=[f"class {i}" for i in range(CLASSES)], input_size=32, resize_size=32,
                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), gradcam_layer=gradcam_layer)


def convnet(activation=nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), activation(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), activation(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES))


def tiny_resnet() -> nn.Module:
    """A real torchvision ResNet (so LRP's canonizer applies), one block per stage, no biases
    anywhere after BN merging, so that LRP must conserve relevance."""
    torch.manual_seed(0)
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)
    nn.init.zeros_(net.fc.bias)
    return net


def image(size: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=generator) * 2 - 1


def gradient_of(module: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        grad, = torch.autograd.grad(module(x)[0, target], x)
    return grad


def assert_no_hooks(module: nn.Module) -> None:
    for name, m in module.named_modules():
        for table in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(m, table), f"{table} left on '{name}'"
    assert torch._C._len_torch_function_stack() == 0


def test_collapse_channels_keeps_the_signed_value_of_largest_magnitude():
    grad = torch.tensor([[[1.0, -5.0]], [[-3.0, 2.0]], [[2.0, 4.0]]]).unsqueeze(0)  # 1x3x1x2
    np.testing.assert_array_equal(collapse_channels(grad), np.array([[-3.0, -5.0]], np.float32))


def test_gradient_is_exactly_the_autograd_gradient():
    model, x = loaded(convnet()), image()
    expected = collapse_channels(gradient_of(model.module, x, 3))
    result = attribute("gradient", model, x, 3)
    assert result.dtype == np.float32 and result.shape == (32, 32)
    np.testing.assert_array_equal(result, expected)
    assert (result < 0).any() and (result > 0).any()  # signed, not |gradient|


def test_input_x_gradient_is_input_times_gradient():
    model, x = loaded(convnet()), image()
    expected = x * gradient_of(model.module, x, 2)
    torch.testing.assert_close(input_attribution("input-x-gradient", model, x, 2), expected)
    np.testing.assert_allclose(attribute("input-x-gradient", model, x, 2), collapse_channels(expected))


def test_integrated_gradients_matches_captum_and_is_complete():
    from captum.attr import IntegratedGradients

    model, x = loaded(convnet()), image()
    ours = input_attribution("integrated-gradients", model, x, 5)
    theirs = IntegratedGradients(model.module).attribute(
        x.clone().requires_grad_(True), baselines=torch.zeros_like(x), target=5, n_steps=50)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        change = (model.module(x)[0, 5] - model.module(torch.zeros_like(x))[0, 5]).item()
    assert abs(change) > 1e-3
    assert ours.sum().item() == pytest.approx(change, rel=0.02, abs=1e-4)


def test_guided_backprop_matches_captum_on_relu_modules():
    from captum.attr import GuidedBackprop

    model, x = loaded(convnet(nn.ReLU)), image()
    theirs = GuidedBackprop(model.module).attribute(x.clone().requires_grad_(True), target=1)
    np.testing.assert_allclose(attribute("guided-backprop", model, x, 1), collapse_channels(theirs),
                               rtol=1e-5, atol=1e-7)
    assert_no_hooks(model.module)


def test_guided_backprop_clips_negative_gradients_through_relu6():
    # Known answer for flatten -> W1 -> ReLU6 -> w2: guided = W1^T (1[0 < z < 6] * max(w2_c, 0)).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 12), nn.ReLU6(), nn.Linear(12, CLASSES))
    model, x, target = loaded(net), image(size=4) * 4, 7
    first, last = net[1], net[3]
    with torch.no_grad():
        z = first(x.flatten(1))[0]
    open_units = ((z > 0) & (z < 6)).float()
    assert (last.weight[target] < 0).any() and open_units.sum() > 0
    expected = (open_units * last.weight[target].clamp(min=0)) @ first.weight
    result = attribute("guided-backprop", model, x, target)
    np.testing.assert_allclose(result, collapse_channels(expected.view(1, 3, 4, 4)), rtol=1e-5, atol=1e-7)
    plain = attribute("gradient", model, x, target)
    assert np.abs(result - plain).max() > 1e-3


def test_captum_guided_backprop_would_miss_relu6_which_ours_handles():
    from captum.attr import GuidedBackprop

    model, x = loaded(convnet(nn.ReLU6)), image() * 3
    theirs = collapse_channels(GuidedBackprop(model.module).attribute(x.clone().requires_grad_(True), target=4))
    plain = attribute("gradient", model, x, 4)
    np.testing.assert_allclose(theirs, plain, rtol=1e-5, atol=1e-7)  # Captum: just the gradient
    assert np.abs(attribute("guided-backprop", model, x, 4) - plain).max() > 1e-4


def test_grad_cam_is_a_non_negative_map_at_input_size():
    model = loaded(convnet(), gradcam_layer="2")
    cam = attribute("grad-cam", model, image(), 0)
    assert cam.shape == (32, 32) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() > 0


def test_grad_cam_on_vit_patch_tokens():
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                            mlp_dim=32, num_classes=CLASSES)
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero: every gradient would be 0
    model = loaded(vit, gradcam_layer="encoder.layers.encoder_layer_1.ln_1", name="vit")
    model.gradcam_tokens = 1  # the class token, as load_model's probe finds
    cam = attribute("grad-cam", model, image(), 3)
    assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() > 0
    # Each 8x8 patch holds one token: the map varies between patches.
    assert len(np.unique(np.round(cam[4::8, 4::8], 6))) > 1
    assert_no_hooks(vit)


def test_lrp_conserves_relevance_to_the_logit():
    model, x = loaded(tiny_resnet(), gradcam_layer="layer4"), image()
    with torch.no_grad():
        logits = model.module(x)[0]
    target = int(logits.argmax())
    relevance = attribute("lrp", model, x, target)
    assert relevance.shape == (32, 32)
    assert relevance.sum() == pytest.approx(logits[target].item(), rel=0.01)
    assert relevance.std() > 0


def test_lrp_leaves_the_model_unchanged():
    model, x = loaded(tiny_resnet()), image()
    before = copy.deepcopy(model.module.state_dict())
    forward_before = type(model.module.layer1[0]).forward
    attribute("lrp", model, x, 0)
    for key, value in model.module.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert "forward" not in vars(model.module.layer1[0]) and type(model.module.layer1[0]).forward is forward_before
    assert_no_hooks(model.module)


def test_lrp_canonizers_keep_efficientnet_lite0_outputs(lite0):
    """Canonizers must not change the function: merged batch norms and the residual Sum give the
    same logits (this also catches MBConvBlock.forward drifting from the canonizer's copy)."""
    module = copy.deepcopy(lite0.module)
    x = image(size=64)
    with torch.no_grad():
        expected = module(x)
    applied = [instance for canonizer in lrp.lrp_canonizers(module) for instance in canonizer.apply(module)]
    try:
        assert any(isinstance(i, lrp.MBConvResidualCanonizer) for i in applied)
        with torch.no_grad():
            canonized = module(x)
    finally:
        for instance in applied:
            instance.remove()
    torch.testing.assert_close(canonized, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def coffee(lite0):
    from conftest import photo_path

    from core.io.images import load_image

    x, _view = lite0.preprocess(load_image(photo_path("coffee.png")))
    with torch.no_grad():
        target = int(lite0.module(x)[0].argmax())
    assert lite0.class_names[target] == "espresso"
    return x, target


@pytest.mark.parametrize("method", OURS)
def test_every_method_on_efficientnet_lite0_and_a_real_photo(lite0, coffee, method):
    x, target = coffee
    opts = {"integrated-gradients": {"steps": 8}, "smoothgrad": {"samples": 4}}.get(method, {})
    result = attribute(method, lite0, x, target, **opts)
    assert result.shape == (224, 224) and result.dtype == np.float32
    assert np.isfinite(result).all() and np.abs(result).max() > 0
    assert_no_hooks(lite0.module)
    if method == "grad-cam":
        # The cup fills the middle of the crop: Grad-CAM must weigh it above the border.
        assert result[56:168, 56:168].mean() > result[:24].mean()


def test_lrp_is_refused_clearly_where_unsupported():
    torch.manual_seed(0)
    dense = DenseNet(growth_rate=4, block_config=(1, 1), num_init_features=8, bn_size=2, num_classes=CLASSES)
    model = loaded(dense, name="densenet121")
    ok, reason = supports("lrp", model)
    assert not ok and reason.startswith("LRP does not support densenet121")
    with pytest.raises(UnsupportedMethod, match="LRP does not support densenet121"):
        attribute("lrp", model, image(), 0)
    assert supports("lrp", loaded(convnet()))[0] is False
    assert supports("gradient", model) == (True, "")


def test_bad_requests_raise_one_line_errors():
    model = loaded(convnet(), gradcam_layer="no.such.layer")
    with pytest.raises(UnsupportedMethod, match="unknown method"):
        attribute("no-such-method", model, image(), 0)
    with pytest.raises(UnsupportedMethod, match="no.such.layer"):
        attribute("grad-cam", model, image(), 0)
    with pytest.raises(ModelError, match="target class"):
        attribute("gradient", model, image(), CLASSES)
    with pytest.raises(ModelError, match="1x3xHxW"):
        attribute("gradient", model, image()[0], 0)


@pytest.mark.parametrize("method", OURS)
def test_no_hooks_remain_and_the_input_is_untouched(method):
    model, x = loaded(tiny_resnet(), gradcam_layer="layer4"), image()
    kept = x.clone()
    opts = {"integrated-gradients": {"steps": 8}, "smoothgrad": {"samples": 4}}.get(method, {})
    result = attribute(method, model, x, 2, **opts)
    assert result.shape == (32, 32) and np.isfinite(result).all()
    assert_no_hooks(model.module)
    assert not x.requires_grad and torch.equal(x, kept)


class Failing(nn.Module):
    def forward(self, x):
        raise RuntimeError("broken layer")


@pytest.mark.parametrize("method", ["guided-backprop", "grad-cam", "lrp"])
def test_hooks_are_removed_when_the_forward_fails(method):
    net = tiny_resnet()
    net.fc = Failing()
    model = loaded(net, gradcam_layer="layer4")
    with pytest.raises(RuntimeError, match="broken layer"):
        attribute(method, model, image(), 0)
    assert_no_hooks(net)


def test_smoothgrad_is_repeatable_and_leaves_the_global_rng_alone():
    model, x = loaded(convnet()), image()
    torch.manual_seed(123)
    first = attribute("smoothgrad", model, x, 1, samples=6)
    after = torch.rand(3)
    torch.manual_seed(123)
    expected_after = torch.rand(3)
    assert torch.equal(after, expected_after)
    np.testing.assert_array_equal(attribute("smoothgrad", model, x, 1, samples=6), first)
    assert not np.array_equal(attribute("smoothgrad", model, x, 1, samples=6, seed=1), first)
    assert np.abs(first - attribute("gradient", model, x, 1)).max() > 0


def test_integrated_gradients_in_steps_equals_captums_and_resumes():
    from core.methods import BY_NAME
    from core.progress import run

    model = loaded(convnet())
    torch.manual_seed(1)
    x = torch.randn(1, 3, 32, 32)
    captum = attribute("integrated-gradients", model, x, 3)
    stepped = BY_NAME["integrated-gradients"].stepped(model, model.module, x, 3, 1e-9)
    first = stepped.steps(step_seconds=1e-9)  # one node per step
    for _ in range(5):
        next(first)
    first.close()  # stopped after 5 of 50 nodes, as a pre-empted job is
    assert stepped.done == 5
    np.testing.assert_allclose(run(stepped.steps(step_seconds=1e-9)), captum, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (1, 3, 29, 31)])  # 3*29*31: not a multiple of 16
def test_smoothgrad_in_steps_equals_captums_and_resumes(shape):
    from core.methods import BY_NAME
    from core.progress import run

    model = loaded(convnet())
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    captum = attribute("smoothgrad", model, x, 3)
    stepped = BY_NAME["smoothgrad"].stepped(model, model.module, x, 3, 1e-9)
    first = stepped.steps(step_seconds=1e-9)  # one sample per step
    for _ in range(4):
        next(first)
    first.close()  # stopped after 4 samples, as a pre-empted job is
    assert stepped.done == 4
    np.testing.assert_allclose(run(stepped.steps(step_seconds=1e-9)), captum, rtol=1e-4, atol=1e-7)
