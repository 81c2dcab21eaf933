"""Image decoding: every bad file gets one clear error; odd modes are converted correctly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthfm.data.images import load_image, read_image
from synthfm.errors import SynthfmError


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(SynthfmError, match=r"not found: .*nope.png") as e:
        load_image(tmp_path / "nope.png", where="manifest row 3")
    assert "manifest row 3" in e.value.message and e.value.fix


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(SynthfmError, match=r"empty \(0 bytes\).*empty.png"):
        load_image(p)


def test_corrupt_file(tmp_path: Path) -> None:
    p = tmp_path / "junk.jpg"
    p.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(SynthfmError, match=r"not a readable image.*junk.jpg"):
        load_image(p)


def test_truncated_png(tmp_path: Path) -> None:
    data = _png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SynthfmError, match=r"(truncated|corrupt).*cut.png"):
        load_image(p)


def test_truncated_jpeg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[:300])
    with pytest.raises(SynthfmError, match=r"(truncated|corrupt).*cut.jpg"):
        load_image(p)


def test_cmyk_converted_to_rgb(tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p, quality=100)
    arr, notes = read_image(p, 3)
    assert arr.shape == (8, 8, 3)
    assert arr[..., 0].mean() > 240 and arr[..., 1].mean() < 15 and arr[..., 2].mean() < 15
    assert any("CMYK" in n for n in notes)


def test_16bit_scaled_not_clipped(tmp_path: Path) -> None:
    arr16 = np.array([[0, 32768], [65535, 16384]], dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr16).save(p)
    arr, notes = read_image(p, 1)
    assert arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, [[0, 128], [255, 64]])
    assert any("16-bit" in n for n in notes)


def test_12bit_in_16bit_container_uses_12bit_range(tmp_path: Path) -> None:
    p = tmp_path / "twelve.png"
    Image.fromarray(np.array([[0, 4095]], dtype=np.uint16)).save(p)
    np.testing.assert_array_equal(load_image(p, 1), [[0, 255]])


def test_palette_converted(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4))
    img.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    p = tmp_path / "pal.png"
    img.save(p)
    arr, notes = read_image(p, 3)
    np.testing.assert_array_equal(arr[0, 0], [10, 20, 30])
    assert any("palette" in n for n in notes)


def test_grayscale_where_rgb_expected_is_noted(tmp_path: Path) -> None:
    p = tmp_path / "gray.png"
    Image.fromarray(np.full((4, 4), 77, np.uint8)).save(p)
    arr, notes = read_image(p, 3)
    assert arr.shape == (4, 4, 3) and (arr == 77).all()
    assert any("grayscale image where RGB is expected" in n for n in notes)


def test_rgb_has_no_notes(tmp_path: Path) -> None:
    p = tmp_path / "ok.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p)
    assert read_image(p, 3)[1] == []
