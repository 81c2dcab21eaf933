"""Many arms, one table: mean ± CI per arm and label fraction, t-tests against baseline arms, labels to match.

An *arm* is one adaptation experiment (one pretraining recipe, adapted over label fractions x seeds). The
headline experiment compares several arms at once, so its tests are one family: every arm against every
baseline arm (e.g. random init and real-only SSL) at every label fraction, paired by seed, and Holm's
correction runs across that whole family for each metric, not within each pair. "Labels to match" reads
off each arm's mean curve the label fraction at which it reaches the reference arm's mean at 100% labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from synthfm.errors import SynthfmError
from synthfm.evaluate.efficiency import labels_needed
from synthfm.evaluate.results import INTERNAL, compare, load_results, summary_table
from synthfm.evaluate.stats import holm

ARM = "arm"


def arm_results(arms: Mapping[str, object]) -> pd.DataFrame:
    """Tidy results of every arm, with the arm's display name in `arm` (and `experiment`, for the curve code)."""
    if len(arms) < 2:
        raise SynthfmError(f"an arms comparison needs at least two arms, got {list(arms)}",
                           "name every arm, baselines included, under 'arms'")
    parts = [load_results(path).assign(arm=name, experiment=name) for name, path in arms.items()]
    return pd.concat(parts, ignore_index=True)


def _check_names(arms: Sequence[str], named: Sequence[str], key: str) -> None:
    """Every name in `named` must be an arm."""
    missing = [n for n in named if n not in arms]
    if missing:
        raise SynthfmError(f"'{key}' names {missing}, which are not arms", f"use names from {list(arms)}")


def arm_summary(results: pd.DataFrame, metrics: Sequence[str], split: str = "test") -> pd.DataFrame:
    """Per arm x label fraction x metric: seeds, mean, 95% CI (1.96·sd/√n), bootstrap CI (internal eval set)."""
    sel = results[results["metric"].isin(metrics) & (results["split"] == split)
                  & (results.get("eval_set", INTERNAL) == INTERNAL)]
    return summary_table(sel, by=[ARM, "fraction", "metric"]).assign(split=split)


def arm_tests(results: pd.DataFrame, baselines: Sequence[str], metrics: Sequence[str],
              split: str = "test") -> pd.DataFrame:
    """Every arm vs every baseline per fraction (paired by seed, each pair once); Holm over the family per metric."""
    rows = []
    results = results[results.get("eval_set", INTERNAL) == INTERNAL]
    arms = list(dict.fromkeys(results[ARM]))
    for metric in metrics:
        family, seen = [], set()
        for base in baselines:
            for arm in (a for a in arms if a != base and frozenset((a, base)) not in seen):
                seen.add(frozenset((arm, base)))  # baseline vs baseline is one test, not two
                table = compare(results[results[ARM] == arm], results[results[ARM] == base], metric, split,
                                by=("fraction",))
                family.append(table.assign(arm=arm, baseline=base, metric=metric, split=split))
        block = pd.concat(family, ignore_index=True)
        block["p_holm"] = holm(block["p"].fillna(1.0).to_numpy())
        block["significant"] = block["p_holm"] < 0.05
        rows.append(block)
    out = pd.concat(rows, ignore_index=True)
    front = ["metric", "arm", "baseline", "fraction"]
    return out[front + [c for c in out.columns if c not in front]]


def arm_match(results: pd.DataFrame, reference: str, metrics: Sequence[str], split: str = "test") -> pd.DataFrame:
    """Per metric and arm: the label fraction at which the arm's mean reaches the reference arm's 100% mean."""
    parts = [labels_needed(results, reference, metric, split, by=ARM) for metric in metrics]
    return pd.concat(parts, ignore_index=True)


def arm_tables(arms: Mapping[str, object], baselines: Sequence[str], reference: str,
               metrics: Sequence[str] = ("auroc", "accuracy"), split: str = "test") -> dict[str, pd.DataFrame]:
    """The three tables of a many-arm comparison: summary, tests, match."""
    _check_names(list(arms), baselines, "baselines")
    _check_names(list(arms), [reference], "reference")
    results = arm_results(arms)
    return {"summary": arm_summary(results, metrics, split), "tests": arm_tests(results, baselines, metrics, split),
            "match": arm_match(results, reference, metrics, split)}
