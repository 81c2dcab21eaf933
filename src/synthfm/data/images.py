"""Image decoding with one clear error per bad file, and honest conversion of odd modes."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from synthfm.errors import SynthfmError

# Pillow's own decompression-bomb limit (about 89 MP) stays in force; a header past MAX_PIXELS is refused before
# any pixel is decoded, naming the file. A genuine larger image can be allowed with SYNTHFM_MAX_IMAGE_PIXELS.
MAX_PIXELS = int(os.environ.get("SYNTHFM_MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS))


def _fail(path: Path | str, what: str, where: str = "") -> SynthfmError:
    """The error for an unreadable image file."""
    loc = f" ({where})" if where else ""
    return SynthfmError(f"{what}: {path}{loc}",
                        "replace the file with a valid image, or drop its row from the manifest")


def open_image(source: Path | str | bytes, where: str = "") -> Image.Image:
    """Open and fully decode an image from a path or bytes; raise SynthfmError if it cannot be read."""
    name = "<bytes>" if isinstance(source, bytes) else source
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.is_file():
            raise SynthfmError(f"image file not found: {path}" + (f" ({where})" if where else ""),
                               "check the card's source.root and the manifest's path column")
        if path.stat().st_size == 0:
            raise _fail(path, "image file is empty (0 bytes)", where)
        source = path.read_bytes()
    if len(source) == 0:
        raise _fail(name, "image data is empty (0 bytes)", where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(source))
            if img.width * img.height > MAX_PIXELS:
                raise SynthfmError(f"image header claims {img.width}x{img.height} = {img.width * img.height / 1e6:.0f} "
                                   f"megapixels, above the limit of {MAX_PIXELS / 1e6:.0f}: {name}"
                                   + (f" ({where})" if where else "") + " (a decompression bomb?)",
                                   "replace the file; if the image is genuine, raise SYNTHFM_MAX_IMAGE_PIXELS")
            img.load()
    except Image.DecompressionBombError:
        raise _fail(name, "image too large to decode (a decompression bomb?)", where) from None
    except UnidentifiedImageError:
        raise _fail(name, "not a readable image (corrupt or unsupported format)", where) from None
    except (OSError, SyntaxError, ValueError) as err:
        kind = "truncated image" if "truncated" in str(err).lower() else f"corrupt image ({err})"
        raise _fail(name, kind, where) from None
    return img


def to_array(img: Image.Image, channels: int) -> tuple[np.ndarray, list[str]]:
    """Convert any PIL mode to uint8 with `channels` channels; also return notes on conversions made."""
    notes: list[str] = []
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = _scale_to_uint8(np.asarray(img), mode)
        notes.append(f"{mode} ({'16-bit' if mode.startswith('I;16') else 'high bit depth'}) image scaled to 8 bits")
        img = Image.fromarray(arr, "L")
        mode = "L"
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    elif mode in ("P", "PA"):
        notes.append("palette image converted to RGB")
    elif mode in ("RGBA", "LA"):
        notes.append(f"{mode} image: alpha channel dropped")
    if channels == 1:
        return np.array(img.convert("L")), notes
    if mode in ("L", "1"):
        notes.append("grayscale image where RGB is expected: channels replicated (check the card's modality)")
    return np.array(img.convert("RGB")), notes


def from_pixels(arr: np.ndarray, channels: int) -> np.ndarray:
    """A decoded uint8 HxW or HxWx3 array (e.g. from DICOM) with `channels` channels, as `to_array` converts."""
    if (arr.ndim == 2 and channels == 1) or (arr.ndim == 3 and channels == 3):
        return arr
    return to_array(Image.fromarray(arr), channels)[0]


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit / 32-bit / float pixels to 0..255 without clipping the range away."""
    arr = arr.astype(np.float64)
    if mode.startswith("I;16"):
        top = 65535.0 if arr.max() > 4095 else 4095.0
        return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return ((arr - lo) / (hi - lo) * 255.0 + 0.5).astype(np.uint8)


def read_image(source: Path | str | bytes, channels: int = 3, where: str = "") -> tuple[np.ndarray, list[str]]:
    """Decode an image to uint8 HxWxC (C=3) or HxW (C=1), with notes on any conversion."""
    return to_array(open_image(source, where), channels)


def load_image(source: Path | str | bytes, channels: int = 3, where: str = "") -> np.ndarray:
    """Decode an image to a uint8 array (HxWx3 or HxW)."""
    return read_image(source, channels, where)[0]


def encode_png(arr: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode a uint8 array as PNG bytes (fast compression by default)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
