"""The downstream part of an exported classifier's model card (synthfm.adapt.modelcard)."""

from __future__ import annotations

import numpy as np
import pytest

from synthfm.adapt.modelcard import bootstrap_ci


def test_bootstrap_ci_brackets_the_metric() -> None:
    """Binary AUROC of a perfect ranking is 1 with a CI of [1, 1]; a noisy one has its point inside its CI;
    the other metrics are points without bounds."""
    y = np.array([0, 0, 0, 1, 1, 1] * 5)
    assert bootstrap_ci("binary", y, y.astype(float), n_boot=50)["auroc"] == (1.0, 1.0, 1.0)
    p = np.random.default_rng(0).random(len(y)) * 0.5 + y * 0.3
    got = bootstrap_ci("binary", y, p, n_boot=200)
    v, lo, hi = got["auroc"]
    assert lo <= v <= hi and hi - lo > 0.05
    assert np.isnan(got["accuracy"][1]) and got["accuracy"][0] == pytest.approx(np.mean((p >= 0.5) == y))
