"""RaSD randomized synthesis: images of random Gaussian-shaped structures with their masks, made on the fly.

Following RaSD (Wei et al., "Free lunch in medical image foundation model pre-training via randomized
synthesis and disentanglement"), every image is drawn from randomized distributions of *structure* (how
many regions, where, how large, how elongated, how irregular) and of *appearance* (region intensities,
intensity profile, texture, bias field, contrast, blur, noise). The label map of the structures comes
with the image, so a pretraining objective can pull region-wise features of one structure together and
push different structures apart (prototype disentangling). Nothing is stored: `RaSDStream` renders
sample i from a seed derived from (stream seed, i), so any sample can be regenerated from its index.

Structure model: structure k is the union of a few anisotropic Gaussian lobes; a point belongs to it
where its Mahalanobis distance to the nearest lobe is <= 1 (the Gaussian above exp(-1/2) of its peak),
evaluated on smoothly warped coordinates. Where structures overlap, the one whose lobe is nearest (in
Mahalanobis units) wins, so the map partitions the image into 0 (background) and 1..K.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from synthfm.synth.base import PhantomSample

Array = np.ndarray


@dataclass(frozen=True)
class RaSDConfig:
    """Knobs of the randomized synthesis; every per-image value is drawn uniformly up to its maximum.

    size:          side length in pixels/voxels.
    dims:          2 (HxW images) or 3 (DxHxW volumes).
    channels:      1 (grayscale) or 3 (RGB, 2D only); each channel gets its own region intensities.
    n_structures:  (min, max) number of structures per image (label values 1..K, 0 is background).
    lobes:         (min, max) Gaussian lobes per structure: 1 gives ellipses/ellipsoids, more give
                   irregular, possibly non-convex shapes.
    scale:         (min, max) structure radius as a fraction of `size`, drawn log-uniformly (multi-scale).
    anisotropy:    largest ratio between a structure's longest and shortest axis.
    lobe_spread:   how far extra lobes sit from the structure centre, in structure radii.
    warp:          largest amplitude of a smooth random displacement of the coordinates (fraction of size);
                   bends the Gaussian iso-contours into organic shapes.
    warp_cells:    control points per axis of the warp field (more = wigglier boundaries).
    min_contrast:  smallest gap between the mean intensities of any two regions, background included,
                   so every structure differs from its surroundings before texture, bias and noise.
    shading:       largest amplitude of the Gaussian intensity profile inside a structure (bright or dark core).
    texture:       largest amplitude of per-region smooth-noise texture.
    texture_cells: control grids of the texture fields, one field per entry (coarse to fine).
    bias:          largest amplitude of the multiplicative log bias field (MRI-like shading, vignetting).
    bias_cells:    control points per axis of the bias field.
    gamma:         standard deviation of the log of the contrast-curve exponent.
    blur:          largest Gaussian blur sigma, in pixels.
    noise:         largest standard deviation of additive Gaussian noise (intensities in [0, 1]).
    """

    size: int = 64
    dims: int = 2
    channels: int = 1
    n_structures: tuple[int, int] = (3, 8)
    lobes: tuple[int, int] = (1, 3)
    scale: tuple[float, float] = (0.06, 0.25)
    anisotropy: float = 3.0
    lobe_spread: float = 0.8
    warp: float = 0.04
    warp_cells: int = 4
    min_contrast: float = 0.08
    shading: float = 0.1
    texture: float = 0.08
    texture_cells: tuple[int, ...] = (4, 12)
    bias: float = 0.3
    bias_cells: int = 3
    gamma: float = 0.25
    blur: float = 1.0
    noise: float = 0.04

    def __post_init__(self) -> None:
        """Reject settings that cannot be rendered, naming the field and what is allowed."""
        _check(self.dims in (2, 3), "dims", self.dims, "2 or 3")
        _check(self.channels in (1, 3), "channels", self.channels, "1 or 3")
        _check(self.dims == 2 or self.channels == 1, "channels", self.channels, "1 for 3D volumes")
        _check(self.size >= 8, "size", self.size, ">= 8")
        _check_range("n_structures", self.n_structures, 1, 255)
        _check_range("lobes", self.lobes, 1, 64)
        _check_range("scale", self.scale, 1e-3, 1.0)
        _check(self.anisotropy >= 1.0, "anisotropy", self.anisotropy, ">= 1")
        gap_room = self.min_contrast * self.n_structures[1] < 1.0
        _check(self.min_contrast >= 0 and gap_room, "min_contrast", self.min_contrast, "in [0, 1 / max structures)")
        _check(all(c >= 2 for c in (self.warp_cells, self.bias_cells, *self.texture_cells)), "cells", "", ">= 2")
        for name in ("lobe_spread", "warp", "shading", "texture", "bias", "gamma", "blur", "noise"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of a sample."""
        return (self.size,) * self.dims


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    """Raise ValueError naming a bad config field."""
    if not ok:
        raise ValueError(f"RaSDConfig.{name}={value!r} is invalid; allowed: {allowed}")


def _check_range(name: str, value: tuple[float, float], lo: float, hi: float) -> None:
    """Validate a (min, max) pair inside [lo, hi]."""
    _check(
        len(value) == 2 and lo <= value[0] <= value[1] <= hi, name, value, f"(min, max) with {lo} <= min <= max <= {hi}"
    )


@functools.lru_cache(maxsize=32)
def _interp_matrix(n: int, cells: int) -> Array:
    """Gaussian weights smoothly upsampling `cells` control points to `n` samples; rows of unit L2 norm.

    With i.i.d. standard normal control points every output sample then has unit variance exactly.
    """
    x = np.arange(n, dtype=np.float32)[:, None]
    knots = np.linspace(0, n - 1, cells, dtype=np.float32)[None, :]
    w = np.exp(-0.5 * ((x - knots) / (0.6 * (n - 1) / (cells - 1))) ** 2)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    w.setflags(write=False)
    return w


def smooth_fields(rng: np.random.Generator, count: int, shape: tuple[int, ...], cells: int) -> Array:
    """`count` smooth zero-mean, unit-variance Gaussian random fields of `shape` (separable upsampling)."""
    out = rng.standard_normal((count, *(cells,) * len(shape)), dtype=np.float32)
    for axis, n in enumerate(shape, start=1):
        dims = out.shape
        flat = out.reshape(int(np.prod(dims[:axis])), dims[axis], -1)
        out = (_interp_matrix(n, cells) @ flat).reshape(*dims[:axis], n, *dims[axis + 1 :])
    return out


@functools.lru_cache(maxsize=8)
def _coords(shape: tuple[int, ...]) -> Array:
    """Read-only pixel coordinates relative to the image centre, shape (dims, N) (centred for float32 accuracy)."""
    grid = np.indices(shape, dtype=np.float32).reshape(len(shape), -1) - (shape[0] - 1) / 2
    grid.setflags(write=False)
    return grid


def _rotations(rng: np.random.Generator, n: int, dims: int) -> Array:
    """n uniformly random rotation matrices (dims x dims): planar angles in 2D, unit quaternions in 3D."""
    if dims == 2:
        angle = rng.uniform(0.0, 2 * np.pi, n)
        cos, sin = np.cos(angle), np.sin(angle)
        return np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)
    quat = rng.standard_normal((4, n))
    w, x, y, z = quat / np.linalg.norm(quat, axis=0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], 1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], 1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], 1),
        ],
        1,
    )


def _sample_lobes(rng: np.random.Generator, cfg: RaSDConfig, centres: Array, radii: Array) -> dict[str, Array]:
    """Gaussian lobes of every structure: the first at its centre with its axes, the others jittered and smaller."""
    k = len(radii)
    half = 0.5 * np.log(cfg.anisotropy)
    axes = radii[:, None] * np.exp(rng.uniform(-half, half, (k, cfg.dims)))
    n_lobes = rng.integers(cfg.lobes[0], cfg.lobes[1] + 1, k)
    owner = np.repeat(np.arange(k), n_lobes)
    first = np.r_[0, np.cumsum(n_lobes)[:-1]]
    extra = np.ones(owner.size, bool)
    extra[first] = False
    spread = cfg.lobe_spread / np.sqrt(cfg.dims)
    offsets = rng.normal(0.0, spread, (owner.size, cfg.dims)) * radii[owner, None] * extra[:, None]
    shrink = np.where(extra[:, None], rng.uniform(0.5, 1.0, (owner.size, cfg.dims)), 1.0)
    return {
        "n_lobes": n_lobes,
        "first": first,
        "owner": owner,
        "extra": np.flatnonzero(extra),
        "lobe_centres": centres[owner] + offsets,
        "lobe_axes": axes[owner] * shrink,
        "rotations": _rotations(rng, owner.size, cfg.dims),
    }


def _sample_structures(rng: np.random.Generator, cfg: RaSDConfig) -> dict[str, Array]:
    """Structure count, centres (distinct pixels), log-uniform radii and their Gaussian lobes."""
    k = int(rng.integers(cfg.n_structures[0], cfg.n_structures[1] + 1))
    centre_idx = rng.choice(cfg.size**cfg.dims, size=k, replace=False)
    centres = np.stack(np.unravel_index(centre_idx, cfg.shape), 1) - (cfg.size - 1) / 2
    log_scale = np.log(np.asarray(cfg.scale) * cfg.size)
    radii = np.exp(rng.uniform(log_scale[0], log_scale[1], k))
    lobes = _sample_lobes(rng, cfg, centres, radii)
    return {"centre_idx": centre_idx, "centres": centres, "radii": radii, **lobes}


def _warped_coords(rng: np.random.Generator, cfg: RaSDConfig) -> tuple[Array, float]:
    """Pixel coordinates displaced by a smooth random field; returns them and the warp amplitude."""
    amp = float(rng.uniform(0.0, cfg.warp)) * cfg.size
    field = smooth_fields(rng, cfg.dims, cfg.shape, cfg.warp_cells).reshape(cfg.dims, -1)
    return _coords(cfg.shape) + amp * field, amp


@functools.lru_cache(maxsize=8)
def _pairs(dims: int) -> tuple[Array, Array]:
    """Index pairs (i <= j) of the quadratic monomials x_i x_j."""
    return np.triu_indices(dims)


def _monomials(x: Array) -> Array:
    """Quadratic, linear and constant monomials of the (centred) coordinates, shape (M, N)."""
    i, j = _pairs(len(x))
    return np.concatenate([x[i] * x[j], x, np.ones((1, x.shape[1]), x.dtype)])


def _quadratic_forms(s: dict[str, Array]) -> Array:
    """Per-lobe coefficients of (x - c)^T P (x - c) over `_monomials`, shape (L, M); P = R diag(1/ax^2) R^T."""
    prec = np.swapaxes(s["rotations"], 1, 2) / s["lobe_axes"][:, :, None]
    p = np.swapaxes(prec, 1, 2) @ prec
    c = s["lobe_centres"]
    i, j = _pairs(p.shape[1])
    quad = p[:, i, j] * np.where(i == j, 1.0, 2.0)
    pc = np.einsum("lij,lj->li", p, c)
    return np.concatenate([quad, -2.0 * pc, np.einsum("li,li->l", pc, c)[:, None]], axis=1).astype(np.float32)


def _mahalanobis2(coords: Array, s: dict[str, Array]) -> Array:
    """Squared Mahalanobis distance of every pixel to its structure's nearest lobe, shape (K, N).

    One matrix product of per-lobe quadratic-form coefficients with the coordinate monomials.
    """
    per_lobe = _quadratic_forms(s) @ _monomials(coords)
    d2 = per_lobe[s["first"]]
    for lobe in s["extra"]:
        owner = s["owner"][lobe]
        np.minimum(d2[owner], per_lobe[lobe], out=d2[owner])
    return d2


def _label_map(d2: Array, centre_idx: Array) -> tuple[Array, Array]:
    """Label map (0 where no structure reaches, else 1 + nearest structure) and the nearest distance.

    A structure that lost every pixel to its neighbours keeps its centre pixel, so all K appear.
    """
    nearest = d2.min(0)
    labels = np.zeros(nearest.shape, np.uint8)
    for k in range(len(d2) - 1, -1, -1):  # lowest index wins ties, like argmin (which is slow on axis 0)
        labels[d2[k] == nearest] = k + 1
    labels[nearest > 1.0] = 0
    missing = np.bincount(labels, minlength=len(d2) + 1)[1:] == 0
    labels[centre_idx[missing]] = np.flatnonzero(missing) + 1
    return labels, nearest


def _levels(rng: np.random.Generator, regions: int, channels: int, gap: float) -> Array:
    """Region mean intensities in [0, 1], pairwise at least `gap` apart in every channel, shape (R, C)."""
    spare = 1.0 - gap * (regions - 1)
    base = np.sort(rng.uniform(0.0, spare, (channels, regions)), axis=1) + gap * np.arange(regions)
    return rng.permuted(base, axis=1).T


def _appearance(rng: np.random.Generator, cfg: RaSDConfig, regions: int) -> dict[str, Any]:
    """Per-image and per-region appearance parameters."""
    return {
        "levels": _levels(rng, regions, cfg.channels, cfg.min_contrast),
        "shading": rng.uniform(-cfg.shading, cfg.shading, regions) * (np.arange(regions) > 0),
        "texture": rng.uniform(0.0, cfg.texture, (regions, len(cfg.texture_cells))),
        "bias": float(rng.uniform(0.0, cfg.bias)),
        "gamma": float(np.exp(rng.normal(0.0, cfg.gamma))),
        "blur": float(rng.uniform(0.0, cfg.blur)),
        "noise": float(rng.uniform(0.0, cfg.noise)),
    }


def _textures(rng: np.random.Generator, cfg: RaSDConfig) -> Array:
    """One smooth texture field per entry of `texture_cells`, shape (T, N)."""
    return np.concatenate([smooth_fields(rng, 1, cfg.shape, c).reshape(1, -1) for c in cfg.texture_cells])


def _paint(rng: np.random.Generator, cfg: RaSDConfig, labels: Array, d2min: Array, look: dict[str, Any]) -> Array:
    """Region intensities + Gaussian shading + texture, then bias, contrast curve, blur and noise; (C, *shape)."""
    table = np.concatenate([look["levels"], look["shading"][:, None], look["texture"]], 1).astype(np.float32)
    per_pixel = table[labels].T  # one gather: (C + 1 + T, N)
    c = cfg.channels
    core = np.exp(-0.5 * np.minimum(d2min, 1.0)) - 0.8
    detail = per_pixel[c] * core + np.einsum("tn,tn->n", per_pixel[c + 1 :], _textures(rng, cfg))
    bias = np.exp(look["bias"] * smooth_fields(rng, 1, cfg.shape, cfg.bias_cells).reshape(1, -1))
    img = np.clip((per_pixel[:c] + detail) * bias, 0.0, 1.0) ** np.float32(look["gamma"])
    img = img.reshape(c, *cfg.shape)
    if look["blur"] > 0.3:
        img = ndimage.gaussian_filter(img, (0, *(look["blur"],) * cfg.dims))
    return img + np.float32(look["noise"]) * rng.standard_normal(img.shape, dtype=np.float32)


def _to_uint8(img: Array, cfg: RaSDConfig) -> Array:
    """(C, *shape) floats -> uint8 HxW, HxWx3 or DxHxW."""
    out = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out[0] if cfg.channels == 1 else np.moveaxis(out, 0, -1)


def _rounded(x: Any) -> Any:
    """Array or scalar -> rounded plain Python floats (nested lists)."""
    return np.round(np.asarray(x, dtype=float), 4).tolist()


def _params(cfg: RaSDConfig, s: dict[str, Array], look: dict[str, Any], warp: float, counts: Array) -> dict:
    """JSON-serialisable record of everything drawn for one image."""
    r = _rounded
    return {
        "n_structures": len(s["radii"]),
        "centres": r(s["centres"] + (cfg.size - 1) / 2),
        "radii": r(s["radii"]),
        "n_lobes": s["n_lobes"].tolist(),
        "voxels": counts[1:].tolist(),
        "levels": r(look["levels"]),
        "shading": r(look["shading"]),
        "texture": r(look["texture"]),
        "bias": r(look["bias"]),
        "gamma": r(look["gamma"]),
        "blur": r(look["blur"]),
        "noise": r(look["noise"]),
        "warp": r(warp),
        "dims": cfg.dims,
        "size": cfg.size,
        "channels": cfg.channels,
    }


def render_rasd(cfg: RaSDConfig, rng: np.random.Generator) -> PhantomSample:
    """One randomized image with its structure label map (0 background, 1..K structures)."""
    s = _sample_structures(rng, cfg)
    coords, warp = _warped_coords(rng, cfg)
    d2 = _mahalanobis2(coords, s)
    labels, nearest = _label_map(d2, s["centre_idx"])
    look = _appearance(rng, cfg, len(s["radii"]) + 1)
    img = _paint(rng, cfg, labels, nearest, look)
    counts = np.bincount(labels, minlength=len(s["radii"]) + 1)
    return PhantomSample(
        image=_to_uint8(img, cfg),
        masks={"structures": labels.reshape(cfg.shape)},
        params=_params(cfg, s, look, warp, counts),
        metadata={"generator": "rasd"},
    )


class RaSDGenerator:
    """RaSD behind the common generator protocol; a condition may override any RaSDConfig field."""

    name = "rasd"

    def __init__(self, cfg: RaSDConfig | None = None) -> None:
        """Keep the base configuration."""
        self.cfg = cfg or RaSDConfig()

    def sample_condition(self, rng: np.random.Generator) -> dict[str, Any]:
        """RaSD has no labels to condition on."""
        return {}

    def generate(self, condition: dict[str, Any], seed: int, size: int = 64) -> PhantomSample:
        """Render one sample with config overrides from `condition`."""
        allowed = [f.name for f in fields(RaSDConfig)]
        unknown = sorted(set(condition) - set(allowed))
        if unknown:
            raise ValueError(f"unknown condition key(s) {unknown}; allowed keys: {allowed}")
        cfg = replace(self.cfg, **{**condition, "size": size})
        return render_rasd(cfg, np.random.default_rng(seed))


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of the stream seeded `seed` (independent streams via SeedSequence)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class RaSDStream(torch.utils.data.IterableDataset):
    """An on-the-fly stream of RaSD samples; sample i depends only on (seed, i).

    Yields dicts {"image": float32 CxHxW (CxDxHxW) in [0, 1], "mask": int64 HxW (DxHxW), "seed", "index"}.
    `length` is the total stream length (None = infinite); `start` is the first index produced, so a run
    resumed after n samples uses start=n and continues the same stream. DataLoader worker w of W takes
    indices start + w, start + w + W, ...: no two workers repeat a sample, and the multiset of samples
    does not depend on the number of workers (the DataLoader's round-robin even keeps the order).
    """

    def __init__(self, cfg: RaSDConfig, seed: int = 0, length: int | None = None, start: int = 0) -> None:
        """Configure the stream; nothing is rendered until iteration."""
        super().__init__()
        if start < 0 or (length is not None and length < 0):
            raise ValueError(f"start={start} and length={length} must be >= 0")
        self.cfg, self.seed, self.length, self.start = cfg, seed, length, start

    def __len__(self) -> int:
        """Samples left from `start` to `length`; infinite streams have no length."""
        if self.length is None:
            raise TypeError("an infinite RaSDStream (length=None) has no len()")
        return max(self.length - self.start, 0)

    def indices(self) -> Iterator[int]:
        """The global indices this process (or DataLoader worker) renders."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ids = itertools.count(self.start + worker, workers)
        return ids if self.length is None else itertools.takewhile(lambda i: i < self.length, ids)

    def sample(self, index: int) -> dict[str, Any]:
        """Render sample `index` of the stream as tensors."""
        seed = sample_seed(self.seed, index)
        s = render_rasd(self.cfg, np.random.default_rng(seed))
        image = torch.from_numpy(s.image).float().div_(255.0)
        image = image.permute(2, 0, 1) if self.cfg.channels == 3 else image.unsqueeze(0)
        mask = torch.from_numpy(s.masks["structures"].astype(np.int64))
        return {"image": image.contiguous(), "mask": mask, "seed": seed, "index": index}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Render this worker's share of the stream, in index order."""
        return (self.sample(i) for i in self.indices())
