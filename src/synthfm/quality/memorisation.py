"""Memorisation audit: the nearest real training image of every synthetic image, and near-copies flagged.

Two views, each a shortlist search followed by a score:

* **features** - cosine similarity in the feature space (blocked exact k-NN, `search.topk_search`);
* **pixels** - robust to flips, crops, JPEG and colour jitter. Retrieval uses a coarse grey descriptor
  (standardised, centred on the real set's mean) with the four flips on the query side and, on the index
  side, the whole image plus crops of each `crop_scales` on a `crop_grid` x `crop_grid` grid of offsets.
  Each shortlisted pair is then verified on band-pass grey maps (near-black background masked out, so a
  shared field-of-view edge counts for nothing) by normalised cross-correlation maximised over the four
  flips, each crop scale and every shift (FFT correlation).

A raw best similarity says little on its own: two featureless images (heavy haze) correlate well without
being copies. The score is therefore the best similarity minus the mean of the other shortlisted ones (the
"score normalisation" of copy detection). The flag threshold is calibrated on real held-out images searched
against the same training index - real images that are *not* copies - at `calibration_quantile` (a robust
quantile, not the maximum) plus `calibration_margin`. Real data holds duplicates of its own (the same eye
photographed twice, one image filed under two patients): a held-out image whose pixel similarity to a training
image reaches `duplicate_similarity` is a real-vs-real duplicate pair. Such pairs are left out of the
calibration of both views, so they cannot lift the threshold above verbatim copies, and are reported as a data
finding. A flag also needs the best similarity itself to reach `min_similarity_quantile` of the held-out real
images' best similarities: a copy is at least as close to its source as a typical real image is to its nearest
neighbour, whereas an image unlike anything real (a broken generator's noise) can stand out from its shortlist
while being close to nothing. An exact or near-exact match (pixel similarity >= `exact_similarity`) is flagged
whatever the calibration says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy.fft import next_fast_len

from synthfm.io import atomic_path
from synthfm.quality.config import MemorisationConfig
from synthfm.quality.search import Block, rows_block, topk_search

FLIPS = ((), (-1,), (-2,), (-2, -1))
THUMB = 96


# ---- pixel descriptors ----------------------------------------------------------------------------------
def as_float(maps: np.ndarray) -> torch.Tensor:
    """uint8 grey maps (n, S, S) -> float (n, 1, S, S) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(maps)).float()[:, None] / 255.0


def _standardise(d: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit norm along the last axis."""
    d = d - d.mean(-1, keepdim=True)
    return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def descriptor(g: torch.Tensor, size: int, crop: float = 1.0, offset: tuple[float, float] = (0.5, 0.5)) -> torch.Tensor:
    """Standardised area-pooled grey descriptor (n, size*size) of a crop (side fraction, relative offset)."""
    if crop < 1:
        s = g.shape[-1]
        c = round(s * crop)
        r0, c0 = round((s - c) * offset[0]), round((s - c) * offset[1])
        g = g[..., r0:r0 + c, c0:c0 + c]
    return _standardise(F.interpolate(g, size=(size, size), mode="area").flatten(1))


def query_descriptors(g: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 4, D): the descriptor of each flip."""
    return torch.stack([descriptor(g.flip(f) if f else g, size) for f in FLIPS], 1)


def index_descriptors(g: torch.Tensor, size: int, scales: list[float], grid: int) -> torch.Tensor:
    """(n, W, D): the whole image and its crops at every scale on a grid of offsets."""
    steps = np.linspace(0, 1, grid) if grid > 1 else [0.5]
    crops = [descriptor(g, size, s, (a, b)) for s in scales if s < 1 for a in steps for b in steps]
    return torch.stack([descriptor(g, size), *crops], 1)


class Centred:
    """Descriptors centred on the real index's mean descriptor and re-normalised, read in blocks."""

    def __init__(self, maps: np.ndarray, rows: np.ndarray, cfg: MemorisationConfig, index: bool) -> None:
        self.maps, self.rows, self.cfg, self.index = maps, rows, cfg, index
        self.mean: torch.Tensor | None = None

    def raw(self, start: int, stop: int) -> torch.Tensor:
        """Uncentred descriptors of rows[start:stop]."""
        g = as_float(read_rows(self.maps, self.rows[start:stop]))
        if self.index:
            return index_descriptors(g, self.cfg.coarse_size, self.cfg.crop_scales, self.cfg.crop_grid)
        return query_descriptors(g, self.cfg.coarse_size)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        d = self.raw(start, stop) - self.mean
        return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def fit_mean(self) -> torch.Tensor:
        """The mean descriptor over every row and variant (one blocked pass)."""
        total, count = 0.0, 0
        for i in range(0, len(self.rows), self.cfg.chunk):
            d = self.raw(i, i + self.cfg.chunk)
            total = total + d.sum((0, 1))
            count += d.shape[0] * d.shape[1]
        return total / count


def read_rows(maps: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """maps[rows] read in sorted order (memory maps like monotone access), returned in the order of rows."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), *maps.shape[1:]), maps.dtype)
    out[order] = maps[rows[order]]
    return out


# ---- verification ---------------------------------------------------------------------------------------
def gaussian_blur(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (n, 1, S, S) with replicate padding."""
    r = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-r, r + 1, dtype=g.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    g = F.conv2d(F.pad(g, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(g, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def bandpasses(g: torch.Tensor, bands: list[tuple[float, float]], background: float) -> list[torch.Tensor]:
    """Band-pass (difference of Gaussians) grey maps with the near-black background masked out, one per band.

    The background is what lies below `background` of the way from the darkest level to the mean level
    (smoothed): a brightness gain scales both, and clipping a few highlights barely moves the mean, so a
    brightened or re-encoded copy keeps its source's mask. The mask is eroded by the band's reach (3 x its upper
    sigma, at least 6 px), so the field-of-view edge, which every fundus photograph shares, counts for nothing:
    two featureless discs would otherwise correlate through their rims alone. Blurs are shared between bands.
    """
    blurred = {0.0: g}

    def blur(sigma: float) -> torch.Tensor:
        if sigma not in blurred:
            blurred[sigma] = gaussian_blur(g, sigma)
        return blurred[sigma]

    smooth = blur(2.0)
    flat = smooth.flatten(1)
    floor, mid = flat.amin(1), flat.mean(1)
    outside = (smooth <= (floor + background * (mid - floor)).view(-1, 1, 1, 1)).float()
    eroded: dict[int, torch.Tensor] = {}
    out = []
    for lo, hi in bands:
        r = round(3 * max(hi, 2.0))
        if r not in eroded:  # kept where no background pixel lies within r (a square), as two box sums
            k = torch.ones(1, 1, 1, 2 * r + 1, dtype=g.dtype)
            near = F.conv2d(F.conv2d(F.pad(outside, (r, r, r, r)), k), k.view(1, 1, -1, 1))
            eroded[r] = (near < 0.5).to(g.dtype)
        out.append((blur(lo) - blur(hi)) * eroded[r])
    return out


def bandpass(g: torch.Tensor, band: tuple[float, float], background: float) -> torch.Tensor:
    """One band of `bandpasses`."""
    return bandpasses(g, [band], background)[0]


def _templates(q: torch.Tensor, margin: int, size: int) -> list[torch.Tensor]:
    """Conjugate FFTs at `size` of the unit-norm inner part of each flip of q (one (n, size, size//2+1) each)."""
    s = q.shape[-1]
    t = q[:, 0, margin:s - margin, margin:s - margin]
    t = t / t.flatten(1).norm(dim=1).view(-1, 1, 1).clamp_min(1e-8)
    return [torch.fft.rfft2(t.flip(f) if f else t, s=(size, size)).conj() for f in FLIPS]


def window_energy(g: torch.Tensor, n: int) -> torch.Tensor:
    """(m, S-n+1, S-n+1): the norm of every n x n window of each (S, S) map (summed-area table, float64)."""
    c = F.pad((g.double() ** 2).cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    sums = c[:, n:, n:] - c[:, :-n, n:] - c[:, n:, :-n] + c[:, :-n, :-n]
    return sums.clamp_min(1e-12).sqrt().float()


def _poses(q: torch.Tensor, shifts: tuple[tuple[float, float], ...], scales: list[float]) -> Iterator[torch.Tensor]:
    """The query at every (sub-pixel shift, crop scale) pose, shift-major; each shift is resampled once."""
    s = q.shape[-1]
    for dy, dx in shifts:
        qv = q if (dy, dx) == (0.0, 0.0) else subpixel_shift(q, dy, dx)
        for scale in scales:
            yield qv if round(s * scale) == s else F.interpolate(qv, size=(round(s * scale),) * 2, mode="area")


def best_alignment(q: torch.Tensor, r: torch.Tensor, pairs: np.ndarray, cfg: MemorisationConfig,
                   shifts: tuple[tuple[float, float], ...] = ((0.0, 0.0),)) -> torch.Tensor:
    """Normalised cross-correlation of query q[i] with index image r[j] for each pair (i, j), per band: (P, B), at
    the one alignment that maximises the mean over bands.

    `q` and `r` hold grey maps. In each band of `cfg.bands` both are band-passed; for each crop scale s the query
    is shrunk by s (a crop of side s, resized back, covers s of the original) and the inner part of each of its
    four flips slides over r at every shift (FFT correlation, zero-padded so no shift wraps around). A copy
    matches its source in every band at the same flip, scale and shift; taking each band's maximum on its own would
    let two unrelated images line up one band at a time. `shifts` adds sub-pixel moves of the query to the poses.
    """
    qi, rj = torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])
    s = r.shape[-1]
    fast = next_fast_len(s)
    nb = len(cfg.bands)
    best = torch.full((len(pairs), nb), -1.0)
    best_mean = torch.full((len(pairs),), -2.0)
    rbands = bandpasses(r, cfg.bands, cfg.background)
    fr = [torch.fft.rfft2(rb[:, 0], s=(fast, fast))[rj] for rb in rbands]
    energies: dict[int, list[torch.Tensor]] = {}  # window size -> each band's window norms (shared by shifts)
    for qs in _poses(q, shifts, sorted({1.0, *cfg.crop_scales})):
        n = qs.shape[-1] - 2 * cfg.margin
        if n not in energies:
            energies[n] = [window_energy(rb[:, 0], n)[rj] for rb in rbands]
        energy = energies[n]
        templates = [_templates(qb, cfg.margin, fast) for qb in bandpasses(qs, cfg.bands, cfg.background)]
        for f in range(len(FLIPS)):
            maps = torch.stack([torch.fft.irfft2(fr[b] * templates[b][f][qi], s=(fast, fast))[:, : s - n + 1,
                                                                                              : s - n + 1] / energy[b]
                                for b in range(nb)], 1).flatten(2)
            mean, at = maps.mean(1).max(1)
            better = mean > best_mean
            best_mean = torch.where(better, mean, best_mean)
            best[better] = maps[better].gather(2, at[better].view(-1, 1, 1).expand(-1, nb, 1))[..., 0]
    return best


def subpixel_shift(g: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """(n, 1, S, S) maps shifted by a fraction of a pixel (bicubic resampling, border values repeated)."""
    s = g.shape[-1]
    theta = torch.tensor([[1.0, 0.0, -2 * dx / s], [0.0, 1.0, -2 * dy / s]]).expand(len(g), 2, 3)
    grid = F.affine_grid(theta, list(g.shape), align_corners=False)
    return F.grid_sample(g, grid, mode="bicubic", padding_mode="border", align_corners=False)


def refined_alignment(q: torch.Tensor, r: torch.Tensor, pairs: np.ndarray, cfg: MemorisationConfig) -> torch.Tensor:
    """`best_alignment` over the finer pose set of `cfg.refine_scales` and, with `cfg.subpixel`, the query moved by
    half a pixel along each axis: (P, B) at the pose with the best mean over bands."""
    dense = cfg.model_copy(update={"crop_scales": cfg.refine_scales})
    used, inverse = np.unique(pairs[:, 1], return_inverse=True)
    shifts = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5)) if cfg.subpixel else ((0.0, 0.0),)
    return best_alignment(q[pairs[:, 0]], r[used], np.stack([np.arange(len(pairs)), inverse], 1), dense, shifts)


def verify(q_maps: np.ndarray, q_rows: np.ndarray, r_maps: np.ndarray, shortlist: np.ndarray,
           cfg: MemorisationConfig) -> np.ndarray:
    """Pixel similarity (n, K, B) of every query to each of its shortlisted index rows in each band, in blocks.

    Each query's best candidate (mean over bands) is then re-aligned over the finer poses of `refined_alignment`
    (crops of other sizes, sub-pixel offsets: a resampled copy's pose is rarely a whole pixel) and keeps the better
    of the two alignments.
    """
    k = shortlist.shape[1]
    out = np.empty((*shortlist.shape, len(cfg.bands)), np.float32)
    step = max(1, cfg.chunk // k)
    for i in range(0, len(q_rows), step):
        cand = shortlist[i:i + step]
        unique, inverse = np.unique(cand, return_inverse=True)
        q = as_float(read_rows(q_maps, q_rows[i:i + step]))
        r = as_float(read_rows(r_maps, unique))
        pairs = np.stack([np.repeat(np.arange(len(cand)), k), inverse.reshape(-1)], 1)
        sims = best_alignment(q, r, pairs, cfg).view(len(cand), k, -1)
        if cfg.refine_scales:
            top = sims.mean(2).argmax(1)
            rows = torch.arange(len(cand))
            again = refined_alignment(q, r, np.stack([rows.numpy(), inverse.reshape(len(cand), k)[rows, top]], 1),
                                      cfg)
            better = again.mean(1) > sims[rows, top].mean(1)
            sims[rows[better], top[better]] = again[better]
        out[i:i + len(cand)] = sims.numpy()
    return out


# ---- scores and the audit -------------------------------------------------------------------------------
@dataclass
class Nearest:
    """Per query: nearest index row, its similarity and the normalised score."""

    index: np.ndarray
    similarity: np.ndarray
    score: np.ndarray


def normalised(sims: np.ndarray, idx: np.ndarray) -> Nearest:
    """Best similarity, its row, and best minus the mean of the rest of the shortlist."""
    order = np.argsort(-sims, axis=1, kind="stable")
    s = np.take_along_axis(sims, order, 1)
    i = np.take_along_axis(idx, order, 1)
    rest = s[:, 1:].mean(1) if s.shape[1] > 1 else np.zeros(len(s))
    return Nearest(i[:, 0], s[:, 0], s[:, 0] - rest)


def pixel_nearest(q_maps: np.ndarray, q_rows: np.ndarray, r_maps: np.ndarray, index_rows: np.ndarray,
                  cfg: MemorisationConfig, mean: torch.Tensor) -> list[Nearest]:
    """Shortlist by coarse descriptors, verify by band-pass NCC: one Nearest per band; rows are positions in the
    map arrays."""
    queries, index = Centred(q_maps, q_rows, cfg, False), Centred(r_maps, index_rows, cfg, True)
    queries.mean = index.mean = mean
    _, pos = topk_search(queries, len(q_rows), index, len(index_rows), cfg.shortlist, cfg.chunk)
    shortlist = index_rows[pos]
    sims = verify(q_maps, q_rows, r_maps, shortlist, cfg)
    return [normalised(sims[..., b], shortlist) for b in range(sims.shape[-1])]


def feature_nearest(q_feat: np.ndarray, q_rows: np.ndarray, r_feat: np.ndarray, index_rows: np.ndarray,
                    cfg: MemorisationConfig) -> Nearest:
    """Cosine k-NN in feature space, normalised the same way."""
    sims, pos = topk_search(_take(q_feat, q_rows), len(q_rows), _take(r_feat, index_rows), len(index_rows),
                            cfg.shortlist, cfg.chunk)
    return normalised(sims, index_rows[pos])


def _take(x: np.ndarray, rows: np.ndarray) -> Block:
    """Unit-vector blocks of x[rows]."""

    def get(start: int, stop: int) -> torch.Tensor:
        return rows_block(read_rows(x, rows[start:stop]))(0, stop - start)

    return get


def threshold(scores: np.ndarray, cfg: MemorisationConfig) -> float:
    """Flag threshold: the held-out real scores' quantile plus the margin."""
    return float(np.quantile(scores, cfg.calibration_quantile) + cfg.calibration_margin)


def flag(syn: Nearest, held: Nearest, cfg: MemorisationConfig, exact: np.ndarray | None = None,
         calibrate: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """(flags, score threshold, similarity floor).

    A flag is a score above the held-out calibration together with a best similarity of at least the held-out
    images' `min_similarity_quantile`, or an exact / near-exact pixel match (`exact`, always flagged).
    `calibrate` selects the held-out rows that calibrate (real-vs-real duplicates left out); all by default.
    """
    keep = np.ones(len(held.score), bool) if calibrate is None or not calibrate.any() else calibrate
    thr = threshold(held.score[keep], cfg)
    floor = float(np.quantile(held.similarity[keep], cfg.min_similarity_quantile))
    flags = (syn.score > thr) & (syn.similarity >= floor)
    return (flags | exact if exact is not None else flags), thr, floor


@dataclass
class AuditInputs:
    """What the audit reads: grey maps and features of both cards, and which real rows index / calibrate."""

    synth_maps: np.ndarray
    real_maps: np.ndarray
    synth_features: np.ndarray | None
    real_features: np.ndarray | None
    train_rows: np.ndarray
    heldout_rows: np.ndarray
    synth_ids: np.ndarray
    real_ids: np.ndarray


def band_name(band: tuple[float, float]) -> str:
    """'lo-hi' of a band's Gaussian sigmas."""
    return f"{band[0]:g}-{band[1]:g}"


@dataclass
class PixelCalibration:
    """Per band the similarity threshold; across bands the score threshold and the similarity floor it needs."""

    similarity: np.ndarray
    score: float
    floor: float


def _stack(near: list[Nearest], field: str) -> np.ndarray:
    """(n, B): one field of each band's Nearest."""
    return np.stack([getattr(x, field) for x in near], 1)


def pixel_calibration(held: list[Nearest], cfg: MemorisationConfig, keep: np.ndarray) -> PixelCalibration:
    """Thresholds from the held-out real images of rows `keep` (duplicates left out)."""
    return PixelCalibration(np.array([threshold(h.similarity[keep], cfg) for h in held]),
                            threshold(_stack(held, "score")[keep].mean(1), cfg),
                            float(np.quantile(_stack(held, "similarity")[keep].mean(1), cfg.pixel_floor_quantile)))


def pixel_flags(syn: list[Nearest], held: list[Nearest], cfg: MemorisationConfig,
                keep: np.ndarray) -> tuple[Nearest, np.ndarray, np.ndarray, PixelCalibration]:
    """(strongest match, its band, margins (n,), calibration) of the pixel view.

    Two statistics calibrate on the held-out real images (rows `keep`, duplicates left out), each at its quantile
    plus the margin: the best similarity in each band, and the score (best minus the mean of the rest of the
    shortlist) averaged over the bands. An image's margin is the largest of (similarity - threshold) over the bands
    and, where its band-mean similarity reaches the held-out images' `pixel_floor_quantile`, (mean score -
    threshold). A flag is a positive margin: the image is closer to a training image than (nearly) every real
    image is, or it stands out from its other candidates in every band as no real image does while being as close
    as a typical real image's nearest. The score catches copies that resampling has blurred below the similarity
    thresholds (a crop of a 28 px image), whose source still stands far above the rest; averaging over bands keeps
    it one statistic (fewer chances for a real image to cross a threshold by luck), and the floor keeps an image
    unlike anything real, which can stand out from a shortlist of poor matches, from being flagged by its score
    alone. The strongest match is the nearest training image in the band of the largest similarity margin.
    """
    cal = pixel_calibration(held, cfg, keep)
    sims, scores = _stack(syn, "similarity"), _stack(syn, "score")
    by_band = sims - cal.similarity
    by_score = np.where(sims.mean(1) >= cal.floor, scores.mean(1) - cal.score, -np.inf)
    band = by_band.argmax(1)
    pick = np.arange(len(band))
    best = Nearest(*(_stack(syn, f)[pick, band] for f in ("index", "similarity", "score")))
    return best, band, np.maximum(by_band.max(1), by_score), cal


def audit(inp: AuditInputs, cfg: MemorisationConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(one row per synthetic image, calibration table, one row per held-out real image) of the audit.

    The held-out table gives each held-out real image's nearest training image by pixels in the finest band,
    its similarity (also per band) and score, and whether the pair is a real-vs-real duplicate (`duplicate`).

    The pixel view runs first: its exact matches (similarity >= `exact_similarity` in any band) are flagged in
    every view, and its held-out duplicates of training images (>= `duplicate_similarity` in any band) are left
    out of every view's calibration.
    """
    table = pd.DataFrame({"synthetic_id": inp.synth_ids, "synthetic_row": np.arange(len(inp.synth_ids))})
    all_synth = np.arange(len(inp.synth_ids))
    mean = Centred(inp.real_maps, inp.train_rows, cfg, True).fit_mean()
    held = pixel_nearest(inp.real_maps, inp.heldout_rows, inp.real_maps, inp.train_rows, cfg, mean)
    syn = pixel_nearest(inp.synth_maps, all_synth, inp.real_maps, inp.train_rows, cfg, mean)
    duplicate = np.stack([h.similarity for h in held], 1).max(1) >= cfg.duplicate_similarity
    keep = ~duplicate if (~duplicate).any() else np.ones(len(duplicate), bool)
    exact = np.stack([s.similarity for s in syn], 1).max(1) >= cfg.exact_similarity
    heldout = pd.DataFrame({"heldout_id": inp.real_ids[inp.heldout_rows], "train_id": inp.real_ids[held[0].index],
                            "pixel_similarity": held[0].similarity, "pixel_score": held[0].score,
                            **{f"pixel_similarity_{band_name(b)}": h.similarity
                               for b, h in zip(cfg.bands, held, strict=True)},
                            **{f"pixel_score_{band_name(b)}": h.score for b, h in zip(cfg.bands, held, strict=True)},
                            "duplicate": duplicate})
    best, band, margins, cal = pixel_flags(syn, held, cfg, keep)
    heldout["pixel_margin"] = pixel_flags(held, held, cfg, keep)[2]  # in-sample: what the rule makes of real images
    _view_columns(table, "pixel", best, inp.real_ids, (margins > 0) | exact)
    table["pixel_band"] = [band_name(cfg.bands[b]) for b in band]
    table["pixel_margin"] = margins
    for b, s in zip(cfg.bands, syn, strict=True):
        table[f"pixel_similarity_{band_name(b)}"] = s.similarity
        table[f"pixel_score_{band_name(b)}"] = s.score
    calib = [{"view": "pixel", "band": band_name(b), **_calibration(held[k].similarity[keep], duplicate, cfg),
              "threshold": float(cal.similarity[k]), "mean_score_threshold": cal.score,
              "mean_similarity_floor": cal.floor, "exact_similarity": cfg.exact_similarity,
              "heldout_flagged_pixel_view": int((heldout["pixel_margin"].to_numpy()[keep] > 0).sum())}
             for k, b in enumerate(cfg.bands)]
    flags = [table["pixel_flag"].to_numpy()] if "pixel" in cfg.flag_on else []
    if inp.synth_features is not None:
        h = feature_nearest(inp.real_features, inp.heldout_rows, inp.real_features, inp.train_rows, cfg)
        s = feature_nearest(inp.synth_features, all_synth, inp.real_features, inp.train_rows, cfg)
        flags_view, thr_f, floor = flag(s, h, cfg, exact, keep)
        _view_columns(table, "feature", s, inp.real_ids, flags_view)
        if "feature" in cfg.flag_on:
            flags.append(flags_view)
        calib.append({"view": "feature", "band": "", **_calibration(h.score[keep], duplicate, cfg),
                      "threshold": thr_f, "similarity_floor": floor, "exact_similarity": cfg.exact_similarity})
    table["exact_match"] = exact
    table["flagged"] = np.logical_or.reduce(flags) if flags else False
    return table, pd.DataFrame(calib), heldout


def _view_columns(table: pd.DataFrame, view: str, s: Nearest, real_ids: np.ndarray, flags: np.ndarray) -> None:
    """A view's nearest real image, similarity, score and flag as table columns."""
    table[f"{view}_real_id"] = real_ids[s.index]
    table[f"{view}_real_row"] = s.index
    table[f"{view}_similarity"] = s.similarity
    table[f"{view}_score"] = s.score
    table[f"{view}_flag"] = flags


def _calibration(used: np.ndarray, duplicate: np.ndarray, cfg: MemorisationConfig) -> dict[str, float]:
    """Calibration summary of the held-out statistic `used` (duplicates already left out)."""
    thr = threshold(used, cfg)
    return {"n_heldout": len(duplicate), "n_real_duplicates": int(duplicate.sum()), "n_calibration": len(used),
            "quantile": cfg.calibration_quantile,
            "heldout_quantile": float(np.quantile(used, cfg.calibration_quantile)),
            "margin": cfg.calibration_margin, "heldout_median": float(np.median(used)),
            "heldout_max": float(used.max()), "heldout_flagged": int((used > thr).sum())}


def memorisation_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Summary figures: flagged count and fraction, and the largest scores."""
    out = {"near_copies": float(table["flagged"].sum()), "near_copy_fraction": float(table["flagged"].mean()),
           "exact_copies": float(table["exact_match"].sum()) if "exact_match" in table else 0.0}
    for view in ("pixel", "feature"):
        if f"{view}_score" in table:
            out[f"{view}_score_max"] = float(table[f"{view}_score"].max())
    return out


# ---- thumbnails -----------------------------------------------------------------------------------------
def thumbnail_grid(table: pd.DataFrame, synth_maps: np.ndarray, real_maps: np.ndarray, path: Path,
                   limit: int) -> list[dict[str, Any]]:
    """A PNG of (synthetic | nearest real) pairs, flagged first then by pixel score; returns the rows drawn."""
    order = table.sort_values(["flagged", "pixel_score"], ascending=False).head(limit)
    cell, pad, text = THUMB, 4, 24
    width = 2 * cell + 3 * pad
    img = Image.new("RGB", (width, max(1, len(order)) * (cell + text + pad) + pad), "white")
    draw = ImageDraw.Draw(img)
    drawn = []
    for k, rec in enumerate(order.to_dict("records")):
        y = pad + k * (cell + text + pad)
        for j, arr in enumerate((synth_maps[rec["synthetic_row"]], real_maps[rec["pixel_real_row"]])):
            img.paste(Image.fromarray(np.asarray(arr)).resize((cell, cell), Image.BILINEAR).convert("RGB"),
                      (pad + j * (cell + pad), y))
        colour = (200, 0, 0) if rec["flagged"] else (60, 60, 60)
        draw.text((pad, y + cell + 2), f"{'FLAG ' if rec['flagged'] else ''}score {rec['pixel_score']:.2f}",
                  fill=colour)
        draw.text((pad, y + cell + 12), f"{rec['synthetic_id']} | {rec['pixel_real_id']}"[:40], fill=colour)
        drawn.append({"synthetic_id": rec["synthetic_id"], "real_id": rec["pixel_real_id"], "grid_row": k})
    with atomic_path(path, ".png") as tmp:
        img.save(tmp, format="PNG")
    return drawn
