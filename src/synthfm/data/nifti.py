"""NIfTI volumes (`source.format: nifti`, `modality: volume`): reading with nibabel, spacing, resampling, cubes.

Volumes are brought to the closest canonical (RAS+) orientation and held as (z, y, x) arrays, with their voxel
spacing in millimetres in the same order. `prepare` optionally resamples to a target spacing, stretches
intensities between two percentiles to 0..255, fits the volume into a cube (`fit: pad` centres it in a black
cube of its longest side, `fit: crop` takes the central cube of its shortest side) and resizes the cube to
`size` voxels per side (trilinear), writing uint8 NIfTI files whose affine records the new spacing.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from nibabel.filebasedimages import ImageFileError
from scipy import ndimage

from synthfm.data.modality import preset
from synthfm.data.transforms import Transform
from synthfm.errors import SynthfmError

Spacing = tuple[float, float, float]
_FIX = "replace the file with a valid 3D NIfTI volume (.nii or .nii.gz), or drop its row from the manifest"


def _where(path: Path | str, where: str) -> str:
    return f"{path}" + (f" ({where})" if where else "")


def read_nifti(path: Path | str, where: str = "") -> tuple[np.ndarray, Spacing]:
    """A 3D NIfTI volume as a float32 (z, y, x) array in canonical orientation, and its (z, y, x) spacing in mm.

    A 4D file with one volume is squeezed; a 4D file with several (a time series, several echoes) is an error.
    """
    vol, spacing, _ = read_volume(path, where)
    return vol, spacing


def load_volume(path: Path | str, where: str = "", percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """A NIfTI volume as uint8 (z, y, x): stored uint8 voxels as they are, anything else percentile-windowed."""
    vol, _, stored = read_volume(path, where)
    return vol.astype(np.uint8) if stored == np.uint8 else window_uint8(vol, percentiles)


def read_volume(path: Path | str, where: str) -> tuple[np.ndarray, Spacing, np.dtype]:
    """Volume, spacing and stored voxel type of a 3D NIfTI file."""
    path = Path(path)
    if not path.is_file():
        raise SynthfmError(f"NIfTI file not found: {_where(path, where)}",
                           "check the card's source.root and the manifest's path column")
    try:
        img = nib.load(path)
    except (ImageFileError, OSError, ValueError, EOFError) as err:
        raise SynthfmError(f"not a readable NIfTI file ({err}): {_where(path, where)}", _FIX) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise SynthfmError(f"not a NIfTI file ({type(img).__name__}): {_where(path, where)}", _FIX)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        what = f"{len(shape)}D NIfTI of shape {shape}" + (f" ({shape[3]} volumes)" if len(shape) == 4 else "")
        raise SynthfmError(f"{what} where a 3D volume is expected: {_where(path, where)}",
                           "split it into 3D volumes (e.g. nibabel: img.slicer[..., t], or fslsplit) and list "
                           "each one in the manifest")
    try:
        img = nib.as_closest_canonical(img)
        arr = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, ValueError, EOFError) as err:
        raise SynthfmError(f"corrupt or truncated NIfTI data ({err}): {_where(path, where)}", _FIX) from None
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.ascontiguousarray(arr.transpose(2, 1, 0)), (zooms[2], zooms[1], zooms[0]), img.get_data_dtype()


def window_uint8(vol: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Stretch intensities between two percentiles to 0..255 (uint8 input is returned unchanged)."""
    if vol.dtype == np.uint8:
        return vol
    lo, hi = np.percentile(vol, percentiles)
    if hi <= lo:
        return np.zeros(vol.shape, np.uint8)
    return np.clip((vol.astype(np.float32) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def resample(vol: np.ndarray, spacing: Spacing, target: Spacing) -> tuple[np.ndarray, Spacing]:
    """Trilinear resampling to the target voxel spacing; returns the volume and its exact new spacing."""
    shape = [max(1, round(n * s / t)) for n, s, t in zip(vol.shape, spacing, target, strict=True)]
    zoom = [m / n for m, n in zip(shape, vol.shape, strict=True)]
    out = ndimage.zoom(vol.astype(np.float32), zoom, order=1, grid_mode=True, mode="nearest")
    new = tuple(float(s * n / m) for s, n, m in zip(spacing, vol.shape, out.shape, strict=True))
    return out, new  # type: ignore[return-value]


def fit_cube(vol: np.ndarray, fit: str = "pad") -> tuple[np.ndarray, int]:
    """`pad`: centre the volume in a zero cube of its longest side; `crop`: its central cube of the shortest side."""
    side = max(vol.shape) if fit == "pad" else min(vol.shape)
    out = np.zeros((side,) * 3, vol.dtype)
    src, dst = [], []
    for n in vol.shape:
        a = abs(side - n) // 2
        src.append(slice(a, a + side) if n > side else slice(0, n))
        dst.append(slice(a, a + n) if n < side else slice(0, side))
    out[tuple(dst)] = vol[tuple(src)]
    return out, side


def resize_cube(vol: np.ndarray, size: int) -> np.ndarray:
    """Trilinear resize of a uint8 cube to size^3 (torch, align_corners=False)."""
    if vol.shape == (size,) * 3:
        return vol
    t = torch.from_numpy(vol.astype(np.float32))[None, None]
    out = F.interpolate(t, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def prepare_volume(vol: np.ndarray, spacing: Spacing, size: int, fit: str = "pad", target: Spacing | None = None,
                   percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[np.ndarray, Spacing, dict[str, Any]]:
    """Resample (optional), window to uint8, fit into a cube and resize: the volume, its spacing, what to record."""
    info: dict[str, Any] = {"source_shape": "x".join(str(n) for n in vol.shape),
                            **{f"source_spacing_{a}": float(s) for a, s in zip("zyx", spacing, strict=True)}}
    if target is not None:
        vol, spacing = resample(vol, spacing, target)
    cube, side = fit_cube(window_uint8(vol, percentiles), fit)
    # anisotropic voxels keep their physical extent per axis: the cube's voxel count is what is equal
    out_spacing = tuple(float(s * side / size) for s in spacing)
    out = resize_cube(cube, size)
    lap = ndimage.laplace(out.astype(np.float64))
    info.update({f"spacing_{a}": s for a, s in zip("zyx", out_spacing, strict=True)})
    info.update({"q_mean": float(out.mean()), "q_std": float(out.std()), "q_sharpness": float(lap.var())})
    return out, out_spacing, info  # type: ignore[return-value]


def nifti_bytes(vol: np.ndarray, spacing: Spacing) -> bytes:
    """A (z, y, x) volume as gzip-compressed NIfTI-1 bytes with a diagonal RAS affine of the given spacing."""
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), affine)
    img.header.set_zooms((spacing[2], spacing[1], spacing[0]))
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


# ---- tensors ---------------------------------------------------------------------------------------------------
def volume_to_tensor(vol: np.ndarray) -> torch.Tensor:
    """uint8 (D, H, W) -> uint8 (1, D, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(vol)).unsqueeze(0)


def volume_transform(modality: str, size: int, train: bool = False) -> Transform:
    """uint8 (D, H, W) -> normalised float (1, size, size, size); with `train`, a random left-right flip."""
    p = preset(modality)

    def apply(vol: np.ndarray) -> torch.Tensor:
        x = volume_to_tensor(vol).float().div_(255.0)
        if x.shape[1:] != (size, size, size):
            x = F.interpolate(x[None], size=(size,) * 3, mode="trilinear", align_corners=False)[0]
        if train and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - p.mean[0]) / p.std[0]

    return apply
