"""Every attribution method by name: the one list the engine, the CLI and the app read.

A method is one class (core.methods.base.Method) in its family's module: gradients, cams or
perturbation. Adding one is a class there and a line here. Every method computed through the
network also has a `pathway-<name>` version: the same method on the network pruned for the input.
Standard library only, so that `--help` and the window's first paint need no torch.
"""
from core.errors import PruneScopeError, UnsupportedMethod
from core.methods import cams, gradients, perturbation, transformers
from core.methods.base import PATHWAY, Method, Pathway  # noqa: F401 (PATHWAY: the prefix, read from here)

PLAIN = (
    gradients.Gradient(), gradients.InputXGradient(), gradients.IntegratedGradients(),
    gradients.SmoothGrad(), gradients.GuidedBackprop(), gradients.GradCam(), gradients.Lrp(),
    gradients.DeepLift(), gradients.GradientShap(), gradients.GuidedGradCam(),
    cams.GradCamPlusPlus(), cams.XGradCam(), cams.HiResCam(), cams.LayerCam(), cams.EigenCam(),
    cams.ScoreCam(), cams.AblationCam(),
    perturbation.Occlusion(), perturbation.Rise(), perturbation.KernelShap(), perturbation.Lime(),
    transformers.AttentionRollout(), transformers.GradRollout(),
)
# The pathway versions of the three gradients the engine runs itself come first, as before.
_FIRST = ("gradient", "input-x-gradient", "integrated-gradients")
METHODS: tuple[Method, ...] = (
    *PLAIN,
    *(Pathway(m) for m in PLAIN if m.name in _FIRST),
    *(Pathway(m) for m in PLAIN if m.through_network and m.name not in _FIRST),
)
BY_NAME = {m.name: m for m in METHODS}
ALL_METHODS = tuple(BY_NAME)
CLASSIC_METHODS = tuple(m.name for m in PLAIN)
PATHWAY_METHODS = {m.name: m.of.name for m in METHODS if isinstance(m, Pathway)}
MAGNITUDE_RANKED = frozenset(m.name for m in METHODS if m.magnitude_ranked)

# What each command and tab computes when the user names no methods, in display order.
DEFAULTS = {
    "explain": ("pathway-gradient", "gradient", "input-x-gradient", "integrated-gradients",
                "smoothgrad", "guided-backprop", "grad-cam", "lrp"),
    "evaluate": ("gradient", "input-x-gradient", "integrated-gradients", "smoothgrad",
                 "guided-backprop", "grad-cam", "grad-cam++", "layer-cam", "lrp", "pathway-gradient",
                 "pathway-grad-cam", "pathway-grad-cam++"),
    "roar": ("gradient", "grad-cam", "pathway-gradient"),
    "sanity": ("pathway-gradient", "gradient", "guided-backprop", "grad-cam"),
    "prune-sweep": ("gradient", "grad-cam", "pathway-gradient"),
    "app": ("gradient", "integrated-gradients", "grad-cam"),  # beside the pathway map
}


def ranked(name: str, attr_map):
    """The values a map's pixels are ranked by (higher = more relevant): the magnitude for methods
    whose sign carries no evidence (gradient, SmoothGrad, guided backprop, ...), else the map."""
    return abs(attr_map) if name in MAGNITUDE_RANKED else attr_map


def unknown(names) -> list[str]:
    return [n for n in names if n not in BY_NAME]


def attribute(method: str, model, x, target: int, module=None, **opts):
    """The map of the classic method named `method` for class `target` and input x (1x3xHxW):
    HxW float32, raw and signed. module: the network to explain instead of model.module, the same
    function (the engine's batch-norm-folded copy, or its pruned network). opts: the gradient
    methods' settings (steps, samples, noise, seed)."""
    return _classic(method).attribute(model, model.module if module is None else module, x, target, **opts)


def input_attribution(method: str, model, x, target: int, module=None, **opts):
    """The 1x3xHxW attribution of a gradient method, before the channels are collapsed."""
    spec = _classic(method)
    if not isinstance(spec, gradients.GradientMethod):
        raise UnsupportedMethod(f"'{method}' is not a gradient method: its map is not made of input gradients")
    return spec.input_attribution(model, model.module if module is None else module, x, target, **opts)


def _classic(method: str) -> Method:
    if method not in CLASSIC_METHODS:
        raise UnsupportedMethod(f"unknown method '{method}': choose one of {', '.join(CLASSIC_METHODS)}")
    return BY_NAME[method]


def configured(name: str, settings: dict | None = None) -> Method:
    """Method `name` under the user's settings, {method: {key: value}}; pathway-<m> takes m's."""
    values = (settings or {}).get(PATHWAY_METHODS.get(name, name))
    return BY_NAME[name].configured(values) if values else BY_NAME[name]


def checked_settings(settings: dict | None) -> dict[str, dict]:
    """The user's method settings, each value checked and typed, defaults dropped; PruneScopeError
    naming what is allowed for an unknown method, key or value."""
    out = {}
    for name, values in (settings or {}).items():
        plain = PATHWAY_METHODS.get(name, name)
        if plain not in CLASSIC_METHODS:
            raise PruneScopeError(f"unknown method '{name}' in the method settings: choose from "
                                  f"{', '.join(m.name for m in PLAIN if m.options)}")
        chosen = BY_NAME[plain].configured({**out.get(plain, {}), **values}).values
        if chosen:
            out[plain] = chosen
        else:
            out.pop(plain, None)
    return out


def parse_settings(text: str) -> dict[str, dict]:
    """--method-params: "NAME.KEY=VALUE,..." (integrated-gradients.steps=20,occlusion.window=48),
    checked (checked_settings)."""
    settings: dict[str, dict] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        lhs, equals, value = item.partition("=")
        name, dot, key = lhs.strip().rpartition(".")
        if not (equals and dot and name and key and value.strip()):
            raise PruneScopeError(f"expected NAME.KEY=VALUE, got {item!r} (e.g. integrated-gradients.steps=20)")
        settings.setdefault(name, {})[key.strip()] = value.strip()
    return checked_settings(settings)


def supports(name: str, model) -> tuple[bool, str]:
    """Whether method `name` can run on this loaded model; if not, one line saying why."""
    if name not in BY_NAME:
        return False, f"unknown method '{name}': choose from {', '.join(ALL_METHODS)}"
    return BY_NAME[name].supports(model)
