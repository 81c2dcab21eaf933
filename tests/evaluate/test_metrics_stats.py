"""Metrics and statistics against hand computations and scipy on known data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from synthfm.errors import SynthfmError
from synthfm.evaluate.metrics import (
    binary_metrics,
    confusion,
    multiclass_metrics,
    multilabel_metrics,
    task_auroc,
    task_metrics,
)
from synthfm.evaluate.stats import holm, shapiro, summarise, t_test


def test_binary_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.8])
    m = binary_metrics(y, p)
    # pairs (pos, neg): (0.4,0.1)+ (0.4,0.6)- (0.8,0.1)+ (0.8,0.6)+ -> 3/4
    assert m["auroc"] == pytest.approx(0.75)
    # ranking 0.8(+) 0.6(-) 0.4(+) 0.1(-): AP = (1/1 + 2/3) / 2
    assert m["auprc"] == pytest.approx((1 + 2 / 3) / 2)
    # predictions at 0.5: [0, 1, 0, 1]: tp=1 fn=1 tn=1 fp=1
    assert m["accuracy"] == 0.5 and m["sensitivity"] == 0.5 and m["specificity"] == 0.5 and m["f1"] == 0.5


def test_multiclass_macro_ovr_and_kappa_by_hand() -> None:
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7]])
    m = multiclass_metrics(y, p, ordinal=True)
    # class 0: perfect (1.0); class 1: positive 0.5 vs negatives .1,.6,.2 -> 2/3; class 2: positives .3,.7 vs .1,.3
    # -> (0.5 + 1 + 1 + 1)/4 = 0.875
    assert m["auroc"] == pytest.approx((1 + 2 / 3 + 0.875) / 3)
    assert m["accuracy"] == 0.75
    # preds [0,1,1,2]; quadratic weights w_ij=(i-j)^2/4; observed: one (2->1) error weight 1/4 -> sum 0.25/4
    # expected from marginals: rows [1,1,2], cols [1,2,1] over n=4
    w = np.array([[(i - j) ** 2 / 4 for j in range(3)] for i in range(3)])
    obs = np.zeros((3, 3))
    for t, q in zip(y, [0, 1, 1, 2], strict=True):
        obs[t, q] += 1
    exp = np.outer(obs.sum(1), obs.sum(0)) / 4
    assert m["kappa_quadratic"] == pytest.approx(1 - (w * obs).sum() / (w * exp).sum())
    np.testing.assert_array_equal(confusion(y, p.argmax(1), 3), obs)


def test_multilabel_skips_constant_labels() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0]])
    p = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.1]])
    m = multilabel_metrics(y, p)
    assert m["auroc"] == 1.0 and m["accuracy"] == pytest.approx(1.0)


def test_nan_scores_rejected() -> None:
    with pytest.raises(SynthfmError, match="NaN"):
        binary_metrics(np.array([0, 1]), np.array([np.nan, 0.5]))


def test_summary_ci_matches_formula() -> None:
    v = np.array([0.70, 0.72, 0.68, 0.75, 0.71])
    s = summarise(v, n_boot=2000)
    assert s.mean == pytest.approx(v.mean())
    assert s.ci_half_width == pytest.approx(1.96 * v.std(ddof=1) / np.sqrt(5))
    assert v.min() <= s.boot_low < s.mean < s.boot_high <= v.max()


def test_shapiro_and_t_tests_match_scipy() -> None:
    a = np.array([0.70, 0.72, 0.68, 0.75, 0.71])
    b = np.array([0.66, 0.69, 0.67, 0.70, 0.65])
    assert shapiro(a) == pytest.approx(tuple(stats.shapiro(a)))
    assert t_test(a, b, paired=True) == pytest.approx(tuple(stats.ttest_rel(a, b)))
    welch = stats.ttest_ind(a, b, equal_var=False)
    assert t_test(a, b, paired=False) == pytest.approx((welch.statistic, welch.pvalue))
    d = a - b
    assert t_test(a, b, paired=True)[0] == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(5)))


def test_holm_by_hand() -> None:
    # sorted p: .01 .02 .04 -> 3*.01=.03, 2*.02=.04, 1*.04=.04 (monotone)
    np.testing.assert_allclose(holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])


def test_paired_test_needs_three_pairs_and_spread() -> None:
    """Two seeds or identical differences give no test (p NaN) and say why; near-zero spread is flagged."""
    from synthfm.evaluate.stats import paired_test

    two = paired_test([0.71, 0.72], [0.70, 0.70])
    assert np.isnan(two.p) and "2 paired observation(s)" in two.note
    same = paired_test([0.8, 0.7, 0.6], [0.7, 0.6, 0.5])
    assert np.isnan(same.p) and "zero variance" in same.note
    tight = paired_test([0.8, 0.7, 0.6], [0.7 - 1e-6, 0.6, 0.5 + 1e-6])
    assert tight.p < 1e-3 and "near-zero variance" in tight.note
    fine = paired_test([0.80, 0.74, 0.69, 0.77], [0.75, 0.73, 0.70, 0.71])
    assert fine.note == "" and fine.p == pytest.approx(stats.ttest_rel([0.80, 0.74, 0.69, 0.77],
                                                                       [0.75, 0.73, 0.70, 0.71]).pvalue)


def test_corrected_resampled_t_by_hand() -> None:
    """Nadeau-Bengio on d = (0.02, 0.03, -0.01, 0.04, 0.02), 5 folds (n_test/n_train = 1/4), computed by hand.

    mean 0.02, var (ddof 1) = (0 + 0.0001 + 0.0009 + 0.0004 + 0) / 4 = 0.00035;
    t = 0.02 / sqrt((1/5 + 1/4) * 0.00035) = 0.02 / sqrt(0.0001575) = 1.59364; naive t = 0.02 / sqrt(0.00007) = 2.39046.
    """
    from synthfm.evaluate.stats import corrected_resampled_t

    d = [0.02, 0.03, -0.01, 0.04, 0.02]
    res = corrected_resampled_t(d, n_train=80, n_test=20)
    assert res.t == pytest.approx(1.593638, rel=1e-5)
    assert res.p == pytest.approx(2 * stats.t.sf(1.593638, 4), rel=1e-4)
    naive = stats.ttest_1samp(d, 0.0)
    assert naive.statistic == pytest.approx(2.390457, rel=1e-5) and naive.pvalue < res.p
    assert np.isnan(corrected_resampled_t([0.1, 0.2], 80, 20).p)
    assert res.note == "" and "near-zero variance" in corrected_resampled_t([0.5, 0.5 + 1e-6, 0.5], 80, 20).note


def test_paired_ci_by_hand() -> None:
    """d = 1, 2, 3: mean 2, sd 1, t(0.975, 2 df) = 4.3027 -> 2 ± 4.3027/√3 = [-0.4841, 4.4841]; 2 pairs: none."""
    import math

    from synthfm.evaluate.stats import paired_ci

    half = 4.302652729911275 / math.sqrt(3)
    assert paired_ci([1.0, 2.0, 3.0]) == pytest.approx((2 - half, 2 + half), rel=1e-9)
    assert all(math.isnan(v) for v in paired_ci([0.1, 0.2]))


def test_detectable_difference_by_hand() -> None:
    """Smallest difference found with 80% power, two-sided alpha 0.05, against hand-computed cases.

    Large n: the normal answer (z 0.975 + z 0.8) sd / sqrt(n) = (1.959964 + 0.841621) / 100 = 0.0280159.
    CV, 5 folds x 3 repeats, sd 0.02, n_test/n_train 1/4: se = 0.02 sqrt(1/15 + 1/4) = 0.0112546, and
    the usual t approximation (t 0.975,14 + t 0.8,14) se = (2.144787 + 0.868210) x 0.0112546 = 0.033910.
    Paired n = 10, sd 1: 0.996 (the effect size dz G*Power reports for 80% power).
    """
    from synthfm.evaluate.stats import detectable_difference

    assert detectable_difference(1.0, 10_000) == pytest.approx(0.0280159, abs=1e-5)
    cv = detectable_difference(0.02, 15, test_train_ratio=0.25)
    assert cv == pytest.approx(0.033910, abs=2e-5)
    se = 0.02 * np.sqrt(1 / 15 + 1 / 4)  # the power at the answer is 80% exactly
    crit = stats.t.ppf(0.975, 14)
    assert stats.nct.sf(crit, 14, cv / se) + stats.nct.cdf(-crit, 14, cv / se) == pytest.approx(0.8, abs=1e-8)
    assert cv > detectable_difference(0.02, 15)  # the correction widens what can be seen
    assert detectable_difference(1.0, 10) == pytest.approx(0.996, abs=1e-3)
    assert np.isnan(detectable_difference(0.0, 10)) and np.isnan(detectable_difference(1.0, 1))


@pytest.mark.parametrize("task_type", ["binary", "multiclass", "ordinal", "multilabel"])
def test_task_auroc_is_task_metrics_auroc(task_type: str) -> None:
    """The AUROC used for per-epoch selection is exactly task_metrics' AUROC, for every task type."""
    rng = np.random.default_rng(4)
    n = 40
    if task_type == "binary":
        y, p = rng.integers(0, 2, n), rng.random(n)
    elif task_type == "multilabel":
        y, p = rng.integers(0, 2, (n, 3)), rng.random((n, 3))
    else:
        y, p = rng.integers(0, 4, n), rng.dirichlet(np.ones(4), n)
    assert task_auroc(task_type, y, p) == task_metrics(task_type, y, p)["auroc"]
    assert 0.0 < task_auroc(task_type, y, p) < 1.0
