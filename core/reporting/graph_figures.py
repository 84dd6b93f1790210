"""Figures of the pathway as a graph: one image's (core.pathway.graph) and a dataset's pathways
across classes (core.evaluation.pathways). matplotlib through core.reporting.figures' Figure, never
pyplot."""
import numpy as np

from core.reporting.figures import new_figure


def pathway_graph(graph, width: float = 11.0) -> object:
    """A layered drawing of a core.pathway.graph.PathwayGraph: a column per layer (input side on
    the left), a node's area its share of the layer's kept score, an edge's width its |relevance|
    (red where it excites, blue where it inhibits), each node labelled with its channel and, where a
    dissection names it, its concept."""
    fig = new_figure(width, 6.0, 120)
    ax = fig.add_subplot(1, 1, 1)
    places = graph_positions(graph)
    strengths = edge_strengths(graph)
    for e, strength in sorted(zip(graph.edges, strengths), key=lambda pair: pair[1]):
        (x0, y0), (x1, y1) = places[e.source], places[e.target]
        ax.plot([x0, x1], [y0, y1], color="#c0392b" if e.weight > 0 else "#2e6fba",
                linewidth=0.3 + 5.0 * strength, alpha=0.25 + 0.6 * strength, zorder=1, solid_capstyle="round")
    for n in graph.nodes:
        x, y = places[n.id]
        ax.scatter([x], [y], s=60 + 1400 * n.share, color="#f39c12", edgecolors="black", linewidths=0.6,
                   zorder=2)
        label = f"{n.channel}" + (f"\n{graph.concepts[n.id]}" if n.id in graph.concepts else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(0, -14), ha="center", va="top",
                    fontsize=7, zorder=3)
    ax.set_xticks(range(len(graph.layers)), graph.layers, rotation=20, fontsize=7, ha="right")
    ax.set_yticks([])
    ax.set_xlim(-0.5, len(graph.layers) - 0.5)
    ax.set_ylim(-1.2, max((places[n.id][1] for n in graph.nodes), default=0) + 0.8)
    ax.invert_yaxis()
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"pathway graph · {graph.class_name} · {graph.sparsity:g} % pruned ({graph.mode}, "
                 f"{graph.selector}) · node: share of its layer's kept score · edge: relevance, relative to "
                 f"the strongest between the two layers (red excites, blue inhibits)", fontsize=8)
    return fig


def graph_positions(graph) -> dict:
    """node id -> (layer column, rank in its layer by share): the layout the app draws too."""
    places = {}
    for depth, layer in enumerate(graph.layers):
        ranked = sorted((n for n in graph.nodes if n.layer == layer), key=lambda n: -n.share)
        places.update({n.id: (float(depth), float(rank)) for rank, n in enumerate(ranked)})
    return places


def edge_strengths(graph) -> list[float]:
    """Each edge's |relevance| over the strongest between the same two layers, in [0, 1]: relevance
    sums over a layer's map, so early layers' edges are larger in absolute terms."""
    layer_of = {n.id: n.layer for n in graph.nodes}
    strongest: dict = {}
    for e in graph.edges:
        key = layer_of[e.source]
        strongest[key] = max(strongest.get(key, 0.0), abs(e.weight))
    return [abs(e.weight) / (strongest[layer_of[e.source]] or 1.0) for e in graph.edges]


def pathways(summary: dict, layer: str | None = None, channels: int = 40) -> object:
    """Left: for one layer (default the graphs' last), how often each channel is in a class's
    pathway graph, the `channels` most frequent in any class, channels x classes. Right: the
    overlap of every two images' pathways, images ordered by class."""
    classes = summary["classes"]
    names = list(classes)
    layers = list(next(iter(classes.values()))["frequency"]) if classes else []
    layer = layer or (layers[-1] if layers else None)
    fig = new_figure(12.0, 5.2, 110)
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.15))
    if layer is not None:
        freq = np.array([classes[c]["frequency"][layer] for c in names])  # classes x channels
        top = np.argsort(-freq.max(0), kind="stable")[:channels]
        top = top[freq[:, top].max(0) > 0]
        image = left.imshow(freq[:, top].T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        left.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
        left.set_yticks(range(len(top)), [str(c) for c in top], fontsize=6)
        left.set_ylabel(f"channel of {layer}")
        fig.colorbar(image, ax=left, label="share of the class's images with it in their graph")
    left.set_title("channels in each class's pathway", fontsize=9)
    matrix = np.asarray(summary["matrix"])
    order = np.argsort(summary["image_classes"], kind="stable")
    shown = right.imshow(matrix[np.ix_(order, order)], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    sorted_classes = np.asarray(summary["image_classes"])[order]
    edges = np.flatnonzero(np.diff(sorted_classes)) + 0.5
    for edge in edges:
        right.axhline(edge, color="white", linewidth=0.6)
        right.axvline(edge, color="white", linewidth=0.6)
    right.set_xticks([])
    right.set_yticks([])
    o = summary["overlap"]
    within = "n/a" if o["within_class"] is None else f"{o['within_class']:.3f}"
    between = "n/a" if o["between_class"] is None else f"{o['between_class']:.3f}"
    right.set_title(f"pathway overlap, images by class (within {within}, between {between})", fontsize=9)
    fig.colorbar(shown, ax=right, label="score-weighted Jaccard of the kept channels")
    return fig
