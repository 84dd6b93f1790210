"""What an attribution method is, for the registry: one class per method.

Standard library only: the registry is read by `--help` and the window's first paint, before torch
is imported. Each method imports its library (Captum, pytorch-grad-cam, ...) when it first runs.
"""
from typing import Any

PATHWAY = "pathway-"


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
    nodes: int | None = None        # the passes its map sums, where it runs in steps (stepped())
    params: dict[str, Any] = {}     # its settings, recorded in report.json

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

    def stepped(self, model, net, x, target: int, nodes: int | None = None):
        """Where `nodes` is set: its map as a run in resumable steps (core.methods.attribution's
        SteppedRun), on `nodes` passes instead of its own for a coarser first map."""
        raise NotImplementedError

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
        self.params = of.params

    def supports(self, model) -> tuple[bool, str]:
        return self.of.supports(model)

    def layer(self, model) -> str | None:
        return self.of.layer(model)
