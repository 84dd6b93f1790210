import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

import core.models.remote as remote
from core.errors import ModelError
from core.io.images import load_image
from core.models.efficientnet_lite import EfficientNetLite0, SameConv2d, weights_path
from core.models.loading import MODEL_NAMES, _modern_densenet_keys, imagenet_classes, list_models, load_model
from core.models.sources import BUILTIN_GRADCAM

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


class NotWeights:
    """Any object torch.save can pickle that is not a tensor container."""

    def __init__(self):
        self.payload = [1, 2, 3]


def top(model, rgb):
    x, _ = model.preprocess(rgb)
    with torch.no_grad():
        probs = model.module(x).softmax(1)[0]
    prob, index = probs.max(0)
    return model.class_names[int(index)], float(prob)


def test_lite0_weights_load_strictly():
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    assert list(net.state_dict()) == list(state)
    net.load_state_dict(state, strict=True)


def test_lite0_knows_espresso_and_a_cat(lite0, photo):
    name, prob = top(lite0, load_image(photo("coffee.png")))
    assert name == "espresso" and prob > 0.9
    name, _ = top(lite0, load_image(photo("chelsea.png")))
    assert name in CAT_CLASSES


def test_lite0_shape(lite0):
    net = lite0.module
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU6)]
    # stem + one in the first block + two in each of the other 15 blocks + head
    assert len(relus) == 1 + 1 + 2 * 15 + 1
    assert len({id(m) for m in relus}) == len(relus)  # one module per use, none shared
    assert sum(p.numel() for p in net.parameters()) == 4_652_008
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert isinstance(net.get_submodule(lite0.gradcam_layer), nn.Conv2d)
    assert len(lite0.class_names) == 1000 and lite0.class_names[967] == "espresso"


@pytest.mark.parametrize("size, kernel, stride", [(224, 3, 2), (56, 5, 2), (15, 5, 2), (14, 3, 1)])
def test_same_padding_is_tensorflows(size, kernel, stride):
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, kernel, stride=stride, bias=False)
    x = torch.randn(1, 2, size, size)
    out = conv(x)
    assert out.shape[-1] == math.ceil(size / stride)
    total = max((out.shape[-1] - 1) * stride + kernel - size, 0)
    before, after = total // 2, total - total // 2  # the odd pixel goes bottom/right
    expected = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=stride)
    torch.testing.assert_close(out, expected)


def test_preprocess_crop_and_range(lite0):
    rgb = np.random.default_rng(0).integers(0, 256, size=(300, 500, 3), dtype=np.uint8)
    x, view = lite0.preprocess(rgb)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32 and x.device == lite0.device
    assert view.shape == (224, 224, 3) and view.dtype == np.uint8
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    back = (x[0].permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255
    np.testing.assert_allclose(back, view, atol=1e-3)
    # short side 300 -> 256, so the long side becomes 427 and the crop is centred on it
    flat = np.full((300, 500, 3), 7, dtype=np.uint8)
    flat[:, 250:] = 200
    _, view = lite0.preprocess(flat)
    assert view[0, 0, 0] == 7 and view[0, -1, 0] == 200
    with pytest.raises(ModelError):
        lite0.preprocess(rgb[:, :, 0])


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("shape", [(300, 500), (500, 301), (256, 256), (231, 1000)])
def test_preprocess_is_torchvisions_resize_and_centre_crop(lite0, interpolation, shape):
    import torchvision.transforms.functional as TF
    from PIL import Image

    model = dataclasses.replace(lite0, interpolation=interpolation, resize_size=250, input_size=224)
    rgb = np.random.default_rng(1).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    resized = TF.resize(Image.fromarray(rgb), 250, interpolation=TF.InterpolationMode(interpolation), antialias=True)
    expected = np.asarray(TF.center_crop(resized, 224))
    _, view = model.preprocess(rgb)
    np.testing.assert_array_equal(view, expected)


def test_imagenet_class_names_are_torchvisions(monkeypatch, tmp_path):
    expected = list(tvm.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    assert imagenet_classes() == expected
    import core.models.loading

    monkeypatch.setattr(core.models.loading, "resource_path", lambda *parts: tmp_path.joinpath(*parts))
    assert imagenet_classes() == expected  # an install without the resources folder


def test_unknown_model():
    with pytest.raises(ModelError, match="unknown model"):
        load_model("resnet9000")


@pytest.fixture
def resnet18_file(tmp_path):
    torch.manual_seed(0)
    net = tvm.resnet18(weights=None).eval()
    path = tmp_path / "r18.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_torchvision_from_local_file(resnet18_file, tmp_path):
    net, path = resnet18_file
    model = load_model("resnet18", weights=path, device="cpu")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), net(x), rtol=0, atol=0)
    assert (model.input_size, model.resize_size) == (224, 256)
    assert model.mean == pytest.approx((0.485, 0.456, 0.406))
    assert model.class_names[0] == "tench" and len(model.class_names) == 1000
    assert not any(p.requires_grad for p in model.module.parameters())

    # the same weights inside a training checkpoint, and as saved from nn.DataParallel
    for key in ("state_dict", "model"):
        torch.save({key: net.state_dict(), "epoch": 3}, tmp_path / f"{key}.pt")
        wrapped = load_model("resnet18", weights=tmp_path / f"{key}.pt", device="cpu")
        torch.testing.assert_close(wrapped.module.fc.weight, net.fc.weight)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "dp.pt")
    parallel = load_model("resnet18", weights=tmp_path / "dp.pt", device="cpu")
    torch.testing.assert_close(parallel.module.state_dict(), net.state_dict(), rtol=0, atol=0)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": NotWeights()}, path)
    with pytest.raises(ModelError, match="could run code"):
        load_model("resnet18", weights=path)


def test_mismatched_weights_are_refused(resnet18_file, tmp_path):
    net, _ = resnet18_file
    state = net.state_dict()
    state["fc.weight"] = torch.zeros(1000, 256)
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelError) as err:
        load_model("resnet18", weights=tmp_path / "bad.pt")
    message = str(err.value)
    for part in ("fc.weight", "layer1.0.conv1.weight", "extra.weight"):
        assert part in message
    # a different architecture's weights
    torch.save(EfficientNetLite0().state_dict(), tmp_path / "lite.pt")
    with pytest.raises(ModelError, match="do not fit"):
        load_model("resnet18", weights=tmp_path / "lite.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x00" * 64, "half"])
def test_broken_weight_files(resnet18_file, tmp_path, content):
    _, good = resnet18_file
    if content == "half":
        data = good.read_bytes()
        content = data[: len(data) // 2]
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError) as err:
        load_model("resnet18", weights=path)
    assert "\n" not in str(err.value)


def test_tensor_file_without_state_dict(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(ModelError, match="no state dict"):
        load_model("resnet18", weights=tmp_path / "list.pt")


def test_pruned_file_for_another_arch(tmp_path):
    torch.save({"prunescope_pruned": {"arch": "vgg16"}, "state_dict": {}}, tmp_path / "p.pt")
    with pytest.raises(ModelError, match="pruned vgg16"):
        load_model("resnet18", weights=tmp_path / "p.pt")


def test_offline_without_weights_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(remote, "network_reachable", lambda host: False)
    with pytest.raises(ModelError) as err:
        load_model("resnet18")
    message = str(err.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "--weights" in message
    assert not (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()


def test_hub_cache_file_is_used_offline(resnet18_file, tmp_path, monkeypatch):
    net, path = resnet18_file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(remote, "network_reachable", lambda host: pytest.fail("network asked"))
    offline = {info.name: info.offline for info in list_models()}
    assert offline["efficientnet_lite0"] and not offline["resnet18"]
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    assert {info.name: info.offline for info in list_models()}["resnet18"]
    model = load_model("resnet18", device="cpu")
    torch.testing.assert_close(model.module.fc.bias, net.fc.bias)


def test_unreachable_host_is_reported_not_waited_on():
    assert remote.network_reachable("prunescope.invalid", timeout=1.0) is False


def test_densenet_legacy_keys_are_renamed():
    legacy = {"features.denseblock1.denselayer1.norm.1.weight": 1,
              "features.denseblock4.denselayer16.conv.2.weight": 2,
              "features.norm5.weight": 3, "classifier.weight": 4}
    assert list(_modern_densenet_keys(legacy)) == [
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock4.denselayer16.conv2.weight",
        "features.norm5.weight", "classifier.weight"]


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "efficientnet_lite0"])
def test_gradcam_layers_exist(name):
    with torch.device("meta"):  # shapes only: no memory, no weights
        net = tvm.get_model(name)
    assert net.get_submodule(BUILTIN_GRADCAM[name]) is not None


def test_models_command_lists_every_model(capsys):
    from core.cli.models import run

    assert run(None) == 0
    out = capsys.readouterr().out
    for name in MODEL_NAMES:
        assert name in out
    assert any(line.startswith("efficientnet_lite0") and " yes " in line for line in out.splitlines())


def test_the_embedded_model_explains_without_importing_torchvision_or_zennit():
    # torchvision (with torch._dynamo) and zennit hold 170 MB resident: `bench`'s memory goal
    code = ("import sys; from core.models.loading import load_model; from core.pathway.engine import Engine; "
            "import numpy as np; Engine(load_model(), np.zeros((64, 64, 3), np.uint8)).pathway(50.0); "
            "print(sorted(m for m in ('torchvision', 'zennit', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
