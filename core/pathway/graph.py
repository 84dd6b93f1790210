"""The critical pathway as a graph: which channels carry the decision and how they feed each other.

Nodes: in each chosen activation layer, the channels with the largest share of the layer's kept
score (the selector's neuron scores of the kept neurons, summed over space). Edges: between two
consecutive chosen layers, how much an upstream node's channel contributes to a downstream node's
channel inside the pruned network, as conditional relevance is computed in CRP (Achtibat et al.,
"From attribution maps to human-understandable explanations through Concept Relevance
Propagation", 2023): R(u -> d) = sum over space of a_u * d R_d / d a_u, where R_d is the downstream
channel's kept activation summed over space. Written here because zennit-crp's graphs run on the
whole network and with LRP rules, not on the pathway pruned for one input.

One batched forward and backward per pair of layers: the k downstream nodes are k copies of the
input, each copy's backward starting from its own node (the forward stops at the downstream layer).
"""
from dataclasses import dataclass, field

from core.errors import PruneScopeError

# torch and numpy are imported inside the functions: the CLI reads this module's defaults for --help.

DEFAULT_NODES = 8     # channels per layer
DEFAULT_LAYERS = 6    # spatial activation layers, evenly spread, the last one included


@dataclass(frozen=True)
class Node:
    id: str               # "<layer>:<channel>"
    layer: str
    channel: int
    share: float          # of its layer's kept score
    depth: int            # its layer's place among the graph's layers (0: nearest the input)


@dataclass(frozen=True)
class Edge:
    source: str           # the upstream node's id
    target: str
    weight: float         # conditional relevance, signed


@dataclass
class PathwayGraph:
    layers: list[str]
    nodes: list[Node]
    edges: list[Edge]
    sparsity: float
    mode: str
    selector: str
    target: int
    class_name: str
    passes: int = 0       # batched forward+backward passes it took, counted in single images
    concepts: dict = field(default_factory=dict)  # node id -> concept label, where a dissection names one
    # layer -> every channel's share of the layer's kept score (a numpy array): what pathways are
    # compared by across images; not in the JSON (thousands of values)
    shares: dict = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict:
        return {"layers": self.layers, "sparsity": self.sparsity, "mode": self.mode, "selector": self.selector,
                "target": self.target, "class": self.class_name, "passes": self.passes,
                "nodes": [{"id": n.id, "layer": n.layer, "channel": n.channel, "share": n.share, "depth": n.depth,
                           **({"concept": self.concepts[n.id]} if n.id in self.concepts else {})}
                          for n in self.nodes],
                "edges": [{"source": e.source, "target": e.target, "weight": e.weight} for e in self.edges]}

    @classmethod
    def from_json(cls, data: dict) -> "PathwayGraph":
        try:
            nodes = [Node(n["id"], n["layer"], int(n["channel"]), float(n["share"]), int(n["depth"]))
                     for n in data["nodes"]]
            edges = [Edge(e["source"], e["target"], float(e["weight"])) for e in data["edges"]]
            return cls(list(data["layers"]), nodes, edges, float(data["sparsity"]), data["mode"],
                       data["selector"], int(data["target"]), data["class"], int(data.get("passes", 0)),
                       {n["id"]: n["concept"] for n in data["nodes"] if "concept" in n})
        except (KeyError, TypeError, ValueError) as err:
            raise PruneScopeError(f"not a pathway graph ({type(err).__name__}: {err})") from None

    def node_ids(self, layer: str) -> list[str]:
        return [n.id for n in self.nodes if n.layer == layer]


def graph_layers(layers, count: int = DEFAULT_LAYERS) -> list[int]:
    """Indices of `count` spatial (channel x height x width) activation layers spread evenly from
    the first to the last: the blocks' outputs of a CNN, at the depths where maps change."""
    import numpy as np

    spatial = [i for i, layer in enumerate(layers) if len(layer.shape) == 3]
    if not spatial:
        raise PruneScopeError("the pathway graph needs activation layers with spatial maps (a CNN)")
    if len(spatial) <= count:
        return spatial
    picks = np.linspace(0, len(spatial) - 1, count).round().astype(int)
    return [spatial[i] for i in dict.fromkeys(picks.tolist())]


def layer_indices(layers, names) -> list[int]:
    by_name = {layer.name: i for i, layer in enumerate(layers)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise PruneScopeError(f"no activation layer {', '.join(map(repr, missing))}: "
                              f"choose from {', '.join(layer.name for layer in layers)}")
    chosen = sorted(by_name[n] for n in names)
    if any(len(layers[i].shape) != 3 for i in chosen):
        raise PruneScopeError("the pathway graph's layers must have spatial maps (channel x height x width)")
    return chosen


def pathway_graph(engine, sparsity: float, mode: str = "global", selector: str = "taylor",
                  layer_names=None, nodes: int = DEFAULT_NODES) -> PathwayGraph:
    """The pathway graph of the engine's input and target at `sparsity` (see the module's doc).
    layer_names: the activation layers to draw (default: graph_layers)."""
    import torch

    if nodes < 1:
        raise PruneScopeError(f"the graph needs at least one node per layer, not {nodes}")
    layers = engine.layers
    chosen = graph_layers(layers) if layer_names is None else layer_indices(layers, layer_names)
    masks = engine.masks(sparsity, mode, selector)
    scores = engine.scores(selector)
    picked, all_nodes, shares = {}, [], {}
    for depth, i in enumerate(chosen):
        kept = (scores[i].reshape(layers[i].shape) * masks[i]).reshape(layers[i].shape[0], -1).sum(1).double()
        share = kept / kept.sum() if kept.sum() > 0 else kept
        shares[layers[i].name] = share.float().cpu().numpy()
        order = [int(c) for c in torch.argsort(share, descending=True)[:nodes] if share[c] > 0]
        picked[i] = order
        all_nodes += [Node(_node_id(layers[i].name, c), layers[i].name, c, float(share[c]), depth) for c in order]
    factors = [m.to(engine.x.dtype) for m in masks]
    edges, passes = [], 0
    for u, d in zip(chosen, chosen[1:]):
        if picked[u] and picked[d]:
            weights = _relevance(engine.module, engine.x, factors, u, d, picked[d])
            passes += len(picked[d])
            edges += [Edge(_node_id(layers[u].name, uc), _node_id(layers[d].name, dc), float(weights[j, uc]))
                      for j, dc in enumerate(picked[d]) for uc in picked[u]]
    return PathwayGraph([layers[i].name for i in chosen], all_nodes, edges, float(sparsity), mode, selector,
                        engine.target, engine.model.class_names[engine.target], passes, shares=shares)


class _Reached(BaseException):  # not Exception: a model's own `except Exception` must not catch it
    """Stops the forward once the downstream layer has been seen."""


def _relevance(module, x, factors, upstream: int, downstream: int, channels):
    """k x C_u (a tensor): for the k downstream channels, each upstream channel's conditional
    relevance, in one forward and backward of k copies of x through the pruned network."""
    import torch

    from core.network.neurons import intercept

    seen = {}

    def masked(i: int, out):
        out = out * factors[i]
        if i == upstream:
            seen["up"] = out
        elif i == downstream:
            seen["down"] = out
            raise _Reached
        return out

    xs = x.detach().expand(len(channels), *x.shape[1:])
    with torch.enable_grad():
        xs = xs.clone().requires_grad_(True)  # the copies' own graph: the parameters are frozen
        try:
            with intercept(masked):
                module(xs)
        except _Reached:
            pass
        if "down" not in seen:
            raise PruneScopeError("the forward never reached the graph's downstream layer")
        picked = seen["down"][torch.arange(len(channels)), torch.tensor(channels)]
        (grad,) = torch.autograd.grad(picked.sum(), seen["up"])
    return (grad * seen["up"]).detach().flatten(2).sum(2).double().cpu()


def _node_id(layer: str, channel: int) -> str:
    return f"{layer}:{channel}"
