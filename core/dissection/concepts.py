"""Concept data for network dissection: images with one mask per human concept they show.

Three sources, loaded one image at a time by index (so each rank loads only its own):
- the synthetic scenes (shapes, colours, patterns, textures, background), offline;
- a folder of images with a mask folder, MASKS/<concept>/<image stem>.png, or
  MASKS/<category>/<concept>/<image stem>.png to group concepts into categories;
- the Broden layout (index.csv, label.csv, images/), for users who have downloaded it.
A mask covers the whole image, at any resolution; pixels >= 128 of any channel are the concept.
"""
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.errors import PruneScopeError

USER_CATEGORY = "concept"


@dataclass(frozen=True)
class Concept:
    name: str
    category: str


@dataclass
class ConceptItem:
    rgb: np.ndarray          # H x W x 3 uint8
    concepts: list[int]      # indices into the source's concepts, those present in the image
    masks: np.ndarray        # len(concepts) x h x w bool, each covering the whole image
    name: str
    label: int | None = None


@dataclass
class ConceptSource:
    name: str
    concepts: list[Concept]
    count: int
    load: Callable[[int], ConceptItem]

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(c.category for c in self.concepts))


def synthetic_concepts(config, split: str = "test", count: int | None = None) -> ConceptSource:
    """The synthetic benchmark's scenes: every image gives its object, colour, pattern, texture
    and background masks (core.evaluation.synthetic.CONCEPTS)."""
    from core.evaluation.synthetic import CONCEPTS, make_scene

    names = {**CONCEPTS, "object": tuple(config.class_names)}
    concepts = [Concept(name, category) for category, group in names.items() for name in group]
    index = {c.name: i for i, c in enumerate(concepts)}
    count = getattr(config, split) if count is None else min(count, getattr(config, split))

    def load(i: int) -> ConceptItem:
        scene = make_scene(config, split, i)
        present = [index[name] for name in scene.concepts]
        return ConceptItem(scene.image, present, np.stack(list(scene.concepts.values())),
                           f"{split}/{i}", scene.label)

    return ConceptSource(f"synthetic {split}", concepts, count, load)


def _mask_file(path: Path) -> np.ndarray:
    from core.io.images import load_image

    return load_image(path).max(axis=2) >= 128


def mask_folder(images, masks, limit: int | None = None) -> ConceptSource:
    """Images (the files directly in `images`) with their masks in `masks` (see the module's
    docstring). An image without a mask of some concept does not show that concept."""
    from core.io.images import list_images

    images, masks = Path(images), Path(masks)
    if not masks.is_dir():
        raise PruneScopeError(f"{masks}: no such mask folder")
    files = list_images(images)[:limit] if limit else list_images(images)
    if not files:
        raise PruneScopeError(f"{images}: no images")
    concepts, folders = [], []
    for top in sorted(p for p in masks.iterdir() if p.is_dir() and not p.name.startswith(".")):
        inner = sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith("."))
        for folder, category in ([(p, top.name) for p in inner] or [(top, USER_CATEGORY)]):
            concepts.append(Concept(folder.name, category))
            folders.append(folder)
    if not concepts:
        raise PruneScopeError(f"{masks}: no concept folders (expected {masks}/<concept>/<image stem>.png)")
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        raise PruneScopeError(f"{images}: two images share a name stem, so their masks would be mixed up")
    if not any((folder / f"{stem}.png").is_file() for folder in folders for stem in stems):
        raise PruneScopeError(f"{masks}: no mask is named after an image in {images}")

    def load(i: int) -> ConceptItem:
        from core.io.images import load_image

        rgb = load_image(files[i])
        present, found = [], []
        for c, folder in enumerate(folders):
            path = folder / f"{files[i].stem}.png"
            if path.is_file():
                mask = _mask_file(path)
                if mask.any():
                    present.append(c)
                    found.append(mask)
        shape = found[0].shape if found else rgb.shape[:2]
        if any(m.shape != shape for m in found):
            raise PruneScopeError(f"{files[i].name}: its masks differ in size")
        stack = np.stack(found) if found else np.zeros((0, *shape), bool)
        return ConceptItem(rgb, present, stack, files[i].name)

    return ConceptSource(str(masks), concepts, len(files), load)


# --- Broden ---------------------------------------------------------------------------------
# index.csv: image, split, ih, iw, sh, sw, then one column per category, each a ';'-list of
# label images (under images/, label = R + 256 G, 0 unlabelled) or whole-image label numbers.
# label.csv: number, name, category ("color(12);object(3)"), ...
BRODEN_META = ("image", "split", "ih", "iw", "sh", "sw")


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise PruneScopeError(f"{path.parent}: not a Broden folder (no {path.name})")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def broden(root, split: str | None = None, limit: int | None = None) -> ConceptSource:
    """A dataset in the Broden layout, optionally one split ('train' or 'val')."""
    from core.io.images import load_image

    root = Path(root)
    rows = _read_csv(root / "index.csv")
    concepts: dict[int, Concept] = {}
    for row in _read_csv(root / "label.csv"):
        try:
            number, name = int(row["number"]), row["name"]
        except (KeyError, TypeError, ValueError):
            raise PruneScopeError(f"{root / 'label.csv'}: a row without a number and a name") from None
        # "color(12);object(3)": the label's categories with its code in each; the first is its own
        category = (row.get("category") or "").split(";")[0].split("(")[0]
        if number and category:
            concepts[number] = Concept(name, category)
    if not rows:
        raise PruneScopeError(f"{root / 'index.csv'}: no images")
    categories = [k for k in rows[0] if k not in BRODEN_META]
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    rows = rows[:limit] if limit else rows
    order = sorted(concepts)
    index = {number: i for i, number in enumerate(order)}

    def entries(row, category):
        return [e for e in (row.get(category) or "").split(";") if e]

    def load(i: int) -> ConceptItem:
        row = rows[i]
        try:
            size = (int(row["sh"]), int(row["sw"]))
        except (KeyError, ValueError):
            raise PruneScopeError(f"{row.get('image')}: index.csv lacks its segmentation size") from None
        masks: dict[int, np.ndarray] = {}
        for category in categories:
            for entry in entries(row, category):
                if entry.isdigit():
                    labels = np.full(size, int(entry), np.int32)
                else:
                    pixels = load_image(root / "images" / entry).astype(np.int32)
                    labels = pixels[..., 0] + 256 * pixels[..., 1]
                    if labels.shape != size:
                        raise PruneScopeError(f"{entry}: {labels.shape[1]}x{labels.shape[0]}, "
                                              f"index.csv says {size[1]}x{size[0]}")
                for number in np.unique(labels):
                    if number in index:
                        masks[number] = masks.get(number, np.zeros(size, bool)) | (labels == number)
        present = sorted(masks)
        stack = np.stack([masks[n] for n in present]) if present else np.zeros((0, *size), bool)
        return ConceptItem(load_image(root / "images" / row["image"]), [index[n] for n in present],
                           stack, row["image"])

    return ConceptSource(str(root), [concepts[n] for n in order], len(rows), load)


def image_folder(images, limit: int | None = None) -> ConceptSource:
    """Images without masks: a reference folder for a unit's top-activating images."""
    from core.io.images import list_images, load_image

    files = list_images(images)[:limit] if limit else list_images(images)
    if not files:
        raise PruneScopeError(f"{images}: no images")

    def load(i: int) -> ConceptItem:
        rgb = load_image(files[i])
        return ConceptItem(rgb, [], np.zeros((0, *rgb.shape[:2]), bool), files[i].name)

    return ConceptSource(str(images), [], len(files), load)


def open_concepts(spec: str, images=None, limit: int | None = None, config=None) -> ConceptSource:
    """`synthetic`, a Broden folder (it has index.csv), or a mask folder for `images`."""
    if spec == "synthetic":
        from core.evaluation.synthetic import SyntheticConfig

        return synthetic_concepts(config or SyntheticConfig(), "test", limit)
    path = Path(spec)
    if (path / "index.csv").is_file():
        return broden(path, limit=limit)
    if images is None:
        raise PruneScopeError(f"{spec}: a mask folder needs the images it masks (--images DIR)")
    return mask_folder(images, path, limit)
