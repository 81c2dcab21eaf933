"""What results cannot show: models at chance level, and label curves that fall as labels grow.

A model is *at chance* at a label fraction when the 95% CI of its mean test AUROC (1.96·sd/√n over runs)
reaches 0.5, or when the CI of its mean accuracy reaches the majority-class rate (the accuracy of always
guessing the commonest class of the evaluation set, the `majority_rate` column of adaptation results). A label
curve *falls* when the mean at a larger label fraction is more than `FALL_TOLERANCE` below the best mean at a
smaller one: more labels should not hurt, so a fall points at training that collapsed or did not converge.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from synthfm.evaluate.results import INTERNAL, summary_table

AUROC_CHANCE = 0.5
FALL_TOLERANCE = 0.01  # in the metric's units; smaller dips are seed noise at the sizes this toolkit runs
CHANCE_COLUMNS = ("metric", "fraction", "n", "mean", "ci_low", "ci_high", "chance", "at_chance")


def chance_table(results: pd.DataFrame, by: Sequence[str], split: str = "test") -> pd.DataFrame:
    """Per model (`by`) and label fraction: AUROC against 0.5 and accuracy against the majority-class rate."""
    sel = results[(results["split"] == split) & (results.get("eval_set", INTERNAL) == INTERNAL)]
    parts = []
    auroc = summary_table(sel[sel["metric"] == "auroc"], by=[*by, "fraction", "metric"])
    parts.append(auroc.assign(chance=AUROC_CHANCE))
    acc = sel[sel["metric"] == "accuracy"]
    if "majority_rate" in acc and acc["majority_rate"].notna().any():
        rate = acc.groupby([*by, "fraction"], sort=True)["majority_rate"].mean().rename("chance").reset_index()
        parts.append(summary_table(acc, by=[*by, "fraction", "metric"]).merge(rate, on=[*by, "fraction"]))
    table = pd.concat(parts, ignore_index=True)
    table["at_chance"] = table["ci_low"] <= table["chance"]  # the CI reaches chance (or the mean is below it)
    return table[[*by, *CHANCE_COLUMNS]]


def falling_curves(summary: pd.DataFrame, by: Sequence[str], tolerance: float = FALL_TOLERANCE) -> pd.DataFrame:
    """Per model and metric, the largest fall of the mean curve: from the best smaller fraction to a larger one.

    `summary` has `fraction`, `metric` and `mean` per model; only falls larger than `tolerance` are returned.
    """
    rows = []
    for keys, g in summary.groupby([*by, "metric"], sort=True):
        g = g.sort_values("fraction")
        best_before = g["mean"].cummax().shift()
        drop = best_before - g["mean"]
        if drop.notna().any() and drop.max() > tolerance:
            at = drop.idxmax()
            peak = g.loc[:at].iloc[:-1]["mean"].idxmax()
            rows.append({**dict(zip([*by, "metric"], keys, strict=True)), "from_fraction": g.at[peak, "fraction"],
                         "from_mean": g.at[peak, "mean"], "to_fraction": g.at[at, "fraction"],
                         "to_mean": g.at[at, "mean"], "drop": float(drop.max())})
    return pd.DataFrame(rows, columns=[*by, "metric", "from_fraction", "from_mean", "to_fraction", "to_mean", "drop"])
