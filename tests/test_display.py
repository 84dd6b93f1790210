"""Display normalisation, colouring, overlay, display modes, the comparison figure and PNG writing."""
import matplotlib
import numpy as np
import pytest
from PIL import Image

from core.errors import ImageError, PruneScopeError
from core.io.display import (AUTO, COLORMAPS, MODES, SIGNS, colorize, mode_for, normalize, overlay, render,
                             save_png, shared_scale, top_pixels)


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


def test_overlay_blends_by_alpha():
    image = np.full((4, 4, 3), 100, np.uint8)
    heat = np.full((4, 4, 3), 200, np.uint8)
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, heat, alpha=1.0), heat)
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.5), np.full((4, 4, 3), 150))
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


# -- display modes ----------------------------------------------------------------------------
def distinct_map(size=(10, 10)) -> np.ndarray:
    """Values -49.5 .. 49.5 in a shuffled order: every |value| but one pair distinct."""
    values = np.arange(size[0] * size[1], dtype=np.float32) - (size[0] * size[1] - 1) / 2
    return np.random.default_rng(0).permutation(values).reshape(size)


def photo_like(size=(10, 10)) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(1, 256, (*size, 3), dtype=np.uint8)  # never black: masked pixels show


def test_masked_shows_exactly_the_top_percent_of_pixels():
    attr, image = distinct_map(), photo_like()
    shown = render(image, attr, "masked", top_percent=10)
    visible = shown.any(axis=2)
    assert visible.sum() == 10
    np.testing.assert_array_equal(np.sort(np.abs(attr[visible])), np.sort(np.abs(attr).ravel())[-10:])
    np.testing.assert_array_equal(shown[visible], image[visible])
    assert render(image, attr, "masked", top_percent=37).any(axis=2).sum() == 37
    # Positive: ranked by the evidence for the class only.
    positive = render(image, attr, "masked", sign="positive", top_percent=10).any(axis=2)
    assert (attr[positive] > 0).all() and positive.sum() == 10
    with pytest.raises(PruneScopeError, match="top percent"):
        render(image, attr, "masked", top_percent=0)


def test_top_pixels_never_takes_pixels_without_evidence():
    magnitudes = np.zeros((10, 10), np.float32)
    magnitudes[0, :3] = (3, 1, 2)
    assert top_pixels(magnitudes, 50).sum() == 3
    assert not top_pixels(np.zeros((4, 4)), 100).any()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sign", SIGNS)
def test_every_mode_of_an_all_zero_map_shows_no_evidence(mode, sign):
    image = photo_like()
    shown = render(image, np.zeros((10, 10), np.float32), mode, sign=sign)
    assert shown.dtype == np.uint8 and shown.shape == (10, 10, 3)
    # "no evidence" is the colormap's low end, or a signed map's centre (white-ish for RdBu_r)
    name, at = ("RdBu_r", 128) if sign == "signed" else ("inferno", 0)
    none = np.rint(matplotlib.colormaps[name](np.linspace(0, 1, 256))[at, :3] * 255)
    expected = {"map": np.broadcast_to(none if sign == "signed" else 0, image.shape),
                "blend": np.rint(image * 0.5 + none * 0.5),  # the default opacity
                "masked": np.zeros(image.shape), "alpha": np.zeros(image.shape)}[mode]
    np.testing.assert_array_equal(shown, expected)


@pytest.mark.parametrize("cmap", ["inferno", "gray", "viridis"])
def test_map_mode_is_the_map_alone_on_black(cmap):
    image = photo_like()
    assert not render(image, np.zeros((10, 10)), "map", cmap=cmap).any()  # black, not NaN
    attr = distinct_map()
    shown = render(image, attr, "map", cmap=cmap)
    np.testing.assert_array_equal(shown, render(np.zeros_like(image), attr, "map", cmap=cmap))  # no photo
    np.testing.assert_array_equal(shown, colorize(normalize(attr), cmap))  # attr has no zero


def test_blend_is_the_weighted_mean_of_image_and_coloured_map():
    image, attr = photo_like(), distinct_map()
    heat = colorize(normalize(attr), "inferno").astype(np.float64)
    for opacity in (0.0, 0.3, 1.0):
        expected = np.rint(image * (1 - opacity) + heat * opacity)
        np.testing.assert_array_equal(render(image, attr, "blend", cmap="inferno", opacity=opacity), expected)


def test_alpha_scales_the_image_by_the_normalised_magnitude():
    image, attr = photo_like(), distinct_map()
    expected = np.rint(image * np.abs(normalize(attr))[..., None])
    np.testing.assert_array_equal(render(image, attr, "alpha"), expected)
    strongest = np.unravel_index(np.argmax(np.abs(attr)), attr.shape)
    np.testing.assert_array_equal(render(image, attr, "alpha")[strongest], image[strongest])


def test_mode_for_auto_blends_grad_cam_only():
    assert mode_for("grad-cam") == "blend"
    for method in ("gradient", "lrp", "smoothgrad", "pathway-gradient", "pathway-integrated-gradients"):
        assert mode_for(method) == "map"
    assert mode_for("grad-cam", "masked") == "masked"
    with pytest.raises(PruneScopeError, match="display mode 'heat'"):
        mode_for("gradient", "heat")
    with pytest.raises(PruneScopeError, match="display mode"):
        render(photo_like(), distinct_map(), AUTO)


def test_render_resizes_a_map_of_another_size_and_refuses_bad_maps():
    assert render(photo_like((8, 12)), distinct_map((4, 6)), "masked").shape == (8, 12, 3)
    with pytest.raises(PruneScopeError, match="HxW"):
        render(photo_like(), np.zeros((10, 10, 3)), "map")


def test_comparison_titles_never_overlap_the_images_of_the_row_above():
    from types import SimpleNamespace

    from core.reporting.figures import explain
    from core.reporting.report import Look

    def result(method):
        pathway = SimpleNamespace(sparsity=70.0) if method.startswith("pathway") else None
        curves = SimpleNamespace(deletion_auc=0.1, insertion_auc=0.5)
        return SimpleNamespace(map=distinct_map((32, 32)), pathway=pathway, curves=curves)

    methods = ("pathway-gradient", "gradient", "input-x-gradient", "integrated-gradients",
               "smoothgrad", "guided-backprop", "grad-cam", "pathway-integrated-gradients")
    analysis = SimpleNamespace(results={m: result(m) for m in methods},
                               prediction=SimpleNamespace(name="tabby cat", prob=0.42))
    fig = explain(photo_like((32, 32)), analysis, Look())["comparison"]
    fig.draw_without_rendering()
    renderer = fig._get_renderer()
    images = [(ax, ax.images[0].get_window_extent(renderer)) for ax in fig.axes if ax.images]
    titles = [(ax, ax.title.get_window_extent(renderer)) for ax in fig.axes if ax.images]
    assert len(images) == len(methods) + 1
    for title_ax, title in titles:
        assert title.height > 0
        for image_ax, image in images:
            assert not title.overlaps(image), f"{title_ax.get_title()!r} over {image_ax.get_title()!r}"
