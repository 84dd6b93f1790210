"""What one unit of a dissection sees: its receptive field, its top images cropped around its peak,
the concepts one input's pathway runs through, and a reference folder's top images (cached per
model, folder and layer)."""
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from core.dissection.dissect import FORMAT, Dissection, LayerDissection, iter_dissect
from core.errors import PruneScopeError
from core.network import neurons
from core.progress import Job


def receptive_field(model, layer_name: str, seed: int = 0) -> int:
    """The side, in input pixels, of the effective receptive field of a unit in the middle of
    layer `layer_name`'s map: where its gradient on a random input is at least 1 % of its peak."""
    size = model.input_size
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, model.channels, size, size, generator=generator).to(model.device)
    x.requires_grad_(True)
    layers = neurons.discover_layers(model.module, x.detach())
    index = next((i for i, layer in enumerate(layers) if layer.name == layer_name), None)
    if index is None:
        raise PruneScopeError(f"no activation layer '{layer_name}' in this model")
    kept = {}

    def keep(i: int, out: torch.Tensor) -> torch.Tensor:
        if i == index:
            kept["out"] = out
        return out

    with torch.enable_grad(), neurons.intercept(keep):
        model.module(x)
    out = kept["out"]
    h, w = out.shape[2:]
    out[0, :, h // 2, w // 2].sum().backward()
    grad = x.grad[0].abs().sum(0)
    if not grad.max() > 0:
        return size
    rows, cols = torch.nonzero(grad >= 0.01 * grad.max(), as_tuple=True)
    side = max(int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
    return int(min(size, max(side, math.ceil(size / min(h, w)))))


def unit_crops(model, source, layer: LayerDissection, unit: int, side: int,
               out_size: int = 96) -> list[tuple[np.ndarray, float, str]]:
    """A unit's top-activating images, each cropped to the receptive field around its peak:
    (crop as out_size x out_size x 3 uint8, peak activation, image name)."""
    import cv2

    top = layer.top_images
    h, w = layer.shape[1:]
    size = model.input_size
    crops = []
    for value, index, where in zip(top["value"][unit], top["index"][unit], top["where"][unit]):
        if index >= source.count:
            raise PruneScopeError(f"the dissection names image {index}, the folder has {source.count}")
        item = source.load(index)
        _, view = model.preprocess(item.rgb)
        y, x = divmod(int(where), w)
        cy, cx = (y + 0.5) * size / h, (x + 0.5) * size / w
        half = side / 2
        y0 = int(round(min(max(cy - half, 0), size - side)))
        x0 = int(round(min(max(cx - half, 0), size - side)))
        patch = view[y0:y0 + side, x0:x0 + side]
        crops.append((cv2.resize(patch, (out_size, out_size), interpolation=cv2.INTER_AREA),
                      float(value), item.name))
    return crops


def pathway_concepts(dissection: Dissection, layers, masks, scores) -> list[dict]:
    """The concepts that the kept units of the dissected layers detect, ranked by the kept
    neurons' scores: which concepts this decision runs through. layers, masks, scores: the
    engine's activation layers and, per layer, its pathway mask and neuron scores (1 x C x H x W)."""
    by_name = {layer.name: i for i, layer in enumerate(layers)}
    totals: dict[str, dict] = {}
    grand = 0.0
    for dissected in dissection.layers:
        i = by_name.get(dissected.name)
        if i is None or len(layers[i].shape) != 3:
            continue
        kept = (scores[i] * masks[i]).reshape(layers[i].shape[0], -1).sum(1).float().cpu()
        grand += float(kept.sum())
        for unit in dissected.detectors():
            if unit.unit < len(kept) and kept[unit.unit] > 0:
                entry = totals.setdefault(unit.concept, {"concept": unit.concept,
                                                         "category": unit.category,
                                                         "score": 0.0, "units": []})
                entry["score"] += float(kept[unit.unit])
                entry["units"].append((dissected.name, unit.unit))
    ranked = sorted(totals.values(), key=lambda e: -e["score"])
    for entry in ranked:
        entry["share"] = entry["score"] / grand if grand > 0 else 0.0
    return ranked


def reference_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunescope" / "reference"


def reference_key(model, folder, layer_name: str) -> str:
    """Changes with the weights, the preprocessing, the layer and the folder's files."""
    import hashlib

    from core.io.images import list_images

    files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in list_images(folder)]
    text = repr((FORMAT, model.weights_hash(), model.input_size, model.resize_size,
                 model.mean, model.std, str(folder), layer_name, files))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def iter_reference_tops(model, folder, layer_name: str, cache_dir=None,
                        batch: int = 8) -> Job[LayerDissection]:
    """The top images of every unit of one layer over a folder of images (no masks), computed
    once and then read from the cache."""
    from core.dissection.concepts import image_folder
    from core.io.output import write_text

    path = Path(cache_dir or reference_cache_dir()) / f"{reference_key(model, folder, layer_name)}.json"
    if path.is_file():
        try:
            return Dissection.from_json(json.loads(path.read_text())).layers[0]
        except (OSError, ValueError, PruneScopeError, IndexError):
            pass  # a damaged cache entry is computed again
    result = yield from iter_dissect(model, image_folder(folder), [layer_name], batch, top_only=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(result.to_json()))
    return result.layers[0]


def graph_concepts(dissection: Dissection, graph) -> dict[str, str]:
    """node id -> the concept its unit detects, for the nodes of a pathway graph
    (core.pathway.graph) whose layer was dissected and whose unit is a detector."""
    detectors = {(layer.name, unit.unit): unit.concept for layer in dissection.layers for unit in layer.detectors()}
    return {n.id: detectors[n.layer, n.channel] for n in graph.nodes if (n.layer, n.channel) in detectors}
