"""Retinal morphology indices from binary masks (AutoMorph-style), and an optic disc / cup estimate.

Vessel indices of one binary vessel mask inside the field of view:

* ``fractal_dimension`` - box-counting dimension: the slope of log N(s) against log(1/s) for boxes of side
  s = 2, 4, 8, ... pixels (up to a quarter of the image), N(s) the boxes holding any vessel pixel.
* ``vessel_density`` - vessel pixels / field-of-view pixels.
* ``width_px`` - mean vessel width on the centreline: 2 * (Euclidean distance to the background) - 1 at
  every skeleton pixel (a one-pixel line is 1 wide).
* ``tortuosity_distance`` - the skeleton is cut into segments at branch points; each segment's centreline
  is smoothed and its arc length divided by its chord; the mean over segments weighted by length.
* ``tortuosity_curvature`` - the squared-curvature measure: sum over segments of the integral of the
  squared curvature along the centreline (smoothed over max(5 px, 2% of the field radius) to remove the
  pixel staircase), divided by the total length, times the squared field-of-view radius (so it does not
  depend on the image size).

The optic disc and cup are estimated from the green channel: vessels removed by a grey closing, the disc
centre at the brightest point of a heavily smoothed image, and Otsu's threshold of the window around it (disc
against background), then the cup where the disc is brighter than midway between its rim
(a ring just inside the edge) and its brightest part. ``cup_to_disc`` is the vertical diameter ratio.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import skeletonize

EIGHT = np.ones((3, 3), bool)
VESSEL_INDICES = ("fractal_dimension", "vessel_density", "width_px", "tortuosity_distance", "tortuosity_curvature")


def fractal_dimension(mask: np.ndarray) -> float:
    """Box-counting dimension of a binary mask (NaN when it is empty)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return float("nan")
    side = 2 ** math.ceil(math.log2(max(mask.shape)))
    padded = np.zeros((side, side), bool)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    sizes, counts = [], []
    s = 2
    while s <= max(2, min(mask.shape) // 4):
        boxes = padded.reshape(side // s, s, side // s, s).any(axis=(1, 3))
        sizes.append(s)
        counts.append(int(boxes.sum()))
        s *= 2
    if len(sizes) < 2:
        return float("nan")
    slope = np.polyfit(np.log(1.0 / np.asarray(sizes, float)), np.log(np.asarray(counts, float)), 1)[0]
    return float(slope)


def vessel_density(mask: np.ndarray, fov: np.ndarray) -> float:
    """Fraction of field-of-view pixels that are vessel."""
    n = int(fov.sum())
    return float((mask & fov).sum() / n) if n else float("nan")


def mean_width(mask: np.ndarray, skeleton: np.ndarray | None = None) -> float:
    """Mean vessel width in pixels along the centreline (2 * distance transform - 1 on the skeleton)."""
    skeleton = skeletonize(mask) if skeleton is None else skeleton
    if not skeleton.any():
        return float("nan")
    dist = ndi.distance_transform_edt(mask)
    return float(np.mean(2.0 * dist[skeleton] - 1.0))


def _neighbours(skel: np.ndarray) -> np.ndarray:
    """Number of 8-connected skeleton neighbours of every pixel."""
    return ndi.convolve(skel.astype(np.uint8), EIGHT.astype(np.uint8), mode="constant") - skel.astype(np.uint8)


def _order_path(coords: np.ndarray) -> np.ndarray | None:
    """Order the pixels of a simple 8-connected path from one end to the other (None for a loop)."""
    index = {(int(r), int(c)): k for k, (r, c) in enumerate(coords)}
    links = [[index[(r + dr, c + dc)] for dr in (-1, 0, 1) for dc in (-1, 0, 1)
              if (dr or dc) and (r + dr, c + dc) in index] for r, c in index]
    ends = [k for k, nb in enumerate(links) if len(nb) == 1]
    if not ends:
        return None
    order, seen, cur = [ends[0]], {ends[0]}, ends[0]
    while True:
        nxt = [k for k in links[cur] if k not in seen]
        if not nxt:
            break
        # prefer 4-connected steps so a staircase is not cut short
        cur = min(nxt, key=lambda k: float(np.abs(coords[k] - coords[cur]).sum()))
        order.append(cur)
        seen.add(cur)
    return coords[order]


def vessel_segments(skeleton: np.ndarray, min_length: int) -> list[np.ndarray]:
    """Ordered centreline pixels of every segment between branch points with at least `min_length` pixels."""
    skel = np.asarray(skeleton, bool)
    junction = skel & (_neighbours(skel) >= 3)
    parts = skel & ~ndi.binary_dilation(junction, EIGHT)
    labels, _ = ndi.label(parts, structure=EIGHT)
    out = []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        rr, cc = np.nonzero(labels[sl] == k)
        if len(rr) < min_length:
            continue
        path = _order_path(np.column_stack([rr + sl[0].start, cc + sl[1].start]).astype(float))
        if path is not None and len(path) >= min_length:
            out.append(path)
    return out


def _smooth(path: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed centreline (removes the pixel staircase)."""
    return ndi.gaussian_filter1d(path, sigma, axis=0, mode="nearest")


def segment_tortuosity(path: np.ndarray, sigma: float, sigma_curvature: float) -> tuple[float, float, float]:
    """(arc length, arc/chord, integral of squared curvature) of one ordered centreline.

    Arc and chord are taken on the centreline smoothed with `sigma`; the curvature on one smoothed with the
    larger `sigma_curvature`, since the pixel staircase adds curvature of order 1/px^2.
    """
    p = _smooth(path, sigma)
    step = np.diff(p, axis=0)
    arc = float(np.hypot(step[:, 0], step[:, 1]).sum())
    chord = float(np.hypot(*(p[-1] - p[0])))
    p = _smooth(path, sigma_curvature)
    d1 = np.gradient(p, axis=0)
    d2 = np.gradient(d1, axis=0)
    speed = np.hypot(d1[:, 0], d1[:, 1])
    kappa = np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) / np.maximum(speed, 1e-9) ** 3
    return arc, arc / max(chord, 1e-9), float((kappa**2 * speed).sum())


def tortuosity(skeleton: np.ndarray, fov_radius: float) -> tuple[float, float]:
    """(length-weighted arc/chord, squared-curvature tortuosity * R^2) over the skeleton's segments."""
    min_length = max(8, round(0.04 * fov_radius))
    sigma, sigma_curvature = max(1.5, 0.01 * fov_radius), max(5.0, 0.02 * fov_radius)
    stats = [segment_tortuosity(p, sigma, sigma_curvature) for p in vessel_segments(skeleton, min_length)]
    if not stats:
        return float("nan"), float("nan")
    arc, ratio, curv = (np.asarray(v) for v in zip(*stats, strict=True))
    return float((arc * ratio).sum() / arc.sum()), float(curv.sum() / arc.sum() * fov_radius**2)


def fov_radius(fov: np.ndarray) -> float:
    """Radius of a circle with the field of view's area (pixels)."""
    return float(math.sqrt(max(int(fov.sum()), 1) / math.pi))


def vessel_indices(mask: np.ndarray, fov: np.ndarray) -> dict[str, float]:
    """Every vessel index of one binary mask inside the field of view."""
    mask = np.asarray(mask, bool) & np.asarray(fov, bool)
    skel = skeletonize(mask)
    dist_t, curv_t = tortuosity(skel, fov_radius(fov))
    return {"fractal_dimension": fractal_dimension(mask), "vessel_density": vessel_density(mask, fov),
            "width_px": mean_width(mask, skel), "tortuosity_distance": dist_t, "tortuosity_curvature": curv_t}


def artery_vein_indices(av: np.ndarray, fov: np.ndarray) -> dict[str, float]:
    """Fractal dimension, density and width of arteries (label 1) and veins (label 2), and their width ratio."""
    out: dict[str, float] = {}
    for name, label in (("artery", 1), ("vein", 2)):
        m = (av == label) & fov
        out[f"{name}_fractal_dimension"] = fractal_dimension(m)
        out[f"{name}_density"] = vessel_density(m, fov)
        out[f"{name}_width_px"] = mean_width(m)
    out["artery_vein_width_ratio"] = out["artery_width_px"] / out["vein_width_px"]
    return out


def _vertical_extent(mask: np.ndarray) -> int:
    """Number of rows a mask spans."""
    rows = np.flatnonzero(mask.any(axis=1))
    return int(rows[-1] - rows[0] + 1) if len(rows) else 0


def _component_at(mask: np.ndarray, point: tuple[int, int]) -> np.ndarray:
    """The connected component of `mask` holding `point` (or the largest one), holes filled."""
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    k = labels[point]
    if k == 0:
        k = int(np.argmax(ndi.sum_labels(mask, labels, range(1, n + 1)))) + 1
    return ndi.binary_fill_holes(labels == k)


def _cup_threshold(patch: np.ndarray, disc: np.ndarray) -> float:
    """Midway between the rim (median of a ring just inside the disc edge) and the palest disc pixel."""
    depth = ndi.distance_transform_edt(disc)
    radius = max(float(depth.max()), 1.0)
    ring = disc & (depth >= 0.05 * radius) & (depth <= 0.12 * radius)
    rim = float(np.median(patch[ring])) if ring.any() else float(np.median(patch[disc]))
    return 0.5 * (rim + float(patch[disc].max()))


def _closed(channel: np.ndarray, fov: np.ndarray, radius: float) -> np.ndarray:
    """One channel with the outside of the field set to its median and dark vessels closed away."""
    x = np.where(fov, channel.astype(np.float32), float(np.median(channel[fov])))
    return ndi.grey_closing(x, size=2 * max(1, round(radius)) + 1)


def disc_cup(rgb: np.ndarray, fov: np.ndarray) -> dict[str, float | np.ndarray]:
    """Estimated optic disc and cup masks, centre, vertical diameters and cup-to-disc ratio."""
    r = fov_radius(fov)
    rgb = rgb if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, axis=2)
    closed = _closed(rgb[..., 1], fov, 0.035 * r)
    smooth = ndi.gaussian_filter(closed, 0.06 * r)
    smooth[~ndi.binary_erosion(fov, iterations=max(1, round(0.1 * r)))] = -np.inf
    cy, cx = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    half = round(0.25 * r)
    win = (slice(max(cy - half, 0), cy + half + 1), slice(max(cx - half, 0), cx + half + 1))
    patch = ndi.gaussian_filter(closed[win], max(0.5, 0.006 * r))
    centre = (cy - win[0].start, cx - win[1].start)
    disc_p = _component_at(patch > threshold_otsu(patch), centre)
    pale = ndi.gaussian_filter(_closed(rgb[..., 2], fov, 0.05 * r)[win], max(0.5, 0.006 * r))
    cup_p = _component_at((pale > _cup_threshold(pale, disc_p)) & disc_p, centre) & disc_p
    disc, cup = np.zeros(fov.shape, bool), np.zeros(fov.shape, bool)
    disc[win], cup[win] = disc_p, cup_p
    dh, ch = _vertical_extent(disc), _vertical_extent(cup)
    return {"disc": disc, "cup": cup, "disc_row": float(cy), "disc_col": float(cx), "disc_diameter_px": float(dh),
            "cup_diameter_px": float(ch), "cup_to_disc": ch / dh if dh else float("nan"),
            "cup_to_disc_area": math.sqrt(cup.sum() / disc.sum()) if disc.any() else float("nan")}
