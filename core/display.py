"""Turning raw attribution maps into pictures: normalise, colour, overlay, save. Shared by GUI and CLI.

Maps are raw and signed (core.attribution); the sign mode decides what is shown:
  absolute -> |map| in [0, 1], positive -> max(map, 0) in [0, 1], signed -> map in [-1, 1].
"""
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.errors import ImageError, PruneScopeError

SIGNS = ("absolute", "positive", "signed")
CLIP_PERCENTILE = 99.5
SEQUENTIAL_COLORMAPS = ("inferno", "viridis", "magma", "plasma", "hot", "jet", "gray")
DIVERGING_COLORMAPS = ("RdBu_r", "bwr", "coolwarm", "seismic")
COLORMAPS = SEQUENTIAL_COLORMAPS + DIVERGING_COLORMAPS
DEFAULT_COLORMAP = "inferno"
DEFAULT_SIGNED_COLORMAP = "RdBu_r"


def normalize(attr: np.ndarray, sign: str = "absolute", scale: float | None = None,
              clip_percentile: float = CLIP_PERCENTILE) -> np.ndarray:
    """attr scaled for display: [0, 1] for absolute/positive, [-1, 1] for signed.

    Values beyond `scale` saturate; without a scale it is the clip_percentile-th percentile of the
    shown magnitudes (outliers would otherwise wash out the rest, as in Captum's visualisation).
    Pass a shared_scale to compare several maps on one scale. An all-zero map gives zeros."""
    attr = _finite(attr)
    if scale is None:
        scale = shared_scale([attr], sign, clip_percentile)
    if not np.isfinite(scale) or scale <= 0:
        return np.zeros(attr.shape, np.float32)
    if sign == "signed":
        return np.clip(attr / scale, -1, 1).astype(np.float32)
    return np.clip(_magnitudes(attr, sign) / scale, 0, 1).astype(np.float32)


def shared_scale(maps, sign: str = "absolute", clip_percentile: float = CLIP_PERCENTILE) -> float:
    """One display scale for several maps: the percentile of their shown magnitudes taken together."""
    if not 0 < clip_percentile <= 100:
        raise PruneScopeError(f"clip percentile must be in (0, 100], got {clip_percentile}")
    values = np.concatenate([_magnitudes(_finite(m), sign).ravel() for m in maps])
    if sign == "positive":
        values = values[values > 0]  # the negative part is not shown, so it must not set the scale
    if values.size == 0:
        return 0.0
    return float(np.percentile(values, clip_percentile))


def colorize(norm: np.ndarray, cmap: str | None = None, signed: bool = False) -> np.ndarray:
    """A normalised map as HxWx3 uint8 RGB. Signed maps ([-1, 1]) put 0 at the colormap's centre
    (white for the default diverging map); others map [0, 1] onto the whole colormap."""
    cmap = cmap or (DEFAULT_SIGNED_COLORMAP if signed else DEFAULT_COLORMAP)
    values = _finite(norm)
    if signed:
        values = (values + 1) / 2
    index = np.rint(np.clip(values, 0, 1) * 255).astype(np.intp)
    return _lookup_table(cmap)[index]


def overlay(image_rgb: np.ndarray, heat_rgb: np.ndarray, alpha: float = 0.5,
            weight: np.ndarray | None = None) -> np.ndarray:
    """Blend a coloured map over the image. `weight` (HxW in [0, 1], e.g. the normalised magnitude)
    scales alpha per pixel so that unimportant regions show the photo. A map of another size is
    resized to the image's."""
    image = _checked_rgb(image_rgb, "image")
    heat = _checked_rgb(heat_rgb, "heat map")
    height, width = image.shape[:2]
    if heat.shape[:2] != (height, width):
        heat = _resize(heat, height, width)
    mix = np.full((height, width), float(np.clip(alpha, 0, 1)), np.float32)
    if weight is not None:
        weight = np.clip(_finite(weight), 0, 1)
        if weight.shape != (height, width):
            weight = _resize(weight, height, width)
        mix *= weight
    blended = image * (1 - mix[..., None]) + heat * mix[..., None]
    return np.rint(blended).astype(np.uint8)


def save_png(path, rgb: np.ndarray) -> Path:
    """Write an HxWx3 uint8 RGB array as a PNG file."""
    from PIL import Image

    path = Path(path)
    try:
        Image.fromarray(_checked_rgb(rgb, "image")).save(path, format="PNG")
    except OSError as error:
        raise ImageError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def _finite(values) -> np.ndarray:
    return np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def _magnitudes(attr: np.ndarray, sign: str) -> np.ndarray:
    if sign in ("absolute", "signed"):
        return np.abs(attr)
    if sign == "positive":
        return np.maximum(attr, 0)
    raise PruneScopeError(f"unknown sign mode '{sign}': choose one of {', '.join(SIGNS)}")


@lru_cache(maxsize=None)
def _lookup_table(cmap: str) -> np.ndarray:
    import matplotlib

    if cmap not in matplotlib.colormaps:
        raise PruneScopeError(f"unknown colormap '{cmap}': choose one of {', '.join(COLORMAPS)}")
    colors = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
    return np.rint(colors * 255).astype(np.uint8)


def _checked_rgb(rgb, what: str) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise PruneScopeError(f"{what} must be an HxWx3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    return rgb


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.BILINEAR))
