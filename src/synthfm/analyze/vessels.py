"""Classical vessel segmentation: multiscale vesselness on the green channel inside the field of view.

The green channel (where blood absorbs most) is divided by its heavily blurred background to even out
illumination, the Sato tubeness filter (or Frangi's vesselness) for dark ridges is taken over a few
scales proportional to the field-of-view radius, the border of the field is cut away, and the response is
thresholded with Otsu's method inside the field. Also: pixel-level segmentation metrics against a
reference mask (Dice, AUC, accuracy, sensitivity, specificity), computed inside the field of view.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import frangi, sato, threshold_otsu
from sklearn.metrics import roc_auc_score

from synthfm.analyze.indices import fov_radius
from synthfm.data.preprocess import fov_mask

Filter = Literal["sato", "frangi"]
# Vesselness scales as fractions of the field-of-view radius (about 1, 2 and 4 px at a 480 px radius).
SCALES = (0.0021, 0.0042, 0.0084)


def field_of_view(rgb: np.ndarray) -> np.ndarray:
    """The retinal field of view of an RGB image (largest bright region)."""
    return fov_mask(rgb)


def normalised_green(rgb: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Green channel over its blurred background (1 = background level), outside the field set to 1."""
    green = (rgb[..., 1] if rgb.ndim == 3 else rgb).astype(np.float32) / 255.0
    inside = green[fov]
    fill = float(np.median(inside)) if inside.size else 0.5
    green = np.where(fov, green, fill)
    background = ndi.gaussian_filter(green, fov_radius(fov) / 15.0)
    return np.where(fov, green / (background + 1e-3), 1.0).astype(np.float32)


def scales(fov: np.ndarray) -> list[float]:
    """Vesselness scales (pixels) for this field-of-view size, at least 0.7 px."""
    r = fov_radius(fov)
    return sorted({round(max(0.7, f * r), 2) for f in SCALES})


def inner_fov(fov: np.ndarray) -> np.ndarray:
    """The field of view without its rim, where the aperture edge looks like a vessel."""
    return ndi.binary_erosion(fov, iterations=max(2, round(fov_radius(fov) / 60)))


def vesselness(rgb: np.ndarray, fov: np.ndarray, method: Filter = "sato") -> np.ndarray:
    """Multiscale dark-ridge response (0 outside the inner field of view)."""
    green = normalised_green(rgb, fov)
    filt = sato if method == "sato" else frangi
    out = filt(green, sigmas=scales(fov), black_ridges=True).astype(np.float32)
    out[~inner_fov(fov)] = 0.0
    return out


def threshold(response: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Binary vessels: Otsu's threshold of the response inside the field of view."""
    inside = response[fov]
    if inside.size == 0 or float(inside.max()) <= float(inside.min()):
        return np.zeros(response.shape, bool)
    return (response > threshold_otsu(inside)) & fov


def segment_classical(rgb: np.ndarray, fov: np.ndarray, method: Filter = "sato") -> tuple[np.ndarray, np.ndarray]:
    """(binary vessel mask, response) of the classical pipeline."""
    response = vesselness(rgb, fov, method)
    return threshold(response, fov), response


def segmentation_metrics(pred: np.ndarray, score: np.ndarray, ref: np.ndarray, fov: np.ndarray) -> dict[str, float]:
    """Dice, AUC, accuracy, sensitivity and specificity inside the field of view."""
    p, r = pred[fov].astype(bool), ref[fov].astype(bool)
    tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
    tn = int(p.size - tp - fp - fn)
    both = r.any() and not r.all()
    return {"dice": 2 * tp / max(2 * tp + fp + fn, 1),
            "auc": float(roc_auc_score(r, score[fov])) if both else float("nan"),
            "accuracy": (tp + tn) / max(p.size, 1), "sensitivity": tp / max(tp + fn, 1),
            "specificity": tn / max(tn + fp, 1)}
