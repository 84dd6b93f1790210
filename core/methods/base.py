"""What an attribution method is, for the registry: one class per method.

Standard library only: the registry is read by `--help` and the window's first paint, before torch
is imported. Each method imports its library (Captum, pytorch-grad-cam, ...) when it first runs.
"""
import copy
import math
from dataclasses import dataclass
from typing import Any

from core.errors import PruneScopeError

PATHWAY = "pathway-"
BASELINES = ("mean", "blur", "black")  # core.io.baselines.BASELINES, without importing torch


@dataclass(frozen=True)
class Setting:
    """One setting of a method that the user may change (the app, --method-params): a whole
    number or a number in [low, high], or one of `choices`. default None reads "auto" (the
    method picks from the input, as occlusion's window does)."""
    key: str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    @property
    def whole(self) -> bool:
        return not self.choices and isinstance(self.low, int) and isinstance(self.high, int)

    def allowed(self) -> str:
        if self.choices:
            return " or ".join(self.choices)
        kind, low, high = ("a whole number", f"{self.low}", f"{self.high}") if self.whole else \
            ("a number", f"{self.low:g}", f"{self.high:g}")
        return f"{kind} from {low} to {high}" + (" or auto" if self.default is None else "")

    def checked(self, method: str, value):
        """value (a number, or text from the command line or the app's settings) as this
        setting's type; PruneScopeError naming what is allowed when it is not."""
        bad = PruneScopeError(f"{method}.{self.key} must be {self.allowed()}, got {value!r}")
        if self.choices:
            if str(value) not in self.choices:
                raise bad
            return str(value)
        if self.default is None and str(value).strip().lower() in ("auto", "none"):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if isinstance(value, bool) or not math.isfinite(number) or not self.low <= number <= self.high:
            raise bad
        if self.whole:
            if number != int(number):
                raise bad
            return int(number)
        return number


# The settings several methods share.
BASELINE = Setting("baseline", "mean", choices=BASELINES,
                   help="what a removed or missing pixel becomes: the dataset-mean image, the image blurred, or black")
SEED = Setting("seed", 0, 0, 2**31 - 1, help="seeds the random draws: the same seed, the same map")


class Method:
    """One attribution method.

    attribute(model, net, x, target) runs it on `net`, the network to explain: the model's
    module, the engine's batch-norm-folded copy of it, or the engine's pruned network (a module
    whose forward multiplies every activation by its mask: core.network.neurons.MaskedNetwork). It returns
    a raw, signed HxW float32 map at x's resolution.
    """

    name: str = ""
    family: str = "gradient"
    magnitude_ranked: bool = False  # its sign says nothing about evidence for the class: rank by |value|
    passes: str = "1 forward+backward"  # what one map costs, for the user
    interactive: bool = True        # cheap enough for the app's map job (well under a second)
    through_network: bool = True    # computed through the network, so it has a pathway version
    runs_on_loaded: bool = False    # reads a layer by name (CAMs, LRP): runs on the model as loaded,
                                    # not on the engine's batch-norm-folded copy
    sums: bool = False              # a sum over passes that it runs in steps of its own (stepped())
    coarse: dict[str, Any] = {}     # settings for the app's first, coarser map (fewer passes)
    random_draws: bool = False      # draws from torch's or numpy's global generators as it runs
    one_pass: bool = False          # one forward and backward: its pathway version fits one app step
    options: tuple[Setting, ...] = ()  # what the user may change (the app, --method-params)
    fixed: dict[str, Any] = {}      # what else reproduces its map, recorded in report.json
    values: dict[str, Any] = {}     # the user's settings, over the options' defaults (configured())

    @property
    def params(self) -> dict[str, Any]:
        """Its settings as it runs: the options (defaults, or the user's), then the fixed ones."""
        return {**{o.key: o.default for o in self.options}, **self.values, **self.fixed}

    @property
    def token(self) -> tuple:
        """What tells its maps under different settings apart (cache keys)."""
        return tuple(sorted(self.values.items()))

    def configured(self, values: dict[str, Any]) -> "Method":
        """A copy of it with these settings (text or numbers; unchecked keys are errors)."""
        by_key = {o.key: o for o in self.options}
        checked = {}
        for key, value in values.items():
            if key not in by_key:
                allowed = f"choose from {', '.join(by_key)}" if by_key else "it has none"
                raise PruneScopeError(f"{self.name} has no setting '{key}': {allowed}")
            checked[key] = by_key[key].checked(self.name, value)
        method = copy.copy(self)
        method.values = {k: v for k, v in {**self.values, **checked}.items() if v != by_key[k].default}
        return method

    def summary(self) -> str:
        """Its settings in a few words, for a map's title: "steps 50, baseline mean"."""
        return ", ".join(f"{o.key} {'auto' if v is None else f'{v:g}' if isinstance(v, float) else v}"
                         for o in self.options for v in [self.params[o.key]])

    def supports(self, model) -> tuple[bool, str]:
        """Whether it can run on this loaded model; if not, one line saying why."""
        return True, ""

    def layer(self, model) -> str | None:
        """The layer it reads (CAMs), recorded in report.json."""
        return None

    def settings(self, model) -> dict[str, Any]:
        layer = self.layer(model)
        return {**self.params, **({"layer": layer} if layer else {})}

    def attribute(self, model, net, x, target: int):
        raise NotImplementedError

    @property
    def in_steps(self) -> bool:
        """Whether the app computes it in resumable steps (stepped()): the sums, and the methods
        too slow for one step."""
        return self.sums or not self.interactive

    def forwards(self, model, x) -> int | None:
        """The rows its map sends through the network (None: not known beforehand), for progress."""
        return None

    def stepped(self, model, net, x, target: int, step_seconds: float, private: bool | None = None,
                detach: bool = False):
        """Its map as a run in resumable steps: .steps(step_seconds) is a job that returns the
        map. By default the library's call in a thread of its own, stopped between forwards
        (core.methods.library_run); private: on a copy of net (default: for the methods that hook
        the model's layers, runs_on_loaded); detach: net is the run's own, and a forward longer
        than a step may go on beside the worker (not for methods with random_draws)."""
        from core.methods.library_run import LibraryRun

        batched = any(o.key == "batch" for o in self.options)

        def call(gated):  # a batch the size of a step's chunk: a library that cannot have it cut
            spec = self.configured({"batch": gated.chunk}) if batched else self
            return spec.attribute(model, gated, x, target)

        private = self.runs_on_loaded if private is None else private
        return LibraryRun(call, (lambda: copy.deepcopy(net)) if private else (lambda: net), x, step_seconds,
                          self.forwards(model, x), self.name, (detach or private) and not self.random_draws)

    def through(self, model, inner, forward, x, target: int):
        """Its pathway version: (its map on the network pruned for x, that network's logits on x).
        forward: inner's forward with every activation multiplied by its mask (the engine's)."""
        import torch

        from core.network.neurons import MaskedNetwork

        net = MaskedNetwork(inner, forward)
        with torch.no_grad():
            logits = net(x)
        return self.attribute(model, net, x, target), logits


class Pathway(Method):
    """`pathway-<method>`: the method run on the network pruned for this input (the engine's
    masked forward). The engine computes it; this only names it."""

    def __init__(self, of: Method):
        self.of = of
        self.name = PATHWAY + of.name
        self.family = of.family
        self.magnitude_ranked = of.magnitude_ranked
        self.passes = f"{of.passes} through the pruned network"
        self.interactive = of.interactive
        self.through_network = False
        self.runs_on_loaded = of.runs_on_loaded
        self.options = of.options

    @property
    def params(self) -> dict[str, Any]:
        return self.of.params

    @property
    def token(self) -> tuple:
        return self.of.token

    def configured(self, values: dict[str, Any]) -> "Pathway":
        return Pathway(self.of.configured(values))

    def supports(self, model) -> tuple[bool, str]:
        return self.of.supports(model)

    def layer(self, model) -> str | None:
        return self.of.layer(model)
