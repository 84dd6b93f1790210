"""Turning raw attribution maps into pictures: normalise, colour, overlay, save. Shared by GUI and CLI.

Maps are raw and signed (core.methods.attribution); the sign mode decides what is shown:
  absolute -> |map| in [0, 1], positive -> max(map, 0) in [0, 1], signed -> map in [-1, 1].
The display mode decides how (render), as Captum's visualize_image_attr offers:
  map    -> the map alone, in colour on black
  blend  -> the coloured map blended over the image with one opacity
  masked -> the image where the map's top x % of pixels are, black elsewhere
  alpha  -> the image with alpha = the normalised |map|, on black
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
MODES = ("map", "blend", "masked", "alpha")
AUTO = "auto"  # the mode that suits each method (mode_for)
DEFAULT_TOP_PERCENT = 10.0
DEFAULT_OPACITY = 0.5
# Coarse maps that only mean something over the photo; sparse pixel-level ones vanish into it.
BLENDED_METHODS = frozenset({"grad-cam"})


def mode_for(method: str, mode: str = AUTO) -> str:
    """The display mode `method`'s map is drawn in: `mode`, or for auto the map alone for
    gradient-type methods and the blend for Grad-CAM."""
    if mode == AUTO:
        return "blend" if method in BLENDED_METHODS else "map"
    return _checked_mode(mode)


def render(image_rgb: np.ndarray, attr: np.ndarray, mode: str, sign: str = "absolute",
           scale: float | None = None, cmap: str | np.ndarray | None = None,
           opacity: float = DEFAULT_OPACITY, top_percent: float = DEFAULT_TOP_PERCENT) -> np.ndarray:
    """The picture of one raw map in one display mode (see the module's docstring), HxWx3 uint8
    at the image's size. `scale` as in normalize; `opacity` is the blend's, `top_percent` the
    masked image's."""
    _checked_mode(mode)
    image = _checked_rgb(image_rgb, "image")
    attr = _finite(attr)
    if attr.ndim != 2:
        raise PruneScopeError(f"map must be HxW, got shape {attr.shape}")
    if attr.shape != image.shape[:2]:
        attr = _resize(attr, *image.shape[:2])
    norm = normalize(attr, sign, scale)
    signed = sign == "signed"
    if mode == "map":
        heat = colorize(norm, cmap, signed)
        if not signed:
            heat[norm == 0] = 0  # no evidence is the black background, whatever the colormap
        return heat
    if mode == "blend":
        return overlay(image, colorize(norm, cmap, signed), opacity)
    if mode == "masked":
        keep = top_pixels(_magnitudes(attr, sign), top_percent)
        return np.where(keep[..., None], image, 0).astype(np.uint8)
    return np.rint(image * np.abs(norm)[..., None]).astype(np.uint8)  # alpha


def top_pixels(magnitudes: np.ndarray, percent: float) -> np.ndarray:
    """Boolean HxW mask of the `percent` % of pixels with the largest magnitude: exactly that
    many (rounded), equal values taken in raster order, and never a pixel of magnitude 0."""
    if not 0 < percent <= 100:
        raise PruneScopeError(f"top percent must be in (0, 100], got {percent}")
    flat = magnitudes.ravel()
    count = min(round(flat.size * percent / 100), int(np.count_nonzero(flat > 0)))
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:count]] = True
    return keep.reshape(magnitudes.shape)


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


def colorize(norm: np.ndarray, cmap: str | np.ndarray | None = None, signed: bool = False) -> np.ndarray:
    """A normalised map as HxWx3 uint8 RGB. Signed maps ([-1, 1]) put 0 at the colormap's centre
    (white for the default diverging map); others map [0, 1] onto the whole colormap. `cmap` is a
    name or a 256-colour table that colorize made (the app keeps those: no matplotlib needed)."""
    if isinstance(cmap, np.ndarray):
        table = cmap
    else:
        table = _lookup_table(cmap or (DEFAULT_SIGNED_COLORMAP if signed else DEFAULT_COLORMAP))
    values = _finite(norm)
    if signed:
        values = (values + 1) / 2
    index = np.rint(np.clip(values, 0, 1) * (len(table) - 1)).astype(np.intp)
    return table[index]


def overlay(image_rgb: np.ndarray, heat_rgb: np.ndarray, alpha: float = DEFAULT_OPACITY) -> np.ndarray:
    """The weighted mean (1 - alpha) * image + alpha * heat. A map of another size is resized to
    the image's."""
    image = _checked_rgb(image_rgb, "image")
    heat = _checked_rgb(heat_rgb, "heat map")
    height, width = image.shape[:2]
    if heat.shape[:2] != (height, width):
        heat = _resize(heat, height, width)
    alpha = float(np.clip(alpha, 0, 1))
    return np.rint(image * (1 - alpha) + heat * alpha).astype(np.uint8)


def save_png(path, rgb: np.ndarray) -> Path:
    """Write an HxWx3 uint8 RGB array as a PNG file."""
    from PIL import Image

    path = Path(path)
    try:
        Image.fromarray(_checked_rgb(rgb, "image")).save(path, format="PNG")
    except OSError as error:
        raise ImageError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def _checked_mode(mode: str) -> str:
    if mode not in MODES:
        raise PruneScopeError(f"unknown display mode '{mode}': choose one of {AUTO}, {', '.join(MODES)}")
    return mode


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
