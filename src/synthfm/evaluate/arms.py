"""Many arms, one table: mean ± CI per arm and label fraction, t-tests against baseline arms, labels to match.

An *arm* is one adaptation experiment (one pretraining recipe, adapted over label fractions x seeds). The
headline experiment compares several arms at once, so its tests are one family: every arm against every
baseline arm (e.g. random init and real-only SSL) at every label fraction, paired by seed (by CV fold, with the
Nadeau-Bengio corrected test, when the arms were cross-validated), and Holm's
correction runs across that whole family for each metric, not within each pair. "Labels to match" reads
off each arm's mean curve the label fraction at which it reaches the reference arm's mean at 100% labels.

A linear probe experiment that scored every pooling (evaluate/probes.py) enters with the pooling whose mean
validation AUROC over its runs is best, chosen here from its `probes` table's validation rows only (never from
test rows); the `pooling` table reports that choice and every readout's numbers (linear and k-NN per pooling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from synthfm.errors import SynthfmError
from synthfm.evaluate.checks import chance_table, falling_curves
from synthfm.evaluate.efficiency import labels_needed
from synthfm.evaluate.probes import choose_pool, headline_rows, read_probes
from synthfm.evaluate.results import INTERNAL, compare, load_results, summary_table
from synthfm.evaluate.stats import holm

ARM = "arm"


def arm_results(arms: Mapping[str, object]) -> pd.DataFrame:
    """Tidy results of every arm, with the arm's display name in `arm` (and `experiment`, for the curve code)."""
    if len(arms) < 2:
        raise SynthfmError(f"an arms comparison needs at least two arms, got {list(arms)}",
                           "name every arm, baselines included, under 'arms'")
    parts = [_arm_rows(path).assign(arm=name, experiment=name) for name, path in arms.items()]
    return pd.concat(parts, ignore_index=True)


def _probes(source: object) -> tuple[pd.DataFrame, str] | None:
    """The probes table of an arm given as one experiment directory (None otherwise, or without probes)."""
    return read_probes(source) if isinstance(source, (str, Path)) and Path(source).is_dir() else None


def _arm_rows(source: object) -> pd.DataFrame:
    """An arm's results; with probes, its internal rows are the linear probe on the validation-chosen pooling."""
    results, found = load_results(source), _probes(source)
    if found is None:
        return results
    probes, val_split = found
    head = headline_rows(probes, choose_pool(probes, val_split))
    keys = [c for c in ("fraction", "seed", "repeat", "fold", "split") if c in head and c in results]
    extra = [c for c in ("n_train", "n_test", "majority_rate") if c in results and c not in head]
    if extra:  # the run's fold sizes (corrected test) and majority-class rate (chance check) ride along
        head = head.merge(results[keys + extra].drop_duplicates(keys), on=keys, how="left")
    return pd.concat([head, results[results.get("eval_set", INTERNAL) != INTERNAL]], ignore_index=True)


def arm_pooling(arms: Mapping[str, object], metrics: Sequence[str]) -> pd.DataFrame:
    """Per arm with probes: every readout x pooling x fraction x split x metric (mean ± CI over seeds), with the
    validation mean AUROC the pooling was chosen by and whether it was chosen."""
    parts = []
    for name, source in arms.items():
        found = _probes(source)
        if found is None:
            continue
        probes, val_split = found
        choice = choose_pool(probes, val_split).rename(columns={"mean": "selection_mean", "split": "selection_split",
                                                                "metric": "selection_metric", "n": "selection_n"})
        table = summary_table(probes[probes["metric"].isin(metrics)],
                              by=["readout", "pool", "fraction", "split", "metric"])
        table = table.merge(choice.drop(columns="experiment"), on=["readout", "pool"], how="left")
        parts.append(table.assign(arm=name, chosen=table["chosen"].fillna(False).astype(bool)))
    if not parts:
        return pd.DataFrame(columns=[ARM, "readout", "pool", "fraction", "split", "metric", "chosen"])
    out = pd.concat(parts, ignore_index=True)
    return out[[ARM, *[c for c in out.columns if c != ARM]]]


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
    """The tables of a many-arm comparison: summary, tests, match, pooling (arms with probes), and the limits
    (chance level, falling curves)."""
    _check_names(list(arms), baselines, "baselines")
    _check_names(list(arms), [reference], "reference")
    results = arm_results(arms)
    summary = arm_summary(results, metrics, split)
    return {"summary": summary, "tests": arm_tests(results, baselines, metrics, split),
            "match": arm_match(results, reference, metrics, split), "pooling": arm_pooling(arms, metrics),
            "chance": chance_table(results, [ARM], split), "falls": falling_curves(summary, [ARM])}
