import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from core.errors import ImageError
from core.io.images import IMAGE_SUFFIXES, list_images, load_image


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares any size but holds no pixel data: Pillow reads the size first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def pattern(h=6, w=9) -> np.ndarray:
    """An RGB array where every pixel differs, so flips and rotations show."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_real_photo(photo):
    rgb = load_image(photo("coffee.png"))
    assert rgb.shape == (400, 600, 3) and rgb.dtype == np.uint8
    assert rgb.std() > 10


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "text", "truncated_png",
                                  "truncated_jpeg", "bomb_warning", "bomb_error", "zero_width"])
def test_bad_files_raise_image_error(tmp_path, case):
    path = tmp_path / f"{case}.png"
    if case == "folder":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not an image\n")
    elif case.startswith("truncated"):
        fmt = "PNG" if case.endswith("png") else "JPEG"
        Image.fromarray(pattern(200, 200)).save(path, fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "bomb_warning":  # above Pillow's limit: a warning unless made an error
        path.write_bytes(png_header(10_000, 10_000))
    elif case == "bomb_error":  # above twice the limit: DecompressionBombError
        path.write_bytes(png_header(30_000, 30_000))
    elif case == "zero_width":
        path.write_bytes(png_header(0, 10))
    with pytest.raises(ImageError) as err:
        load_image(path)
    message = str(err.value)
    assert "\n" not in message and path.name in message


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = pattern()[:, :, 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    rgb = load_image(tmp_path / "g.png")
    assert rgb.shape == (*gray.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], gray)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 10, 20, 0)  # fully transparent -> white
    rgba[0, 1] = (200, 10, 20, 255)  # opaque -> itself
    rgba[0, 2] = (0, 0, 0, 128)  # half black over white -> mid grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = load_image(tmp_path / "a.png")
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[0, 1]) == (200, 10, 20)
    assert all(abs(int(v) - 127) <= 1 for v in rgb[0, 2])


def test_gray_alpha_and_palette_transparency(tmp_path):
    la = np.array([[[50, 0], [50, 255]]], dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    rgb = load_image(tmp_path / "la.png")
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[0, 1]) == (50, 50, 50)

    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    rgb = load_image(tmp_path / "p.png")
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[0, 1]) == (0, 0, 255)


def test_16_bit_is_scaled_not_clipped(tmp_path):
    data = np.array([[0, 257 * 10, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    rgb = load_image(tmp_path / "deep.png")
    assert rgb[0, :, 0].tolist() == [0, 10, 128, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_float_image_in_unit_range(tmp_path):
    data = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(data, "F").save(tmp_path / "f.tif")
    rgb = load_image(tmp_path / "f.tif")
    assert rgb[0, :, 1].tolist() == [0, 128, 255]


def test_cmyk(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    rgb = load_image(tmp_path / "c.tif")
    assert rgb.tolist() == [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]


@pytest.mark.parametrize("orientation, turns", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, turns):
    stored = pattern()
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation tag
    Image.fromarray(stored).save(tmp_path / "r.png", exif=exif)
    rgb = load_image(tmp_path / "r.png")
    np.testing.assert_array_equal(rgb, np.rot90(stored, k=turns))


def test_list_images(tmp_path):
    for name in ["b.JPG", "a.png", "c.webp", "notes.txt", ".hidden.png", "d.tiff"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.webp", "d.tiff"]
    assert ".bmp" in IMAGE_SUFFIXES
    with pytest.raises(ImageError):
        list_images(tmp_path / "nowhere")


@pytest.mark.parametrize("size", [(20000, 1), (1, 40000), (5100, 100)])
def test_an_elongated_image_is_refused_from_its_header(tmp_path, size):
    """A 140-byte 1x20000 PNG becomes 256x5,120,000 pixels when a model resizes its short side."""
    path = tmp_path / "strip.png"
    Image.new("RGB", size, (200, 30, 30)).save(path)
    assert path.stat().st_size < 2000
    with pytest.raises(ImageError, match="aspect ratio"):
        load_image(path)


def test_a_panorama_within_the_aspect_limit_loads(tmp_path):
    from core.io.images import MAX_ASPECT_RATIO

    path = tmp_path / "panorama.png"
    Image.new("RGB", (10 * MAX_ASPECT_RATIO, 10)).save(path)
    assert load_image(path).shape == (10, 10 * MAX_ASPECT_RATIO, 3)


def _seed_files() -> dict:
    """Small valid files of every format and mode load_image handles, to be damaged."""
    import io

    rgb = pattern(12, 16)
    images = {"png": Image.fromarray(rgb), "jpeg": Image.fromarray(rgb), "bmp": Image.fromarray(rgb),
              "tiff": Image.fromarray(rgb), "webp": Image.fromarray(rgb), "gif": Image.fromarray(rgb),
              "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"),
              "16bit.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
              "float.tiff": Image.fromarray(rgb[..., 0].astype(np.float32) / 255)}
    out = {}
    for name, img in images.items():
        buffer = io.BytesIO()
        img.save(buffer, name.split(".")[-1].upper().replace("JPG", "JPEG"))
        out[name] = buffer.getvalue()
    return out


def test_fuzzed_images_raise_only_image_errors(tmp_path):
    """A few hundred damaged files (bytes overwritten, cut short, absurd sizes): each loads as
    HxWx3 uint8 or raises one ImageError line, never anything else."""
    from hypothesis import given, settings, strategies as st

    seeds = _seed_files()
    edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(name=st.sampled_from(sorted(seeds)), edits=edits, cut=st.none() | st.integers(0, 1 << 20),
           header=st.none() | st.tuples(st.integers(0, 1 << 17), st.integers(0, 1 << 17)))
    def check(name, edits, cut, header):
        data = bytearray(png_header(*header) if header else seeds[name])
        for position, byte in edits:
            data[position % len(data)] = byte
        if cut is not None:
            data = data[:cut % (len(data) + 1)]
        path = tmp_path / f"fuzzed.{name.split('.')[-1]}"
        path.write_bytes(bytes(data))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a warning would be lines on stderr too
                rgb = load_image(path)
        except ImageError as err:
            assert "\n" not in str(err) and path.name in str(err)
            return
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3

    check()
