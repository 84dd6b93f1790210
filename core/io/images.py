"""Reading photos from disk as HxWx3 uint8 RGB, with one clear ImageError for anything bad."""
import functools
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from core.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Pillow's own default (about 89.5 megapixels): warns above it, refuses at twice it. Both are errors here.
# Decoding takes at most 4 bytes a pixel (RGBA, 32-bit), so about 360 MB, plus the RGB copy.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# The models scale the short side up to their resize size (~256 px), so memory grows with the
# aspect ratio: a 1x20000 strip would become 256x5,120,000 (4 GB). 50:1 keeps that under 10 MB.
MAX_ASPECT_RATIO = 50
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def load_image(path) -> np.ndarray:
    """The image at `path` as an HxWx3 uint8 RGB array, upright per its EXIF orientation;
    transparency is composited on white and 16-bit/float data scaled to 8 bits."""
    path = Path(path)
    try:
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file")
        with warnings.catch_warnings():
            # Pillow's notes on damaged metadata (a TIFF tag, EXIF) would add lines to stderr for
            # an image that decodes; one line per bad image is the rule.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_size(path, img.width, img.height)
                img.load()  # decode fully now, so a truncated file fails here and not later
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: too large (over {MAX_PIXELS / 1e6:.0f} megapixels)") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode it") from None
    except Exception as err:  # a decoder's own failure on damaged data, whatever its kind
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ImageError(f"{path}: unreadable or truncated image ({reason})") from None
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"{path}: image has no pixels")
    return rgb


def _check_size(path: Path, width: int, height: int) -> None:
    """Refuse, from the header alone, an image whose decoding or resizing would take too much memory."""
    if width * height > MAX_PIXELS:
        raise ImageError(f"{path}: {width}x{height} is too large (over {MAX_PIXELS / 1e6:.0f} megapixels)")
    if min(width, height) > 0 and max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(f"{path}: {width}x{height} is too elongated (aspect ratio over "
                         f"{MAX_ASPECT_RATIO}:1; resizing it for the model would take too much memory)")


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in _HIGH_DEPTH_MODES:
        gray = _to_8bit(np.asarray(img), img.mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _to_8bit(data: np.ndarray, mode: str) -> np.ndarray:
    """One channel of 16-bit, 32-bit or float data to uint8. Pillow's own convert("L") clips
    16-bit values at 255 instead of scaling them, hence this."""
    data = data.astype(np.float64)
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if mode.startswith("I;16") or (lo >= 0 and 255 < hi <= 65535 and mode == "I"):
        data = data / 257  # the 16-bit range onto the 8-bit one: 65535 -> 255
    elif mode == "F" and lo >= 0 and hi <= 1:
        data = data * 255
    elif lo < 0 or hi > 255:
        data = (data - lo) / max(hi - lo, 1e-12) * 255  # no known range: stretch what is there
    return np.clip(np.round(data), 0, 255).astype(np.uint8)


def list_images(folder) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def class_id(name: str, class_names: list[str]) -> int | None:
    """The class a folder name or a label stands for: a class id (0..N-1), a class name (case and
    _/space ignored) or, for a 1000-class model, an ImageNet WordNet ID (n02124075: the ImageNet
    index, its place among the sorted IDs); None if it is none of them."""
    name = name.strip()
    if name.isdigit():
        return int(name) if int(name) < len(class_names) else None
    if len(class_names) == 1000 and _WORDNET_ID.fullmatch(name):
        return imagenet_wordnet_ids().get(name)
    key = name.lower().replace("_", " ").strip()
    return next((i for i, n in enumerate(class_names) if n.lower().replace("_", " ").strip() == key), None)


_WORDNET_ID = re.compile(r"n\d{8}")


@functools.cache
def imagenet_wordnet_ids() -> dict[str, int]:
    """ImageNet-1k's WordNet IDs and their class indices, from the list shipped beside the class
    names (resources/imagenet_wnids.txt, as timm ships it), or from timm where the resources
    folder is not installed."""
    from core.io.resources import resource_path

    path = resource_path("imagenet_wnids.txt")
    if not path.is_file():
        import timm.data

        path = Path(timm.data.__file__).parent / "_info" / "imagenet_synsets.txt"
    ids = path.read_text(encoding="utf-8").split()
    return {wnid: i for i, wnid in enumerate(ids)}
