"""Pathways across a dataset: do images of one class run through the same channels?

Each image gets its pathway graph (core.pathway.graph). Per class (the class explained): how often
each channel is one of its graph's nodes (`frequency`, per layer a list indexed by channel), each
channel's share of the layer's kept score averaged over the class's images (`mean_share`), and the
class graph, its images' nodes and edges averaged. Between images: the overlap of their pathways,
the score-weighted Jaccard index of their kept channels (each layer's channel shares, the layers
weighted alike), with its mean over pairs of one class and over pairs of two classes. Each image is
kept as a record (core.evaluation.records) and the run is sharded over torchrun processes, as
`evaluate` is.
"""
from dataclasses import asdict, dataclass

import numpy as np

from core.errors import reason
from core.evaluation.records import RecordStore
from core.evaluation.sources import Source, prepare
from core.pathway.graph import DEFAULT_NODES, Edge, Node, PathwayGraph
from core.progress import Job, Progress
from core.runtime.distributed import SINGLE, Context, gather_indexed, shard

AUTO = "auto"


@dataclass(frozen=True)
class PathwaySettings:
    images: int
    sparsity: float | str = 70.0      # or AUTO: each image's largest within `tolerance`
    tolerance: float = 0.15
    target: str = "predicted"         # or "label"
    mode: str = "global"
    selector: str = "taylor"
    nodes: int = DEFAULT_NODES
    layers: tuple | None = None       # activation layer names (None: core.pathway.graph.graph_layers)


def run_settings(model, source: Source, settings: PathwaySettings) -> dict:
    """What a run's records depend on: a rerun with any of them changed is refused."""
    return {"command": "pathways", "model": model.name, "weights": model.weights_hash(),
            "dataset": source.name, "labels": source.labels_key,
            **{k: v for k, v in asdict(settings).items() if k != "images"},  # more images: the run goes on
            "layers": list(settings.layers) if settings.layers else None}


def iter_pathways(model, source: Source, settings: PathwaySettings, ctx: Context = SINGLE,
                  store: RecordStore | None = None) -> Job[dict | None]:
    """This rank's share of the first `settings.images` images, each kept in the store as it is
    done (a done one is read back). Returns the summary (summarize) on rank 0, None elsewhere."""
    from core.pathway.engine import Engine
    from core.pathway.graph import pathway_graph

    count = min(settings.images, source.count)
    mine = shard(count, ctx)
    records, errors = [], []
    for k, i in enumerate(mine):
        key = f"image/{i}"
        record = store.get(key) if store else None
        if record is None:
            name = f"image {i}"
            try:
                item = source.load(i)
                name = item.name
                prepared = prepare(model, item, settings.target)
                engine = Engine.from_tensor(model, prepared.x, prepared.target)
                sparsity = settings.sparsity
                if sparsity == AUTO:
                    auto = yield from engine.iter_auto_sparsity(settings.tolerance, settings.mode, settings.selector)
                    sparsity = auto.sparsity
                graph = pathway_graph(engine, float(sparsity), settings.mode, settings.selector,
                                      settings.layers, settings.nodes)
            except Exception as err:  # one image's failure is its own line; the others go on
                errors.append((i, f"{name}: {reason(err)}"))
                continue
            record = {"name": name, "label": item.label, "target": prepared.target,
                      "predicted": prepared.predicted, "graph": graph.to_json(), "shares": graph.shares}
            if store:
                store.put(key, record)
        records.append((i, record))
        yield Progress((k + 1) / max(1, len(mine)), f"pathways: {k + 1}/{len(mine)} images")
    records = gather_indexed(records, ctx)
    errors = gather_indexed(errors, ctx)
    if not ctx.is_main:
        return None
    return summarize(records, model.class_names, settings.nodes) | {"errors": errors}


def summarize(records: list[dict], class_names, nodes: int = DEFAULT_NODES) -> dict:
    """Per class frequency and mean graph, and the pathways' overlap (see the module's doc). The
    overlap matrix, images in record order, is returned apart under "matrix" (a numpy array)."""
    by_class: dict[int, list[dict]] = {}
    for r in records:
        by_class.setdefault(int(r["target"]), []).append(r)
    classes = {}
    for target, members in sorted(by_class.items()):
        graphs = [PathwayGraph.from_json(r["graph"]) for r in members]
        frequency = {}
        for layer in graphs[0].layers:
            size = len(members[0]["shares"][layer])
            counts = np.zeros(size)
            for g in graphs:
                counts[[n.channel for n in g.nodes if n.layer == layer]] += 1
            frequency[layer] = (counts / len(graphs)).round(4).tolist()
        mean_share = {layer: np.mean([r["shares"][layer] for r in members], axis=0).round(6).tolist()
                      for layer in graphs[0].layers}
        classes[_name(class_names, target)] = {"id": target, "images": len(members), "frequency": frequency,
                                               "mean_share": mean_share, "graph": mean_graph(graphs, nodes).to_json()}
    matrix = overlap_matrix([r["shares"] for r in records])
    same = np.equal.outer([r["target"] for r in records], [r["target"] for r in records])
    upper = np.triu(np.ones_like(matrix, bool), 1)
    within, between = matrix[upper & same], matrix[upper & ~same]
    return {"images": len(records), "classes": classes,
            "overlap": {"within_class": _mean(within), "between_class": _mean(between),
                        "within_pairs": int(within.size), "between_pairs": int(between.size)},
            "image_names": [r["name"] for r in records], "image_classes": [int(r["target"]) for r in records],
            "matrix": matrix}


def mean_graph(graphs: list[PathwayGraph], nodes: int = DEFAULT_NODES) -> PathwayGraph:
    """A class's graph: each node's share and each edge's weight averaged over the graphs (0 where a
    graph lacks it), the `nodes` strongest per layer kept, with the edges between them."""
    first = graphs[0]
    share, depth, place = {}, {}, {}
    for g in graphs:
        for n in g.nodes:
            share[n.id] = share.get(n.id, 0.0) + n.share / len(graphs)
            depth[n.id], place[n.id] = n.depth, (n.layer, n.channel)
    kept = set()
    for layer in first.layers:
        ranked = sorted((i for i in share if place[i][0] == layer), key=lambda i: -share[i])
        kept.update(ranked[:nodes])
    weights: dict[tuple, float] = {}
    for g in graphs:
        for e in g.edges:
            if e.source in kept and e.target in kept:
                weights[e.source, e.target] = weights.get((e.source, e.target), 0.0) + e.weight / len(graphs)
    chosen = sorted(kept, key=lambda i: (depth[i], -share[i]))
    return PathwayGraph(first.layers, [Node(i, *place[i], share[i], depth[i]) for i in chosen],
                        [Edge(s, t, w) for (s, t), w in weights.items()], first.sparsity, first.mode,
                        first.selector, first.target, first.class_name)


def overlap_matrix(shares: list[dict]) -> np.ndarray:
    """N x N score-weighted Jaccard index of N pathways: sum(min) / sum(max) of their channel
    shares, each layer's shares summing to 1 and the layers weighted alike."""
    if not shares:
        return np.zeros((0, 0))
    layers = list(shares[0])
    vectors = np.stack([np.concatenate([np.asarray(s[layer], np.float64) / len(layers) for layer in layers])
                        for s in shares])
    n = len(vectors)
    matrix = np.ones((n, n))
    for i in range(n):
        low = np.minimum(vectors[i], vectors[i + 1:]).sum(1)
        high = np.maximum(vectors[i], vectors[i + 1:]).sum(1)
        matrix[i, i + 1:] = matrix[i + 1:, i] = np.divide(low, high, out=np.zeros_like(low), where=high > 0)
    return matrix


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _name(class_names, target: int) -> str:
    return class_names[target] if class_names and target < len(class_names) else f"class {target}"


def concept_alignment(summary: dict, dissection) -> dict:
    """Are the units that a dissection labels with a class's object in that class's pathway more
    often than in the other classes'? Per dissected layer of the graphs: the mean frequency of such
    units in their own class's graphs and in the other classes' (units whose object concept names
    a class of the summary). Layers without such units are left out."""
    classes = summary["classes"]
    out = {}
    for layer in dissection.layers:
        own, other = [], []
        for unit in layer.detectors():
            if unit.category != "object" or unit.concept not in classes:
                continue
            for name, data in classes.items():
                frequency = data["frequency"].get(layer.name)
                if frequency is None or unit.unit >= len(frequency):
                    continue
                (own if name == unit.concept else other).append(frequency[unit.unit])
        if own:
            out[layer.name] = {"units": len(own), "own_class": float(np.mean(own)),
                               "other_classes": float(np.mean(other)) if other else None}
    return out
