"""Statistics over seeds: mean with 95% CI, bootstrap CI, Shapiro-Wilk, t-tests, Holm correction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

Z95 = 1.96


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with the paper's normal CI (1.96 sd / sqrt n) and a percentile bootstrap CI."""

    n: int
    mean: float
    sd: float
    ci_half_width: float
    boot_low: float
    boot_high: float


def summarise(values: np.ndarray | list[float], n_boot: int = 10_000, seed: int = 0) -> Summary:
    """Mean, sd (ddof=1), 1.96·sd/√n and a bootstrap 95% CI of the mean."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n == 0:
        return Summary(0, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"))
    sd = float(v.std(ddof=1)) if n > 1 else 0.0
    if n > 1 and sd > 0:
        res = stats.bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=0.95, method="percentile",
                              random_state=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    else:
        lo = hi = float(v.mean())
    return Summary(n, float(v.mean()), sd, Z95 * sd / np.sqrt(n), lo, hi)


def shapiro(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Shapiro-Wilk W and p (NaN with fewer than 3 values or no spread)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 3 or np.ptp(v) == 0:
        return float("nan"), float("nan")
    res = stats.shapiro(v)
    return float(res.statistic), float(res.pvalue)


def t_test(a: np.ndarray | list[float], b: np.ndarray | list[float], paired: bool) -> tuple[float, float]:
    """Two-sided t-test: paired by seed when paired, Welch's otherwise; returns (t, p)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    res = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
    return float(res.statistic), float(res.pvalue)


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (monotone, capped at 1), in the input order."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out
