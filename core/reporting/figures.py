"""Every matplotlib figure PruneScope writes or shows, one section per command.

Each command's function takes its results and returns {file stem: Figure}; `save` writes them
whole, so the CLI, the app's exports and the app's own views draw the same figures. Figures are
built on matplotlib.figure.Figure, never pyplot: pyplot's figure manager is global state and not
safe on the app's worker thread. `save` writes each figure at the resolution it was made with
unless told otherwise.
"""
from pathlib import Path

import numpy as np

from core.io.display import colorize, normalize
from core.io.output import save_figure

SPEARMAN_LABEL = "Spearman rank correlation of |map|"
SSIM_LABEL = "SSIM of |map|"
GRID_COLUMNS = 6  # sanity steps shown in a map grid, trained model and fully randomised included


def new_figure(width: float, height: float, dpi: int, layout: str | None = "constrained"):
    # imported here, not at the top: the app imports this module (grid_steps) while it starts
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi, layout=layout)


def _no_ticks(axes) -> None:
    for ax in (a for line in axes for a in line):
        ax.set_xticks([])
        ax.set_yticks([])


def save(figures: dict, folder, dpi="figure", **options) -> list[Path]:
    """Each figure as folder/<stem>.png, written whole, at its own resolution unless dpi says
    otherwise; options go to savefig."""
    folder = Path(folder)
    return [save_figure(fig, folder / f"{stem}.png", dpi=dpi, **options)
            for stem, fig in figures.items()]


# ---- explain -------------------------------------------------------------------------------

def explain(view: np.ndarray, analysis, look) -> dict:
    """comparison: the image and every map in one labelled row-wrapped grid, each map drawn by
    `look` (core.reporting.report.Look) on its own scale. Constrained layout makes room for the titles
    (up to three lines) above each row."""
    items = list(analysis.results.items())
    cols = min(4, len(items) + 1)
    rows = -(-(len(items) + 1) // cols)
    fig = new_figure(3.2 * cols, 3.6 * rows, dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(view)
    axes.flat[0].set_title(f"{analysis.prediction.name} ({analysis.prediction.prob:.2f})", fontsize=9)
    for ax, (method, result) in zip(axes.flat[1:], items):
        ax.imshow(look.draw(view, method, result.map))
        title = method
        if result.pathway is not None:
            title += f"\nsparsity {result.pathway.sparsity:.1f} %"
        if result.curves is not None:
            title += f"\ndel {result.curves.deletion_auc:.3f} / ins {result.curves.insertion_auc:.3f}"
        ax.set_title(title, fontsize=8)
    return {"comparison": fig}


# ---- sanity --------------------------------------------------------------------------------

def sanity(result, view: np.ndarray, title: str) -> dict:
    """spearman, ssim: each method's similarity to the trained model's map; maps: the maps at a
    few steps of the cascade. result: core.evaluation.sanity.SanityResult."""
    return {**_similarities(result, title), "maps": map_grid(result, view)}


def _similarities(result, title: str) -> dict:
    return {"spearman": similarity(result, result.spearman, SPEARMAN_LABEL, title),
            "ssim": similarity(result, result.ssim, SSIM_LABEL, title)}


def _step_labels(result) -> list[str]:
    return ["trained", *result.blocks]


def similarity(result, values: dict, ylabel: str, title: str):
    """One line per method against the blocks randomised so far (output block first)."""
    fig = new_figure(max(6.0, 0.35 * len(result.steps) + 2), 4.5, dpi=120)
    ax = fig.add_subplot()
    for method in result.methods:
        ax.plot(result.steps, values[method], marker="o", markersize=3, label=method)
    ax.set_xticks(result.steps, _step_labels(result), rotation=90, fontsize=7)
    ax.set_xlabel("randomised down to (cumulative, from the output)")
    ax.set_ylabel(ylabel)
    low = min(min(v) for v in values.values())
    ax.set_ylim(min(low - 0.05, 0.0), 1.05)
    ax.axhline(0.0, color="gray", linewidth=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def grid_steps(count: int, columns: int = GRID_COLUMNS) -> list[int]:
    """`columns` steps spread evenly over 0..count-1, both ends included."""
    return sorted({int(round(s)) for s in np.linspace(0, count - 1, min(columns, count))})


def map_grid(result, view: np.ndarray):
    """Rows: methods; columns: the image, then |map| at a few steps of the cascade."""
    steps = grid_steps(len(result.steps))
    labels = _step_labels(result)
    rows, cols = len(result.methods), len(steps) + 1
    fig = new_figure(1.8 * cols, 1.9 * rows + 0.3, dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for row, method in enumerate(result.methods):
        axes[row][0].imshow(view)
        axes[row][0].set_ylabel(method, fontsize=8)
        for col, step in enumerate(steps, start=1):
            attr = result.maps[method][step]
            axes[row][col].imshow(colorize(normalize(attr, "absolute")))
            if row == 0:
                axes[row][col].set_title(labels[step], fontsize=7)
            axes[row][col].set_xlabel(f"rho {result.spearman[method][step]:.2f}", fontsize=7)
    _no_ticks(axes)
    return fig


# ---- evaluate ------------------------------------------------------------------------------

def evaluate(result: dict, examples: list, sanity_example, class_names) -> dict:
    """bars and curves; with a sanity check, sanity_spearman and sanity_ssim (the per-step means
    over the checked images) and sanity_maps (the first one); maps: the example images."""
    figures = {"bars": bars(result), "curves": curves(result)}
    if result.get("leaderboard"):
        figures["leaderboard"] = leaderboard(result["leaderboard"]["metrics"], result["leaderboard"]["rows"],
                                             f"{result['dataset']}: {result['images']} images")
    if result["sanity"]:
        figures.update({f"sanity_{stem}": fig
                        for stem, fig in _sanity_means(result, sanity_example).items()})
    if examples:
        figures["maps"] = example_maps(examples, class_names)
    return figures


def leaderboard(metrics: list[str], rows: list[dict], title: str):
    """Methods (best rank first) by metrics: each cell's colour is the method's rank on that
    metric (dark is best), its text the mean."""
    names = [r["method"] for r in rows]
    cells = np.array([[r.get(m) if r.get(m) is not None else np.nan for m in metrics] for r in rows], float)
    colour = np.array([[r["ranks"][m] for m in metrics] for r in rows], float)
    fig = new_figure(1.1 * len(metrics) + 3.0, 0.32 * len(names) + 1.8, dpi=110)
    ax = fig.subplots()
    ax.imshow(colour, cmap="viridis", aspect="auto")
    for i in range(len(names)):
        for j in range(len(metrics)):
            if not np.isnan(cells[i, j]):
                ax.text(j, i, f"{cells[i, j]:.3g}", ha="center", va="center", fontsize=6,
                        color="white" if colour[i, j] <= len(names) / 2 else "black")
    ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics], rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), [f"{r['rank']}. {r['method']}" for r in rows], fontsize=7)
    ax.set_title(f"{title}: leaderboard (colour: rank on the metric, dark is best)", fontsize=9)
    return fig


def bars(result: dict):
    """One panel per metric, a bar per method, with standard errors."""
    panels = [("pointing_game", "pointing game (higher is better)"),
              ("relevance_mass", "relevance mass in the mask (higher is better)"),
              ("deletion_auc", "deletion AUC (lower is better)"),
              ("insertion_auc", "insertion AUC (higher is better)")]
    panels = [p for p in panels if any(p[0] in e for e in result["methods"].values())]
    methods = list(result["methods"])
    fig = new_figure(4.2 * len(panels), 3.8, dpi=110)
    for ax, (key, title) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        values = [result["methods"][m].get(key, float("nan")) for m in methods]
        errors = [result["methods"][m].get(f"{key}_sem", 0.0) for m in methods]
        ax.bar(range(len(methods)), values, yerr=errors, color="tab:blue", capsize=2)
        if key in ("pointing_game", "relevance_mass") and result["chance_pointing"] is not None:
            ax.axhline(result["chance_pointing"], color="gray", linestyle="--", linewidth=1,
                       label="object area (chance)")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.05 if key in ("pointing_game", "relevance_mass") else None)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{result['dataset']}: {result['images']} images", fontsize=10)
    return fig


def curves(result: dict):
    """Mean deletion and insertion curves, a line per method."""
    fig = new_figure(10, 4, dpi=110)
    axes = fig.subplots(1, 2)
    for method, c in result["curves"].items():
        for ax, key in zip(axes, ("deletion", "insertion")):
            auc = result["methods"][method][f"{key}_auc"]
            ax.plot(c["fractions"], c[key], label=f"{method} ({auc:.3f})")
    for ax, key in zip(axes, ("deletion", "insertion")):
        ax.set_xlabel(f"fraction of pixels {'removed' if key == 'deletion' else 'revealed'}")
        ax.set_ylabel("target probability (mean)")
        ax.set_title(f"{key} (AUC in brackets)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _sanity_means(result: dict, example) -> dict:
    """The sanity command's figures, on the per-step means over the checked images."""
    from core.evaluation.sanity import SanityResult

    s = result["sanity"]
    mean = SanityResult(methods=list(s["spearman"]), target=-1, seed=result["settings"]["seed"],
                        blocks=s["blocks"], steps=s["steps"], spearman=s["spearman"],
                        ssim=s["ssim"])
    figures = _similarities(mean, f"{result['dataset']}: mean over {len(s['images'])} images")
    if example is not None:
        figures["maps"] = map_grid(example["result"], example["view"])
    return figures


def example_maps(examples: list, class_names):
    """Rows: images (ground truth outlined); columns: methods."""
    methods = list(examples[0]["maps"])
    rows, cols = len(examples), len(methods) + 1
    fig = new_figure(1.7 * cols, 1.8 * rows + 0.3, dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for row, ex in enumerate(examples):
        axes[row][0].imshow(ex["view"])
        if ex["mask"] is not None:
            axes[row][0].contour(ex["mask"].astype(np.float32), levels=[0.5], colors="white",
                                 linewidths=0.8)
        name = class_names[ex["target"]] if ex["target"] < len(class_names) else ex["target"]
        axes[row][0].set_ylabel(str(name), fontsize=7)
        for col, method in enumerate(methods, start=1):
            if method in ex["maps"]:
                axes[row][col].imshow(colorize(normalize(ex["maps"][method], "absolute")))
            if row == 0:
                axes[row][col].set_title(method, fontsize=7)
    _no_ticks(axes)
    return fig


# ---- roar ----------------------------------------------------------------------------------

def roar(result: dict) -> dict:
    """roar: test accuracy against the share of pixels removed, a line per method."""
    fig = new_figure(6.5, 4.5, dpi=110)
    ax = fig.add_subplot()
    for method, entry in result["methods"].items():
        style = "--" if method in ("random", "oracle") else "-"
        ax.plot([100 * f for f in entry["fractions"]], entry["accuracy"], style, marker="o",
                markersize=3, label=f"{method} (AUC {entry['auc']:.3f})")
    ax.set_xlabel("% of most relevant pixels removed (then retrained)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"ROAR on {result['dataset']} (lower = the method found the evidence)",
                 fontsize=9)
    return {"roar": fig}


# ---- prune-sweep ---------------------------------------------------------------------------

def sweep(result) -> dict:
    """headline, cost, drift, pathway: what pruning did along the sparsity axis, a line per
    criterion. result: core.model_pruning.sweep.SweepResult. Laid out (tight_layout) at 100 dpi:
    the app's Model pruning tab shows them at 90, save_sweep writes them at 110."""
    colours = {c: f"C{i}" for i, c in enumerate(result.criteria)}
    figures = {}
    quality = result.quality

    fig = new_figure(7.5, 4.2, dpi=100, layout=None)
    ax = fig.add_subplot(1, 1, 1)
    for c in result.criteria:
        xs, ys = result.series(c, quality)
        if xs:
            recovered = f" after {result.recovery}" if result.recovery != "none" else ""
            ax.plot(xs, ys, "-o", color=colours[c], label=f"{c}: {quality}{recovered}")
            if recovered:
                _, raw = result.series(c, f"{quality}_before_recovery")
                ax.plot(xs, raw, ":x", color=colours[c], alpha=0.8, label=f"{c}: {quality}, no recovery")
            _, sim = result.series(c, "mean_spearman")
            ax.plot(xs, sim, "--", color=colours[c], alpha=0.8, label=f"{c}: map similarity")
    ax.set(xlabel="sparsity (%)", ylabel="fraction / Spearman", ylim=(-0.05, 1.05),
           title=f"{result.model}: {quality} on {len(result.held_out)} held-out images (solid; dotted: "
                 "before recovery) vs explanation similarity (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    figures["headline"] = fig

    fig = new_figure(12, 3.6, dpi=100, layout=None)
    panels = (("params", "parameters (% of original)", lambda p: 100 * p.nonzero / result.baseline["nonzero"]),
              ("macs", "MACs (% of original)", lambda p: 100 * p.macs / result.baseline["macs"]),
              ("latency", "latency (% of original, timed in turns)",
               lambda p: 100 * p.latency_ms / p.latency_original_ms))
    for i, (_, label, get) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        for c in result.criteria:
            xs, ys = result.series(c, get)
            if xs:
                ax.plot(xs, ys, "-o", color=colours[c], label=c)
        ax.set(xlabel="sparsity (%)", title=label)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    figures["cost"] = fig

    drawn = [m for m in result.methods if m not in result.skipped_methods]
    fig = new_figure(9, 2.8 * max(len(drawn), 1), dpi=100, layout=None)
    for row, method in enumerate(drawn):
        for col, key in enumerate(("spearman", "ssim")):
            ax = fig.add_subplot(max(len(drawn), 1), 2, 2 * row + col + 1)
            for c in result.criteria:
                xs, ys = result.series(c, lambda p, m=method, k=key: p.drift.get(m, {}).get(k, float("nan")))
                if xs:
                    ax.plot(xs, ys, "-o", color=colours[c], label=c)
            ax.set(xlabel="sparsity (%)", ylim=(-0.05, 1.05),
                   title=f"{method}: {'Spearman' if key == 'spearman' else 'SSIM'} vs original")
            ax.grid(alpha=0.3)
    if fig.axes:
        fig.axes[0].legend(fontsize=7)
    figures["drift"] = fig

    fig = new_figure(6, 3.8, dpi=100, layout=None)
    ax = fig.add_subplot(1, 1, 1)
    for c in result.criteria:
        xs, ys = result.series(c, "pathway_iou")
        if xs:
            ax.plot(xs, ys, "-o", color=colours[c], label=c)
    ax.set(xlabel="sparsity (%)", ylabel="IoU", ylim=(-0.05, 1.05),
           title="critical pathway overlap with the original")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figures["pathway"] = fig
    for fig in figures.values():
        fig.tight_layout()
    return figures


# ---- dissect -------------------------------------------------------------------------------

def dissect(result, units=None, concept_sweep=None) -> dict:
    """concepts (detectors per layer), top_units (with `units`: the best detectors' top
    images) and sweep (with a core.model_pruning.concepts.ConceptSweep)."""
    figures = {"concepts": dissection_summary(result)}
    if units:
        figures["top_units"] = unit_montage(units)
    if concept_sweep is not None:
        figures["sweep"] = concepts_under_pruning(concept_sweep)
    return figures


def dissection_summary(result):
    """Per dissected layer: detector units stacked by concept category, and the unique concepts."""
    summary = result.summary()
    fig = new_figure(max(5.0, 1.6 * len(summary) + 2.5), 4.0, 110)
    ax = fig.add_subplot()
    x = np.arange(len(summary))
    bottom = np.zeros(len(summary))
    for k, category in enumerate(result.categories):
        counts = np.array([s["per_category"][category] for s in summary], float)
        ax.bar(x, counts, 0.6, bottom=bottom, label=category, color=f"C{k}")
        bottom += counts
    for i, s in enumerate(summary):
        ax.annotate(f"{s['detectors']}/{s['units']} units\n{s['unique_concepts']} concepts",
                    (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [s["layer"] for s in summary], fontsize=8)
    ax.set_ylabel(f"units detecting a concept (IoU > {result.iou_min:g})")
    ax.set_ylim(0, max(1.0, bottom.max()) * 1.25)
    ax.set_title(f"{result.model} on {Path(result.source).name}: {result.images} images", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return fig


def unit_montage(rows):
    """One row per unit: its title and its top images side by side. rows: [(title, crops)],
    crops as core.dissection.units.unit_crops gives them."""
    from skimage.util import montage

    fig = new_figure(9.0, 1.25 * len(rows), 110)
    for i, (title, crops) in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, i + 1)
        images = np.stack([crop for crop, _, _ in crops])
        ax.imshow(montage(images, grid_shape=(1, len(images)), padding_width=2, fill=(255, 255, 255),
                          channel_axis=-1))
        ax.set_title(title, fontsize=8, loc="left")
        ax.set_axis_off()
    return fig


def concepts_under_pruning(sweep):
    """Concept detectors, unique concepts and the model's accuracy (or agreement with the
    original) against sparsity, one curve per criterion (dashed: fine-tuned after pruning)."""
    fig = new_figure(12.0, 3.8, 110)
    axes = fig.subplots(1, 3)
    labelled = all(p.accuracy is not None for p in sweep.points)
    panels = (("detectors", "units detecting a concept"), ("unique_concepts", "unique concepts"),
              ("accuracy" if labelled else "agreement",
               "test accuracy" if labelled else "top-1 agreement with the original"))
    for k, criterion in enumerate(sweep.criteria):
        points = sorted((p for p in sweep.points if p.criterion == criterion), key=lambda p: p.sparsity)
        tuned = any(p.finetuned for p in points)
        for ax, (key, _) in zip(axes, panels):
            ax.plot([p.reached for p in points], [getattr(p, key) for p in points],
                    "--" if tuned else "-", marker="o", color=f"C{k}",
                    label=criterion + (" + fine-tuning" if tuned else ""))
    for ax, (_, label) in zip(axes, panels):
        ax.set_xlabel("pruned (% of channels; magnitude: of weights)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[2].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8, frameon=False)
    return fig
