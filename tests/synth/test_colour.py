"""Phantom fundus colour inside the field of view lies within the range of real fundus photographs.

Real: every CHASE_DB1 (28) and CSDI cataract (187) image, read at 1/4 resolution, field of view from
`preprocess.fov_mask`. Phantom: 30 images at 128 px from the default priors, field of view from
`masks["fov"]`. Both FOVs lose a rim of 3% of their radius before measuring, because the threshold FOV
of a real photograph keeps a dark, vignetted edge whose width depends on the resolution (with the rim,
1/4-resolution and full-resolution std differ by up to 3.3 grey levels; without it by < 1).
Per image: mean and std of R, G, B (0-255). The real min..max is widened by MARGIN of its width on each
side. Measured: real mean R 63-248, G 40-158, B 3-104, std R 10-64, G 6-74, B 2-53; 30 phantoms' mean
(145, 73, 33 | 19, 12, 8); 87-97% of phantoms (five seed sets) have all six numbers inside the
unwidened range, 97-100% inside the widened one. Phantoms sit at the low end of the real contrast
range (red std 7-37), the ones below it being mostly cataract phantoms.
Print the numbers with `pytest tests/synth/test_colour.py -q -rP`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from synthfm.data.images import load_image
from synthfm.data.preprocess import fov_mask
from synthfm.synth.fundus import FundusPhantom

REAL_SETS = ("chase_db1", "csdi_cataract")
STATS = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b")
RIM = 0.03  # fraction of the FOV radius left out at the edge
MARGIN = 0.05  # widening of the real min..max range, as a fraction of its width, each side
N_PHANTOMS = 30
PHANTOM_SIZE = 128
MIN_INSIDE = 0.9


def colour_stats(image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Per-channel mean and std (0-255) inside the field of view less its rim."""
    radius = np.sqrt(fov.sum() / np.pi)
    inner = ndimage.binary_erosion(fov, iterations=max(1, round(RIM * radius)))
    px = image[inner].astype(np.float64)
    return np.concatenate([px.mean(axis=0), px.std(axis=0)])


@pytest.fixture(scope="module")
def real_stats(shared_data: Path) -> np.ndarray:
    """Colour statistics of every real fundus image (rows) at 1/4 resolution."""
    rows = []
    for name in REAL_SETS:
        paths = sorted((shared_data / name / "images").glob("*.jpg"))
        assert paths, f"no images in {shared_data / name}"
        for path in paths:
            small = load_image(path)[::4, ::4]
            rows.append(colour_stats(small, fov_mask(small)))
    return np.stack(rows)


@pytest.fixture(scope="module")
def phantom_stats() -> np.ndarray:
    """Colour statistics of N_PHANTOMS default-prior phantoms (rows)."""
    gen = FundusPhantom()
    samples = (gen.generate({}, seed, PHANTOM_SIZE) for seed in range(N_PHANTOMS))
    return np.stack([colour_stats(s.image, s.masks["fov"] > 0) for s in samples])


@pytest.fixture(scope="module")
def real_range(real_stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The real min..max per statistic, widened by MARGIN of its width."""
    lo, hi = real_stats.min(axis=0), real_stats.max(axis=0)
    return lo - MARGIN * (hi - lo), hi + MARGIN * (hi - lo)


def test_real_measurements_are_fundus_like(real_stats: np.ndarray) -> None:
    """The reference itself is sane: 215 images, red brightest and blue darkest on average."""
    assert len(real_stats) == 28 + 187
    assert (real_stats[:, 0] > real_stats[:, 1]).mean() > 0.95
    assert (real_stats[:, 1] > real_stats[:, 2]).mean() > 0.95


def test_phantom_average_inside_real_range(phantom_stats: np.ndarray, real_stats: np.ndarray,
                                           real_range: tuple[np.ndarray, np.ndarray]) -> None:
    """The mean over phantoms of each channel mean and std lies within the widened real range."""
    lo, hi = real_range
    avg = phantom_stats.mean(axis=0)
    summary = {"real_min": real_stats.min(axis=0), "real_max": real_stats.max(axis=0), "phantom_mean": avg,
               "phantom_min": phantom_stats.min(axis=0), "phantom_max": phantom_stats.max(axis=0)}
    print(json.dumps({k: dict(zip(STATS, v.round(1).tolist(), strict=True)) for k, v in summary.items()}))
    outside = [f"{s}={v:.1f} not in [{a:.1f}, {b:.1f}]" for s, v, a, b in zip(STATS, avg, lo, hi, strict=True)
               if not a <= v <= b]
    assert not outside, outside


def test_most_phantoms_inside_real_range(phantom_stats: np.ndarray, real_range: tuple[np.ndarray, np.ndarray]) -> None:
    """At least 90% of phantom images have all six statistics within the widened real range."""
    lo, hi = real_range
    inside = ((phantom_stats >= lo) & (phantom_stats <= hi)).all(axis=1)
    assert inside.mean() >= MIN_INSIDE, f"{inside.mean():.2f} of phantoms inside; outside: {np.flatnonzero(~inside)}"
