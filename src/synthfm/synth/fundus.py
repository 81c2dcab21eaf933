"""Procedural colour fundus phantom: a parametric eye rendered as a 45-degree fundus photograph.

The model of the eye, in the order it is drawn (all geometry lives in units of the field-of-view
radius, so the same seed gives the same eye at 64, 256 or 512 px):

1. **Field of view** - a circular camera aperture; everything outside it is black.
2. **Choroid and RPE** - an orange-red background whose reflectance depends on ethnicity
   (lighter orange-red for white, darker brown for black / south-Asian eyes), with low-frequency
   mottling and a *tigroid* pattern (visible choroidal vessels between pigmented interspaces)
   that grows with pigmentation and age.
3. **Macula and fovea** - a darker, more pigmented disc of about one disc diameter centred
   2.5 disc diameters temporal to the optic disc (and slightly below it), with a darker fovea and,
   in young eyes, a small foveal reflex.
4. **Optic disc and cup** - a vertically oval, pale yellow-orange disc (nasal side of the image:
   right for OD, left for OS) with a paler cup that is the disc ellipse scaled by the
   cup-to-disc ratio.  ``cup_to_disc`` is the *vertical* diameter ratio; because the cup is a scaled
   copy of the disc it is also the square root of the cup/disc area ratio.
5. **Retinal vessels** - arterial and venous trees grown from the disc centre: four paired trunks
   (the temporal arcades bend around the macula, the nasal ones run nasally) and small macular
   and nasal branches; every branch splits by Murray's law (r^3 = r1^3 + r2^3), headings wiggle with
   smoothed noise (tortuosity) and vessels stop at the field edge and the foveal avascular zone.
   Blood absorbs most in green, so vessels are dark in the green channel; veins are wider and
   darker/purpler, arteries thinner, brighter and redder with a central light reflex.
6. **Pathology** - diabetic retinopathy by grade (microaneurysms, dot/blot/flame haemorrhages,
   yellow hard exudates in clusters, white fluffy cotton-wool spots, venous beading, fine tortuous
   neovascular tufts at the disc for grade 4), AMD (yellow drusen around the fovea, pigment clumps,
   atrophy), glaucoma (large cup) and cataract (lens scatter: blur, contrast loss, yellow veil).
7. **Lens, camera and file** - age yellows the lens and lowers contrast; the device sets a colour
   cast, blur, vignetting, uneven illumination, sensor noise, effective resolution and JPEG quality.

Every mask is exact ground truth for the drawn geometry, and ``params`` records every number used.
The ``vessels`` mask holds the vessels that are visible at the rendered size (centre at least ~10%
darker in green); finer branches are still drawn, faintly, but not labelled.  Each part of the eye
(condition, anatomy, vessels, texture, lesions, camera) draws from its own ``default_rng([seed, k])``
stream, so the same seed with one label changed renders the same eye with only that disease changed.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage as ndi

from synthfm.synth.base import PhantomSample, check_choice, check_range, class_index

FUNDUS_TASKS: dict[str, list[str]] = {
    "dr_grade": ["0", "1", "2", "3", "4"],
    "amd": ["no", "yes"],
    "glaucoma": ["no", "yes"],
    "cataract": ["no", "yes"],
}
FUNDUS_METADATA: dict[str, list[str] | tuple[float, float]] = {
    "age": (20.0, 90.0),
    "sex": ["F", "M"],
    "ethnicity": ["white", "black", "asian", "south_asian", "hispanic"],
    "device": ["topcon", "canon", "zeiss", "nidek", "smartphone"],
}
PARAM_OVERRIDES: tuple[str, ...] = ("cup_to_disc", "vessel_branching", "vessel_tortuosity", "vessel_calibre")
LESION_LABELS: dict[str, int] = {
    "microaneurysm": 1,
    "haemorrhage": 2,
    "exudate": 3,
    "cotton_wool": 4,
    "drusen": 5,
    "neovascularisation": 6,
}
DR_LESION_KINDS: tuple[str, ...] = ("microaneurysm", "haemorrhage", "exudate", "cotton_wool", "neovascularisation")

DEFAULT_PRIORS: dict[str, Any] = {
    "dr_grade": [0.72, 0.10, 0.09, 0.05, 0.04],
    "amd": 0.08,
    "glaucoma": 0.06,
    "cataract": 0.10,
    "age_mean": 60.0,
    "age_sd": 12.0,
    "sex": [0.5, 0.5],
    "ethnicity": [0.45, 0.15, 0.2, 0.1, 0.1],
    "device": [0.3, 0.25, 0.2, 0.15, 0.1],
    "age_dependent_prevalence": True,
    "jpeg": True,
}

# Reflectance of the choroid/RPE (RGB, 0-1) and base tigroid strength, per ethnicity.
PIGMENT: dict[str, tuple[tuple[float, float, float], float]] = {
    "white": ((0.80, 0.37, 0.165), 0.15),
    "hispanic": ((0.73, 0.345, 0.155), 0.25),
    "asian": ((0.70, 0.335, 0.15), 0.30),
    "south_asian": ((0.60, 0.30, 0.14), 0.40),
    "black": ((0.53, 0.275, 0.135), 0.45),
}


@dataclass(frozen=True)
class Device:
    """Camera model: colour gain, optics and file settings (blur and noise as fractions)."""

    gain: tuple[float, float, float]
    blur: float  # Gaussian sigma as a fraction of the image size
    vignette: float
    unevenness: float
    resolution: float  # effective resolution as a fraction of the output size
    jpeg_quality: int
    noise: float
    fov: float  # field-of-view radius as a fraction of half the image size


DEVICES: dict[str, Device] = {
    "topcon": Device((1.00, 1.00, 1.00), 0.0015, 0.35, 0.08, 1.0, 95, 0.006, 0.95),
    "canon": Device((1.05, 0.98, 0.88), 0.0020, 0.30, 0.10, 1.0, 92, 0.008, 0.96),
    "zeiss": Device((0.95, 1.06, 1.10), 0.0015, 0.25, 0.06, 1.0, 90, 0.005, 0.94),
    "nidek": Device((1.08, 0.96, 0.90), 0.0025, 0.40, 0.12, 0.85, 85, 0.010, 0.95),
    "smartphone": Device((1.12, 0.95, 0.80), 0.0025, 0.45, 0.30, 0.6, 70, 0.020, 0.88),
}

# Optical depth per unit vessel thickness (RGB) for artery, vein and neovascular vessels.
VESSEL_OD = np.array(
    [[0.0, 0.0, 0.0], [0.12, 0.75, 0.6], [0.32, 1.1, 0.8], [0.15, 0.8, 0.6]], dtype=np.float32
)
REF_RADIUS = 0.01  # vessel radius (FOV units) whose centre has the optical depth above
STEP = 0.01  # vessel growth step (FOV units)
VISIBLE_THICKNESS = 0.15  # vessels thinner than this at their centre (~10% darker in green) are not in the mask
# Stream ids: each part of the eye draws from its own generator, so changing one label leaves the rest.
STREAMS = {"condition": 0, "anatomy": 1, "vessels": 2, "texture": 3, "lesions": 4, "camera": 5}


def _stream(seed: int, name: str) -> np.random.Generator:
    """Independent generator for one part of the rendering."""
    return np.random.default_rng([seed, STREAMS[name]])


# ----------------------------------------------------------------------------- conditions


def _class_index(task: str, value: Any) -> int:
    """Class index for a task value given as index, bool or class name."""
    return class_index(task, FUNDUS_TASKS[task], value)


def _check_metadata(key: str, value: Any) -> Any:
    """Validate one metadata value; return it normalised."""
    allowed = FUNDUS_METADATA[key]
    if isinstance(allowed, tuple):
        return check_range(key, value, allowed)
    return check_choice(key, value, allowed)


def _check_override(key: str, value: Any) -> float:
    """Validate one parameter override."""
    limits = {"cup_to_disc": (0.05, 0.92), "vessel_branching": (0.0, 6.0), "vessel_tortuosity": (0.0, 3.0),
              "vessel_calibre": (0.2, 4.0)}
    return check_range(key, value, limits[key])


def validate_condition(condition: dict[str, Any]) -> dict[str, Any]:
    """Check keys and values of a condition; return labels as indices and numbers as floats."""
    allowed = [*FUNDUS_TASKS, *FUNDUS_METADATA, *PARAM_OVERRIDES]
    out: dict[str, Any] = {}
    for key, value in condition.items():
        if key in FUNDUS_TASKS:
            out[key] = _class_index(key, value)
        elif key in FUNDUS_METADATA:
            out[key] = _check_metadata(key, value)
        elif key in PARAM_OVERRIDES:
            out[key] = _check_override(key, value)
        else:
            raise ValueError(f"unknown condition key {key!r}; allowed keys: {allowed}")
    return out


# ----------------------------------------------------------------------------- geometry helpers


@dataclass
class Frame:
    """Pixel frame of one image: FOV centre and radius, eye side, cached coordinate grids."""

    size: int
    radius_px: float
    mirror: float  # +1 for OD (disc on the right), -1 for OS

    @property
    def centre(self) -> float:
        """Pixel coordinate of the FOV centre (both axes)."""
        return (self.size - 1) / 2.0

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        """Canonical FOV-unit coordinates (..., 2) to pixel (col, row)."""
        out = np.empty_like(xy, dtype=np.float32)
        out[..., 0] = self.centre + self.mirror * xy[..., 0] * self.radius_px
        out[..., 1] = self.centre + xy[..., 1] * self.radius_px
        return out

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Canonical FOV-unit x and y of every pixel."""
        gx, gy = _pixel_offsets(self.size)
        return gx * (self.mirror / self.radius_px), gy * (1.0 / self.radius_px)


@lru_cache(maxsize=8)
def _pixel_offsets(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets from the image centre (read-only, cached per size)."""
    c = (size - 1) / 2.0
    ax = np.arange(size, dtype=np.float32) - c
    gx, gy = np.meshgrid(ax, ax)
    gx.flags.writeable = False
    gy.flags.writeable = False
    return gx, gy


def _upsample(field: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of a small float field to size x size."""
    return np.asarray(Image.fromarray(field.astype(np.float32)).resize((size, size), Image.BICUBIC))


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Periodic Gaussian-filtered noise on an n x n grid, unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _ellipse_q(gx: np.ndarray, gy: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Normalised elliptical radius of each grid point (1 on the ellipse)."""
    return np.sqrt(((gx - cx) / ax) ** 2 + ((gy - cy) / ay) ** 2)


# ----------------------------------------------------------------------------- vessel trees


@dataclass
class VesselBatch:
    """Vessels of one generation: polylines (m, n, 2), radii (m, n), validity (m, n), kind and hidden start."""

    points: np.ndarray
    radius: np.ndarray
    valid: np.ndarray
    kind: np.ndarray
    heading: np.ndarray
    drawn: np.ndarray  # (m, n) valid and outside the parent vessel


@dataclass
class Seeds:
    """Vessels to grow: start, heading, radius, kind, length, bend (m, 3) = (curvature, its length, curvature after)."""

    start: np.ndarray
    heading: np.ndarray
    radius: np.ndarray
    kind: np.ndarray
    length: np.ndarray
    bend: np.ndarray
    level: int
    wiggle: float = 0.04  # correlation length of the tortuous wiggle (FOV units)
    hidden: np.ndarray | None = None  # leading steps inside the parent vessel, not rasterised


# Trunks leaving the disc in the canonical OD frame (y down, temporal = -x): heading, curvature over
# bend length then after, radius factor, length.  Temporal arcades arch around the macula.
TRUNKS: tuple[tuple[float, float, float, float, float, float], ...] = (
    (-math.pi / 2 - 0.12, -2.5, 0.62, -0.35, 1.0, 1.9),
    (math.pi / 2 + 0.12, 2.5, 0.62, 0.35, 1.0, 1.9),
    (-math.pi / 2 + 0.45, 0.9, 0.4, 0.0, 0.72, 1.2),
    (math.pi / 2 - 0.45, -0.9, 0.4, 0.0, 0.72, 1.2),
    (0.0, 0.0, 1.0, 0.0, 0.45, 0.8),
    (math.pi - 0.45, 0.6, 0.5, 0.0, 0.35, 0.55),
    (math.pi + 0.45, -0.6, 0.5, 0.0, 0.35, 0.55),
)


def _trunk_seeds(rng: np.random.Generator, anat: dict[str, Any], calibre: dict[str, float]) -> Seeds:
    """The paired arterial/venous trunks and small macular/nasal vessels leaving the disc."""
    base = np.array(TRUNKS * 2)
    m = len(base)
    kind = np.repeat(np.array([1, 2], np.int8), len(TRUNKS))
    head = base[:, 0] + rng.normal(0, 0.08, m) + np.where(kind == 1, 0.3 * np.sign(base[:, 0]), 0.0)
    bend = base[:, 1:4] * np.column_stack([rng.uniform(0.85, 1.15, m), rng.uniform(0.85, 1.15, m), np.ones(m)])
    radius = base[:, 4] * np.where(kind == 1, calibre["artery"], calibre["vein"])
    start = np.asarray(anat["disc_centre"]) + rng.normal(0, 0.12, size=(m, 2)) * anat["disc_radius"]
    return Seeds(start, head, radius, kind, base[:, 5], bend, 0)


def _headings(rng: np.random.Generator, seeds: Seeds, n: int, tortuosity: float) -> np.ndarray:
    """Heading along each path: start + piecewise-constant curvature + slow drift + tortuous wiggle."""
    s = np.arange(n)[None, :] * STEP
    k1, s1, k2 = (seeds.bend[:, i : i + 1] for i in range(3))
    bend = k1 * np.minimum(s, s1) + k2 * np.maximum(s - s1, 0.0)
    drift = np.cumsum(rng.normal(0, 0.3 * math.sqrt(STEP), size=(len(seeds.start), n)), axis=1)
    sigma = seeds.wiggle / STEP
    wiggle = ndi.gaussian_filter1d(rng.standard_normal((len(seeds.start), n)), sigma, axis=1, mode="nearest")
    wiggle *= math.sqrt(2 * math.sqrt(math.pi) * sigma) * tortuosity
    return seeds.heading[:, None] + bend + drift + wiggle


def _grow(rng: np.random.Generator, seeds: Seeds, anat: dict[str, Any], tortuosity: float) -> VesselBatch:
    """Grow every seed into a polyline, cut at its length, the FOV edge and the foveal avascular zone."""
    n = int(np.ceil(seeds.length.max() / STEP)) + 1
    head = _headings(rng, seeds, n, tortuosity)
    steps = np.stack([np.cos(head), np.sin(head)], axis=-1) * STEP
    steps[:, 0] = 0.0
    pts = seeds.start[:, None, :] + np.cumsum(steps, axis=1)
    fovea = np.asarray(anat["fovea_centre"])
    ok = (np.arange(n)[None, :] * STEP <= seeds.length[:, None]) & (np.hypot(pts[..., 0], pts[..., 1]) < 0.985)
    ok &= np.hypot(pts[..., 0] - fovea[0], pts[..., 1] - fovea[1]) > anat["faz_radius"]
    valid = np.logical_and.accumulate(ok, axis=1)
    radius = np.broadcast_to(seeds.radius[:, None], valid.shape).copy()
    hidden = np.zeros(len(pts), int) if seeds.hidden is None else seeds.hidden
    drawn = valid & (np.arange(n)[None, :] >= hidden[:, None])
    return VesselBatch(pts, radius, valid, seeds.kind, head, drawn)


def _branch_probability(level: int, branching: float) -> float:
    """Probability that a candidate branch of the given generation is kept."""
    return float(np.clip(branching - level + 1, 0.0, 1.0))


def _branch(rng: np.random.Generator, batch: VesselBatch, level: int, branching: float,
            disc_radius: float) -> Seeds | None:
    """Place branch points along a batch, thin the parents by Murray's law and return child seeds."""
    m, n = batch.valid.shape
    spacing = (0.2, 0.2, 0.15, 0.12, 0.1, 0.1)[min(level, 5)]
    k = 12
    pos = np.cumsum(rng.exponential(spacing, size=(m, k)), axis=1) + (disc_radius if level == 0 else 0.04)
    ratio = rng.uniform(0.45, 0.8, size=(m, k))
    angle = rng.uniform(0.55, 1.3, size=(m, k)) * rng.choice([-1.0, 1.0], size=(m, k))
    keep_u = rng.uniform(size=(m, k))
    lengths = rng.uniform(0.5, 1.5, size=(m, k))
    reach = batch.valid.sum(axis=1) * STEP
    keep = (pos < reach[:, None] - 0.03) & (keep_u < _branch_probability(level + 1, branching))
    idx = np.minimum((pos / STEP).astype(int), n - 1)
    factor = np.where(pos < reach[:, None], (1 - ratio**3) ** (1 / 3), 1.0)  # undrawn generations thin too
    s = np.arange(n) * STEP
    passed = pos[:, :, None] < s[None, None, :]
    batch.radius *= np.exp(np.einsum("mk,mkn->mn", np.log(factor), passed.astype(np.float64)))
    batch.radius *= np.linspace(1.0, 0.85, n)[None, :]
    if not keep.any():
        return None
    pi, ki = np.nonzero(keep)
    bi = idx[pi, ki]
    radius_before = batch.radius[pi, np.maximum(bi - 1, 0)]
    child_len = 0.9 * 0.5 ** (level + 1) * lengths[pi, ki]
    bend = np.column_stack([rng.normal(0, 0.4, size=len(pi)), np.full(len(pi), 9.0), np.zeros(len(pi))])
    hidden = np.floor(radius_before / (np.sin(np.abs(angle[pi, ki])) * STEP)).astype(int)
    return Seeds(batch.points[pi, bi], batch.heading[pi, bi] + angle[pi, ki], ratio[pi, ki] * radius_before,
                 batch.kind[pi], child_len, bend, level + 1, hidden=hidden)


def grow_tree(rng: np.random.Generator, anat: dict[str, Any], vp: dict[str, Any]) -> list[VesselBatch]:
    """All vessel generations, trunk first, as a list of batches."""
    seeds: Seeds | None = _trunk_seeds(rng, anat, vp["trunk_radius"])
    batches = []
    while seeds is not None and seeds.level <= 6:
        batch = _grow(rng, seeds, anat, vp["vessel_tortuosity"])
        children = _branch(rng, batch, seeds.level, vp["vessel_branching"], anat["disc_radius"])
        batches.append(batch)
        seeds = children
    return batches


# ----------------------------------------------------------------------------- vessel rendering


def _centrelines(batches: list[VesselBatch], frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Centreline samples (col, row), radii in px, kinds, and their spacing (at most half a pixel)."""
    sub = max(1, math.ceil(STEP * frame.radius_px / 0.5))
    t = (np.arange(sub, dtype=np.float32) / sub)[None, :, None]
    xy_all, r_all, k_all = [], [], []
    for b in batches:
        seg = b.drawn[:, :-1] & b.drawn[:, 1:]
        px = frame.to_px(b.points)
        a, d = px[:, :-1][seg], (px[:, 1:] - px[:, :-1])[seg]
        ra, rd = b.radius[:, :-1][seg], (b.radius[:, 1:] - b.radius[:, :-1])[seg]
        xy_all.append((a[:, None, :] + t * d[:, None, :]).reshape(-1, 2))
        r_all.append(((ra[:, None] + t[..., 0] * rd[:, None]) * frame.radius_px).reshape(-1))
        k_all.append(np.repeat(np.broadcast_to(b.kind[:, None], seg.shape)[seg], sub))
    xy = np.concatenate(xy_all) if xy_all else np.zeros((0, 2), np.float32)
    r = np.concatenate(r_all).astype(np.float32) if r_all else np.zeros(0, np.float32)
    kind = np.concatenate(k_all) if k_all else np.zeros(0, np.int8)
    return xy, r, kind, STEP * frame.radius_px / sub


@dataclass
class VesselLayer:
    """Rendered vessels: thickness (relative optical path), kind, binary mask and artery reflex weight."""

    thickness: np.ndarray
    kind: np.ndarray
    mask: np.ndarray
    reflex: np.ndarray


def _render_bin(layer: VesselLayer, xy: np.ndarray, r: np.ndarray, kind: np.ndarray, ref_px: float) -> None:
    """Distance-transform one radius bin of centreline samples into the layer (in place)."""
    size = layer.mask.shape[0]
    col = np.clip(np.rint(xy[:, 0]).astype(int), 0, size - 1)
    row = np.clip(np.rint(xy[:, 1]).astype(int), 0, size - 1)
    pad = math.ceil(r.max()) + 2
    r0, c0 = max(row.min() - pad, 0), max(col.min() - pad, 0)
    shape = (min(row.max() + pad + 1, size) - r0, min(col.max() + pad + 1, size) - c0)
    centre = np.ones(shape, bool)
    rad, knd = np.zeros(shape, np.float32), np.zeros(shape, np.int8)
    centre[row - r0, col - c0] = False
    rad[row - r0, col - c0] = r
    knd[row - r0, col - c0] = kind
    dist, (iy, ix) = ndi.distance_transform_edt(centre, return_indices=True)
    near = np.nonzero(dist <= max(float(r.max()), 0.7))
    d = dist[near].astype(np.float32)
    src = (iy[near], ix[near])
    rn, kn = rad[src], knd[src]
    reff = np.maximum(rn, 0.7)
    thick = np.sqrt(np.clip(reff**2 - d**2, 0, None)) * (rn / reff) ** 2 / ref_px
    at = (near[0] + r0, near[1] + c0)
    better = thick > layer.thickness[at]
    upd = (at[0][better], at[1][better])
    layer.thickness[upd] = thick[better]
    layer.kind[upd] = kn[better]
    layer.reflex[upd] = np.where(rn >= 1.2, np.exp(-((d / (0.35 * reff)) ** 2)), 0.0)[better]
    visible = rn**2 / (reff * ref_px) >= VISIBLE_THICKNESS
    on = ((d <= rn - 0.25) | (d == 0)) & visible
    layer.mask[at[0][on], at[1][on]] = True


def _render_thin(layer: VesselLayer, xy: np.ndarray, r: np.ndarray, kind: np.ndarray, ref_px: float,
                 spacing: float) -> None:
    """Sub-pixel vessels: bilinear splat of their absorbance (integral matched to the EDT profile)."""
    size = layer.mask.shape[0]
    x0, y0 = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
    fx, fy = xy[:, 0] - x0, xy[:, 1] - y0
    weight = spacing * (math.pi / 2) * r**2 / ref_px
    thin = np.zeros(size * size, np.float64)
    knd = np.zeros(size * size, np.int8)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        col, row = np.clip(x0 + dx, 0, size - 1), np.clip(y0 + dy, 0, size - 1)
        flat = row * size + col
        thin += np.bincount(flat, weights=weight * w, minlength=size * size)
        knd[flat] = kind
    thin = thin.reshape(size, size).astype(np.float32)
    better = thin > layer.thickness
    layer.thickness[better] = thin[better]
    layer.kind[better] = knd.reshape(size, size)[better]
    layer.reflex[better] = 0.0
    visible = r**2 / (0.7 * ref_px) >= VISIBLE_THICKNESS
    layer.mask[np.rint(xy[visible, 1]).astype(int).clip(0, size - 1),
               np.rint(xy[visible, 0]).astype(int).clip(0, size - 1)] = True


def render_vessels(batches: list[VesselBatch], frame: Frame) -> VesselLayer:
    """Rasterise vessel trees: an exact distance transform per radius octave (>= 1 px), splats below."""
    size = frame.size
    layer = VesselLayer(np.zeros((size, size), np.float32), np.zeros((size, size), np.int8),
                        np.zeros((size, size), bool), np.zeros((size, size), np.float32))
    xy, r, kind, spacing = _centrelines(batches, frame)
    inside = (xy[:, 0] > -0.5) & (xy[:, 0] < size - 0.5) & (xy[:, 1] > -0.5) & (xy[:, 1] < size - 0.5)
    xy, r, kind = xy[inside], r[inside], kind[inside]
    ref_px = REF_RADIUS * frame.radius_px
    bins = np.floor(np.log2(np.maximum(r, 0.5))).astype(int)
    for b in np.unique(bins[bins >= 0]):
        sel = bins == b
        _render_bin(layer, xy[sel], r[sel], kind[sel], ref_px)
    _render_thin(layer, xy[bins < 0], r[bins < 0], kind[bins < 0], ref_px, spacing)
    return layer


def _apply_vessels(rho: np.ndarray, layer: VesselLayer, od_table: np.ndarray) -> None:
    """Attenuate reflectance by each vessel's optical depth (Beer-Lambert, in place)."""
    idx = np.nonzero(layer.thickness > 0)
    kind = layer.kind[idx]
    od = layer.thickness[idx][:, None] * od_table[kind]
    od *= 1.0 - 0.55 * (layer.reflex[idx] * (kind == 1))[:, None]
    rho[idx] *= np.exp(-od)


def _bead_veins(rng: np.random.Generator, batches: list[VesselBatch], amount: float) -> None:
    """Venous beading: periodic calibre changes along stretches of the larger veins (in place)."""
    for b in batches[:2]:
        m, n = b.radius.shape
        s = np.arange(n) * STEP
        start = rng.uniform(0.2, 1.0, size=(m, 1))
        phase = rng.uniform(0, 2 * math.pi, size=(m, 1))
        on = (s[None, :] > start) & (s[None, :] < start + 0.45) & (b.kind[:, None] == 2)
        b.radius *= 1 + amount * on * np.sin(2 * math.pi * s[None, :] / 0.09 + phase) ** 2


# ----------------------------------------------------------------------------- anatomy and appearance


def _anatomy(rng: np.random.Generator, cond: dict[str, Any]) -> dict[str, Any]:
    """Eye side, disc, cup, fovea and macula geometry (canonical OD frame, FOV units)."""
    male = cond["sex"] == "M"
    eye = "OD" if rng.uniform() < 0.5 else "OS"
    disc_radius = rng.uniform(0.115, 0.145) * (1.02 if male else 1.0)
    disc = (rng.uniform(0.49, 0.57), rng.normal(0.0, 0.035))
    dd = 2 * disc_radius
    fovea = (disc[0] - 2.5 * dd * rng.uniform(0.94, 1.06), disc[1] + rng.uniform(0.1, 0.4) * dd)
    aspect = rng.uniform(1.03, 1.12)
    cdr_normal = float(np.clip(rng.normal(0.32, 0.07), 0.2, 0.45))
    cdr_glaucoma = rng.uniform(0.6, 0.85)
    cdr = cond.get("cup_to_disc", cdr_glaucoma if cond["glaucoma"] else cdr_normal)
    axes = (disc_radius / math.sqrt(aspect), disc_radius * math.sqrt(aspect))
    shift = -rng.uniform(0.0, 0.4) * (1 - cdr) * axes[0]
    return {
        "eye": eye, "disc_radius": disc_radius, "disc_centre": disc, "disc_axes": axes,
        "cup_to_disc": cdr, "cup_centre": (disc[0] + shift, disc[1]), "cup_axes": (cdr * axes[0], cdr * axes[1]),
        "fovea_centre": fovea, "faz_radius": 0.17 * dd, "macula_sigma": 0.7 * dd * rng.uniform(0.9, 1.1),
        "macular_pigment": rng.uniform(0.25, 0.45), "disc_pallor": rng.uniform(0.1, 0.35) if cond["glaucoma"] else 0.0,
        "ppa": rng.uniform(0.3, 0.8) if cond["glaucoma"] else rng.uniform(0.0, 0.4) * (cond["age"] > 60),
    }


def _vessel_params(rng: np.random.Generator, cond: dict[str, Any]) -> dict[str, Any]:
    """Calibre (with age narrowing and a weak sex effect), branching depth and tortuosity."""
    calibre = cond.get("vessel_calibre", rng.uniform(0.9, 1.1))
    branching = cond.get("vessel_branching", rng.uniform(2.0, 3.0))
    tortuosity = cond.get("vessel_tortuosity", rng.uniform(0.2, 0.45))
    avr = rng.uniform(0.68, 0.78) * (1 - 0.003 * (cond["age"] - 60))
    vein = 0.014 * calibre * (1.03 if cond["sex"] == "M" else 1.0)
    return {"vessel_calibre": calibre, "vessel_branching": branching, "vessel_tortuosity": tortuosity,
            "artery_vein_ratio": avr, "trunk_radius": {"vein": vein, "artery": vein * avr}}


def _pigment(rng: np.random.Generator, cond: dict[str, Any]) -> dict[str, Any]:
    """Fundus reflectance and tigroid strength from ethnicity, sex and age."""
    base, tigroid = PIGMENT[cond["ethnicity"]]
    scale = (0.97 if cond["sex"] == "M" else 1.0) * (1 + rng.normal(0, 0.05))
    tint = np.array([1.0, 1 + rng.normal(0, 0.04), 1 + rng.normal(0, 0.06)])
    tig = float(np.clip(tigroid + 0.006 * (cond["age"] - 50) + rng.normal(0, 0.08), 0.0, 0.9))
    return {"reflectance": np.array(base) * scale * tint, "tigroid": tig}


def _background(rng: np.random.Generator, pig: dict[str, Any], anat: dict[str, Any], frame: Frame,
                age: float) -> np.ndarray:
    """Choroid/RPE reflectance with mottling, tigroid texture, macula and fovea (H, W, 3)."""
    size = frame.size
    low = _upsample(_smooth_noise(rng, 24, 3.0), size)
    ridge = _upsample(np.exp(-((_smooth_noise(rng, 72, 1.3)) / 0.6) ** 2), size)
    grain = _upsample(_smooth_noise(rng, 128, 0.8), size)
    gx, gy = frame.grid()
    fx, fy = anat["fovea_centre"]
    macula = np.exp(((gx - fx) ** 2 + (gy - fy) ** 2) * (-1 / anat["macula_sigma"] ** 2)) * anat["macular_pigment"]
    shade = 1 + 0.07 * low + 0.02 * grain
    tig = (0.3 * pig["tigroid"]) * (1 - ridge) * (0.35 + 0.65 * np.minimum(gx * gx + gy * gy, 1.0))
    rho = np.empty((size, size, 3), np.float32)
    for c, (base, kt, km) in enumerate(zip(pig["reflectance"], (0.5, 1.0, 0.9), (0.35, 0.6, 0.7), strict=True)):
        rho[..., c] = (shade * float(base)) * (1 - kt * tig) * (1 - km * macula)
    _fovea(rho, anat, frame, age)
    return rho


def _window(frame: Frame, centre: tuple[float, float], half: float) -> tuple[slice, slice]:
    """Pixel window of half-width `half` (FOV units) around a canonical point."""
    c = frame.to_px(np.asarray(centre, np.float32))
    h = half * frame.radius_px + 2
    lo = np.clip(np.floor(c - h).astype(int), 0, frame.size)
    hi = np.clip(np.ceil(c + h).astype(int) + 1, 0, frame.size)
    return slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _fovea(rho: np.ndarray, anat: dict[str, Any], frame: Frame, age: float) -> None:
    """Darker foveal pit and, in young eyes, a small foveal light reflex (in place)."""
    sigma = 0.24 * anat["disc_radius"]
    win = _window(frame, anat["fovea_centre"], 3 * sigma)
    gx, gy = (g[win] for g in frame.grid())
    d2 = (gx - anat["fovea_centre"][0]) ** 2 + (gy - anat["fovea_centre"][1]) ** 2
    pit = np.exp(-d2 / sigma**2)[..., None] * np.array([0.09, 0.18, 0.18], np.float32)
    reflex = max(0.0, (55 - age) / 35) * 0.35 * np.exp(-d2 / (0.2 * sigma) ** 2)
    rho[win] = rho[win] * (1 - pit) + reflex[..., None]


def _draw_disc(rho: np.ndarray, anat: dict[str, Any], frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Blend the optic disc, peripapillary atrophy and cup into rho; return disc and cup masks."""
    win = _window(frame, anat["disc_centre"], 1.5 * max(anat["disc_axes"]))
    gx, gy = (g[win] for g in frame.grid())
    q_disc = _ellipse_q(gx, gy, *anat["disc_centre"], *anat["disc_axes"])
    q_cup = _ellipse_q(gx, gy, *anat["cup_centre"], *anat["cup_axes"])
    soft = 0.6 / (anat["disc_radius"] * frame.radius_px) + 0.08
    a_disc = np.clip((1 - q_disc) / soft + 0.5, 0, 1)[..., None]
    temporal = np.clip((anat["disc_centre"][0] - gx) / anat["disc_radius"], 0, 1)
    a_ppa = (anat["ppa"] * temporal * np.exp(-(((q_disc - 1.12) / 0.12) ** 2)))[..., None]
    a_cup = np.clip((1 - q_cup) / 0.3 + 0.4, 0, 1)[..., None]
    rim = np.array([1.12, 0.80, 0.42]) * (1 - anat["disc_pallor"]) + np.array([1.2, 1.0, 0.65]) * anat["disc_pallor"]
    view = rho[win]
    view += (np.array([0.85, 0.72, 0.52], np.float32) - view) * 0.6 * a_ppa
    view += (rim.astype(np.float32) - view) * 0.92 * a_disc
    view += (np.array([1.35, 1.25, 0.95], np.float32) - view) * 0.9 * a_cup * a_disc
    disc = np.zeros((frame.size, frame.size), np.uint8)
    cup = np.zeros_like(disc)
    disc[win] = q_disc <= 1
    cup[win] = (q_cup <= 1) & (q_disc <= 1)
    return disc, cup


# ----------------------------------------------------------------------------- lesions

# DR grade -> inclusive count ranges: microaneurysms, haemorrhages, exudate clusters, cotton-wool, NV tufts.
DR_COUNTS: dict[int, tuple[tuple[int, int], ...]] = {
    0: ((0, 0), (0, 0), (0, 0), (0, 0), (0, 0)),
    1: ((2, 8), (0, 0), (0, 0), (0, 0), (0, 0)),
    2: ((5, 15), (2, 8), (0, 3), (0, 2), (0, 0)),
    3: ((10, 25), (12, 28), (1, 5), (2, 6), (0, 0)),
    4: ((12, 30), (15, 35), (2, 6), (3, 8), (1, 4)),
}
# Reflectance colour (or optical depth, for red lesions) and opacity of each painted lesion kind.
LESION_LOOK: dict[str, tuple[tuple[float, float, float], float]] = {
    "drusen": ((0.98, 0.82, 0.45), 0.75),
    "atrophy": ((0.92, 0.68, 0.48), 0.7),
    "exudate": ((1.0, 0.90, 0.42), 0.95),
    "cotton_wool": ((0.98, 0.90, 0.74), 0.65),
    "haemorrhage": ((0.35, 1.1, 0.9), 1.0),
    "microaneurysm": ((0.4, 1.2, 1.0), 1.0),
    "pigment": ((1.2, 1.2, 1.0), 1.0),
}


@dataclass
class Lesions:
    """Lesion blobs per kind as (n, 5) arrays [x, y, rx, ry, theta] in FOV units, with instance counts."""

    blobs: dict[str, np.ndarray]
    counts: dict[str, int]
    nv: Seeds | None
    beading: float
    amd_severity: float


def _places(rng: np.random.Generator, n: int, centre: tuple[float, float], sigma: float,
            anat: dict[str, Any]) -> np.ndarray:
    """Up to n Gaussian-scattered points inside the FOV and off the optic disc."""
    cand = np.asarray(centre) + rng.normal(0, sigma, size=(3 * n + 8, 2))
    ok = np.hypot(cand[:, 0], cand[:, 1]) < 0.9
    ok &= np.hypot(*(cand - np.asarray(anat["disc_centre"])).T) > 1.35 * anat["disc_radius"]
    return cand[ok][:n]


def _round_blobs(rng: np.random.Generator, pts: np.ndarray, lo: float, hi: float, aspect: float = 1.0) -> np.ndarray:
    """Blobs of random radius in [lo, hi] (and aspect up to `aspect`) at the given points."""
    r = rng.uniform(lo, hi, size=len(pts))
    ry = r * rng.uniform(min(aspect, 1.0), 1.0, size=len(pts))
    return np.column_stack([pts, r, ry, rng.uniform(0, math.pi, size=len(pts))])


def _haemorrhages(rng: np.random.Generator, pts: np.ndarray, anat: dict[str, Any]) -> np.ndarray:
    """Dot, blot (several merged blobs) and flame (elongated along the nerve fibres) haemorrhages."""
    kind = rng.choice(3, size=len(pts), p=[0.4, 0.4, 0.2])
    rows = []
    for (x, y), k in zip(pts, kind, strict=True):
        r = rng.uniform(0.012, 0.02) if k == 0 else rng.uniform(0.018, 0.035)
        if k == 2:
            theta = math.atan2(y - anat["disc_centre"][1], x - anat["disc_centre"][0])
            rows.append((x, y, 1.6 * r, 0.45 * r, theta))
            continue
        rows.append((x, y, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, math.pi)))
        for _ in range(int(k == 1) * rng.integers(1, 4)):
            dx, dy = rng.normal(0, 0.5 * r, size=2)
            rows.append((x + dx, y + dy, 0.7 * r, 0.55 * r, rng.uniform(0, math.pi)))
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def _exudates(rng: np.random.Generator, n_clusters: int, anat: dict[str, Any]) -> np.ndarray:
    """Clusters (some circinate rings) of small sharp yellow exudates around the macula."""
    centres = _places(rng, n_clusters, anat["fovea_centre"], 0.16, anat)
    rows = []
    for c in centres:
        m, spread = rng.integers(3, 13), rng.uniform(0.03, 0.08)
        ang = rng.uniform(0, 2 * math.pi, size=m)
        rad = spread * (rng.uniform(0.8, 1.1, size=m) if rng.uniform() < 0.4 else np.sqrt(rng.uniform(size=m)))
        pts = c + np.column_stack([np.cos(ang), np.sin(ang)]) * rad[:, None]
        rows.append(_round_blobs(rng, pts, 0.005, 0.012, 0.6))
    return np.concatenate(rows) if rows else np.zeros((0, 5))


def _cotton_wool(rng: np.random.Generator, n: int, anat: dict[str, Any]) -> np.ndarray:
    """Cotton-wool spots along the arcades near the disc, each a fluffy cluster of three soft blobs."""
    ang = rng.uniform(0.35, 1.35, size=n) * rng.choice([-1.0, 1.0], size=n) + math.pi
    dist = rng.uniform(2.0, 5.0, size=n) * anat["disc_radius"]
    pts = np.asarray(anat["disc_centre"]) + np.column_stack([np.cos(ang), np.sin(ang)]) * dist[:, None]
    main = _round_blobs(rng, pts, 0.022, 0.04, 0.55)
    puffs = np.repeat(main, 2, axis=0)
    puffs[:, :2] += rng.normal(0, 0.5, size=(2 * n, 2)) * puffs[:, 2:3]
    puffs[:, 2:4] *= 0.65
    return np.concatenate([main, puffs])


def _neovascular_seeds(rng: np.random.Generator, tufts: int, anat: dict[str, Any]) -> Seeds | None:
    """Seeds for fine, very tortuous new vessels sprouting on and around the disc."""
    if tufts == 0:
        return None
    n = tufts * 6
    centre = np.asarray(anat["disc_centre"]) + rng.normal(0, 0.8 * anat["disc_radius"], size=(tufts, 2))
    start = np.repeat(centre, 6, axis=0) + rng.normal(0, 0.01, size=(n, 2))
    bend = np.column_stack([rng.normal(0, 4.0, n), np.full(n, 9.0), np.zeros(n)])
    return Seeds(start, rng.uniform(0, 2 * math.pi, n), rng.uniform(0.0022, 0.0035, n), np.full(n, 3, np.int8),
                 rng.uniform(0.05, 0.13, n), bend, 0, wiggle=0.012)


def _amd(rng: np.random.Generator, severity: float, anat: dict[str, Any]) -> dict[str, np.ndarray]:
    """Drusen around the fovea, pigment clumps and (when advanced) a patch of atrophy."""
    sigma = 0.6 * 2 * anat["disc_radius"]
    drusen = _round_blobs(rng, _places(rng, int(15 + 55 * severity), anat["fovea_centre"], sigma, anat),
                          0.005, 0.012 + 0.016 * severity, 0.7)
    pigment = _round_blobs(rng, _places(rng, int(rng.integers(1, 4) + 8 * severity), anat["fovea_centre"],
                                        0.5 * sigma, anat), 0.004, 0.01, 0.6)
    fx, fy = anat["fovea_centre"]
    r_atrophy = rng.uniform(0.3, 0.5) * 2 * anat["disc_radius"] * (severity > 0.8)
    atrophy = np.array([[fx, fy, r_atrophy, 0.85 * r_atrophy, rng.uniform(0, math.pi)]])[: int(severity > 0.8)]
    return {"drusen": drusen, "pigment": pigment, "atrophy": atrophy}


def draw_lesions(rng: np.random.Generator, cond: dict[str, Any], anat: dict[str, Any]) -> Lesions:
    """All lesions implied by the labels: DR by grade and AMD by a drawn severity."""
    counts = [int(rng.integers(lo, hi + 1)) for lo, hi in DR_COUNTS[cond["dr_grade"]]]
    mid = tuple((np.asarray(anat["fovea_centre"]) + np.asarray(anat["disc_centre"])) / 2)
    blobs = {
        "microaneurysm": _round_blobs(rng, _places(rng, counts[0], anat["fovea_centre"], 0.3, anat), 0.007, 0.011),
        "haemorrhage": np.zeros((0, 5)),
        "exudate": _exudates(rng, counts[2], anat),
        "cotton_wool": _cotton_wool(rng, counts[3], anat),
    }
    hae_pts = _places(rng, counts[1], mid, 0.42, anat)
    blobs["haemorrhage"] = _haemorrhages(rng, hae_pts, anat)
    severity = rng.uniform(0.3, 1.0) if cond["amd"] else 0.0
    blobs.update(_amd(rng, severity, anat) if cond["amd"] else {})
    n = {"microaneurysm": len(blobs["microaneurysm"]), "haemorrhage": len(hae_pts), "exudate": len(blobs["exudate"]),
         "cotton_wool": len(blobs["cotton_wool"]) // 3, "drusen": len(blobs.get("drusen", ())),
         "neovascularisation": counts[4]}
    beading = rng.uniform(0.15, 0.3) if cond["dr_grade"] >= 3 else 0.0
    return Lesions(blobs, n, _neovascular_seeds(rng, counts[4], anat), beading, severity)


def _splat(blobs: np.ndarray, frame: Frame, soft: float, min_px: float) -> np.ndarray:
    """Opacity (H, W) of elliptical blobs with anti-aliased edges of relative width `soft`."""
    size = frame.size
    alpha = np.zeros((size, size), np.float32)
    if len(blobs) == 0:
        return alpha
    centre = frame.to_px(blobs[:, :2])
    radii = np.maximum(blobs[:, 2:4] * frame.radius_px, min_px)
    for (cx, cy), (rx, ry), theta in zip(centre, radii, blobs[:, 4] * frame.mirror, strict=True):
        ext = max(rx, ry) * (1 + soft) + 1.5
        r0, r1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, size)
        c0, c1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, size)
        if r0 >= r1 or c0 >= c1:
            continue
        dy = np.arange(r0, r1, dtype=np.float32)[:, None] - cy
        dx = np.arange(c0, c1, dtype=np.float32)[None, :] - cx
        c, s = math.cos(theta), math.sin(theta)
        q = np.sqrt(((dx * c + dy * s) / rx) ** 2 + ((dy * c - dx * s) / ry) ** 2)
        width = max(soft, 0.7 / min(rx, ry))
        a = np.clip((1 - q) / width + 0.5, 0, 1)
        np.maximum(alpha[r0:r1, c0:c1], a, out=alpha[r0:r1, c0:c1])
    return alpha


def _paint(rho: np.ndarray, kind: str, alpha: np.ndarray) -> None:
    """Composite one lesion layer into reflectance (in place): absorb for red/pigment, else blend."""
    look, opacity = LESION_LOOK[kind]
    idx = np.nonzero(alpha > 0)
    a = (alpha[idx] * opacity)[:, None]
    if kind in ("haemorrhage", "microaneurysm", "pigment"):
        rho[idx] *= np.exp(-a * np.asarray(look, np.float32))
    else:
        rho[idx] += (np.asarray(look, np.float32) - rho[idx]) * a


# ----------------------------------------------------------------------------- lens, camera, file


def _optics(rng: np.random.Generator, cond: dict[str, Any], size: int) -> dict[str, Any]:
    """Lens (age yellowing, cataract scatter and blur) and device (cast, light, noise, file) parameters."""
    dev = DEVICES[cond["device"]]
    severity = rng.uniform(0.35, 1.0) if cond["cataract"] else 0.0
    age_term = float(np.clip((cond["age"] - 30) / 60, 0, 1))
    cat_blur = severity * (0.006 + 0.012 * severity)
    return {
        "device": cond["device"], "exposure": rng.uniform(0.92, 1.08),
        "colour_gain": (np.asarray(dev.gain) * (1 + rng.normal(0, 0.02, 3))).tolist(),
        "illumination_angle": rng.uniform(0, 2 * math.pi), "unevenness": dev.unevenness * rng.uniform(0.5, 1.0),
        "vignetting": dev.vignette * rng.uniform(0.8, 1.2), "noise_sd": dev.noise,
        "lens_yellowing": 0.22 * age_term + 0.35 * severity,
        "scatter": 0.06 * age_term + (0.2 + 0.35 * severity) * (severity > 0),
        "cataract_severity": severity, "blur_px": math.hypot(dev.blur, cat_blur) * size,
        "effective_resolution": dev.resolution, "jpeg_quality": dev.jpeg_quality,
    }


def _expose(rho: np.ndarray, opt: dict[str, Any], frame: Frame, fov: np.ndarray, luma: float) -> np.ndarray:
    """Illuminate reflectance (vignetting, uneven light, auto-exposure, colour cast) and pass the lens."""
    gx, gy = frame.grid()
    r2 = gx * gx + gy * gy
    ang = opt["illumination_angle"]
    light = (1 - opt["vignetting"] * r2 * (0.5 + 0.5 * r2)) * (
        1 + opt["unevenness"] * (gx * math.cos(ang) + gy * math.sin(ang)))
    y, scatter = opt["lens_yellowing"], opt["scatter"]
    gain = (0.92 * opt["exposure"] * (1 + 0.5 * max(0.0, 1 - luma / 0.6)) * (1 - scatter)
            * np.asarray(opt["colour_gain"]) * np.array([1.0, 1 - 0.25 * y, 1 - 0.75 * y]))
    img = rho * (light[..., None] * gain.astype(np.float32))
    sub = (slice(None, None, 4), slice(None, None, 4))
    red = img[sub][..., 0][fov[sub]].mean() / (1 - scatter)
    img += (scatter * red) * np.array([1.0, 0.95, 0.55], np.float32)
    rim = (r2[sub] > 0.8) & fov[sub]
    np.copyto(img, img[sub][rim].mean(axis=0), where=~fov[..., None])
    return img


def _blur(pil: Image.Image, sigma: float) -> Image.Image:
    """Gaussian-like blur: one box pass for small sigma (fast), a true Gaussian for large."""
    if sigma < 0.3:
        return pil
    if sigma < 1.5:
        return pil.filter(ImageFilter.BoxBlur(sigma * math.sqrt(3)))
    return pil.filter(ImageFilter.GaussianBlur(sigma))


def _capture(rng: np.random.Generator, img: np.ndarray, opt: dict[str, Any], fov: np.ndarray,
             jpeg: bool) -> np.ndarray:
    """Sensor noise, optical blur, effective resolution and JPEG compression; black outside the FOV."""
    size = img.shape[0]
    img += (rng.standard_normal((size, size), dtype=np.float32) * opt["noise_sd"])[..., None]
    img *= 255.0
    img += 0.5
    pil = _blur(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), opt["blur_px"])
    low = max(8, round(size * opt["effective_resolution"]))
    if low < size:
        pil = pil.resize((low, low), Image.BILINEAR).resize((size, size), Image.BICUBIC)
    if jpeg:
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=opt["jpeg_quality"])
        pil = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = np.array(pil, dtype=np.uint8)
    out[~fov] = 0
    return out


# ----------------------------------------------------------------------------- generator


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays (nested in dicts, lists, tuples) to plain Python."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def _tree_stats(batches: list[VesselBatch], frame: Frame) -> dict[str, Any]:
    """Segment count, branch points, length and windowed arc/chord tortuosity of the drawn trees."""
    window = 10  # steps of STEP: arc/chord over 0.1 FOV-radius windows
    ratios, n_vessels = [], 0
    for b in batches:
        n_vessels += int((b.valid.sum(axis=1) >= 2).sum())
        k = (b.valid.shape[1] - 1) // window
        idx = np.arange(k + 1) * window
        ok = b.valid[:, idx[1:]]
        chord = np.linalg.norm(b.points[:, idx[1:]] - b.points[:, idx[:-1]], axis=-1)
        ratios.append((window * STEP / np.maximum(chord, 1e-9))[ok])
    length = sum(float(np.maximum(b.valid.sum(axis=1) - 1, 0).sum()) for b in batches) * STEP
    all_ratios = np.concatenate(ratios) if ratios else np.ones(1)
    return {"n_vessel_segments": n_vessels, "n_branch_points": n_vessels - len(batches[0].kind),
            "vessel_length_px": length * frame.radius_px, "tortuosity_index": float(all_ratios.mean())}


def fitted_overrides(priors: dict[str, Any]) -> dict[str, Any]:
    """FundusPhantom overrides from priors fitted to released counts (class / category proportions, age as
    [mean, sd]); prevalences are fitted marginally, so the age doubling is off."""
    out: dict[str, Any] = {"age_dependent_prevalence": False}
    for name, p in priors.items():
        p = np.asarray(p, dtype=float)
        if name == "age":
            out["age_mean"], out["age_sd"] = float(np.clip(p[0], 20, 90)), float(max(p[1], 1.0))
        elif name in ("amd", "glaucoma", "cataract"):
            out[name] = float(p[1])
        else:
            out[name] = [float(x) for x in p / p.sum()]
    return out


class FundusPhantom:
    """Procedural colour fundus photographs with exact masks (see the module docstring).

    Keyword overrides of the default priors (``DEFAULT_PRIORS``):
    ``dr_grade`` (5 probabilities), ``amd``/``glaucoma``/``cataract`` (prevalence at age 60),
    ``age_mean``/``age_sd`` (normal, clipped to 20-90), ``sex``/``ethnicity``/``device`` (probabilities
    in the order of ``FUNDUS_METADATA``), ``age_dependent_prevalence`` (AMD and cataract odds double
    every 10 years of age, glaucoma every 20; default True) and ``jpeg`` (False skips compression).
    """

    name = "fundus_phantom"

    def __init__(self, **overrides: Any) -> None:
        unknown = sorted(set(overrides) - set(DEFAULT_PRIORS))
        if unknown:
            raise ValueError(f"unknown FundusPhantom override(s) {unknown}; allowed: {sorted(DEFAULT_PRIORS)}")
        self.priors = {**DEFAULT_PRIORS, **overrides}
        for key, n in (("dr_grade", 5), ("sex", 2), ("ethnicity", 5), ("device", 5)):
            p = np.asarray(self.priors[key], dtype=float)
            if p.shape != (n,) or (p < 0).any() or not math.isclose(p.sum(), 1.0, abs_tol=1e-6):
                raise ValueError(f"prior {key}={self.priors[key]!r} must be {n} probabilities summing to 1")

    def sample_condition(self, rng: np.random.Generator) -> dict[str, Any]:
        """Labels and metadata drawn from the priors."""
        return self._draw(rng, {})

    def _draw(self, rng: np.random.Generator, fixed: dict[str, Any]) -> dict[str, Any]:
        """Draw every key (so streams stay aligned), then keep the fixed ones."""
        p = self.priors
        meta = {
            "age": round(float(np.clip(rng.normal(p["age_mean"], p["age_sd"]), 20.0, 90.0)), 1),
            "sex": str(rng.choice(FUNDUS_METADATA["sex"], p=p["sex"])),
            "ethnicity": str(rng.choice(FUNDUS_METADATA["ethnicity"], p=p["ethnicity"])),
            "device": str(rng.choice(FUNDUS_METADATA["device"], p=p["device"])),
        }
        meta.update({k: v for k, v in fixed.items() if k in FUNDUS_METADATA})
        odds = 2.0 ** ((meta["age"] - 60) / 10) if p["age_dependent_prevalence"] else 1.0
        labels = {
            "dr_grade": int(rng.choice(5, p=p["dr_grade"])),
            "amd": int(rng.uniform() < min(p["amd"] * odds, 0.95)),
            "glaucoma": int(rng.uniform() < min(p["glaucoma"] * math.sqrt(odds), 0.95)),
            "cataract": int(rng.uniform() < min(p["cataract"] * odds, 0.95)),
        }
        return {**labels, **meta, **fixed}

    def generate(self, condition: dict[str, Any], seed: int, size: int = 256) -> PhantomSample:
        """Render one fundus photograph for `condition` (missing keys drawn from the priors)."""
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if not isinstance(size, (int, np.integer)) or size < 16:
            raise ValueError(f"size must be an int >= 16, got {size!r}")
        cond = self._draw(_stream(seed, "condition"), validate_condition(condition))
        anat = _anatomy(_stream(seed, "anatomy"), cond)
        vrng = _stream(seed, "vessels")
        vp = _vessel_params(vrng, cond)
        batches = grow_tree(vrng, anat, vp)
        lrng = _stream(seed, "lesions")
        lesions = draw_lesions(lrng, cond, anat)
        if lesions.beading:
            _bead_veins(lrng, batches, lesions.beading)
        nv = [_grow(lrng, lesions.nv, anat, 1.3)] if lesions.nv is not None else []
        crng = _stream(seed, "camera")
        opt = _optics(crng, cond, int(size))
        frame = Frame(int(size), DEVICES[cond["device"]].fov * size / 2, 1.0 if anat["eye"] == "OD" else -1.0)
        image, masks, pig = self._render(_stream(seed, "texture"), cond, anat, batches, lesions, nv, frame, opt)
        image = _capture(crng, image, opt, masks["fov"] > 0, bool(self.priors["jpeg"]))
        params = self._params(seed, frame, cond, anat, vp, batches, lesions, pig, opt)
        labels = {k: int(cond[k]) for k in FUNDUS_TASKS}
        metadata = {k: cond[k] for k in FUNDUS_METADATA}
        return PhantomSample(image=image, masks=masks, labels=labels, metadata=metadata, params=params)

    @staticmethod
    def _render(rng: np.random.Generator, cond: dict[str, Any], anat: dict[str, Any], batches: list[VesselBatch],
                lesions: Lesions, nv: list[VesselBatch], frame: Frame,
                opt: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
        """Paint the eye in depth order and collect the masks; returns linear image, masks, pigment."""
        pig = _pigment(rng, cond)
        rho = _background(rng, pig, anat, frame, cond["age"])
        gx, gy = frame.grid()
        fov = gx**2 + gy**2 <= 1.0
        lesion_map = np.zeros(fov.shape, np.uint8)
        for kind in ("drusen", "pigment", "atrophy"):
            alpha = _splat(lesions.blobs.get(kind, np.zeros((0, 5))), frame, 0.5, 0.6)
            _paint(rho, kind, alpha)
            if kind in LESION_LABELS:
                lesion_map[alpha >= 0.5] = LESION_LABELS[kind]
        disc, cup = _draw_disc(rho, anat, frame)
        vessels = render_vessels(batches, frame)
        _apply_vessels(rho, vessels, VESSEL_OD)
        for kind, soft in (("exudate", 0.15), ("cotton_wool", 0.6), ("haemorrhage", 0.2), ("microaneurysm", 0.15)):
            alpha = _splat(lesions.blobs[kind], frame, soft, 0.6)
            _paint(rho, kind, alpha)
            lesion_map[alpha >= 0.5] = LESION_LABELS[kind]
        if nv:
            layer = render_vessels(nv, frame)
            _apply_vessels(rho, layer, VESSEL_OD)
            lesion_map[layer.mask] = LESION_LABELS["neovascularisation"]
        luma = float(pig["reflectance"] @ np.array([0.6, 0.3, 0.1]))
        image = _expose(rho, opt, frame, fov, luma)
        av = np.where(vessels.mask, vessels.kind, 0).astype(np.uint8)
        masks = {"vessels": vessels.mask, "artery_vein": av, "disc": disc, "cup": cup, "lesions": lesion_map,
                 "fov": fov}
        return image, {k: (v * fov).astype(np.uint8) for k, v in masks.items()}, pig

    @staticmethod
    def _params(seed: int, frame: Frame, cond: dict[str, Any], anat: dict[str, Any], vp: dict[str, Any],
                batches: list[VesselBatch], lesions: Lesions, pig: dict[str, Any],
                opt: dict[str, Any]) -> dict[str, Any]:
        """Every rendering parameter, in pixels where it is a position or length (JSON-serialisable)."""
        rpx = frame.radius_px

        def px(xy: tuple[float, float]) -> list[float]:
            return frame.to_px(np.asarray(xy, np.float32)).tolist()

        out = {
            "generator": "fundus_phantom", "seed": seed, "size": frame.size, "eye": anat["eye"],
            "condition": {k: cond[k] for k in (*FUNDUS_TASKS, *FUNDUS_METADATA)},
            "age": cond["age"], "sex": cond["sex"], "ethnicity": cond["ethnicity"],
            "fov_centre_px": [frame.centre, frame.centre], "fov_radius_px": rpx,
            "disc_centre_px": px(anat["disc_centre"]), "disc_radius_px": anat["disc_radius"] * rpx,
            "disc_axes_px": [a * rpx for a in anat["disc_axes"]], "cup_centre_px": px(anat["cup_centre"]),
            "cup_axes_px": [a * rpx for a in anat["cup_axes"]], "cup_to_disc": anat["cup_to_disc"],
            "cup_to_disc_definition": "vertical diameter ratio (= sqrt of area ratio)",
            "fovea_centre_px": px(anat["fovea_centre"]), "faz_radius_px": anat["faz_radius"] * rpx,
            "macular_pigment": anat["macular_pigment"], "disc_pallor": anat["disc_pallor"],
            "peripapillary_atrophy": anat["ppa"],
            "vessel_calibre": vp["vessel_calibre"], "vessel_branching": vp["vessel_branching"],
            "vessel_tortuosity": vp["vessel_tortuosity"], "artery_vein_ratio": vp["artery_vein_ratio"],
            "vein_trunk_radius_px": vp["trunk_radius"]["vein"] * rpx,
            "artery_trunk_radius_px": vp["trunk_radius"]["artery"] * rpx,
            **_tree_stats(batches, frame),
            "lesion_counts": lesions.counts, "venous_beading": lesions.beading, "amd_severity": lesions.amd_severity,
            "pigment_clumps": len(lesions.blobs.get("pigment", ())),
            "geographic_atrophy": bool(len(lesions.blobs.get("atrophy", ()))),
            "fundus_reflectance": pig["reflectance"], "tigroid": pig["tigroid"], **opt,
        }
        return _jsonable(out)
