"""The images evaluated: loaded one at a time by index, and prepared as the model sees them."""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core.errors import PruneScopeError


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


def synthetic_source(config, split: str = "test", count: int | None = None) -> Source:
    from core.evaluation.synthetic import make_item

    count = getattr(config, split) if count is None else min(count, getattr(config, split))

    def load(i: int) -> Item:
        rgb, label, mask = make_item(config, split, i)
        return Item(rgb, label, mask, f"{split}/{i}")

    return Source(f"synthetic {split}", count, load, True, config.class_names)


def folder_source(root, masks=None, limit: int | None = None, class_names=None) -> Source:
    """An ImageFolder: root/<class>/<image>, classes in sorted order (torchvision's convention),
    or, when every folder is named by one of `class_names` (or its id), those classes' ids;
    a folder of images without class folders has no labels. Masks, when given, are images at
    masks/<class>/<image stem>.png (any size and mode; pixels >= 128 are the object)."""
    from core.io.images import class_id, list_images, load_image

    root = Path(root)
    if not root.is_dir():
        raise PruneScopeError(f"{root}: no such dataset folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and list_images(p))
    ids = {c: i for i, c in enumerate(classes)}
    if class_names and all(class_id(c, class_names) is not None for c in classes):
        ids = {c: class_id(c, class_names) for c in classes}
    entries = [(path, ids[c]) for c in classes for path in list_images(root / c)]
    if not classes:
        entries = [(path, None) for path in list_images(root)]
    if not entries:
        raise PruneScopeError(f"{root}: no images (expected {root}/<class>/<image> files)")
    entries = entries[:limit] if limit else entries
    mask_root = Path(masks) if masks else None
    if mask_root is not None and not mask_root.is_dir():
        raise PruneScopeError(f"{mask_root}: no such mask folder")

    def load(i: int) -> Item:
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

    in_order = classes if ids == {c: i for i, c in enumerate(classes)} else None  # else the model's
    return Source(str(root), len(entries), load, mask_root is not None, in_order or None)


def prepare(model, item: Item, target_rule: str):
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
        predicted = int(model.module(x).argmax(1).item())
    if target_rule == "label":
        if item.label is None:
            raise PruneScopeError(f"{item.name}: no class folder, so no label to explain")
        if item.label >= len(model.class_names):
            raise PruneScopeError(f"{item.name}: label {item.label} is not one of the model's "
                                  f"{len(model.class_names)} classes")
        target = int(item.label)
    else:
        target = predicted
    return x, view, mask, target, predicted


def load_dataset(model, source: Source, rows, target_rule: str) -> "Dataset":
    """Items of a source as a core.evaluation.synthetic.Dataset of what the model sees (views at its input
    size, aligned masks); labels are the classes the retrained models learn."""
    from core.evaluation.synthetic import Dataset

    views, labels, masks = [], [], []
    for i in rows:
        item = source.load(i)
        x, view, mask, target, _ = prepare(model, item, target_rule)
        views.append(view)
        labels.append(target if item.label is None else item.label)
        masks.append(mask)
    has_masks = all(m is not None for m in masks)
    return Dataset(np.stack(views), np.asarray(labels, np.int64),
                   np.stack(masks) if has_masks else None, source.class_names or [],
                   np.asarray(list(rows), np.int64))
