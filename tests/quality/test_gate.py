"""The gate: metrics relative to the real held-out pair (hand-computed), default bounds, matching, messages."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from synthfm.errors import SynthfmError
from synthfm.quality.config import FidelityConfig, GateConfig
from synthfm.quality.fidelity import fidelity_metrics
from synthfm.quality.gate import evaluate_gate, gate_error, verdict
from synthfm.quality.run import relative_metrics


def _hand(fake: np.ndarray, real: np.ndarray, k: int) -> dict[str, float]:
    """FD, precision, recall, density and coverage by brute force (numpy / scipy)."""
    f, r = fake.astype(np.float64), real.astype(np.float64)
    s1, s2 = np.cov(f, rowvar=False), np.cov(r, rowvar=False)
    d = f.mean(0) - r.mean(0)
    fd = d @ d + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)

    def radii(x: np.ndarray) -> np.ndarray:
        return np.sort(np.linalg.norm(x[:, None] - x[None], axis=-1), axis=1)[:, k]

    rr, rf = radii(r), radii(f)
    dfr = np.linalg.norm(f[:, None] - r[None], axis=-1)  # fake x real
    drf = dfr.T
    return {"FD": fd, "precision": (dfr <= rr[None]).any(1).mean(), "recall": (drf <= rf[None]).any(1).mean(),
            "density": (dfr <= rr[None]).sum() / (k * len(f)), "coverage": (dfr.min(0) <= rr).mean()}


def test_relative_metrics_equal_hand_computed_values() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 3)).astype(np.float32)
    held = rng.normal(size=(30, 3)).astype(np.float32)
    syn = rng.normal(0.8, 1.5, size=(30, 3)).astype(np.float32)
    cfg = FidelityConfig(prdc_k=3, kid_subsets=2, kid_subset_size=10)
    got = relative_metrics(fidelity_metrics(syn, ref, cfg, 0), fidelity_metrics(held, ref, cfg, 0))
    hs, hr = _hand(syn, ref, 3), _hand(held, ref, 3)
    assert got["FD_ratio"] == pytest.approx(hs["FD"] / hr["FD"], rel=1e-5)
    for name in ("precision", "recall", "density", "coverage"):
        assert got[f"{name}_rel"] == pytest.approx(hs[name] / hr[name], rel=1e-5), name
    assert got["FD_ratio"] > 3 and got["precision_rel"] < 1  # the shifted, wider set is worse than real


HEADLINE = {"FD_ratio_s": 2.5, "precision_rel_s": 0.09 / 0.7, "coverage_rel_s": 0.11 / 0.8,
            "label_agreement_rel_dr_grade": 0.33 / 0.55, "near_copies": 0.0}
BASELINES = {"precision_rel_s": (0.09, 0.7), "coverage_rel_s": (0.11, 0.8),
             "label_agreement_rel_dr_grade": (0.33, 0.55)}


def test_default_bounds_fail_the_headline_set_and_pass_a_real_like_one() -> None:
    checks = evaluate_gate(HEADLINE, GateConfig(), ["s", "dr_grade"], BASELINES)
    assert verdict(checks) == "fail"
    failed = {c["metric"] for c in checks if not c["passed"]}
    assert failed == {"precision_rel_s", "coverage_rel_s", "label_agreement_rel_dr_grade"}
    err = gate_error(checks, "q/quality.json")
    assert "precision_rel_s = 0.1286 < at_least 0.5 (synthetic 0.09, real held-out pair 0.7)" in err.message
    assert "label_agreement_rel_dr_grade = 0.6 < at_least 0.8 (synthetic 0.33, real held-out pair 0.55)" in err.message
    assert "FD_ratio" not in err.message  # passed
    assert "mode collapse" in err.fix and "guidance scale" in err.fix and "filtered/" in err.fix
    real_like = {k: (1.1 if "FD" in k else 0.95) for k in HEADLINE} | {"near_copies": 0.0}
    assert verdict(evaluate_gate(real_like, GateConfig(), ["s", "dr_grade"])) == "pass"


def test_families_match_only_their_own_suffixes_and_defaults_can_be_changed() -> None:
    metrics = {"FD_s": 9.0, "FD_ratio_s": 1.0, "FD_real_s": 0.2, "near_copies": 0.0}
    checks = evaluate_gate(metrics, GateConfig(at_most={"FD": 10.0}), ["s"])
    assert [c["metric"] for c in checks] == ["near_copies", "FD_ratio_s", "FD_s"]  # defaults without a metric skipped
    tighter = GateConfig(at_most={"FD_ratio": 0.5, "near_copies": None}, at_least={"precision_rel": None})
    assert [(c["metric"], c["threshold"], c["passed"]) for c in evaluate_gate(metrics, tighter, ["s"])] == [
        ("FD_ratio_s", 0.5, False)]
    assert evaluate_gate(metrics, GateConfig(defaults=False), ["s"]) == []
    with pytest.raises(SynthfmError, match="names no computed metric"):
        evaluate_gate(metrics, GateConfig(at_least={"label_agreement_rel": 0.9}), ["s"])


def test_sharpness_matches_scipy_and_drops_with_blur() -> None:
    from scipy import ndimage

    from synthfm.quality.fidelity import sharpness

    rng = np.random.default_rng(0)
    maps = rng.integers(0, 255, (5, 24, 24)).astype(np.uint8)
    g = maps.astype(np.float64)
    hand = np.median([ndimage.laplace(x)[1:-1, 1:-1].var(ddof=1) / x[1:-1, 1:-1].var(ddof=1) for x in g])
    assert sharpness(maps) == pytest.approx(hand, rel=1e-4)
    blurred = np.stack([ndimage.gaussian_filter(x, 1.5) for x in g]).round().astype(np.uint8)
    assert sharpness(blurred) < 0.2 * sharpness(maps)
    assert sharpness((maps * 0.5).astype(np.uint8)) == pytest.approx(sharpness(maps), rel=0.05)  # contrast-free
