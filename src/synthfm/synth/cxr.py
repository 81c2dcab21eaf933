"""Procedural chest X-ray phantom: a PA radiograph with anatomy masks and tuberculosis findings.

Geometry lives in normalised image coordinates (u: 0 left -> 1 right, v: 0 top -> 1 bottom), so the
same parameters render at any size. Anatomy is accumulated as X-ray attenuation (`mu`) and exposed as
`1 - exp(-mu)`: lungs (air) are dark, mediastinum, heart, bone and fluid bright. The patient's right
is on the image's left (PA convention): side "r" has s = -1, side "l" has s = +1, and t = s * (u - midline)
is the lateral distance from the midline on that side. Three independent random streams (anatomy,
findings, device) are spawned from the seed, so the same seed with tb=0 and tb=1 gives the same patient,
exposure and noise, differing only by the findings.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from synthfm.synth.base import PhantomSample, check_choice, check_range, class_index

CXR_FINDINGS = ("opacity", "cavity", "nodule", "effusion")  # values 1..4 of the `findings` mask
CXR_TASKS: dict[str, list[str]] = {"tb": ["no", "yes"], **{f: ["no", "yes"] for f in CXR_FINDINGS}}
CXR_METADATA: dict[str, Any] = {
    "age": (1.0, 90.0),
    "sex": ["F", "M"],
    "device": ["fixed_dr", "portable_cr", "film_scan"],
}
CXR_PARAMS: dict[str, tuple[float, float]] = {"ctr": (0.35, 0.62)}  # cardiothoracic ratio
CONDITION_KEYS: tuple[str, ...] = (*CXR_TASKS, *CXR_METADATA, *CXR_PARAMS)
FINDING_PRIOR = {"opacity": 0.8, "cavity": 0.35, "nodule": 0.4, "effusion": 0.2}  # P(finding | tb=1)
DEVICE_PRIOR = (0.5, 0.3, 0.2)
TB_PREVALENCE = 0.5
Array = np.ndarray
Spec = dict[str, Any]


@dataclass(frozen=True)
class DeviceProfile:
    """How an acquisition device renders attenuation: noise, film grain, blur, contrast, markers."""

    noise: float  # std of per-pixel (quantum) noise, in display units
    grain: float  # amplitude of spatially correlated film grain
    blur: float  # Gaussian blur sigma in pixels at 256 px
    gain: float  # slope of the sigmoid contrast curve
    ctr_shift: float  # apparent heart enlargement (AP magnification of portable films)
    vignette: float  # radial fall-off of exposure towards the corners
    frame: float  # width of an unexposed (white) film border, fraction of the image
    marker: str  # lead marker drawn in a corner: "L", "R" or "bar"


DEVICES: dict[str, DeviceProfile] = {
    "fixed_dr": DeviceProfile(0.012, 0.0, 0.45, 5.5, 0.0, 0.0, 0.0, "L"),
    "portable_cr": DeviceProfile(0.03, 0.0, 0.9, 3.8, 0.04, 0.06, 0.0, "bar"),
    "film_scan": DeviceProfile(0.008, 0.035, 1.3, 4.5, 0.0, 0.15, 0.03, "R"),
}


def _f(x: float) -> float:
    """A JSON-friendly rounded float."""
    return round(float(x), 5)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only normalised pixel-centre coordinates (u, v) of a size x size image."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, u = np.meshgrid(c, c, indexing="ij")
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


def _extent(mask: np.ndarray) -> int:
    """Number of columns from the first to the last column that holds a mask pixel."""
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if cols.size else 0


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1] with about `cells` blobs across the image."""
    coarse = rng.standard_normal((cells + 2, cells + 2))
    field = ndimage.zoom(coarse, size / cells, order=3, grid_mode=True, mode="grid-mirror")
    off = (field.shape[0] - size) // 2
    field = field[off : off + size, off : off + size]
    lo, hi = field.min(), field.max()
    return ((field - lo) / (hi - lo + 1e-8)).astype(np.float32)


def _class_index(task: str, value: Any) -> int:
    """Class index of a task value given as an index, a bool or a class name."""
    return class_index(task, CXR_TASKS[task], value)


def _check_choice(key: str, value: Any) -> Any:
    """Validate a categorical metadata value."""
    return check_choice(key, value, CXR_METADATA[key])


def _validate(condition: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown keys and bad values; normalise labels to indices."""
    unknown = sorted(set(condition) - set(CONDITION_KEYS))
    if unknown:
        raise ValueError(f"unknown condition key(s) {unknown}; allowed keys: {list(CONDITION_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in condition.items():
        if key in CXR_TASKS:
            out[key] = _class_index(key, value)
        elif key == "age":
            out[key] = check_range(key, value, CXR_METADATA["age"])
        elif key in CXR_PARAMS:
            out[key] = check_range(key, value, CXR_PARAMS[key])
        else:
            out[key] = _check_choice(key, value)
    return out


def _resolve_tb(given: dict[str, Any], drawn_tb: int) -> int:
    """tb from the condition, implied by a requested finding, or drawn; inconsistent requests fail."""
    wants = [f for f in CXR_FINDINGS if given.get(f) == 1]
    tb = given.get("tb", 1 if wants else drawn_tb)
    if tb == 0 and wants:
        raise ValueError(f"findings {wants} requested with tb=0; findings need tb=1")
    if tb == 1 and all(given.get(f) == 0 for f in CXR_FINDINGS):
        raise ValueError("tb=1 needs at least one finding, but all findings were set to 0")
    return tb


def _bone_density(age: float) -> float:
    """Relative bone mineral density: rising through childhood, falling after 40."""
    if age < 20:
        return 0.7 + 0.015 * age
    return 1.0 - 0.006 * max(age - 40.0, 0.0)


def _ctr_prior(rng: np.random.Generator, age: float, device: DeviceProfile) -> float:
    """Cardiothoracic ratio prior: larger in infants, the elderly and AP (portable) films."""
    base = 0.45 + 0.0012 * max(age - 40.0, 0.0) + (0.05 if age < 3 else 0.0) + device.ctr_shift
    lo, hi = CXR_PARAMS["ctr"]
    return float(np.clip(base + rng.normal(0.0, 0.03), lo, hi))


def _sample_anatomy(rng: np.random.Generator, cond: dict[str, Any]) -> dict[str, float]:
    """Thorax, lung, mediastinum, heart and tissue parameters (normalised units)."""
    age, device = cond["age"], DEVICES[cond["device"]]
    hw, dome_r = rng.uniform(0.33, 0.38), rng.uniform(0.66, 0.72)
    ctr = _ctr_prior(rng, age, device)
    anatomy = {
        "midline": 0.5 + rng.normal(0.0, 0.006),
        "hw_r": hw * rng.uniform(0.99, 1.03),
        "hw_l": hw * rng.uniform(0.96, 1.0),
        "apex": rng.uniform(0.09, 0.14),
        "dome_r": dome_r,
        "dome_l": dome_r + rng.uniform(0.01, 0.035),
        "cp_depth": rng.uniform(0.08, 0.12),
        "mediastinum_hw": rng.uniform(0.05, 0.062),
        "aortic_knob": rng.uniform(0.008, 0.02) * (1.0 + age / 90.0),
        "heart_shift": rng.uniform(0.6, 0.7),
        "heart_tilt_deg": rng.uniform(15.0, 35.0),
        "heart_b": rng.uniform(0.11, 0.14),
        "soft_tissue": rng.uniform(1.6, 1.9),
        "air": rng.uniform(1.1, 1.3),
        "bone_density": _bone_density(age) * rng.uniform(0.92, 1.08),
        "ctr": cond.get("ctr", ctr),
    }
    return {k: _f(x) for k, x in anatomy.items()}


def _sample_ribs(rng: np.random.Generator) -> dict[str, float]:
    """Posterior rib cage: count, spacing law, arch shape and band thickness."""
    ribs = {
        "n_ribs": int(rng.integers(9, 12)),
        "first": -rng.uniform(0.02, 0.045),  # medial origin of rib 1 relative to the lung apex
        "span": rng.uniform(0.95, 1.05),  # rib cage height relative to apex-to-dome distance
        "spacing_gamma": rng.uniform(0.85, 1.0),  # <1: spacing widens downwards
        "rise": rng.uniform(0.4, 0.6),  # initial upward course from the spine
        "droop": rng.uniform(1.8, 2.6),  # lateral downward arching
        "thickness": rng.uniform(0.38, 0.48),  # band height as a fraction of the rib pitch
    }
    return {k: (x if k == "n_ribs" else _f(x)) for k, x in ribs.items()}


def _sample_clavicles(rng: np.random.Generator) -> dict[str, float]:
    """Clavicles: medial height, lateral rise, S-curve and thickness."""
    clav = {
        "medial": rng.uniform(0.04, 0.08),  # relative to the lung apex
        "rise": rng.uniform(0.1, 0.22),
        "s_curve": rng.uniform(0.005, 0.015),
        "thickness": rng.uniform(0.022, 0.03),
    }
    return {k: _f(x) for k, x in clav.items()}


def _sample_breasts(rng: np.random.Generator, cond: dict[str, Any]) -> dict[str, float]:
    """Breast soft-tissue shadows: present for female patients from adolescence on."""
    maturity = float(np.clip((cond["age"] - 12.0) / 8.0, 0.0, 1.0)) if cond["sex"] == "F" else 0.0
    radius, density = rng.uniform(0.15, 0.22), rng.uniform(0.25, 0.45)
    drop = rng.uniform(0.0, 0.05)
    return {"radius": _f(radius * maturity), "density": _f(density * maturity), "drop": _f(drop)}


def _side(u: np.ndarray, a: dict[str, float], side: str) -> tuple[np.ndarray, float, float]:
    """Lateral distance from the midline on `side`, that side's lung half-width and dome height."""
    s = -1.0 if side == "r" else 1.0
    return s * (u - a["midline"]), a[f"hw_{side}"], a[f"dome_{side}"]


def _diaphragm(t: np.ndarray, hw: float, dome: float, a: dict[str, float]) -> np.ndarray:
    """Height of the hemidiaphragm: a dome peaking mid-lung, falling steeply into the costophrenic angle."""
    peak = 0.5 * hw
    lateral = a["cp_depth"] * ((t - peak) / (hw - peak)) ** 2
    medial = 0.04 * ((peak - t) / peak) ** 2
    return dome + np.where(t > peak, lateral, medial)


def _mediastinum_hw(v: np.ndarray, a: dict[str, float], side: str) -> np.ndarray:
    """Half-width of the mediastinum at height v; the aortic knob bulges to the patient's left."""
    knob_v = a["apex"] + 0.15
    knob = a["aortic_knob"] * np.exp(-(((v - knob_v) / 0.035) ** 2)) if side == "l" else 0.0
    return a["mediastinum_hw"] + knob


def _lung_side(u: np.ndarray, v: np.ndarray, a: dict[str, float], side: str) -> np.ndarray:
    """One lung field (including the part behind the heart) as a boolean map."""
    t, hw, dome = _side(u, a, side)
    height = dome + a["cp_depth"] - a["apex"]
    p = np.clip((v - a["apex"]) / (0.7 * height), 0.0, 1.0)
    lateral = hw * (0.35 + 0.65 * np.sin(0.5 * np.pi * p) ** 0.6)
    top = a["apex"] + 0.5 * height * ((t - 0.3 * hw) / hw) ** 2
    medial = _mediastinum_hw(v, a, side)
    return (t > medial) & (t < lateral) & (v > top) & (v < _diaphragm(t, hw, dome, a))


def _diaphragm_map(u: np.ndarray, a: dict[str, float]) -> np.ndarray:
    """Height of the diaphragm under every column (right dome left of the midline, left dome right)."""
    right, left = (_diaphragm(*_side(u, a, s), a) for s in ("r", "l"))
    return np.where(u < a["midline"], right, left)


def _heart_geometry(a: dict[str, float], thorax_px: int, size: int) -> dict[str, float]:
    """Tilted-ellipse heart whose horizontal extent is exactly ctr x the thoracic width."""
    half = 0.5 * a["ctr"] * thorax_px / size
    theta, b = np.deg2rad(a["heart_tilt_deg"]), a["heart_b"]
    sin, cos = np.sin(theta), np.cos(theta)
    axis = np.sqrt(max(half**2 - (b * sin) ** 2, 1e-6)) / cos
    vertical = np.sqrt((axis * sin) ** 2 + (b * cos) ** 2)
    tip = abs(axis**2 - b**2) * sin * cos / half  # height of the widest points below the centre
    return {
        "cx": _f(a["midline"] + (a["heart_shift"] - 0.5) * 2 * half),
        "cy": _f(a["dome_l"] - 0.02 - tip),
        "a": _f(axis),
        "b": _f(b),
        "theta": _f(theta),
        "vertical": _f(vertical),
    }


def _heart(u: np.ndarray, v: np.ndarray, h: dict[str, float], floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heart mask (above the diaphragm `floor`) and its thickness profile (1 at the centre, 0 at the border)."""
    du, dv = u - h["cx"], v - h["cy"]
    sin, cos = np.sin(h["theta"]), np.cos(h["theta"])
    r2 = ((du * cos + dv * sin) / h["a"]) ** 2 + ((dv * cos - du * sin) / h["b"]) ** 2
    mask = (r2 <= 1.0) & (v <= floor)
    return mask, np.sqrt(np.clip(1.0 - r2, 0.0, 1.0)) * mask


def _band(offset: np.ndarray, half: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """A bone band around its centre line: mask and profile with a bright cortical rim."""
    d = np.abs(offset) / half
    mask = d < 1.0
    return mask, mask * (0.55 + 0.45 * d**4)


def _ribs(u: np.ndarray, v: np.ndarray, a: dict[str, float], r: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ribs of both sides: curved bands from the spine arching down laterally."""
    mask = np.zeros(u.shape, bool)
    profile = np.zeros(u.shape, np.float32)
    height = (a["dome_r"] - a["apex"]) * r["span"]
    for side in ("r", "l"):
        t, hw, _ = _side(u, a, side)
        course = a["apex"] + r["first"] - r["rise"] * t + r["droop"] * t**2
        pos = np.clip((v - course) / height, 0.0, None) ** r["spacing_gamma"] * r["n_ribs"]
        within = (t > 0.03) & (t < 1.1 * hw) & (v > course) & (pos < r["n_ribs"])
        half = 0.5 * r["thickness"] * (0.8 + 0.4 * np.clip(t / hw, 0.0, 1.0))
        m, p = _band(np.mod(pos, 1.0) - half, half)
        mask |= m & within
        profile += p * within
    return mask, profile


def _clavicles(u: np.ndarray, v: np.ndarray, a: dict[str, float], c: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Clavicles: S-curved bands from the sternal notch rising towards the shoulders."""
    mask = np.zeros(u.shape, bool)
    profile = np.zeros(u.shape, np.float32)
    for side in ("r", "l"):
        t, hw, _ = _side(u, a, side)
        centre = a["apex"] + c["medial"] - c["rise"] * t + c["s_curve"] * np.sin(2 * np.pi * t / (1.1 * hw))
        within = (t > 0.025) & (t < 1.15 * hw)
        m, p = _band(v - centre, 0.5 * c["thickness"])
        mask |= m & within
        profile += p * within
    return mask, profile


def _spine(u: np.ndarray, v: np.ndarray, a: dict[str, float]) -> np.ndarray:
    """Vertebral column: a central band with faint end-plates every vertebra."""
    t = np.abs(u - a["midline"])
    body = np.clip(1.0 - (t / 0.035) ** 4, 0.0, 1.0)
    plates = 0.8 + 0.2 * np.cos(2 * np.pi * v / 0.045) ** 8
    return body * plates


def _trachea(u: np.ndarray, v: np.ndarray, a: dict[str, float]) -> np.ndarray:
    """Air column of the trachea down to the carina."""
    return (np.abs(u - a["midline"]) < 0.016) & (v < a["apex"] + 0.17)


def _body(u: np.ndarray, v: np.ndarray, a: dict[str, float]) -> np.ndarray:
    """Soft-tissue path length through the trunk, widening into the shoulders at the top."""
    hw = 1.2 * max(a["hw_r"], a["hw_l"])
    half = hw + 0.25 / (1.0 + np.exp((v - a["apex"] + 0.02) / 0.03))
    x = (u - a["midline"]) / half
    return np.sqrt(np.clip(1.0 - x**2, 0.0, 1.0))


def _breasts(u: np.ndarray, v: np.ndarray, a: dict[str, float], b: dict[str, float]) -> np.ndarray:
    """Breast shadows: discs over the lower lateral lung zones with a sharp inferior edge."""
    if b["radius"] <= 0:
        return np.zeros(u.shape, np.float32)
    out = np.zeros(u.shape, np.float32)
    for side in ("r", "l"):
        t, hw, dome = _side(u, a, side)
        r2 = ((t - 0.6 * hw) ** 2 + (v - dome + 0.08 - b["drop"]) ** 2) / b["radius"] ** 2
        out += np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    return b["density"] * out


def _markings(u: np.ndarray, v: np.ndarray, a: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Bronchovascular markings: streaks radiating from each hilum, fading to the periphery."""
    out = np.zeros(u.shape, np.float32)
    bins = np.linspace(-np.pi, np.pi, 721)
    for side in ("r", "l"):
        freqs, phases = rng.integers(8, 24, 6), rng.uniform(0, 2 * np.pi, 6)
        streaks = np.clip(np.cos(freqs[:, None] * bins + phases[:, None]).sum(0) / 6.0, 0.0, None)
        t = _side(u, a, side)[0]
        dt, dv = t - 0.13, v - (a["apex"] + 0.3)
        out += np.interp(np.arctan2(dv, dt), bins, streaks) * np.exp(-np.hypot(dt, dv) / 0.18) * (t > 0)
    return out


def _draw_flags(rng: np.random.Generator, cond: dict[str, Any], tb: int) -> dict[str, int]:
    """Which findings appear: drawn from FINDING_PRIOR, overridden by the condition, at least one."""
    drawn = {f: int(rng.random() < FINDING_PRIOR[f]) * tb for f in CXR_FINDINGS}
    flags = {f: int(cond.get(f, drawn[f])) for f in CXR_FINDINGS}
    if tb and not any(flags.values()):
        free = [f for f in CXR_FINDINGS if f not in cond]
        flags[free[int(rng.integers(len(free)))]] = 1
    return flags


def _lesions(rng: np.random.Generator, zone: Array, count: tuple[int, int], radius: tuple[float, float]) -> Spec:
    """Count, pixel-centre positions inside `zone` and radii of round lesions."""
    n = int(rng.integers(count[0], count[1] + 1))
    idx = rng.choice(np.flatnonzero(zone), size=n)
    rows, cols = np.divmod(idx, zone.shape[1])
    centres = [[_f((c + 0.5) / zone.shape[1]), _f((r + 0.5) / zone.shape[0])] for r, c in zip(rows, cols, strict=True)]
    return {"centres": centres, "radii": [_f(x) for x in rng.uniform(*radius, n)]}


def _sample_opacity(rng: np.random.Generator, upper: Array, lungs: Array) -> Spec:
    """Upper-zone consolidation patches."""
    spec = _lesions(rng, upper, (1, 3), (0.04, 0.09))
    return {**spec, "density": _f(rng.uniform(0.8, 1.4)), "texture_seed": int(rng.integers(2**31))}


def _sample_cavity(rng: np.random.Generator, upper: Array, lungs: Array) -> Spec:
    """Upper-zone cavities with a relative wall thickness."""
    return {**_lesions(rng, upper, (1, 2), (0.02, 0.04)), "wall": _f(rng.uniform(0.3, 0.45))}


def _sample_nodule(rng: np.random.Generator, upper: Array, lungs: Array) -> Spec:
    """Nodules, mostly in the upper zones."""
    zone = upper if rng.random() < 0.7 else lungs
    return {**_lesions(rng, zone, (1, 5), (0.008, 0.018)), "density": _f(rng.uniform(0.8, 1.4))}


def _sample_effusion(rng: np.random.Generator, upper: Array, lungs: Array) -> Spec:
    """Pleural effusion: side(s), fluid height above the costophrenic angle and meniscus rise."""
    sides = ["r", "l"] if rng.random() < 0.15 else [str(rng.choice(["r", "l"]))]
    return {"sides": sides, "level": _f(rng.uniform(0.1, 0.2)), "meniscus": _f(rng.uniform(0.03, 0.07))}


def _sample_findings(rng: np.random.Generator, flags: dict[str, int], lungs: Array, a: Spec) -> Spec:
    """Counts, positions, sizes and densities of each present finding."""
    v = _grid(lungs.shape[0])[1]
    upper = lungs & (v < a["apex"] + 0.45 * (a["dome_r"] - a["apex"]))
    upper = upper if upper.any() else lungs
    samplers = {
        "opacity": _sample_opacity,
        "cavity": _sample_cavity,
        "nodule": _sample_nodule,
        "effusion": _sample_effusion,
    }
    return {name: samplers[name](rng, upper, lungs) for name in CXR_FINDINGS if flags[name]}


def _opacity(spec: Spec, ctx: Spec) -> tuple[Array, Array]:
    """Patchy consolidation: Gaussian patches modulated by a seeded texture, confined to the lungs."""
    u, v, lungs = ctx["u"], ctx["v"], ctx["lungs"]
    field = np.zeros(u.shape, np.float32)
    for (cu, cv), r in zip(spec["centres"], spec["radii"], strict=True):
        field = np.maximum(field, np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * (r / 1.5) ** 2)))
    field *= 0.6 + 0.4 * _smooth_field(np.random.default_rng(spec["texture_seed"]), u.shape[0], 24)
    return (field > 0.3) & lungs, spec["density"] * field * lungs


def _cavity(spec: Spec, ctx: Spec) -> tuple[Array, Array]:
    """Ring lesions: a thick dense wall around an air-filled lumen."""
    u, v, lungs = ctx["u"], ctx["v"], ctx["lungs"]
    mask, mu = np.zeros(u.shape, bool), np.zeros(u.shape, np.float32)
    inner = 1.0 - spec["wall"]
    for (cu, cv), r in zip(spec["centres"], spec["radii"], strict=True):
        d = np.hypot(u - cu, v - cv) / r
        wall = np.exp(-(((d - (1.0 + inner) / 2) / (spec["wall"] / 2)) ** 2))
        mask |= d < 1.0
        mu += (1.1 * wall - 0.15 * ctx["air"] * (d < inner)) * lungs
    return mask & lungs, mu


def _nodule(spec: Spec, ctx: Spec) -> tuple[Array, Array]:
    """Small round dense nodules (granulomas)."""
    u, v, lungs = ctx["u"], ctx["v"], ctx["lungs"]
    mu = np.zeros(u.shape, np.float32)
    for (cu, cv), r in zip(spec["centres"], spec["radii"], strict=True):
        mu += spec["density"] * np.sqrt(np.clip(1.0 - ((u - cu) ** 2 + (v - cv) ** 2) / r**2, 0.0, 1.0))
    return (mu > 0) & lungs, mu * lungs


def _effusion(spec: Spec, ctx: Spec) -> tuple[Array, Array]:
    """Pleural fluid replacing lung air up to a meniscus that rises laterally (blunted costophrenic angle)."""
    u, v, a = ctx["u"], ctx["v"], ctx["anatomy"]
    mask = np.zeros(u.shape, bool)
    for side in spec["sides"]:
        t, hw, dome = _side(u, a, side)
        level = dome + a["cp_depth"] - spec["level"] - spec["meniscus"] * np.clip(t / hw, 0, 1) ** 2
        mask |= (t > 0) & (v > level)
    mask &= ctx["lungs"]
    return mask, mask * (a["air"] * (0.6 + 0.4 * ctx["air"]) + 0.3)


FINDING_RENDERERS = {"opacity": _opacity, "effusion": _effusion, "cavity": _cavity, "nodule": _nodule}  # paint order


def _render_findings(spec: Spec, ctx: Spec) -> tuple[Array, Array]:
    """Findings label map (later findings painted over earlier ones) and their added attenuation."""
    labels = np.zeros(ctx["u"].shape, np.uint8)
    mu = np.zeros(ctx["u"].shape, np.float32)
    for name, render in FINDING_RENDERERS.items():
        if name in spec:
            mask, add = render(spec[name], ctx)
            labels[mask] = CXR_FINDINGS.index(name) + 1
            mu += add
    return labels, mu


def _render_anatomy(a: dict[str, float], extra: dict[str, Any], size: int, rng: np.random.Generator) -> dict:
    """Masks and attenuation of the normal chest."""
    u, v = _grid(size)
    lungs_raw = _lung_side(u, v, a, "r") | _lung_side(u, v, a, "l")
    floor = _diaphragm_map(u, a)
    heart_geo = _heart_geometry(a, _extent(lungs_raw), size)
    heart, heart_thick = _heart(u, v, heart_geo, floor)
    ribs, rib_p = _ribs(u, v, a, extra["ribs"])
    clav, clav_p = _clavicles(u, v, a, extra["clavicles"])
    air = ndimage.gaussian_filter(lungs_raw.astype(np.float32), 0.02 * size) * lungs_raw
    body = _body(u, v, a)
    heart_soft = np.sqrt(heart_thick)
    mu = a["soft_tissue"] * body - a["air"] * (0.6 + 0.4 * air) * lungs_raw * (1.0 - 0.6 * heart_soft)
    mu += 1.2 * heart_soft + 0.35 * (v > floor) * body + 1.0 * _breasts(u, v, a, extra["breasts"])
    mu -= 0.5 * _trachea(u, v, a) * body
    bone = 0.3 * rib_p + 0.6 * clav_p + 0.35 * _spine(u, v, a) * (v < a["dome_r"] + 0.2)
    mu += a["bone_density"] * bone * body + 0.25 * _markings(u, v, a, rng) * lungs_raw
    heart_top = heart_geo["cy"] - heart_geo["vertical"] + 0.03
    mediastinum = (np.abs(u - a["midline"]) < _mediastinum_hw(v, a, "r")) & (v > a["apex"]) & (v < heart_top)
    return {
        "lungs_raw": lungs_raw,
        "lungs": lungs_raw & ~heart,
        "heart": heart,
        "ribs": ribs & (body > 0),
        "clavicles": clav & (body > 0),
        "mediastinum": mediastinum & ~heart,
        "air": air,
        "mu": mu,
        "heart_geometry": heart_geo,
    }


def _marker(img: np.ndarray, kind: str, rng: np.random.Generator) -> dict[str, Any]:
    """Burn a lead marker (letter-like bright block) into an upper corner; returns where."""
    size = img.shape[0]
    s = max(size // 32, 2)
    r0 = int(rng.integers(s, 3 * s))
    c0 = int(size - 5 * s) if kind == "L" else int(rng.integers(s, 3 * s))
    if kind == "bar":
        img[r0 : r0 + s, c0 : c0 + 6 * s] = 1.0
    else:
        img[r0 : r0 + 3 * s, c0 : c0 + s] = 1.0
        img[r0 + 2 * s : r0 + 3 * s, c0 : c0 + 2 * s] = 1.0
        if kind == "R":
            img[r0 : r0 + s, c0 : c0 + 2 * s] = 1.0
    return {"kind": kind, "row": r0, "col": c0, "unit": s}


def _expose(mu: np.ndarray, dev: DeviceProfile, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Detector and display: exposure, contrast curve, blur, noise, grain, vignette, frame, marker."""
    size = mu.shape[0]
    u, v = _grid(size)
    centre, gain = rng.uniform(0.45, 0.55), dev.gain * rng.uniform(0.9, 1.1)
    lo, hi = (1.0 / (1.0 + np.exp(-gain * (x - centre))) for x in (0.0, 1.0))
    img = (1.0 / (1.0 + np.exp(-gain * ((1.0 - np.exp(-mu)) - centre))) - lo) / (hi - lo)
    img *= 1.0 - dev.vignette * ((u - 0.5) ** 2 + (v - 0.5) ** 2) * 2
    sigma = dev.blur * size / 256
    img = ndimage.gaussian_filter(img, sigma) if sigma > 0.2 else img
    img += dev.noise * (0.5 + img) * rng.standard_normal(img.shape, dtype=np.float32)
    if dev.grain:
        img += dev.grain * (ndimage.gaussian_filter(rng.standard_normal(img.shape, dtype=np.float32), 1.0) * 2.5)
    marker = _marker(img, dev.marker, rng)
    frame = round(dev.frame * size)
    if frame:
        img[:frame], img[:, :frame] = 1.0, 1.0
    image = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return image, {
        "window_centre": _f(centre),
        "gain": _f(gain),
        "blur_px": _f(sigma),
        "frame_px": frame,
        "marker": marker,
        **{k: x for k, x in asdict(dev).items() if k not in ("marker",)},
    }


class CXRPhantom:
    """Procedural PA chest radiograph with anatomy masks and TB findings; see the module docstring."""

    name = "cxr_phantom"

    def sample_condition(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw tb, age, sex and device from the phantom's priors."""
        return {
            "tb": int(rng.random() < TB_PREVALENCE),
            "age": round(float(np.clip(rng.normal(45.0, 20.0), *CXR_METADATA["age"])), 1),
            "sex": str(rng.choice(CXR_METADATA["sex"])),
            "device": str(rng.choice(CXR_METADATA["device"], p=DEVICE_PRIOR)),
        }

    def resolve_condition(self, condition: dict[str, Any], seed: int) -> dict[str, Any]:
        """Validate `condition` and fill missing tb/age/sex/device from the priors (seeded)."""
        given = _validate(condition)
        drawn = self.sample_condition(np.random.default_rng([seed, 1]))
        cond = {**drawn, **given}
        cond["tb"] = _resolve_tb(given, drawn["tb"])
        return cond

    def generate(self, condition: dict[str, Any], seed: int, size: int = 256) -> PhantomSample:
        """Render one radiograph for `condition` (missing keys drawn from the priors)."""
        cond = self.resolve_condition(condition, seed)
        rng_anat, rng_find, rng_dev, rng_tex = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
        a, extra = _sample_patient(rng_anat, cond)
        parts = _render_anatomy(a, extra, size, rng_tex)
        flags = _draw_flags(rng_find, cond, cond["tb"])
        spec = _sample_findings(rng_find, flags, parts["lungs"], a)
        u, v = _grid(size)
        findings, mu_find = _render_findings(spec, {**parts, "u": u, "v": v, "anatomy": a})
        image, device = _expose(parts["mu"] + mu_find, DEVICES[cond["device"]], rng_dev)
        masks = {k: parts[k].astype(np.uint8) for k in ("lungs", "heart", "ribs", "clavicles", "mediastinum")}
        params = {"seed": int(seed), "size": int(size), "anatomy": a, **extra, "heart": parts["heart_geometry"]}
        params |= {"thoracic_width_px": _extent(parts["lungs_raw"]), "findings": spec, "device": device}
        return PhantomSample(
            image=image,
            masks={**masks, "findings": findings},
            labels={"tb": cond["tb"], **flags},
            params={**params, "finding_counts": _counts(spec)},
            metadata={"age": cond["age"], "sex": cond["sex"], "device": cond["device"]},
        )


def _sample_patient(rng: np.random.Generator, cond: dict[str, Any]) -> tuple[Spec, Spec]:
    """Anatomy plus rib cage, clavicle and breast parameters of one patient."""
    anatomy = _sample_anatomy(rng, cond)
    extra = {"ribs": _sample_ribs(rng), "clavicles": _sample_clavicles(rng), "breasts": _sample_breasts(rng, cond)}
    return anatomy, extra


def _counts(spec: dict[str, Any]) -> dict[str, int]:
    """Number of lesions (or effusion sides) per finding."""
    return {f: len(spec[f].get("centres", spec[f].get("sides", []))) if f in spec else 0 for f in CXR_FINDINGS}
