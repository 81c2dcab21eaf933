"""The plain verdict sentences of a report, from the pipeline's A-vs-B comparisons."""

from __future__ import annotations

from typing import Any

import numpy as np

from synthfm.evaluate.results import CORRECTED_T

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
    note = f" Caution: {row['note']}." if isinstance(row.get("note"), str) and row["note"] else ""
    cv = row.get("test") == CORRECTED_T
    over = f"{int(row['n'])} CV folds x repeats (seeds averaged per fold)" if cv else f"{int(row['n'])} seeds"
    name = "Nadeau-Bengio corrected resampled t-test" if cv else "paired t-test"
    return (f"{label_a} {word} {label_b} on {where} with {100 * float(row['fraction']):g}% of the labels: "
            f"test {metric} {row['mean_a']:.3f} vs {row['mean_b']:.3f} over {over} "
            f"({name} p={p}, Holm p={holm}).{power_clause(row, metric)}{note}")


def power_clause(row: dict[str, Any], metric: str) -> str:
    """' At 80% power these runs detect a difference of 0.034 test auroc or more.' ('' where no test ran)."""
    mde = row.get("detectable_diff")
    if mde is None or not isinstance(mde, (int, float)) or np.isnan(mde):
        return ""
    return (f" With these runs and this variance, the smallest {metric} difference detectable at 80% power "
            f"(two-sided alpha 0.05) is {mde:.3f}.")


def chance_lines(rows: list[dict[str, Any]], key: str) -> list[str]:
    """One warning per model at chance level (AUROC CI reaching 0.5, accuracy CI reaching the majority rate)."""
    hits = [r for r in rows if r.get("at_chance")]
    parts = [f"{r[key]} at {100 * float(r['fraction']):g}% ({r['metric']} {r['mean']:.3f}, 95% CI "
             f"{r['ci_low']:.3f}-{r['ci_high']:.3f}, " + _chance_relation(r) + ")" for r in hits]
    return [f"Warning: at chance level — {'; '.join(parts)}. Such a model does no better than guessing (or than "
            "always naming the commonest class) on that metric, so its comparisons on it say little."] if parts else []


def _chance_relation(row: dict[str, Any]) -> str:
    """'reaches 0.5' / 'below the majority-class rate 0.435': where the CI lies against chance."""
    level = "0.5" if row["metric"] == "auroc" else f"the majority-class rate {row['chance']:.3f}"
    return f"{'below' if row['ci_high'] < row['chance'] else 'reaches'} {level}"


def fall_lines(rows: list[dict[str, Any]], key: str) -> list[str]:
    """One warning per label curve that falls as labels grow."""
    parts = [f"{r[key]} {r['metric']} {r['from_mean']:.3f} at {100 * float(r['from_fraction']):g}% → "
             f"{r['to_mean']:.3f} at {100 * float(r['to_fraction']):g}%" for r in rows]
    return [f"Warning: label curves that fall as labels grow — {'; '.join(parts)}. More labels should not hurt: "
            "check for collapse to one class or training that did not converge."] if parts else []


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


def _num(value: Any, fmt: str) -> str:
    """A number, or n/a when missing or NaN."""
    return "n/a" if value is None or value != value else format(float(value), fmt)


def _difference(diff: float, low: Any, high: Any, p_holm: Any) -> str:
    """'+0.040, 95% CI [+0.031, +0.049], Holm p=0.012' (the CI left out where the table has none)."""
    ci = f", 95% CI [{_num(low, '+.3f')}, {_num(high, '+.3f')}]" if low is not None else ""
    return f"{diff:+.3f}{ci}, Holm p={_num(p_holm, '.2g')}"


def _signed(row: dict[str, Any]) -> str:
    """'arm better/worse at F% (+d, 95% CI [lo, hi], Holm p)' for one significant test row."""
    word = "better" if row["mean_diff"] > 0 else "worse"
    diff = _difference(row["mean_diff"], row.get("diff_ci_low"), row.get("diff_ci_high"), row.get("p_holm"))
    return f"{row['arm']} {word} at {100 * float(row['fraction']):g}% ({diff})"


def _closest(rows: list[dict[str, Any]]) -> str:
    """'closest: ARM at F% (+d, 95% CI [lo, hi], Holm p)': the test row with the largest difference, or ''."""
    best = max(rows, key=lambda r: r["mean_diff"], default=None)
    if best is None:
        return ""
    return (f"closest: {best['arm']} at {100 * float(best['fraction']):g}% ("
            + _difference(best["mean_diff"], best.get("diff_ci_low"), best.get("diff_ci_high"), best.get("p_holm"))
            + ")")


def _oriented(row: dict[str, Any], arm: str) -> dict[str, Any]:
    """A test row as `arm` minus the other arm (a row tested the other way round has its sign flipped)."""
    if row["arm"] == arm:
        return row
    low, high = row.get("diff_ci_low"), row.get("diff_ci_high")
    return {**row, "arm": arm, "baseline": row["arm"], "mean_diff": -row["mean_diff"],
            "diff_ci_low": None if high is None else -high, "diff_ci_high": None if low is None else -low}


def control_lines(doc: dict[str, Any], metric: str) -> list[str]:
    """Does any pretrained arm beat each control (raw pixels, a CNN from scratch)? Every arm's difference from it.

    Pretrained arms are the arms that are neither controls nor the first baseline (the random-init floor); the
    rows are those of the arms' own test family (same pairing by seed, same Holm correction).
    """
    controls = doc.get("controls") or []
    named = dict.fromkeys(n for r in doc["tests"] for n in (r["arm"], r["baseline"]))
    pretrained = [a for a in doc.get("arms", named) if a not in controls and a != doc["baselines"][0]]
    title, where = doc.get("title") or "these arms", f"{doc['split']} {metric}"
    lines = []
    for control in controls:
        rows = [_oriented(r, a) for a in pretrained for r in doc["tests"]
                if r["metric"] == metric and {r["arm"], r["baseline"]} == {a, control}]
        for arm in pretrained:
            parts = [f"{100 * float(r['fraction']):g}% " + _difference(r["mean_diff"], r.get("diff_ci_low"),
                                                                     r.get("diff_ci_high"), r.get("p_holm"))
                     for r in rows if r["arm"] == arm]
            lines.append(f"{arm} minus {control} ({title}, {where}): " + "; ".join(parts) + ".")
        wins = sorted({r["arm"] for r in rows if r["significant"] and r["mean_diff"] > 0})
        if wins:
            lines.append(f"Verdict ({title}): {', '.join(wins)} beat {control} significantly on {where} "
                         "(paired t-tests over seeds, Holm-corrected with the other arms' tests).")
        elif rows:
            lines.append(f"Verdict ({title}): no pretrained arm beat {control} significantly on {where}; "
                         f"{_closest(rows)}.")
    return lines


def _baseline_line(doc: dict[str, Any], base: str, metric: str, n_family: int) -> str:
    """Which arms differed significantly from one baseline, in one sentence."""
    rows = [r for r in doc["tests"] if r["baseline"] == base and r["metric"] == metric]
    hits = [_signed(r) for r in rows if r["significant"]]
    found = "; ".join(hits) + ". No other difference was significant." if hits else \
        "no difference was significant" + (f"; {_closest(rows)}." if rows else ".")
    cv = any(r.get("test") == CORRECTED_T for r in rows)
    how = ("Nadeau-Bengio corrected resampled t-tests over CV folds" if cv else "paired t-tests over seeds")
    mdes = [r["detectable_diff"] for r in rows if isinstance(r.get("detectable_diff"), float)
            and not np.isnan(r["detectable_diff"])]
    power = (f" At 80% power these tests detect {metric} differences of {min(mdes):.3f}–{max(mdes):.3f} or more."
             if mdes else "")
    return (f"{doc.get('title') or 'Arms'}, against {base} ({doc['split']} {metric}, {how}, "
            f"Holm-corrected over all {n_family} tests): {found}{power}")


def _match_line(doc: dict[str, Any], metric: str) -> str:
    """The label fraction each arm needs to match the reference at 100% labels."""
    rows = [r for r in doc["match"] if r["metric"] == metric]
    if not rows:
        return ""
    parts = ", ".join(f"{r['arm']} {r['note']}" for r in rows if r["arm"] != doc["reference"])
    return (f"Labels needed to match {doc['reference']} at 100% of the labels ({metric} {rows[0]['target']:.3f}): "
            f"{parts}.")


def arms_verdict(doc: dict[str, Any]) -> list[str]:
    """Sentences for a many-arm comparison (evaluate `arms` job) on its first metric, and what they add up to."""
    metric = doc["metrics"][0]
    n_family = sum(1 for r in doc["tests"] if r["metric"] == metric)
    lines = [_baseline_line(doc, base, metric, n_family) for base in [*doc["baselines"], *doc.get("controls", [])]]
    lines.append(_match_line(doc, metric))
    lines += control_lines(doc, metric)
    lines += chance_lines(doc.get("chance", []), "arm") + fall_lines(doc.get("falls", []), "arm")
    floor = doc["baselines"][0]
    tested = [r for r in doc["tests"] if r["metric"] == metric and r["baseline"] == floor
              and r["arm"] not in [*doc["baselines"], *doc.get("controls", [])]]
    gains = sorted({r["arm"] for r in tested if r["significant"] and r["mean_diff"] > 0})
    losses = sorted({r["arm"] for r in tested if r["significant"] and r["mean_diff"] < 0})
    title = doc.get("title") or "these arms"
    if gains and not losses:
        lines.append(f"Verdict ({title}): pretraining helped against {floor} for {', '.join(gains)}.")
    elif gains:
        lines.append(f"Verdict ({title}): mixed against {floor} — gains for {', '.join(gains)}, losses for "
                     f"{', '.join(losses)}. " + WHAT_WOULD_CHANGE_IT)
    else:
        closest = f" ({_closest(tested)})" if tested else ""
        lines.append(f"Verdict ({title}): no pretraining arm beat {floor} significantly{closest}"
                     + (f"; {', '.join(losses)} did worse. " if losses else ". ") + WHAT_WOULD_CHANGE_IT)
    return [line for line in lines if line]


def gate_lines(job: str, doc: dict[str, Any]) -> list[str]:
    """What a quality gate said (quality.json): verdict, the feature space it judged in, what failed, and warnings.

    The space is named because the verdict means little without it: a random-init space is flagged, and a low
    label agreement is said in words even when no threshold asked about it.
    """
    spaces = doc.get("space_info") or [{"name": n, "kind": "?", "description": n} for n in doc.get("spaces", [])]
    where = "; ".join(f"{s['name']} ({s.get('description', s.get('kind', ''))})" for s in spaces) or "no space"
    failed = [c for c in doc.get("checks", []) if not c["passed"]]
    head = (f"Quality gate {job}: the synthetic set ({doc.get('n_synthetic', '?')} images) "
            f"{'passed' if doc.get('verdict') == 'pass' else 'FAILED'} against {doc.get('n_real', '?')} real images, "
            f"judged in {where}.")
    lines = [head]
    if failed:
        lines.append("Failed: " + "; ".join(_check_text(c) for c in failed) + ".")
    if any(s.get("kind") == "random" for s in spaces):
        lines.append("Warning: the gate used a random-init feature space, which follows colour and layout more "
                     "than anatomy; its fidelity numbers are weak evidence either way.")
    agreement = {k: v for k, v in doc.get("metrics", {}).items()
                 if k.startswith("label_agreement_rel") and isinstance(v, float) and v == v}
    low = {k: v for k, v in agreement.items() if v < 0.8}
    if low:
        lines.append("Warning: low label agreement — a classifier trained on real images agrees with the "
                     "conditioned label far less often than it is right on held-out real images ("
                     + ", ".join(f"{k} {v:.2f}" for k, v in low.items()) + "), so labels of this set are unreliable.")
    return lines


def _check_text(check: dict[str, Any]) -> str:
    """'precision_rel_x 0.13 (needs at_least 0.5; synthetic 0.09 vs real pair 0.70)'."""
    text = f"{check['metric']} {check['value']:.3g} (needs {check['bound'].replace('_', ' ')} {check['threshold']:g}"
    real = check.get("real_baseline")
    if isinstance(real, float) and real == real:
        text += f"; synthetic {check['synthetic']:.3g} vs real held-out pair {real:.3g}"
    return text + ")"
