"""Every figure PruneScope draws, built with matplotlib's object API (Figure, never pyplot,
which is not safe on a worker thread), so that the CLI and the app draw the same figures."""
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def save(fig: Figure, path, dpi: int = 110) -> Path:
    from core.output import save_figure

    return save_figure(fig, path, dpi=dpi, bbox_inches="tight")


# --- dissection -----------------------------------------------------------------------------

def dissection_summary(result) -> Figure:
    """Per dissected layer: detector units stacked by concept category, and the unique concepts."""
    summary = result.summary()
    categories = result.categories
    fig = Figure(figsize=(max(5.0, 1.6 * len(summary) + 2.5), 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(summary))
    bottom = np.zeros(len(summary))
    for k, category in enumerate(categories):
        counts = np.array([s["per_category"][category] for s in summary], float)
        ax.bar(x, counts, 0.6, bottom=bottom, label=category, color=f"C{k}")
        bottom += counts
    for i, s in enumerate(summary):
        ax.annotate(f"{s['detectors']}/{s['units']} units\n{s['unique_concepts']} concepts",
                    (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [s["layer"] for s in summary], fontsize=8)
    ax.set_ylabel("units detecting a concept (IoU > %g)" % result.iou_min)
    ax.set_ylim(0, max(1.0, bottom.max()) * 1.25)
    ax.set_title(f"{result.model} on {Path(result.source).name}: {result.images} images", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return fig


def unit_montage(rows) -> Figure:
    """One row per unit: its title and its top images side by side. rows: [(title, crops)],
    crops as from core.dissection.unit_crops."""
    from skimage.util import montage

    fig = Figure(figsize=(9.0, 1.25 * len(rows)), layout="constrained")
    for i, (title, crops) in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, i + 1)
        images = np.stack([crop for crop, _, _ in crops])
        ax.imshow(montage(images, grid_shape=(1, len(images)), padding_width=2, fill=(255, 255, 255),
                          channel_axis=-1))
        ax.set_title(title, fontsize=8, loc="left")
        ax.set_axis_off()
    return fig


def concept_sweep(sweep) -> Figure:
    """Concept detectors, unique concepts and the model's accuracy (or agreement with the
    original) against sparsity, one curve per criterion (dashed: fine-tuned after pruning)."""
    fig = Figure(figsize=(12.0, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    labelled = all(p.accuracy is not None for p in sweep.points)
    panels = (("detectors", "units detecting a concept"), ("unique_concepts", "unique concepts"),
              ("accuracy" if labelled else "agreement",
               "test accuracy" if labelled else "top-1 agreement with the original"))
    for k, criterion in enumerate(sweep.criteria):
        points = sorted((p for p in sweep.points if p.criterion == criterion), key=lambda p: p.sparsity)
        style = "--" if any(p.finetuned for p in points) else "-"
        for ax, (key, _) in zip(axes, panels):
            ax.plot([p.reached for p in points], [getattr(p, key) for p in points], style, marker="o",
                    color=f"C{k}", label=criterion + (" + fine-tuning" if style == "--" else ""))
    for ax, (key, label) in zip(axes, panels):
        ax.set_xlabel("pruned (% of channels; magnitude: of weights)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[2].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8, frameon=False)
    return fig
