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


# ---- controls: raw pixels and a CNN from scratch ---------------------------------------------------------------
SEED_OFFSETS = (-0.02, 0.01, 0.0, 0.03, -0.01)
CONTROL_ARMS = {"random init": (0.60, (0.0, 0.0, 0.0, 0.0, 0.0)),
                "real SSL": (0.70, (0.003, -0.002, 0.0, 0.001, 0.0)),
                "MAE": (0.65, (0.004, -0.006, 0.005, -0.003, 0.001)),
                "pixels": (0.65, (0.0, 0.001, -0.002, 0.0, 0.002)),
                "CNN": (0.72, (0.001, 0.0, 0.0, -0.001, 0.002))}


def _control_doc() -> dict:
    """Five arms over 5 seeds at 10% labels; random init and real SSL are baselines, pixels and CNN controls."""
    import pandas as pd

    from synthfm.evaluate.arms import arm_tables
    from synthfm.evaluate.results import tidy_rows

    arms = {a: pd.DataFrame([r for s, (o, e) in enumerate(zip(SEED_OFFSETS, noise, strict=True))
                             for r in tidy_rows({"test": {"auroc": m + o + e}}, dataset="d", task="t", fraction=0.1,
                                                seed=s, eval_set="internal")])
            for a, (m, noise) in CONTROL_ARMS.items()}
    tables = arm_tables(arms, ["random init", "real SSL", "pixels", "CNN"], "random init", ["auroc"])
    return {"title": "probe", "metrics": ["auroc"], "split": "test", "baselines": ["random init", "real SSL"],
            "controls": ["pixels", "CNN"], "reference": "random init", "arms": list(arms),
            **{k: v.to_dict("records") for k, v in tables.items()}}


def _expected(a: str, b: str) -> str:
    """'+d, 95% CI [lo, hi]' of arm a minus arm b, computed here from the seeds (t interval, 4 df)."""
    import math

    import numpy as np
    from scipy import stats

    d = CONTROL_ARMS[a][0] - CONTROL_ARMS[b][0] + np.subtract(CONTROL_ARMS[a][1], CONTROL_ARMS[b][1])
    low, high = stats.t.interval(0.95, 4, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(5))
    return f"{d.mean():+.3f}, 95% CI [{low:+.3f}, {high:+.3f}], Holm p="


def test_verdict_says_whether_a_pretrained_arm_beats_each_control() -> None:
    """Real SSL beats pixels (+0.05); nothing beats the CNN (closest: real SSL, -0.02); every pretrained arm gets
    its difference from each control with the CI and the Holm p of the shared family, signed arm minus control
    even where the test ran the other way round (pixels vs the real SSL baseline)."""
    from synthfm.report.verdict import arms_verdict

    lines = arms_verdict(_control_doc())
    assert any(line.startswith("real SSL minus pixels (probe, test auroc): 10% " + _expected("real SSL", "pixels"))
               for line in lines)
    assert any(line.startswith("MAE minus CNN (probe, test auroc): 10% " + _expected("MAE", "CNN")) for line in lines)
    assert not any(line.startswith(("random init minus", "pixels minus", "CNN minus")) for line in lines)
    assert "Verdict (probe): real SSL beat pixels significantly on test auroc" in "\n".join(lines)
    assert ("Verdict (probe): no pretrained arm beat CNN significantly on test auroc; closest: real SSL at 10% ("
            + _expected("real SSL", "CNN")) in "\n".join(lines)
    floor = next(line for line in lines if line.startswith("Verdict (probe): pretraining helped"))
    assert "pixels" not in floor and "CNN" not in floor  # the controls beat random init, but are not pretraining


def test_a_cv_comparison_names_the_corrected_test_and_the_power_line() -> None:
    from synthfm.report.verdict import comparison_sentence

    row = {"mean_diff": 0.02, "significant": False, "p": 0.132, "p_holm": 0.264, "fraction": 1.0, "mean_a": 0.72,
           "mean_b": 0.70, "n": 15, "note": "", "test": "corrected resampled t", "detectable_diff": 0.0339}
    text = comparison_sentence(row, "MAE", "random init", "auroc")
    assert "over 15 CV folds x repeats (seeds averaged per fold)" in text
    assert "Nadeau-Bengio corrected resampled t-test p=0.132, Holm p=0.264" in text
    assert text.endswith("the smallest auroc difference detectable at 80% power (two-sided alpha 0.05) is 0.034.")
    plain = comparison_sentence({**row, "test": "paired t", "n": 5, "detectable_diff": float("nan")}, "A", "B",
                                "auroc")
    assert "over 5 seeds (paired t-test" in plain and "power" not in plain


def _arms_doc(chance: list[dict], falls: list[dict]) -> dict:
    """An arms.json cut to what arms_verdict reads: one CV test of mae vs random."""
    test = {"metric": "auroc", "arm": "mae", "baseline": "random", "fraction": 1.0, "mean_diff": 0.01,
            "significant": False, "test": "corrected resampled t", "detectable_diff": 0.041}
    return {"title": "cv", "metrics": ["auroc"], "split": "test", "baselines": ["random"], "reference": "random",
            "tests": [test], "match": [], "chance": chance, "falls": falls}


def test_arms_verdict_flags_chance_level_and_falling_curves() -> None:
    from synthfm.report.verdict import arms_verdict

    chance = [{"arm": "mae", "metric": "auroc", "fraction": 0.1, "mean": 0.52, "ci_low": 0.47, "ci_high": 0.57,
               "chance": 0.5, "at_chance": True},
              {"arm": "random", "metric": "accuracy", "fraction": 0.1, "mean": 0.435, "ci_low": 0.435,
               "ci_high": 0.435, "chance": 0.435, "at_chance": True},
              {"arm": "random", "metric": "auroc", "fraction": 1.0, "mean": 0.7, "ci_low": 0.68, "ci_high": 0.72,
               "chance": 0.5, "at_chance": False},
              {"arm": "mae", "metric": "accuracy", "fraction": 0.2, "mean": 0.12, "ci_low": 0.04, "ci_high": 0.2,
               "chance": 0.435, "at_chance": True}]
    falls = [{"arm": "mae", "metric": "auroc", "from_fraction": 0.2, "from_mean": 0.71, "to_fraction": 1.0,
              "to_mean": 0.66, "drop": 0.05}]
    lines = arms_verdict(_arms_doc(chance, falls))
    assert "Nadeau-Bengio corrected resampled t-tests over CV folds" in lines[0]
    assert lines[0].endswith("At 80% power these tests detect auroc differences of 0.041–0.041 or more.")
    warn = next(line for line in lines if "at chance level" in line)
    assert "mae at 10% (auroc 0.520, 95% CI 0.470-0.570, reaches 0.5)" in warn
    assert "random at 10% (accuracy 0.435, 95% CI 0.435-0.435, reaches the majority-class rate 0.435)" in warn
    assert "mae at 20% (accuracy 0.120, 95% CI 0.040-0.200, below the majority-class rate 0.435)" in warn
    assert "random at 100%" not in warn
    assert any("mae auroc 0.710 at 20% → 0.660 at 100%" in line for line in lines)
    assert not [line for line in arms_verdict(_arms_doc([], [])) if "Warning" in line]
