"""The images evaluated: loaded one at a time by index, and prepared as the model sees them."""
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from core.errors import PruneScopeError

if TYPE_CHECKING:
    from core.evaluation.synthetic import Dataset


@dataclass
class Item:
    rgb: np.ndarray            # H x W x 3 uint8, as stored (the model's preprocess is applied)
    label: int | None          # class index, None when unknown
    mask: np.ndarray | None    # H x W bool ground truth, None when unknown
    name: str


@dataclass
class Source:
    """Evaluation images, loaded one at a time by index (so each rank loads only its own)."""
    name: str
    count: int
    load: Callable[[int], Item]
    has_masks: bool
    class_names: list[str] | None = None  # the dataset's classes, in label order
    labels_key: str | None = None  # where labels come from beside the folders (a CSV's digest)


def synthetic_source(config, split: str = "test", count: int | None = None) -> Source:
    from core.evaluation.synthetic import make_item

    count = getattr(config, split) if count is None else min(count, getattr(config, split))

    def load(i: int) -> Item:
        rgb, label, mask = make_item(config, split, i)
        return Item(rgb, label, mask, f"{split}/{i}")

    return Source(f"synthetic {split}", count, load, True, config.class_names)


def folder_source(root, masks=None, limit: int | None = None, class_names=None, labels_csv=None,
                  strict: bool = False, sample: int | None = None, seed: int = 0) -> Source:
    """An ImageFolder root/<class>/<image>, or a flat folder of images (labelled by labels_csv).

    A class folder stands for the model's class it names: a class id, a class name or, for an
    ImageNet model, a WordNet ID (n02124075). Otherwise folders are numbered in sorted order
    (torchvision's ImageFolder): the dataset's own classes. strict (the labels are what is
    explained): that is allowed only for a model without class names; else a folder that names
    no class is an error, before any image is read. Masks, when given, are images at masks/<class>/<image
    stem>.png (any size and mode; pixels >= 128 are the object). sample: that many images drawn
    at random (seed), the classes in proportion; limit: the first that many."""
    from core.io.images import list_images

    root = Path(root)
    if not root.is_dir():
        raise PruneScopeError(f"{root}: no such dataset folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and list_images(p))
    if labels_csv is not None:
        entries, in_order = _csv_entries(root, Path(labels_csv), class_names), None
    elif classes:
        ids, in_order = _class_ids(root, classes, class_names, strict)
        entries = [(path, ids[c]) for c in classes for path in list_images(root / c)]
    else:
        entries, in_order = [(path, None) for path in list_images(root)], None
        if strict:
            raise PruneScopeError(f"{root}: no class folders, so no labels to explain: give them "
                                  "with --labels-csv, or explain the predicted class")
    if not entries:
        raise PruneScopeError(f"{root}: no images (expected {root}/<class>/<image> files)")
    if sample:
        entries = _stratified(entries, sample, seed)
    entries = entries[:limit] if limit else entries
    mask_root = Path(masks) if masks else None
    if mask_root is not None and not mask_root.is_dir():
        raise PruneScopeError(f"{mask_root}: no such mask folder")

    def load(i: int) -> Item:
        from core.io.images import load_image

        path, label = entries[i]
        mask = None
        if mask_root is not None:
            rel = path.relative_to(root).with_suffix(".png")
            mask_path = mask_root / rel
            if not mask_path.is_file():
                from core.errors import ImageError

                raise ImageError(f"{path}: no mask at {mask_path}")
            mask = load_image(mask_path).max(axis=2) >= 128
        return Item(load_image(path), label, mask, str(path.relative_to(root)))

    labels_key = None
    if labels_csv is not None:
        import hashlib

        labels_key = hashlib.sha256(Path(labels_csv).read_bytes()).hexdigest()[:16]
    return Source(str(root.resolve()), len(entries), load, mask_root is not None, in_order, labels_key)


def _generic(class_names) -> bool:
    return not class_names or all(n == f"class {i}" for i, n in enumerate(class_names))


def _class_ids(root: Path, classes: list[str], class_names, strict: bool) -> tuple[dict, list | None]:
    """Each class folder's label, and the dataset's class names in label order when the folders
    are numbered in sorted order (else None: the labels are the model's classes)."""
    from core.io.images import class_id

    ids = {c: class_id(c, class_names) for c in classes} if class_names else {}
    if class_names and all(i is not None for i in ids.values()):
        return ids, None
    beyond = next((c for c in classes if c.isdigit() and class_names and int(c) >= len(class_names)), None)
    if strict and beyond is not None:
        raise PruneScopeError(f"{root / beyond}: class {beyond} is not one of the model's {len(class_names)} "
                              f"classes (0..{len(class_names) - 1})")
    if _generic(class_names):
        if strict and class_names and len(classes) > len(class_names):
            raise PruneScopeError(f"{root}: {len(classes)} class folders for a model with "
                                  f"{len(class_names)} classes")
        return {c: i for i, c in enumerate(classes)}, classes
    if strict:
        unknown = next(c for c, i in ids.items() if i is None)
        raise PruneScopeError(f"{root / unknown}: the folder names none of the model's {len(class_names)} "
                              f"classes (a class id, a class name{', an ImageNet WordNet ID' if len(class_names) == 1000 else ''})")
    return {c: i for i, c in enumerate(classes)}, classes  # the dataset's own classes


def _csv_entries(root: Path, path: Path, class_names) -> list[tuple[Path, int]]:
    """(image, label) from a CSV of image,label rows: the image by its file name, with or without
    its extension (ImageNet's validation CSV names them without); the label a class id, a WordNet
    ID or a class name, or its first word (ImageNet's PredictionString). A header row is skipped."""
    import csv

    from core.io.images import class_id, list_images

    if not class_names:
        raise PruneScopeError("--labels-csv needs a model with classes")
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as err:
        raise PruneScopeError(f"{path}: cannot read the labels file ({err})") from None
    images = {}
    for image in list_images(root):
        images.setdefault(image.name, image)
        images.setdefault(image.stem, image)
    labels, known = {}, {}  # known: each distinct label resolved once (50,000 rows, 1000 classes)
    for number, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise PruneScopeError(f"{path} line {number}: expected image,label")
        name, label = row[0].strip(), (row[1].split() or [""])[0]
        if label not in known:
            known[label] = class_id(label, class_names)
        index = known[label]
        if index is None:
            if number == 1 and name.lower() in ("image", "imageid", "file", "filename", "path", "name"):
                continue  # the header
            raise PruneScopeError(f"{path} line {number}: '{label}' is not one of the model's "
                                  f"{len(class_names)} classes (a class id, a class name"
                                  f"{', a WordNet ID' if len(class_names) == 1000 else ''})")
        image = images.get(Path(name).name) or images.get(Path(name).stem)
        if image is not None:
            labels[image] = index
    unlabelled = [p for p in list_images(root) if p not in labels]
    if unlabelled:
        raise PruneScopeError(f"{path}: no label for {len(unlabelled)} image(s) of {root} "
                              f"(first: {unlabelled[0].name})")
    return sorted(labels.items())


def _stratified(entries: list, count: int, seed: int) -> list:
    """`count` entries drawn at random, each class in proportion to its share: each class's
    entries shuffled, then taken in turn by how far each class is behind its share."""
    import random

    by_class: dict = {}
    for entry in entries:
        by_class.setdefault(entry[1], []).append(entry)
    rng = random.Random(seed)
    for members in by_class.values():
        rng.shuffle(members)
    taken = dict.fromkeys(by_class, 0)
    chosen = []
    for _ in range(min(count, len(entries))):
        label = min((c for c in by_class if taken[c] < len(by_class[c])),
                    key=lambda c: ((taken[c] + 1) / len(by_class[c]), str(c)))
        chosen.append(by_class[label][taken[label]])
        taken[label] += 1
    return chosen


@dataclass
class Prepared:
    """One item as the model sees it."""
    x: torch.Tensor            # 1 x C x S x S, normalised, on the model's device
    view: np.ndarray           # S x S x 3 uint8, the crop the model sees
    mask: np.ndarray | None    # S x S bool, aligned with the view
    target: int                # the class explained
    predicted: int
    logits: torch.Tensor       # the model's output for x (1 x classes)


def prepare(model, item: Item, target_rule: str) -> Prepared:
    """The model input, the view, the view-aligned mask, and the class to explain."""
    x, view = model.preprocess(item.rgb)
    mask = None
    if item.mask is not None:
        if item.mask.shape != item.rgb.shape[:2]:
            raise PruneScopeError(f"{item.name}: mask is {item.mask.shape[1]}x{item.mask.shape[0]}, "
                                  f"image is {item.rgb.shape[1]}x{item.rgb.shape[0]}")
        # the same resize and crop as the image, so the mask stays aligned with the view
        _, mask_view = model.preprocess(np.repeat(item.mask[..., None].astype(np.uint8) * 255, 3, 2))
        mask = mask_view[..., 0] >= 128
    with torch.no_grad():
        logits = model.module(x)
    predicted = int(logits.argmax(1).item())
    if target_rule == "label":
        if item.label is None:
            raise PruneScopeError(f"{item.name}: no class folder, so no label to explain")
        if item.label >= len(model.class_names):
            raise PruneScopeError(f"{item.name}: label {item.label} is not one of the model's "
                                  f"{len(model.class_names)} classes")
        target = int(item.label)
    else:
        target = predicted
    return Prepared(x, view, mask, target, predicted, logits)


def load_dataset(model, source: Source, rows, target_rule: str) -> "Dataset":
    """Items of a source as a core.evaluation.synthetic.Dataset of what the model sees (views at its input
    size, aligned masks); labels are the classes the retrained models learn."""
    from core.evaluation.synthetic import Dataset

    views, labels, masks = [], [], []
    for i in rows:
        item = source.load(i)
        prepared = prepare(model, item, target_rule)
        views.append(prepared.view)
        labels.append(prepared.target if item.label is None else item.label)
        masks.append(prepared.mask)
    has_masks = all(m is not None for m in masks)
    return Dataset(np.stack(views), np.asarray(labels, np.int64),
                   np.stack(masks) if has_masks else None, source.class_names or [],
                   np.asarray(list(rows), np.int64))
