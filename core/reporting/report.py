"""Writing results to disk, in the one format the CLI and the GUI's export share.

DIR/input.npy      the exact 1x3xHxW float32 tensor fed to the model
DIR/<method>.npy   the HxW float32 map, signed, before any display normalisation
DIR/<method>.png   the map drawn in the display mode settings name (core.io.display.render)
DIR/curves.csv     method, curve, step, fraction, probability
DIR/comparison.png the image and all maps side by side, drawn as the PNGs are (core.reporting.figures)
DIR/report.json    prediction, settings and per-method figures: written last, the mark of a
                   complete result (callers write into an output.staged_folder)
"""
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.io import display
from core.methods import BY_NAME
from core.reporting import figures, graph_figures


PATHWAYS_FILES = ("pathways.json", "pathways.png", "overlap.npy")


def save_pathways(summary: dict, folder, layer: str | None = None, **about) -> None:
    """A `pathways` run's results (core.evaluation.pathways.summarize) in folder: the overlap
    matrix as overlap.npy, the figure, and the rest with `about` (dataset, model, ...) as
    pathways.json."""
    from core.io.output import write_text

    folder = Path(folder)
    matrix = summary.pop("matrix")
    np.save(folder / "overlap.npy", matrix)
    figures.save({"pathways": graph_figures.pathways({**summary, "matrix": matrix}, layer)}, folder)
    summary.update(command="pathways", **about)
    write_text(folder / "pathways.json", json.dumps(summary, indent=1))


def write_graph(out_dir, graph) -> list[Path]:
    """pathway_graph.json and pathway_graph.png: a core.pathway.graph.PathwayGraph."""
    out = Path(out_dir)
    (out / "pathway_graph.json").write_text(json.dumps(graph.to_json(), indent=1))
    return [out / "pathway_graph.json", *figures.save({"pathway_graph": graph_figures.pathway_graph(graph)}, out)]


def write_outputs(out_dir, engine, analysis, settings: dict, image_path=None,
                  cmap: str = display.DEFAULT_COLORMAP, alpha: float = display.DEFAULT_OPACITY) -> list[Path]:
    """Every file above. The PNGs are drawn as settings' "display" (a mode or auto) and
    "display_top_percent" say, so that report.json records how they were drawn."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    look = Look(cmap, alpha, settings.get("display", display.AUTO),
                settings.get("display_top_percent", display.DEFAULT_TOP_PERCENT))
    written = [out / "input.npy"]
    np.save(written[0], engine.x.detach().float().cpu().numpy())
    for method, result in analysis.results.items():
        np.save(out / f"{method}.npy", result.map.astype(np.float32))
        written.append(out / f"{method}.npy")
        written.append(display.save_png(out / f"{method}.png", look.draw(engine.view, method, result.map)))
    written.append(write_curves_csv(out / "curves.csv", analysis))
    written += figures.save(figures.explain(engine.view, analysis, look), out)
    written.append(out / "report.json")
    written[-1].write_text(json.dumps(report_dict(engine, analysis, settings, image_path), indent=2))
    return written


@dataclass(frozen=True)
class Look:
    """How the exported maps are drawn (core.io.display.render), each on its own scale."""
    cmap: str = display.DEFAULT_COLORMAP
    opacity: float = display.DEFAULT_OPACITY
    mode: str = display.AUTO
    top_percent: float = display.DEFAULT_TOP_PERCENT

    def draw(self, view: np.ndarray, method: str, attr_map: np.ndarray) -> np.ndarray:
        return display.render(view, attr_map, display.mode_for(method, self.mode), cmap=self.cmap,
                              opacity=self.opacity, top_percent=self.top_percent)


def write_curves_csv(path, analysis) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "curve", "step", "fraction", "probability"])
        for method, result in analysis.results.items():
            if result.curves is None:
                continue
            c = result.curves
            for curve, values in (("deletion", c.deletion), ("insertion", c.insertion)):
                for step, (fraction, prob) in enumerate(zip(c.fractions, values)):
                    writer.writerow([method, curve, step, f"{fraction:.6f}", f"{prob:.6f}"])
    return path


def report_dict(engine, analysis, settings: dict, image_path=None) -> dict:
    pred = analysis.prediction
    methods = {}
    for method, r in analysis.results.items():
        entry = {"seconds": round(r.seconds, 4)}
        if method in BY_NAME:  # what reproduces the map: the CAMs' layer, the others' settings
            settings_of = dict(engine.spec(method).settings(engine.model))
            if "layer" in settings_of:
                entry["layer"] = settings_of.pop("layer")
            entry["params"] = settings_of
        if r.curves is not None:
            entry.update(deletion_auc=r.curves.deletion_auc, insertion_auc=r.curves.insertion_auc)
        if r.lerf is not None:
            entry.update(output_change_lerf=[float(v) for v in r.lerf],
                         output_change_morf=[float(v) for v in r.morf])
        if r.pathway is not None:
            entry["pathway"] = {
                "sparsity": r.pathway.sparsity,
                "sparsity_requested": r.pathway.requested,
                "output_change": r.pathway.output_change,
                "pruned_probability": r.pathway.prob,
                "neurons_kept": [{"layer": name, "kept": kept, "total": total}
                                 for name, kept, total in r.pathway.kept],
            }
        methods[method] = entry
    return {
        "image": str(image_path) if image_path else None,
        "source": str(Path(image_path).resolve()) if image_path else None,
        "model": engine.model.name,
        "device": str(engine.model.device),
        "target": {"id": pred.target, "name": pred.name, "probability": pred.prob},
        "top5": [{"id": i, "name": n, "probability": p} for i, n, p in pred.top5],
        "settings": settings,
        "methods": methods,
        "skipped": analysis.skipped,
        "failed": analysis.failed,
    }


def save_sweep(result, folder) -> list[Path]:
    """A prune-sweep's headline.png, cost.png, drift.png, pathway.png (core.reporting.figures), then
    sweep.json: written last, each file whole, it marks a complete sweep.
    result: core.model_pruning.sweep.SweepResult."""
    from core.io.output import write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = figures.save(figures.sweep(result), folder, dpi=110, bbox_inches="tight")
    return [*plots, write_text(folder / "sweep.json", json.dumps(result.to_json(), indent=1))]


EVALUATION_FILES = ("results.json", "leaderboard.csv")  # what save_evaluation writes beside the figures


def save_evaluation(result: dict, examples, sanity_example, class_names, folder) -> None:
    """An evaluation's leaderboard (into result and leaderboard.csv) and figures, then
    results.json: written last, it marks a complete evaluation. result: iter_benchmark's, without
    its examples, which come apart (arrays, not JSON)."""
    from core.evaluation import leaderboard
    from core.io.output import write_text

    folder = Path(folder)
    metrics, table = leaderboard.rows(result["methods"])
    result["leaderboard"] = {"metrics": metrics, "rows": table}
    leaderboard.write_csv(folder / "leaderboard.csv", metrics, table)
    if result["images"]:  # every image failed: the errors say why, and there is nothing to draw
        figures.save(figures.evaluate(result, examples, sanity_example, class_names), folder)
    write_text(folder / "results.json", json.dumps(result, indent=2))


def model_info(model, trained=None) -> dict:
    """The model as results files describe it; a synthetic run adds how it was trained."""
    info = {"name": model.name, "classes": len(model.class_names),
            "input_size": model.input_size}
    if model.names_assumed:
        info["class_names"] = "ImageNet's, assumed"
    if trained is not None:
        info.update(test_accuracy=trained.test_accuracy, train_seconds=trained.train_seconds,
                    cached=trained.cached, weights=str(trained.path))
    return info
