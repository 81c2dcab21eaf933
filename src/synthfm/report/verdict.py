"""The plain verdict sentences of a report, from the pipeline's A-vs-B comparisons."""

from __future__ import annotations

from typing import Any

import numpy as np

WHAT_WOULD_CHANGE_IT = ("What could change this: more or more varied synthetic images, a generator whose "
                        "images pass the quality gate with a lower Fréchet distance, a larger encoder, or "
                        "longer pretraining followed by a stage on real images.")


def comparison_sentence(row: dict[str, Any], label_a: str, label_b: str, metric: str) -> str:
    """One sentence: did A beat B at this label fraction (paired t-test, Holm-corrected)?"""
    diff, significant = float(row["mean_diff"]), bool(row["significant"])
    word = ("beat" if diff > 0 else "did worse than") if significant else "did not differ significantly from"
    p = "n/a" if row.get("p") is None or np.isnan(row["p"]) else f"{row['p']:.3g}"
    holm = "n/a" if row.get("p_holm") is None or np.isnan(row["p_holm"]) else f"{row['p_holm']:.3g}"
    where = f"{row.get('dataset', '')} {row.get('task', '')}".strip()
    return (f"{label_a} {word} {label_b} on {where} with {100 * float(row['fraction']):g}% of the labels: "
            f"test {metric} {row['mean_a']:.3f} vs {row['mean_b']:.3f} over {int(row['n'])} seeds "
            f"(paired t-test p={p}, Holm p={holm}).")


def verdict(comparisons: list[dict[str, Any]]) -> list[str]:
    """All comparison sentences, then what they add up to, said plainly either way."""
    if not comparisons:
        return ["No comparison was run, so this report makes no claim: add an evaluate job "
                "(`compare: {a: ${adapt.X}, b: ${adapt.Y}}`) to the pipeline."]
    lines, wins, losses, ties = [], 0, 0, 0
    for comp in comparisons:
        for row in comp["rows"]:
            lines.append(comparison_sentence(row, comp["label_a"], comp["label_b"], comp["metric"]))
            won = bool(row["significant"])
            wins += won and row["mean_diff"] > 0
            losses += won and row["mean_diff"] < 0
            ties += not won
    if wins and not (losses or ties):
        lines.append("Verdict: pretraining helped in every comparison.")
    elif wins:
        lines.append(f"Verdict: mixed — {wins} significant gain(s), {losses} loss(es), {ties} without a "
                     "significant difference. " + WHAT_WOULD_CHANGE_IT)
    else:
        lines.append("Verdict: pretraining did not help here — "
                     + ("it did worse in some comparisons and no better in the rest. " if losses else
                        "no comparison showed a significant gain. ") + WHAT_WOULD_CHANGE_IT)
    return lines
