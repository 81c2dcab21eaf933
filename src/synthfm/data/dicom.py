"""DICOM input (`source.format: dicom`): pixels through the modality and VOI LUTs to 8 bits, tags into the manifest.

A DICOM card is a manifest whose path column names DICOM files under `source.root` (a folder of files plus a
CSV of labels, or a manifest of paths). Each file is decoded with pydicom: the modality LUT (or rescale slope
and intercept) is applied, then the VOI LUT or window (pydicom's `apply_modality_lut` / `apply_voi_lut`), then
MONOCHROME1 images are inverted so that high values are bright, and the result is scaled from the VOI output
range (the full data range when the file has no VOI) to 0..255. The card's `tags:` map copies header values
(age, sex, view position, device) into manifest columns, so they can be declared as metadata.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from synthfm.errors import SynthfmError

_FIX = "replace the file with a valid DICOM image, or drop its row from the manifest"
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _where(path: Path | str, where: str) -> str:
    return f"{path}" + (f" ({where})" if where else "")


def read_dataset(path: Path | str, where: str = "", pixels: bool = True) -> Dataset:
    """Parse a DICOM file (header only with pixels=False); a clear SynthfmError for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise SynthfmError(f"DICOM file not found: {_where(path, where)}",
                           "check the card's source.root and the manifest's path column")
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        raise SynthfmError(f"not a DICOM file (no 'DICM' preamble): {_where(path, where)}", _FIX) from None
    except (OSError, ValueError, EOFError, KeyError) as err:
        raise SynthfmError(f"corrupt DICOM file ({err}): {_where(path, where)}", _FIX) from None


def _check_decodable(ds: Dataset, path: Path | str, where: str) -> None:
    """A missing pixel array or a compressed transfer syntax without an installed decoder is an error naming it."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise SynthfmError(f"DICOM file has no pixel data (e.g. a structured report or a header-only file): "
                           f"{_where(path, where)}", _FIX)
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or not ts.is_compressed:
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise SynthfmError(f"DICOM transfer syntax {ts.name} ({ts}) has no decoder in pydicom: "
                           f"{_where(path, where)}", "convert the file to an uncompressed transfer syntax "
                                                     "(e.g. gdcmconv --raw) and try again") from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies)
        raise SynthfmError(f"DICOM file is compressed with {ts.name} ({ts}) and no decoder for it is installed: "
                           f"{_where(path, where)}",
                           f"install one of the plugins pydicom names for it ({options}), e.g. "
                           f"'pip install {_suggest(decoder.missing_dependencies)}'")


def _suggest(missing: list[str]) -> str:
    """The pip packages of the first pylibjpeg / pyjpegls option pydicom lists (else the first option)."""
    pick = next((m for m in missing if m.startswith("pylibjpeg")), missing[0] if missing else "")
    needs = pick.partition("requires ")[2]
    pkgs = [re.split(r"[<>=]", p.strip())[0] for p in needs.split(" and ") if p.strip() and p.strip() != "numpy"]
    return " ".join(pkgs) or "pylibjpeg"


def voi_range(ds: Dataset, arr: np.ndarray) -> tuple[float, float]:
    """The output range of the VOI transform pydicom applies (PS3.3 C.11.2), or the data range without one.

    A VOI LUT sequence outputs 0 .. 2**bits - 1 (bits from its LUT Descriptor); a window outputs the range of
    the modality output that pydicom's `apply_windowing` maps to.
    """
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2 ** bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        bits = int(ds.BitsStored)
        if ds.get("ModalityLUTSequence"):
            lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
        elif int(ds.get("PixelRepresentation", 0)) == 0:
            lo, hi = 0.0, float(2 ** bits - 1)
        else:
            lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            slope, icpt = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            lo, hi = lo * slope + icpt, hi * slope + icpt
        return lo, hi
    return float(arr.min()), float(arr.max())


def to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] to 0..255, rounded and clipped (a constant image maps to 0)."""
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((arr.astype(np.float64) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def dicom_pixels(ds: Dataset, path: Path | str = "<dataset>", where: str = "") -> tuple[np.ndarray, list[str]]:
    """Decoded 8-bit pixels (HxW grayscale or HxWx3 colour; first frame of a multi-frame file) and notes."""
    _check_decodable(ds, path, where)
    try:
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises several types for truncated or inconsistent pixel data
        raise SynthfmError(f"cannot decode DICOM pixel data ({err}): {_where(path, where)}", _FIX) from None
    notes: list[str] = []
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
        notes.append(f"multi-frame DICOM ({ds.NumberOfFrames} frames): first frame used")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if not photometric.startswith("MONOCHROME"):
        if arr.dtype != np.uint8:
            arr = to_uint8(arr, 0, 2 ** int(ds.BitsStored) - 1)
        return np.ascontiguousarray(arr), notes
    arr = apply_voi_lut(apply_modality_lut(arr, ds), ds, index=0)
    lo, hi = voi_range(ds, arr)
    out = to_uint8(arr, lo, hi)
    if photometric == "MONOCHROME1":
        out = 255 - out
        notes.append("MONOCHROME1: inverted so that high values are bright")
    if int(ds.get("BitsStored", 8)) > 8:
        windowed = bool(ds.get("VOILUTSequence")) or "WindowCenter" in ds
        notes.append(f"{ds.BitsStored}-bit DICOM scaled to 8 bits over "
                     f"{'its VOI window' if windowed else 'its full data range (no VOI in the file)'}")
    return out, notes


def read_dicom(path: Path | str, where: str = "") -> tuple[np.ndarray, list[str]]:
    """Read a DICOM file's first frame as 8-bit pixels, with notes on the conversions made."""
    return dicom_pixels(read_dataset(path, where), path, where)


# ---- header tags into the manifest --------------------------------------------------------------------------
def tag_value(ds: Dataset, keyword: str) -> Any:
    """A header value as a manifest cell: ages ('045Y', '006M') in years, numbers as numbers, the rest as text."""
    elem = ds.get(keyword)
    if elem is None or elem == "":
        return None
    value = elem.value if hasattr(elem, "value") else elem
    if keyword == "PatientAge":
        m = _AGE.match(str(value).strip())
        return round(int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2)], 3) if m else None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def tag_columns(paths: list[Path], tags: dict[str, str]) -> pd.DataFrame:
    """One column per `tags` entry (column -> DICOM keyword), read from the headers of `paths` (pixels skipped)."""
    rows = []
    for k, p in enumerate(paths):
        ds = read_dataset(p, f"manifest row {k + 1}", pixels=False)
        rows.append({col: tag_value(ds, kw) for col, kw in tags.items()})
    return pd.DataFrame(rows, columns=list(tags))


def fill_from_tags(df: pd.DataFrame, paths: list[Path], tags: dict[str, str]) -> pd.DataFrame:
    """Add the `tags` columns to a manifest; where the manifest already has the column, tags fill only its gaps."""
    if not tags:
        return df
    got = tag_columns(paths, tags)
    df = df.copy()
    for col in tags:
        values = got[col].to_numpy(dtype=object)
        if col in df.columns:
            have = df[col].astype(object).where(df[col].notna(), None).to_numpy()
            values = np.where(pd.isna(have), values, have)
        df[col] = pd.Series(values, index=df.index, dtype=object).infer_objects()
    return df
