"""Display normalisation, colouring, overlay and PNG writing."""
import matplotlib
import numpy as np
import pytest
from PIL import Image

from core.display import (COLORMAPS, SIGNS, colorize, normalize, overlay, save_png, shared_scale)
from core.errors import ImageError, PruneScopeError


def ramp(low=-5.0, high=5.0, size=(20, 20)) -> np.ndarray:
    return np.linspace(low, high, size[0] * size[1], dtype=np.float32).reshape(size)


@pytest.mark.parametrize("sign", SIGNS)
def test_all_zero_map_gives_zeros_not_nan(sign):
    zero = np.zeros((8, 8), np.float32)
    result = normalize(zero, sign)
    assert result.dtype == np.float32 and result.shape == (8, 8)
    assert np.array_equal(result, np.zeros((8, 8)))
    assert shared_scale([zero, zero], sign) == 0.0
    assert np.array_equal(normalize(zero, sign, scale=0.0), np.zeros((8, 8)))


def test_non_finite_values_become_zero():
    attr = np.array([[np.nan, 1.0], [np.inf, -np.inf]], np.float32)
    result = normalize(attr, "absolute", clip_percentile=100)
    np.testing.assert_array_equal(result, [[0, 1], [0, 0]])


def test_outliers_are_clipped_at_the_percentile():
    attr = np.arange(1000, dtype=np.float32).reshape(25, 40)
    attr[0, 0] = 1e6  # one outlier must not wash out the rest
    scale = np.percentile(np.abs(attr), 99.0)
    result = normalize(attr, "absolute", clip_percentile=99.0)
    assert result.max() == 1.0 and result[0, 0] == 1.0
    assert (result == 1.0).sum() == pytest.approx(10, abs=1)  # the top 1% saturate
    assert result.flat[500] == pytest.approx(500 / scale)
    # Without clipping the outlier would squash everything else near zero.
    assert normalize(attr, "absolute", clip_percentile=100).flat[500] < 1e-3


def test_signed_keeps_sign_and_range():
    attr = ramp()
    result = normalize(attr, "signed", clip_percentile=100)
    assert result.min() == -1.0 and result.max() == 1.0
    np.testing.assert_array_equal(np.sign(result), np.sign(attr))
    np.testing.assert_allclose(result, attr / 5.0, rtol=1e-6)


def test_absolute_and_positive():
    attr = ramp(-10.0, 5.0)
    absolute = normalize(attr, "absolute", clip_percentile=100)
    np.testing.assert_allclose(absolute, np.abs(attr) / 10.0, rtol=1e-6)
    positive = normalize(attr, "positive", clip_percentile=100)
    assert positive.min() == 0.0 and positive.max() == 1.0
    assert (positive[attr <= 0] == 0).all()
    # The scale comes from the positive part only; the larger negative values do not dim it.
    np.testing.assert_allclose(positive[attr > 0], attr[attr > 0] / 5.0, rtol=1e-6)


def test_shared_scale_compares_maps_on_one_scale():
    weak, strong = ramp(0, 1), ramp(0, 4)
    scale = shared_scale([weak, strong], "absolute", clip_percentile=100)
    assert scale == pytest.approx(4.0)
    assert normalize(weak, "absolute", scale=scale).max() == pytest.approx(0.25)
    assert normalize(strong, "absolute", scale=scale).max() == pytest.approx(1.0)
    # Each on its own scale, both would reach 1.
    assert normalize(weak, "absolute", clip_percentile=100).max() == pytest.approx(1.0)


def test_bad_sign_and_percentile_are_refused():
    with pytest.raises(PruneScopeError, match="sign mode"):
        normalize(ramp(), "both")
    with pytest.raises(PruneScopeError, match="percentile"):
        normalize(ramp(), "absolute", clip_percentile=0)


def test_colorize_maps_ends_and_centre():
    norm = np.array([[0.0, 1.0]], np.float32)
    rgb = colorize(norm, "gray")
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 2, 3)
    np.testing.assert_array_equal(rgb, [[[0, 0, 0], [255, 255, 255]]])
    signed = colorize(np.array([[-1.0, 0.0, 1.0]], np.float32), signed=True)
    expected = np.rint(matplotlib.colormaps["RdBu_r"]([0.0, 0.5, 1.0])[:, :3] * 255)
    np.testing.assert_allclose(signed[0], expected, atol=1)
    assert signed[0, 0, 2] > signed[0, 0, 0] and signed[0, 2, 0] > signed[0, 2, 2]  # blue < 0 < red


def test_every_offered_colormap_exists_and_unknown_is_refused():
    for name in COLORMAPS:
        assert colorize(np.zeros((2, 2), np.float32), name).shape == (2, 2, 3)
    with pytest.raises(PruneScopeError, match="unknown colormap"):
        colorize(np.zeros((2, 2), np.float32), "rainbowz")


def test_overlay_blends_by_alpha_and_weight():
    image = np.full((4, 4, 3), 100, np.uint8)
    heat = np.full((4, 4, 3), 200, np.uint8)
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, heat, alpha=1.0), heat)
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.5), np.full((4, 4, 3), 150))
    weight = np.zeros((4, 4), np.float32)
    weight[0, 0] = 1.0
    weighted = overlay(image, heat, alpha=1.0, weight=weight)
    assert tuple(weighted[0, 0]) == (200, 200, 200) and tuple(weighted[3, 3]) == (100, 100, 100)
    # A map at another resolution is resized onto the image.
    assert overlay(image, np.full((2, 2, 3), 200, np.uint8), alpha=1.0).shape == (4, 4, 3)
    with pytest.raises(PruneScopeError, match="HxWx3 uint8"):
        overlay(image.astype(np.float32), heat)


def test_save_png_keeps_rgb_order(tmp_path):
    rgb = np.zeros((3, 5, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    rgb[1, 2] = (0, 0, 255)  # one blue pixel
    path = save_png(tmp_path / "red.png", rgb)
    with Image.open(path) as written:
        assert written.format == "PNG" and written.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(written), rgb)


def test_save_png_to_an_unwritable_place_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="cannot write"):
        save_png(tmp_path / "missing" / "dir" / "x.png", np.zeros((2, 2, 3), np.uint8))
