"""Every attribution method by name: the one list the engine, the CLI and the app read.

Standard library only, so that `--help` and the window's first paint need no torch. A new method
is implemented in core.attribution (classic) or is a gradient run through the pathway (pathway
methods), and named here once.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    magnitude_ranked: bool  # its sign says nothing about evidence for the class: rank by |value|
    pathway_of: str | None = None  # the classic gradient it runs through the pruned network

    @property
    def is_pathway(self) -> bool:
        return self.pathway_of is not None


METHODS = (
    Method("gradient", True),
    Method("input-x-gradient", False),
    Method("integrated-gradients", False),
    Method("smoothgrad", True),
    Method("guided-backprop", True),
    Method("grad-cam", False),
    Method("lrp", False),
    Method("pathway-gradient", True, "gradient"),
    Method("pathway-input-x-gradient", False, "input-x-gradient"),
    Method("pathway-integrated-gradients", False, "integrated-gradients"),
)
BY_NAME = {m.name: m for m in METHODS}
ALL_METHODS = tuple(BY_NAME)
CLASSIC_METHODS = tuple(m.name for m in METHODS if not m.is_pathway)
PATHWAY_METHODS = {m.name: m.pathway_of for m in METHODS if m.is_pathway}
MAGNITUDE_RANKED = frozenset(m.name for m in METHODS if m.magnitude_ranked)

# What each command and tab computes when the user names no methods, in display order.
DEFAULTS = {
    "explain": ("pathway-gradient", "gradient", "input-x-gradient", "integrated-gradients",
                "smoothgrad", "guided-backprop", "grad-cam", "lrp"),
    "evaluate": ("gradient", "input-x-gradient", "integrated-gradients", "smoothgrad",
                 "guided-backprop", "grad-cam", "lrp", "pathway-gradient"),
    "roar": ("gradient", "grad-cam", "pathway-gradient"),
    "sanity": ("pathway-gradient", "gradient", "guided-backprop", "grad-cam"),
    "prune-sweep": ("gradient", "grad-cam", "pathway-gradient"),
    "app": ("gradient", "integrated-gradients", "grad-cam"),  # beside the pathway map
}


def unknown(names) -> list[str]:
    return [n for n in names if n not in BY_NAME]


def supports(name: str, model) -> tuple[bool, str]:
    """Whether method `name` can run on this loaded model; if not, one line saying why.
    Pathway methods run on every model whose activations PruneScope finds."""
    if name not in BY_NAME:
        return False, f"unknown method '{name}': choose from {', '.join(ALL_METHODS)}"
    if BY_NAME[name].is_pathway:
        return True, ""
    from core.attribution import supports as classic_supports  # torch, only once a model exists

    return classic_supports(name, model)
