"""Measured indices on phantom images (classical segmentation) track the phantom's ground-truth parameters."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import spearmanr

from synthfm.analyze.indices import disc_cup, vessel_indices
from synthfm.analyze.vessels import segment_classical

SEEDS = (1, 2, 3)


def _measured(render: Callable, key: str, value: float) -> dict[str, float]:
    """Mean over seeds of every vessel index measured from the segmented 256 px image."""
    rows = []
    for seed in SEEDS:
        s = render(seed, 256, **{key: value})
        fov = s.masks["fov"] > 0
        rows.append(vessel_indices(segment_classical(s.image, fov)[0], fov))
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _rising(values: list[float]) -> bool:
    """Strictly increasing."""
    return bool(np.all(np.diff(values) > 0))


def test_cup_to_disc_ratio_error_is_small(clean: Callable) -> None:
    """Vertical CDR from 256 px images within 0.12 of the rendered ratio (mean error < 0.05) over 12 eyes.

    A cup of ratio 0.2 is about 6 px tall at 256 px, so one or two pixels already make 0.03-0.06.
    """
    truth, est = [], []
    for seed in SEEDS:
        for cdr in (0.2, 0.4, 0.6, 0.8):
            s = clean(seed, cup_to_disc=cdr)
            truth.append(s.params["cup_to_disc"])
            est.append(disc_cup(s.image, s.masks["fov"] > 0)["cup_to_disc"])
    err = np.abs(np.asarray(est) - np.asarray(truth))
    assert err.max() < 0.12, list(zip(truth, est, strict=True))
    assert err.mean() < 0.05


def test_fractal_dimension_rises_with_branching(clean: Callable) -> None:
    """More branch generations -> higher box-counting dimension of the segmented tree."""
    levels = (0.0, 0.5, 1.0, 1.5)
    fd = [_measured(clean, "vessel_branching", b)["fractal_dimension"] for b in levels]
    assert spearmanr(levels, fd).statistic >= 0.8, fd
    assert fd[-1] - fd[0] > 0.03, fd


def test_tortuosity_rises_with_the_tortuosity_parameter(clean: Callable) -> None:
    """Both tortuosity measures rise strictly with the phantom's tortuosity over a sweep."""
    runs = [_measured(clean, "vessel_tortuosity", t) for t in (0.0, 0.4, 0.8, 1.2)]
    dist = [r["tortuosity_distance"] for r in runs]
    curv = [r["tortuosity_curvature"] for r in runs]
    assert _rising(dist), dist
    assert _rising(curv), curv
    assert dist[-1] > dist[0] + 0.1
    assert curv[-1] > 10 * curv[0]
