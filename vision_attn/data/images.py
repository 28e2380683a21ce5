"""Loading images from disk or memory as 8-bit RGB, and finding image files.

Every failure (missing file, not an image, truncated or corrupt data, too many pixels) raises
:class:`ImageLoadError` naming the source, so a dataset can skip and count bad images.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from vision_attn.data.errors import ImageLoadError

logger = logging.getLogger(__name__)

ImageSource = str | Path | bytes | Image.Image

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# The largest image decoded by default (width x height, after JPEG draft reduction): 50 MP covers camera photos;
# beyond it, one image would hold hundreds of MB while it is decoded.
MAX_PIXELS = 50_000_000

_WHITE = (255, 255, 255)
# Modes converted by scaling their observed value range onto 0..255 (high bit depth / float).
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S"})
_warned_truncated_flag = False


def load_image(source: ImageSource, max_pixels: int | None = None, draft_side: int | None = None) -> Image.Image:
    """Load an image as a fully decoded 8-bit RGB ``PIL.Image``.

    EXIF orientation is applied; transparent pixels are composited over white; 16/32-bit and float images
    have their value range scaled onto 0..255.

    Args:
        source: A file path, the encoded bytes of an image, or an already opened ``PIL.Image``.
        max_pixels: If set, images with more pixels than this are refused before decoding (a JPEG counts the
            pixels it decodes to after `draft_side`).
        draft_side: If set, a JPEG is decoded at the smallest of 1/1, 1/2, 1/4 or 1/8 of its size that keeps both
            sides at least this long (libjpeg's DCT scaling, PIL's `draft`): a 24 MP photo meant for a 224-px
            model costs a sixteenth of the memory and time. Other formats decode at full size.

    Returns:
        A new RGB image, independent of any open file.

    Raises:
        ImageLoadError: The file is missing or unreadable, is not an image, is truncated or corrupt,
            or has more than ``max_pixels`` pixels. The message names the path (or ``<bytes>``).
    """
    if not isinstance(source, str | Path | bytes | bytearray | memoryview | Image.Image):
        raise TypeError(f"load_image expects a path, bytes or PIL.Image, got {type(source).__name__}")
    name = _describe(source)
    _warn_if_truncated_allowed()
    try:
        if isinstance(source, Image.Image):
            rgb = _decode(source, name, max_pixels, None)
            return rgb.copy() if rgb is source else rgb  # never alias the caller's image
        if isinstance(source, str | Path):
            if Path(source).is_dir():
                raise ImageLoadError(f"{name}: is a directory, not an image file")
            # We own the file object, so PIL leaves the decoded image usable after it is closed.
            with open(source, "rb") as f:
                return _decode(_open(f, max_pixels), name, max_pixels, draft_side)
        return _decode(_open(io.BytesIO(bytes(source)), max_pixels), name, max_pixels, draft_side)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: file not found") from None
    except PermissionError as e:
        raise ImageLoadError(f"{name}: permission denied") from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{name}: too many pixels ({e})") from e
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not a recognised image file") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
        # PIL's decoders report corrupt data with any of these.
        raise ImageLoadError(f"{name}: corrupt or truncated image data ({type(e).__name__}: {e})") from e


def _open(f: BinaryIO, max_pixels: int | None) -> Image.Image:
    """Read the header; with our own `max_pixels`, PIL's decompression-bomb warning (which `_decode`'s check
    replaces with an error naming the file) stays quiet."""
    with warnings.catch_warnings():
        if max_pixels is not None:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(f)


def _decode(img: Image.Image, name: str, max_pixels: int | None, draft_side: int | None) -> Image.Image:
    """Reduce a JPEG's decode size, check the size, decode the pixels, apply EXIF orientation, convert to RGB."""
    if draft_side is not None and img.format == "JPEG":
        img.draft(img.mode, (draft_side, draft_side))  # never below the requested size on either side
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        pixels = width * height
        raise ImageLoadError(f"{name}: image is {width}x{height} = {pixels} pixels, over the limit of {max_pixels}")
    img.load()  # decode now so truncated data fails here, not later in a transform
    return to_rgb(_apply_orientation(img, name))


def _apply_orientation(img: Image.Image, name: str) -> Image.Image:
    """Rotate/flip by the EXIF orientation tag; a broken EXIF block is ignored, not fatal."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):  # exif_transpose copies even when there is nothing to do
            return ImageOps.exif_transpose(img)
    except Exception as e:  # malformed EXIF raises many types; the pixels are still good
        logger.debug("%s: ignoring unreadable EXIF orientation (%s)", name, e)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any PIL mode to 8-bit RGB.

    Alpha (and palette or ``tRNS`` transparency) is composited over white; 16/32-bit integer and float
    images are linearly scaled from their observed value range onto 0..255.
    """
    if img.mode in _WIDE_MODES:
        return Image.merge("RGB", [_scale_to_l(img)] * 3)
    if img.mode == "La":  # premultiplied alpha, which PIL converts only to LA
        img = img.convert("LA")
    if img.has_transparency_data:  # an alpha band, or palette / tRNS transparency in img.info
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _scale_to_l(img: Image.Image) -> Image.Image:
    """Map a high-bit-depth or float single-channel image onto 8 bits by its finite value range."""
    values = np.asarray(img).astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return Image.new("L", img.size, 0)
    low, high = float(values[finite].min()), float(values[finite].max())
    if high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        # A constant image has no range to stretch: keep its level within the type's nominal range.
        if img.mode.startswith("I;16"):
            nominal = 65535.0
        elif img.mode == "F" and 0.0 <= low <= 1.0:
            nominal = 1.0
        else:
            nominal = 255.0
        scaled = np.full_like(values, low * 255.0 / nominal)
    scaled = np.where(finite, scaled, 0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _describe(source: object) -> str:
    """Name a source for error messages."""
    if isinstance(source, str | Path):
        return str(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        return str(filename) if filename else "<PIL.Image>"
    return repr(source)


def _warn_if_truncated_allowed() -> None:
    """Warn once if someone set PIL's global flag that silently accepts truncated files."""
    global _warned_truncated_flag
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated_flag:
        _warned_truncated_flag = True
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set by some other code: truncated images will load "
            "with grey padding instead of raising ImageLoadError"
        )


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """List image files: files are kept as given, folders are searched recursively by extension.

    Args:
        paths: Files and/or folders. Extensions are matched case-insensitively against ``IMAGE_EXTENSIONS``.

    Returns:
        Sorted paths without duplicates (two spellings of the same file count once).

    Raises:
        ImageLoadError: A path does not exist.
    """
    found: dict[Path, Path] = {}  # resolved -> as found
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates: Iterable[Path] = _walk_images(path)
        elif path.exists():
            candidates = [path]
        else:
            raise ImageLoadError(f"{path}: no such file or folder")
        for candidate in candidates:
            found.setdefault(candidate.resolve(), candidate)
    return sorted(found.values())


def _walk_images(folder: Path) -> Iterable[Path]:
    """Yield image files under ``folder``, following symlinked folders but never the same folder twice."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        for filename in filenames:
            if os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(dirpath, filename)
