"""Statistics over seeds: mean with 95% CI, bootstrap CI, Shapiro-Wilk, t-tests, Holm correction.

Paired tests refuse to run on fewer than `MIN_PAIRED` pairs (two seeds once gave t = 1059 and "significant"),
and say when the differences have (almost) no spread, where a t statistic is meaningless. Over cross-validation
folds, which share training data, the naive paired t-test underestimates the variance of the mean difference;
`corrected_resampled_t` applies Nadeau and Bengio's (2003) correction. `detectable_difference` is the power
line: the smallest difference a test with these observations and this variance would find 80% of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

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


MIN_PAIRED = 3
ZERO_SPREAD = 1e-9  # differences within this of each other are equal up to floating-point rounding
T_SUSPECT = 50.0  # |t| above this on a handful of seeds means the differences have almost no spread


@dataclass(frozen=True)
class PairedTest:
    """A paired two-sided t-test with what makes it unreliable said in `note` ('' when nothing)."""

    n: int
    t: float
    p: float
    note: str = ""


def paired_test(a: np.ndarray | list[float], b: np.ndarray | list[float],
                min_pairs: int = MIN_PAIRED) -> PairedTest:
    """Paired t-test of a vs b, or no test (p NaN) below `min_pairs` pairs or with no spread in the differences."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    n = len(d)
    if n < min_pairs:
        return PairedTest(n, float("nan"), float("nan"), f"no test: {n} paired observation(s), at least "
                                                            f"{min_pairs} needed")
    if np.ptp(d) <= ZERO_SPREAD:
        return PairedTest(n, float("nan"), float("nan"), "no test: the paired differences are all equal "
                                                          "(zero variance)")
    t, p = t_test(a, b, paired=True)
    return PairedTest(n, t, p, _suspect(t, n))


def paired_ci(differences: np.ndarray | list[float]) -> tuple[float, float]:
    """95% CI of the mean paired difference, mean ± t(0.975, n-1)·sd/√n: the interval of the paired t-test
    (NaN below `MIN_PAIRED` pairs, where no test is run either)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < MIN_PAIRED:
        return float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return float(d.mean() - half), float(d.mean() + half)


def corrected_resampled_t(differences: np.ndarray | list[float], n_train: float, n_test: float) -> PairedTest:
    """Nadeau-Bengio corrected resampled t-test over J resampling runs (e.g. folds x repeats).

    t = mean(d) / sqrt((1/J + n_test/n_train) * var(d)), J - 1 degrees of freedom, two-sided. The extra
    n_test/n_train term accounts for the overlap of training sets between runs, which the naive test ignores.
    """
    d = np.asarray(differences, dtype=float)
    j = len(d)
    if j < MIN_PAIRED:
        return PairedTest(j, float("nan"), float("nan"), f"no test: {j} resampling run(s), at least "
                                                          f"{MIN_PAIRED} needed")
    var = float(d.var(ddof=1))
    if np.ptp(d) <= ZERO_SPREAD:
        return PairedTest(j, float("nan"), float("nan"), "no test: the differences are all equal (zero variance)")
    t = float(d.mean() / np.sqrt((1 / j + n_test / n_train) * var))
    return PairedTest(j, t, float(2 * stats.t.sf(abs(t), j - 1)), _suspect(t, j))


def _suspect(t: float, n: int) -> str:
    """The near-zero-variance warning for |t| above T_SUSPECT ('' otherwise)."""
    return (f"near-zero variance of the differences (|t| = {abs(t):.0f} over {n} pairs): check that the runs "
            "really differ" if abs(t) > T_SUSPECT else "")


def detectable_difference(sd: float, n: int, test_train_ratio: float | None = None, alpha: float = 0.05,
                          power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided one-sample (paired) t-test detects with `power` at `alpha`.

    `sd` is the standard deviation (ddof=1) of the n paired differences. The test's standard error is
    sd/√n, or under cross-validation the Nadeau-Bengio corrected sd·√(1/n + n_test/n_train)
    (`test_train_ratio`). With df = n - 1 and critical value c = t(1 - alpha/2, df), the answer is δ = λ·se
    where the noncentral t with noncentrality λ has P(|T| > c) = power. NaN below 2 observations or with
    no spread (no test can run).
    """
    if n < 2 or not np.isfinite(sd) or sd <= 0:
        return float("nan")
    se = sd * np.sqrt(1 / n + (test_train_ratio or 0.0)) if test_train_ratio is not None else sd / np.sqrt(n)
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(ncp: float) -> float:
        """Power at noncentrality ncp, minus the target."""
        lower = float(np.nan_to_num(stats.nct.cdf(-crit, df, ncp)))  # ~0 for ncp > 0; scipy may return NaN
        return float(stats.nct.sf(crit, df, ncp)) + lower - power

    return float(optimize.brentq(shortfall, 0.0, crit + 8.0, xtol=1e-12) * se)  # power > 0.999 at crit + 8


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (monotone, capped at 1), in the input order."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out
