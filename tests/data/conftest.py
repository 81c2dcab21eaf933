"""Fixtures for the data tests: small DICOM and NIfTI files written with pydicom and nibabel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dicom(path: Path, pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", bits: int = 12,
                transfer_syntax: UID = ExplicitVRLittleEndian, **tags: Any) -> Path:
    """A single-frame grayscale DICOM file (uint16 or int16 pixels; None writes no pixel data); `tags` by keyword."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = tags.pop("PatientID", "anon")
    for k, v in tags.items():
        setattr(ds, k, v)
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        if transfer_syntax.is_compressed:
            ds.PixelData = encapsulate([b"\x00" * 16])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, vol: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    """A NIfTI file of an (x, y, z[, t]) array with a diagonal affine of `spacing` (x, y, z)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, np.diag([*spacing, 1.0])), path)
    return path


@pytest.fixture
def dicom_file():
    """The write_dicom helper."""
    return write_dicom


@pytest.fixture
def nifti_file():
    """The write_nifti helper."""
    return write_nifti
