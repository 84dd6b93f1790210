"""Network dissection (Bau et al., CVPR 2017): which human concept each unit of a layer detects.

For each channel of a chosen activation layer, its threshold is the top quantile (0.5 %) of its
activations over the dataset. Its activation maps, upsampled to the masks' resolution and cut at
that threshold, are scored against every concept's masks by IoU summed over the dataset; it
detects concept c when that IoU exceeds 0.04. As NetDissect does, a unit's area enters the IoU
of a concept only over images where the concept's category is labelled.

Activations are streamed through two passes (thresholds, then IoU counts) into per-unit
accumulators and never held whole. Under torchrun each rank takes every world-th batch of the
same global batching; the accumulators are exact (top-k values, integer counts), so the merged
result equals one process's.
"""
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from core.dissection.tally import Tally, TopImages, TopValues
from core.errors import PruneScopeError
from core.network import neurons
from core.progress import Job, Progress
from core.runtime import distributed

QUANTILE = 0.005
IOU_MIN = 0.04
RESOLUTION = 112  # masks and upsampled activations are compared at most at this size (NetDissect's)
FORMAT = 1


# --- layers ---------------------------------------------------------------------------------

def spatial_layers(layers: list[neurons.Layer]) -> list[int]:
    """Layers whose units are channels of a spatial map (C x H x W): those dissection can score."""
    return [i for i, layer in enumerate(layers) if len(layer.shape) == 3]


def default_layers(layers: list[neurons.Layer], count: int = 3) -> list[int]:
    """The last activation of each of the last `count` spatial resolutions: the last stages."""
    last: dict[tuple, int] = {}
    for i in spatial_layers(layers):
        last[layers[i].shape[1:]] = i
    return sorted(last.values())[-count:]


def choose_layers(layers: list[neurons.Layer], wanted) -> list[int]:
    """Layer indices for names (or indices) the user gave; the default stages when none."""
    if not wanted:
        chosen = default_layers(layers)
    else:
        names = {layer.name: i for i, layer in enumerate(layers)}
        chosen = []
        for w in wanted:
            i = int(w) if str(w).isdigit() and int(w) < len(layers) else names.get(str(w))
            if i is None:
                raise PruneScopeError(f"no activation layer '{w}'; spatial layers: "
                                      + ", ".join(layers[j].name for j in spatial_layers(layers)))
            chosen.append(i)
    flat = [layers[i].name for i in chosen if len(layers[i].shape) != 3]
    if flat:
        raise PruneScopeError(f"{', '.join(flat)}: not spatial maps (channels x height x width), "
                              "so no unit can be compared with a concept mask")
    if not chosen:
        raise PruneScopeError("this model has no spatial activation layer to dissect")
    return sorted(set(chosen))


def activations(module, x: torch.Tensor, indices) -> dict[int, torch.Tensor]:
    """The outputs of activation layers `indices` in one forward of x (copies: a later
    in-place op must not change them)."""
    wanted, kept = set(indices), {}

    def keep(i: int, out: torch.Tensor) -> torch.Tensor:
        if i in wanted:
            kept[i] = out.detach().clone()
        return out

    with torch.no_grad(), neurons.intercept(keep):
        module(x)
    return kept


# --- aligning masks with the model's view ---------------------------------------------------

def view_box(model, height: int, width: int) -> tuple[float, float, float, float]:
    """The part of an image the model sees (top, left, height, width as fractions of it):
    preprocess resizes the short side to resize_size and centre-crops input_size."""
    scale = model.resize_size / min(height, width)
    rh = model.resize_size if height <= width else int(scale * height)
    rw = model.resize_size if width <= height else int(scale * width)
    size = model.input_size
    top, left = round((rh - size) / 2), round((rw - size) / 2)
    return top / rh, left / rw, size / rh, size / rw


def align_masks(masks: np.ndarray, box, resolution: int) -> torch.Tensor:
    """K x h x w masks of a whole image -> K x resolution x resolution masks of the model's view."""
    count, h, w = masks.shape
    if count == 0:
        return torch.zeros(0, resolution, resolution, dtype=torch.bool)
    top, left, bh, bw = box
    y0, x0 = max(0, round(top * h)), max(0, round(left * w))
    y1, x1 = min(h, max(y0 + 1, round((top + bh) * h))), min(w, max(x0 + 1, round((left + bw) * w)))
    part = torch.from_numpy(np.ascontiguousarray(masks[:, y0:y1, x0:x1]))
    if part.shape[1:] == (resolution, resolution):
        return part
    part = part.float()[None]
    return F.interpolate(part, size=(resolution, resolution), mode="bilinear",
                         align_corners=False)[0] >= 0.5


# --- results --------------------------------------------------------------------------------

@dataclass
class Unit:
    unit: int
    concept: str       # best concept
    category: str
    iou: float
    runners_up: list = field(default_factory=list)  # [(concept, iou)] next best

    @property
    def detector(self) -> bool:
        return self.iou > IOU_MIN


@dataclass
class LayerDissection:
    name: str
    shape: tuple
    thresholds: list[float]
    units: list[Unit]
    top_images: dict    # value, index, where: units x TOP_IMAGES lists

    def detectors(self) -> list[Unit]:
        return [u for u in self.units if u.detector]

    def per_concept(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for u in self.detectors():
            counts[u.concept] = counts.get(u.concept, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def per_category(self, categories) -> dict[str, int]:
        counts = {c: 0 for c in categories}
        for u in self.detectors():
            counts[u.category] += 1
        return counts

    def summary(self, categories) -> dict:
        return {"layer": self.name, "units": len(self.units), "detectors": len(self.detectors()),
                "unique_concepts": len(self.per_concept()), "per_category": self.per_category(categories),
                "per_concept": self.per_concept()}


@dataclass
class Dissection:
    model: str
    source: str
    images: int
    concepts: list          # [(name, category)]
    layers: list[LayerDissection]
    image_names: list[str]  # by index, for the top images
    seconds: float = 0.0
    quantile: float = QUANTILE
    iou_min: float = IOU_MIN
    resolution: int = RESOLUTION
    skipped: dict = field(default_factory=dict)  # image index -> why it could not be used
    identity: dict | None = None  # model_identity of the model dissected; None in older files

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(c for _, c in self.concepts))

    def layer(self, name: str) -> LayerDissection | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    def summary(self) -> list[dict]:
        return [layer.summary(self.categories) for layer in self.layers]

    def mismatch(self, model) -> str | None:
        """Why this is not a dissection of `model`, naming what differs; None when it is. The
        model is matched by what it is, not by its name (a model card may rename it); files
        made before identities were recorded are matched by name."""
        differs = f"dissects {self.model}, not the current model {model.name}"
        if self.identity is None:
            return None if self.model == model.name else differs
        theirs = model_identity(model)
        what = [f"{label} {self.identity.get(key)}{unit} (current: {theirs[key]}{unit})"
                for key, label, unit in (("architecture", "architecture", ""),
                                         ("input_size", "input size", " px"))
                if self.identity.get(key) != theirs[key]]
        if self.identity.get("weights") != theirs["weights"]:
            what.append("other weights")
        return f"{differs}: {', '.join(what)}" if what else None

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "model": self.model, "source": self.source, "images": self.images,
            "quantile": self.quantile, "iou_min": self.iou_min, "resolution": self.resolution,
            "seconds": round(self.seconds, 2), "concepts": [list(c) for c in self.concepts],
            "skipped": self.skipped, "identity": self.identity,
            "summary": self.summary(), "image_names": self.image_names,
            "layers": [{"name": layer.name, "shape": list(layer.shape), "thresholds": layer.thresholds,
                        "units": [{"unit": u.unit, "concept": u.concept, "category": u.category,
                                   "iou": u.iou, "runners_up": [list(r) for r in u.runners_up]}
                                  for u in layer.units],
                        "top_images": layer.top_images} for layer in self.layers],
        }

    @classmethod
    def from_json(cls, data: dict) -> "Dissection":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PruneScopeError("not a PruneScope dissection (dissection.json of `dissect`)")
        try:
            layers = [LayerDissection(
                layer["name"], tuple(layer["shape"]), list(layer["thresholds"]),
                [Unit(int(u["unit"]), str(u["concept"]), str(u["category"]), float(u["iou"]),
                      [tuple(r) for r in u.get("runners_up", [])]) for u in layer["units"]],
                dict(layer["top_images"])) for layer in data["layers"]]
            return cls(str(data["model"]), str(data["source"]), int(data["images"]),
                       [tuple(c) for c in data["concepts"]], layers, list(data["image_names"]),
                       float(data.get("seconds", 0.0)), float(data["quantile"]),
                       float(data["iou_min"]), int(data["resolution"]), dict(data.get("skipped", {})),
                       dict(data["identity"]) if data.get("identity") is not None else None)
        except (KeyError, TypeError, ValueError) as err:
            raise PruneScopeError(f"dissection file is damaged ({type(err).__name__}: {err})") from None


def model_identity(model) -> dict:
    """What a model is, whatever it is called: its architecture, a hash of its weights and
    its input size."""
    return {"architecture": type(model.module).__name__, "weights": model.weights_hash(),
            "input_size": model.input_size}


# --- the passes -----------------------------------------------------------------------------

def _batches(count: int, size: int, ctx) -> list[range]:
    """This rank's share of one global batching: every world-th batch."""
    every = [range(s, min(count, s + size)) for s in range(0, count, size)]
    return every[ctx.rank::ctx.world]


def _inputs(model, items) -> torch.Tensor:
    return torch.cat([model.preprocess(item.rgb)[0] for item in items])


def load_items(source, rows, skipped: dict | None = None) -> tuple[list[int], list]:
    """The items of `rows` that load, with their indices; the others go into skipped
    (index -> why), when given."""
    from core.errors import reason

    kept, items = [], []
    for i in rows:
        try:
            items.append(source.load(i))
            kept.append(i)
        except Exception as err:  # one unreadable image or mask must not cost the dissection
            if skipped is not None:
                skipped[i] = reason(err)
    return kept, items


def above(values: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Where a unit is in its top quantile. Saturating activations (ReLU6) tie at their top,
    and then the threshold is that top: values at it count (within float rounding of the
    upsampling), except at 0, where a ReLU's silent majority ties."""
    return torch.where(threshold > 0, values >= threshold * (1 - 1e-6), values > threshold)


def iter_dissect(model, source, layer_names=None, batch: int = 16, quantile: float = QUANTILE,
                 ctx=distributed.SINGLE, top_only: bool = False) -> Job[Dissection | None]:
    """Dissect `model` on `source` (core.dissection.concepts). Returns the Dissection on rank 0 (None on
    the others). With top_only, only the first pass runs: the top images, no concepts."""
    if not 0 < quantile < 1:
        raise PruneScopeError(f"quantile must be between 0 and 1, got {quantile}")
    if source.count < 1:
        raise PruneScopeError(f"{source.name}: no images")
    started = time.perf_counter()
    module = model.module.eval()
    skipped: dict[int, str] = {}
    for i in range(source.count):  # the first image that loads shows the layers
        _, first = load_items(source, [i])
        if first:
            break
    else:
        raise PruneScopeError(f"{source.name}: none of its {source.count} images can be read")
    layers = neurons.discover_layers(module, _inputs(model, first))
    chosen = choose_layers(layers, layer_names)
    batches = _batches(source.count, batch, ctx)
    passes = 1 if top_only else 2
    tops = {i: TopValues(layers[i].shape[0], max(1, round(quantile * source.count
                                                           * math.prod(layers[i].shape[1:]))))
            for i in chosen}
    images = {i: TopImages(layers[i].shape[0]) for i in chosen}
    names: list[tuple[int, str]] = []
    for b, rows in enumerate(batches):
        yield Progress(b / len(batches) / passes, f"thresholds: images {rows.start + 1}-{rows.stop}")
        index, items = load_items(source, rows, skipped)
        if not items:
            continue
        names += [(i, item.name) for i, item in zip(index, items)]
        acts = activations(module, _inputs(model, items), chosen)
        for i in chosen:
            a = acts[i]
            tops[i].add(a.transpose(0, 1).reshape(a.shape[1], -1))
            images[i].add_maps(a, index)
    gathered = distributed.gather((tops, images, names, skipped), ctx)
    if gathered is not None:
        for other_tops, other_images, other_names, other_skipped in gathered[1:]:
            for i in chosen:
                tops[i].merge(other_tops[i])
                images[i].merge(other_images[i])
            names += other_names
            skipped.update(other_skipped)
    thresholds = distributed.broadcast({i: tops[i].threshold() for i in chosen}
                                       if ctx.is_main else None, ctx)
    concepts = source.concepts
    categories = list(dict.fromkeys(c.category for c in concepts))
    category_of = [categories.index(c.category) for c in concepts]
    tallies = {i: Tally(layers[i].shape[0], len(concepts), len(categories)) for i in chosen}
    resolution = min(model.input_size, RESOLUTION)
    for b, rows in enumerate(batches if not top_only else []):
        yield Progress(0.5 + 0.5 * b / len(batches), f"concepts: images {rows.start + 1}-{rows.stop}")
        _, items = load_items(source, rows)  # the same images load as in the first pass
        if not items:
            continue
        acts = activations(module, _inputs(model, items), chosen)
        masks = [align_masks(item.masks, view_box(model, *item.rgb.shape[:2]), resolution)
                 .flatten(1).to(model.device) for item in items]
        present = [list(item.concepts) for item in items]
        labelled = [sorted({category_of[c] for c in item.concepts}) for item in items]
        for i in chosen:
            up = F.interpolate(acts[i], size=(resolution, resolution), mode="bilinear",
                               align_corners=False)
            fired = above(up, thresholds[i].to(up.device)[None, :, None, None]).flatten(2)
            tallies[i].add(fired, present, masks, labelled)
    gathered = distributed.gather(tallies, ctx)
    if gathered is None:
        return None
    for other in gathered[1:]:
        for i in chosen:
            tallies[i].merge(other[i])
    yield Progress(1.0, "scoring units")
    result = []
    for i in chosen:
        iou = tallies[i].iou(category_of)
        result.append(LayerDissection(layers[i].name, layers[i].shape,
                                      [float(t) for t in thresholds[i]],
                                      _units(iou, [] if top_only else concepts),
                                      {"value": images[i].value.tolist(), "index": images[i].index.tolist(),
                                       "where": images[i].where.tolist()}))
    image_names = dict(names)
    return Dissection(model.name, source.name, source.count, [(c.name, c.category) for c in concepts],
                      result, [image_names.get(i, "") for i in range(source.count)],
                      time.perf_counter() - started, quantile, IOU_MIN, resolution,
                      {str(i): why for i, why in sorted(skipped.items())}, model_identity(model))


def _units(iou: torch.Tensor, concepts) -> list[Unit]:
    units = []
    if not concepts:
        return [Unit(u, "", "", 0.0) for u in range(iou.shape[0])]
    ranked = iou.argsort(dim=1, descending=True, stable=True)[:, :4]
    for u in range(iou.shape[0]):
        best, *rest = ranked[u].tolist()
        units.append(Unit(u, concepts[best].name, concepts[best].category, round(float(iou[u, best]), 5),
                          [(concepts[c].name, round(float(iou[u, c]), 5)) for c in rest]))
    return units
