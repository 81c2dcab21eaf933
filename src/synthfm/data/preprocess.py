"""Preprocessing: fundus field-of-view crop, square pad or crop, resize; CXR intensity window; quality flags.

`prepare_card` writes a new card (images or shards + manifest + dataset.yaml) and never touches
the source. It resumes: images and shards already written are kept, and the manifest and card
are written last.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import Field
from scipy import ndimage
from skimage.filters import threshold_otsu

from synthfm.config import StrictModel
from synthfm.data.modality import preset

FOV_MIN_FRACTION = 0.05


class QualityThresholds(StrictModel):
    """Cut-offs of the cheap quality check (intensity 0–255 inside the field of view)."""

    blank_std: float = 2.0
    dark_mean: float = 25.0
    bright_mean: float = 230.0
    blur_sharpness: float = Field(1.0, description="variance of the Laplacian of the 0–255 image at 256 px")


class PrepareConfig(StrictModel):
    """How `synthfm data prepare` transforms a card."""

    size: int = Field(256, ge=8, le=4096)
    format: Literal["folder", "shards"] = "folder"
    encoding: Literal["raw", "npy", "png", "jpg"] = "png"
    fov_crop: bool | None = Field(None, description="default: the modality preset's")
    fit: Literal["pad", "crop"] = Field("pad", description="pad: letterbox to a square with black bars; crop: "
                                                          "the centred square of the shorter side")
    fov: Literal["keep", "drop"] = Field("keep", description="keep: the black corners around a round field of view "
                                                            "stay; drop: crop to the largest centred square inside "
                                                            "the field of view, so none remain")
    spacing: tuple[float, float, float] | None = Field(None, description="nifti: resample to this voxel spacing "
                                                                          "(z, y, x) in mm before fitting the cube")
    intensity_window: bool | None = Field(None, description="default: the modality preset's")
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    shard_size: int = Field(1000, ge=1)
    limit: int | None = Field(None, ge=1, description="only the first N rows (a quick trial)")
    quality: QualityThresholds = Field(default_factory=QualityThresholds)
    omit_when_default: ClassVar[tuple[str, ...]] = ("fit", "fov", "spacing")


def fov_mask(rgb: np.ndarray, work_side: int = 256) -> np.ndarray:
    """The retinal field of view: the largest bright connected region, holes filled.

    Large images are analysed at about `work_side` pixels and the mask scaled back (nearest).
    """
    step = max(1, min(rgb.shape[:2]) // work_side)
    if step > 1:
        small = fov_mask(rgb[::step, ::step], work_side)
        big = np.repeat(np.repeat(small, step, axis=0), step, axis=1)
        return np.pad(big, [(0, max(0, rgb.shape[0] - big.shape[0])), (0, max(0, rgb.shape[1] - big.shape[1]))],
                      mode="edge")[: rgb.shape[0], : rgb.shape[1]]
    gray = rgb.max(axis=2) if rgb.ndim == 3 else rgb
    small = gray[::4, ::4] if min(gray.shape) > 64 else gray
    try:
        t = min(float(threshold_otsu(small)), 20.0)
    except ValueError:
        return np.ones(gray.shape, bool)
    mask = gray > max(t, 4.0)
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.ones(gray.shape, bool)
    sizes = ndimage.sum_labels(mask, labels, range(1, n + 1))
    mask = labels == (int(np.argmax(sizes)) + 1)
    if mask.mean() < FOV_MIN_FRACTION:
        return np.ones(gray.shape, bool)
    return ndimage.binary_fill_holes(mask)


def fov_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (r0, r1, c0, c1) of the field of view."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def inscribed_box(mask: np.ndarray, inside: float = 0.99) -> tuple[int, int, int, int]:
    """The largest square centred on the mask's bounding box whose corners lie in the mask (and `inside` of it)."""
    r0, r1, c0, c1 = fov_box(mask)
    cy, cx = (r0 + r1) // 2, (c0 + c1) // 2
    sat = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table

    def box(h: int) -> tuple[int, int, int, int]:
        return max(cy - h, 0), min(cy + h, mask.shape[0]), max(cx - h, 0), min(cx + h, mask.shape[1])

    def fits(h: int) -> bool:
        a, b, c, d = box(h)
        if (b - a) != 2 * h or (d - c) != 2 * h or not mask[[a, a, b - 1, b - 1], [c, d - 1, c, d - 1]].all():
            return False
        return (sat[b, d] - sat[a, d] - sat[b, c] + sat[a, c]) >= inside * 4 * h * h

    lo, hi = 1, max(1, min(r1 - r0, c1 - c0) // 2)
    while lo < hi:  # largest half-side that fits (fits is monotone for a convex field of view)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return box(lo)


def crop_square(img: np.ndarray) -> np.ndarray:
    """The centred square of the shorter side."""
    h, w = img.shape[:2]
    s = min(h, w)
    return img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def pad_square(img: np.ndarray) -> np.ndarray:
    """Pad with black to a centred square."""
    h, w = img.shape[:2]
    s = max(h, w)
    pad = [((s - h) // 2, s - h - (s - h) // 2), ((s - w) // 2, s - w - (s - w) // 2)]
    return np.pad(img, pad + [(0, 0)] * (img.ndim - 2))


def apply_geometry(img: np.ndarray, box: tuple[int, int, int, int] | None, size: int,
                   nearest: bool = False, keep: np.ndarray | None = None, fit: str = "pad") -> np.ndarray:
    """Crop to `box` (blacking out pixels outside `keep`), pad or crop square and resize: images and masks alike."""
    if box is not None:
        r0, r1, c0, c1 = box
        img = img[r0:r1, c0:c1].copy()
        if keep is not None:
            img[~keep[r0:r1, c0:c1]] = 0
    return resize(crop_square(img) if fit == "crop" else pad_square(img), size, nearest)


def window(img: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    """Stretch intensities between two percentiles to 0..255 (a lung-window style normalisation)."""
    lo, hi = np.percentile(img, lo_hi)
    if hi <= lo:
        return img
    return np.clip((img.astype(np.float32) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def resize(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Bicubic (or nearest, for masks) resize of a square image to size x size."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(img).resize((size, size), method))


def quality_measures(img: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean, contrast and sharpness (variance of the Laplacian) inside the field of view."""
    gray = img.mean(axis=2) if img.ndim == 3 else img.astype(np.float64)
    inside = gray[mask] if mask is not None and mask.any() else gray.ravel()
    lap = ndimage.laplace(gray.astype(np.float64))
    lap_in = lap[mask] if mask is not None and mask.any() else lap.ravel()
    return {"q_mean": float(inside.mean()), "q_std": float(inside.std()), "q_sharpness": float(lap_in.var())}


def quality_flag(q: dict[str, float], t: QualityThresholds) -> str:
    """'ok' or the first problem found: blank, dark, bright or blurry."""
    if q["q_std"] < t.blank_std:
        return "blank"
    if q["q_mean"] < t.dark_mean:
        return "dark"
    if q["q_mean"] > t.bright_mean:
        return "bright"
    if q["q_sharpness"] < t.blur_sharpness:
        return "blurry"
    return "ok"


Quality = dict[str, float | str]


def preprocess(img: np.ndarray, modality: str, cfg: PrepareConfig,
               masks: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], Quality]:
    """One image (and its masks, same geometry) through the modality's preprocessing, with quality measures."""
    p = preset(modality)
    use_fov = p.fov_crop if cfg.fov_crop is None else cfg.fov_crop
    use_window = p.intensity_window if cfg.intensity_window is None else cfg.intensity_window
    keep = fov_mask(img) if (use_fov and img.ndim == 3) or cfg.fov == "drop" else None
    box = None if keep is None else inscribed_box(keep) if cfg.fov == "drop" else fov_box(keep)
    if use_window:
        img = window(img, cfg.window_percentiles)
    out = apply_geometry(img, box, cfg.size, keep=keep, fit=cfg.fit)
    out_masks = {k: apply_geometry(m, box, cfg.size, nearest=True, fit=cfg.fit) for k, m in (masks or {}).items()}
    inside = (apply_geometry(keep.astype(np.uint8), box, cfg.size, nearest=True, fit=cfg.fit) > 0
              if keep is not None else None)
    q: dict[str, float | str] = dict(quality_measures(out, inside))
    q["quality_flag"] = quality_flag(q, cfg.quality)  # type: ignore[arg-type]
    return out, out_masks, q
