"""The report's gate sentences: verdict, the space it judged in, what failed against the real pair, warnings."""

from __future__ import annotations

from synthfm.report.verdict import gate_lines


def doc(kind: str = "domain", agreement: float = 0.9, verdict: str = "pass") -> dict:
    """A quality.json as the gate writes it, cut to what the sentences read."""
    checks = [{"metric": "precision_rel_s", "value": 0.13, "bound": "at_least", "threshold": 0.5,
               "passed": verdict == "pass", "synthetic": 0.09, "real_baseline": 0.7},
              {"metric": "near_copies", "value": 0.0, "bound": "at_most", "threshold": 0.0, "passed": True,
               "synthetic": float("nan"), "real_baseline": float("nan")}]
    return {"verdict": verdict, "checks": checks, "n_synthetic": 200, "n_real": 1080,
            "space_info": [{"name": "s", "kind": kind, "description": f"a {kind} space"}],
            "metrics": {"label_agreement_rel_dr_grade": agreement, "precision_rel_s": 0.13}}


def test_a_failed_gate_names_the_space_and_each_failure_with_its_real_baseline() -> None:
    """FAILED, the space, and precision 0.13 against its 0.5 bound with synthetic 0.09 vs real 0.7."""
    lines = gate_lines("quality.gate", doc(verdict="fail"))
    assert "FAILED" in lines[0] and "200 images" in lines[0] and "s (a domain space)" in lines[0]
    assert lines[1] == ("Failed: precision_rel_s 0.13 (needs at least 0.5; synthetic 0.09 vs real held-out pair "
                        "0.7).")
    assert len(lines) == 2


def test_random_spaces_and_low_label_agreement_are_warned_about() -> None:
    """A random-init space and label agreement below 0.8 of the real accuracy each get a warning; a pass does not."""
    lines = gate_lines("quality.gate", doc(kind="random", agreement=0.41))
    assert "passed" in lines[0]
    assert any("random-init feature space" in line for line in lines)
    assert any("low label agreement" in line and "0.41" in line for line in lines)
    assert gate_lines("q", doc()) == [gate_lines("q", doc())[0]]


def test_a_comparison_without_a_valid_test_says_why() -> None:
    """Two seeds: no p-value, not significant, and the sentence carries the statistics' caution."""
    from synthfm.report.verdict import comparison_sentence

    row = {"mean_diff": 0.01, "significant": False, "p": float("nan"), "p_holm": float("nan"), "fraction": 1.0,
           "mean_a": 0.72, "mean_b": 0.71, "n": 2, "note": "no test: 2 paired observation(s), at least 3 needed"}
    text = comparison_sentence(row, "MAE", "random init", "auroc")
    assert "did not differ significantly" in text and "p=n/a" in text
    assert text.endswith("Caution: no test: 2 paired observation(s), at least 3 needed.")
