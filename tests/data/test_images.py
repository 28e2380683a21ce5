"""Tests for vision_attn.data.images: every PIL mode to RGB, EXIF orientation, failures, find_images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from vision_attn.data import images
from vision_attn.data.errors import ImageLoadError
from vision_attn.data.images import IMAGE_EXTENSIONS, find_images, load_image


def _gradient(width: int = 32, height: int = 16) -> np.ndarray:
    """A horizontal 0..255 uint8 ramp."""
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def _save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    img.save(path, **kwargs)
    return path


def _check_rgb(img: Image.Image, size: tuple[int, int] = (32, 16)) -> np.ndarray:
    assert img.mode == "RGB"
    assert img.size == size
    array = np.asarray(img)
    assert array.dtype == np.uint8
    return array


def test_truncated_flag_not_set_globally() -> None:
    import vision_attn  # noqa: F401  (importing the package must not flip PIL's global flag)

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_and_bilevel(tmp_path: Path, mode: str) -> None:
    src = Image.fromarray(_gradient()).convert(mode)
    out = _check_rgb(load_image(_save(src, tmp_path / f"x_{mode}.png")))
    assert out[:, 0].max() < 30  # dark on the left
    assert out[:, -1].min() > 225  # bright on the right
    assert (out[..., 0] == out[..., 2]).all()


def test_cmyk_colour(tmp_path: Path) -> None:
    src = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = _check_rgb(load_image(_save(src, tmp_path / "red.jpg", quality=95)))
    r, g, b = out.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_la_composites_over_white(tmp_path: Path) -> None:
    grey = np.zeros((16, 32), np.uint8)
    alpha = np.zeros((16, 32), np.uint8)
    alpha[:, 16:] = 255
    src = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    out = _check_rgb(load_image(_save(src, tmp_path / "la.png")))
    assert (out[:, :16] == 255).all()  # transparent -> white
    assert (out[:, 16:] == 0).all()  # opaque black stays black


def test_rgba_composites_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((16, 32, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:, 16:, 3] = 255
    rgba[:, 8:16, 3] = 128
    out = _check_rgb(load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")))
    assert (out[:, :8] == 255).all()
    assert (out[:, 16:] == [255, 0, 0]).all()
    assert 120 < out[0, 10, 1] < 135  # half-transparent red over white is pink


def test_png_trns_transparency_composites_over_white() -> None:
    for mode, colour in [("L", 10), ("RGB", (1, 2, 3))]:
        buffer = io.BytesIO()
        Image.new(mode, (32, 16), colour).save(buffer, format="PNG", transparency=colour)
        assert (_check_rgb(load_image(buffer.getvalue())) == 255).all()


def test_truncated_flag_set_elsewhere_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    monkeypatch.setattr(images, "_warned_truncated_flag", False)
    load_image(_save(Image.fromarray(_gradient()), tmp_path / "g.png"))
    assert "LOAD_TRUNCATED_IMAGES" in caplog.text


def test_palette_without_transparency(tmp_path: Path) -> None:
    src = Image.fromarray(np.stack([_gradient()] * 3, axis=-1)).convert("P", palette=Image.Palette.ADAPTIVE)
    out = _check_rgb(load_image(_save(src, tmp_path / "p.png")))
    assert out[:, -1].min() > 200 and out[:, 0].max() < 50


def test_palette_with_transparency(tmp_path: Path) -> None:
    src = Image.new("P", (32, 16), 0)
    src.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    src.paste(1, (16, 0, 32, 16))
    src.info["transparency"] = 0
    path = _save(src, tmp_path / "pt.gif", transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    out = _check_rgb(load_image(path))
    assert (out[:, :16] == 255).all()  # transparent index -> white, not black
    assert (out[:, 16:] == [0, 0, 255]).all()


def test_16_bit_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (16, 1))
    src = Image.fromarray(values)
    assert src.mode == "I;16"
    out = _check_rgb(load_image(_save(src, tmp_path / "deep.png")))
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out[..., 0])) > 20  # a real ramp, not everything clipped to 255


def test_16_bit_big_endian_and_narrow_range() -> None:
    values = np.tile(np.linspace(1000, 5000, 32), (16, 1)).astype(">u2")  # a 12-bit sensor's range
    src = Image.frombytes("I;16B", (32, 16), values.tobytes())
    out = _check_rgb(load_image(src))
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255


def test_32_bit_integer_scaled(tmp_path: Path) -> None:
    values = np.tile(np.linspace(-100_000, 900_000, 32), (16, 1)).astype(np.int32)
    src = Image.fromarray(values)
    assert src.mode == "I"
    out = _check_rgb(load_image(_save(src, tmp_path / "i32.tif")))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 20


def test_float_scaled_and_nan_safe(tmp_path: Path) -> None:
    values = np.tile(np.linspace(-1.0, 3.0, 32, dtype=np.float32), (16, 1))
    values[0, 0] = np.nan
    src = Image.fromarray(values)
    assert src.mode == "F"
    out = _check_rgb(load_image(_save(src, tmp_path / "f.tif")))
    assert out[1, 0, 0] == 0 and out[1, -1, 0] == 255 and out[0, 0, 0] == 0


@pytest.mark.parametrize(
    "orientation,size,corner",
    [
        (1, (32, 16), "top left"),  # as stored
        (3, (32, 16), "bottom right"),  # rotate 180 to display
        (6, (16, 32), "top right"),  # rotate 90 clockwise to display
        (8, (16, 32), "bottom left"),  # rotate 90 counter-clockwise to display
    ],
)
def test_exif_orientation_rotates_the_right_way(
    tmp_path: Path, orientation: int, size: tuple[int, int], corner: str
) -> None:
    """A red 8x8 block in the stored image's top-left corner must land where a viewer shows it."""
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[...] = (0, 0, 255)
    pixels[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(pixels), tmp_path / "rot.jpg", exif=exif.tobytes())
    out = load_image(path)
    _check_rgb(out, size=size)
    w, h = out.size
    corners = {"top left": (2, 2), "top right": (w - 3, 2), "bottom left": (2, h - 3), "bottom right": (w - 3, h - 3)}
    for name, xy in corners.items():
        red = out.getpixel(xy)[0] > 200 and out.getpixel(xy)[2] < 60
        assert red == (name == corner), (name, out.getpixel(xy))


def test_bytes_and_pil_input(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_gradient()).save(buffer, format="PNG")
    _check_rgb(load_image(buffer.getvalue()))
    src = Image.fromarray(np.stack([_gradient()] * 3, axis=-1))
    out = load_image(src)
    assert out is not src  # never aliases the caller's image
    _check_rgb(out)


def test_truncated_jpeg_fails_naming_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)  # noise compresses badly, so half the file cuts into the scan data
    full = tmp_path / "full.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, quality=95)
    half = tmp_path / "half.jpg"
    data = full.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="half.jpg.*truncated"):
        load_image(half)
    with pytest.raises(ImageLoadError, match="<bytes>"):
        load_image(data[: len(data) // 2])


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageLoadError, match=r"notes\.jpg: not a recognised image"):
        load_image(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"nope\.png: file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)
    assert issubclass(ImageLoadError, OSError)


def test_max_pixels(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_gradient()), tmp_path / "g.png")
    assert load_image(path, max_pixels=32 * 16).size == (32, 16)
    with pytest.raises(ImageLoadError, match=r"32x16 = 512 pixels, over the limit of 511"):
        load_image(path, max_pixels=511)


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.fromarray(_gradient()), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 512 pixels > 2 x 100 -> DecompressionBombError
    with pytest.raises(ImageLoadError, match="bomb.png: too many pixels"):
        load_image(path)


def test_find_images(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    for name in ["a/1.jpg", "a/deep/2.PNG", "a/deep/3.webp", "a/notes.txt", "b/4.tiff", "b/5.json"]:
        (tmp_path / name).write_bytes(b"")
    single = tmp_path / "b" / "5.json"  # a file given explicitly is kept whatever its extension
    found = find_images([tmp_path / "a", single, tmp_path / "a" / "1.jpg", tmp_path / "b"])
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == ["a/1.jpg", "a/deep/2.PNG", "a/deep/3.webp", "b/4.tiff", "b/5.json"]
    assert found == sorted(found)
    assert ".jpeg" in IMAGE_EXTENSIONS and ".txt" not in IMAGE_EXTENSIONS
    with pytest.raises(ImageLoadError, match="missing"):
        find_images([tmp_path / "missing"])


def test_a_large_jpeg_is_decoded_reduced_and_the_pixel_limit_counts_its_decode(tmp_path: Path) -> None:
    """`draft_side` decodes a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides >= it."""
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(path, quality=90)
    assert load_image(path).size == (4000, 3000)
    assert load_image(path, draft_side=256).size == (500, 375)  # 1/8: 500 x 375 >= 256 on both sides
    assert load_image(path, draft_side=1000).size == (2000, 1500)  # 1/2: at 1/4 the short side (750) is too short
    assert load_image(path, max_pixels=200_000, draft_side=256).size == (500, 375)  # the decode is under the limit
    with pytest.raises(ImageLoadError, match="4000x3000 = 12000000 pixels, over the limit of 200000"):
        load_image(path, max_pixels=200_000)
    png = tmp_path / "big.png"
    Image.new("RGB", (1000, 800)).save(png)
    assert load_image(png, draft_side=100).size == (1000, 800)  # other formats decode whole
