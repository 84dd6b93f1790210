"""Attention rollout and gradient-weighted rollout (core.methods.transformers) against independent
implementations of their definitions, on small timm and torchvision ViTs."""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from core.errors import UnsupportedMethod
from core.methods import BY_NAME, attribute, supports
from core.models.loading import from_module
from core.pathway.engine import Engine

SIZE = 32


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=8, depth=3,
                            num_classes=5)
    return from_module(net, input_size=SIZE)


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def upsampled(row: np.ndarray) -> np.ndarray:
    side = int(np.sqrt(row.size))
    grid = torch.tensor(row, dtype=torch.float32).reshape(1, 1, side, side)
    return F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0].numpy()


def written_out(kept: list):
    """timm's Attention.forward written out here from its weights, each attention kept (with its
    gradient): the reference does not read the weights the way the method does."""
    def forward(self, h, attn_mask=None, is_causal=False):
        b, n, c = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(-1)
        if attn.requires_grad:
            attn.retain_grad()
        kept.append(attn)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    return forward


def test_attention_rollout_is_the_product_of_the_residual_attentions(vit, x, monkeypatch):
    from timm.models.vision_transformer import Attention

    ours = attribute("attention-rollout", vit, x, 2)
    kept = []
    monkeypatch.setattr(Attention, "forward", written_out(kept))
    with torch.no_grad():
        vit.module(x)
    assert len(kept) == 3
    result = np.eye(kept[0].shape[-1])
    for attn in kept:
        mixed = 0.5 * attn[0].double().numpy().mean(0) + 0.5 * np.eye(len(result))
        result = (mixed / mixed.sum(1, keepdims=True)) @ result
    # the class token's row, over the 16 patches
    np.testing.assert_allclose(ours, upsampled(result[0, 1:]), rtol=1e-4, atol=1e-6)


def test_grad_rollout_weighs_each_attention_by_its_gradient(vit, x, monkeypatch):
    """Reference: every attention layer's forward written out here, its weights kept for their gradient."""
    from timm.models.vision_transformer import Attention

    kept = []
    ours = attribute("grad-rollout", vit, x, 3)
    monkeypatch.setattr(Attention, "forward", written_out(kept))
    xg = x.clone().requires_grad_(True)
    vit.module(xg)[0, 3].backward()
    result = np.eye(kept[0].shape[-1])
    for attn in kept:
        a, g = attn[0].detach().double().numpy(), attn.grad[0].double().numpy()
        result = result + np.clip(g * a, 0, None).mean(0) @ result
    np.testing.assert_allclose(ours, upsampled(result[0, 1:]), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["attention-rollout", "grad-rollout"])
def test_torchvision_vits_and_the_pathway_version(method, x):
    torch.manual_seed(0)
    net = torchvision.models.vision_transformer.VisionTransformer(
        image_size=SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5)
    torch.nn.init.normal_(net.heads.head.weight)  # torchvision starts it at zero: no gradient would reach the blocks
    model = from_module(net, input_size=SIZE)
    attr = attribute(method, model, x, 1)
    assert attr.shape == (SIZE, SIZE) and np.isfinite(attr).all() and attr.max() > 0
    engine = Engine.from_tensor(model, x, target=1)
    plain = engine.attribution(method)
    np.testing.assert_array_equal(engine.pathway(0.0, method=method).map, plain)
    through, _ = BY_NAME[method].through(model, engine.module, engine.masked_forward(
        engine.masks(0.0)), engine.x, 1)  # all-kept masks, through the masked network
    np.testing.assert_allclose(through, plain, rtol=1e-4, atol=1e-6)
    pruned = engine.pathway(70.0, method=method)
    assert pruned.sparsity > 60 and np.isfinite(pruned.map).all() and not np.allclose(pruned.map, plain)


def test_models_without_attention_are_refused_in_one_line(x):
    net = torchvision.models.resnet18(num_classes=5)
    model = from_module(net, input_size=SIZE)
    ok, why = supports("grad-rollout", model)
    assert not ok and why == "grad-rollout needs attention layers (a ViT); ResNet has none"
    with pytest.raises(UnsupportedMethod, match="needs attention layers"):
        attribute("attention-rollout", model, x, 0)
