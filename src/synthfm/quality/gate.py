"""The gate: every configured threshold checked against the computed metrics, and a verdict.

A threshold key names a metric, or a family: `FD` matches `FD_<space>`, `label_agreement_rel` matches
`label_agreement_rel_<task>`. When the run passes its suffixes (space and task names) a family matches only
`<key>_<suffix>`, so `FD` does not also match `FD_ratio_<space>`.
"""

from __future__ import annotations

import math
from typing import Any

from synthfm.errors import SynthfmError
from synthfm.quality.config import GateConfig

ADVICE = {
    "FD_ratio": "the images are unlike real ones in this space: train the generator longer or larger, or check "
                "its preprocessing against the real card",
    "precision_rel": "many images fall outside the real distribution: train longer, lower the guidance scale or "
                     "sample with more steps",
    "density_rel": "many images fall outside the real distribution: train longer or sample with more steps",
    "coverage_rel": "the set covers little of the real variety (mode collapse): lower the guidance scale, train "
                    "longer, or generate more images",
    "recall_rel": "the set covers little of the real variety: lower the guidance scale or generate more images",
    "label_agreement_rel": "images do not show the label they were generated for: raise the guidance scale, "
                           "train the conditioning longer, or use the label-verified card in filtered/",
    "sharpness_ratio": "the images are blurrier (or noisier) than real ones: train longer, sample with more steps, "
                       "or check the sampler's clipping and guidance",
    "near_copies": "the generator reproduces training images: drop the flagged images (near_copies.csv), train "
                   "for fewer steps or on more images",
}


def matching(metrics: dict[str, float], key: str, suffixes: list[str] | None = None) -> list[str]:
    """Metric names a threshold key names: the exact metric, or a family ('FD' -> FD_<space>, ...)."""
    if key in metrics:
        return [key]
    if suffixes is not None:
        return sorted(f"{key}_{s}" for s in set(suffixes) if f"{key}_{s}" in metrics)
    return sorted(m for m in metrics if m.startswith(f"{key}_"))


def evaluate_gate(metrics: dict[str, float], gate: GateConfig, suffixes: list[str] | None = None,
                  baselines: dict[str, tuple[float, float]] | None = None) -> list[dict[str, Any]]:
    """One check per (threshold, matching metric): metric, value, bound, threshold, passed, and for a relative
    metric its synthetic value and real baseline (`baselines`: metric -> (synthetic, real pair)).

    A default threshold whose family was not computed (its check disabled, no shared task) is skipped; a
    threshold the config names must match a metric.
    """
    checks = []
    baselines = baselines or {}
    for bound, (table, defaults) in gate.bounds().items():
        for key, limit in table.items():
            names = matching(metrics, key, suffixes)
            if not names and key in defaults:
                continue
            if not names:
                raise SynthfmError(f"gate threshold '{key}' ({bound} {limit}) names no computed metric; computed: "
                                   f"{', '.join(sorted(metrics))}",
                                   "use one of those names (or a family such as FD, KID, precision), or enable the "
                                   "check that computes it")
            for name in names:
                value = metrics[name]
                ok = not math.isnan(value) and (value <= limit if bound == "at_most" else value >= limit)
                syn, real = baselines.get(name, (math.nan, math.nan))
                checks.append({"metric": name, "value": value, "bound": bound, "threshold": limit, "passed": ok,
                               "family": key, "synthetic": syn, "real_baseline": real})
    return checks


def verdict(checks: list[dict[str, Any]]) -> str:
    """'pass' when every check passed."""
    return "pass" if all(c["passed"] for c in checks) else "fail"


def describe(check: dict[str, Any]) -> str:
    """'precision_rel_x = 0.13 < at_least 0.5 (synthetic 0.09, real held-out pair 0.7)'."""
    sign = {"at_most": ">", "at_least": "<"}[check["bound"]] if not check["passed"] else "ok,"
    text = f"{check['metric']} = {check['value']:.4g} {sign} {check['bound']} {check['threshold']:g}"
    real = check.get("real_baseline", math.nan)
    if real is not None and not math.isnan(real):
        text += f" (synthetic {check['synthetic']:.4g}, real held-out pair {real:.4g})"
    return text


def describe_failures(checks: list[dict[str, Any]]) -> str:
    """The failed checks, each with its value, bound and real baseline."""
    return "; ".join(describe(c) for c in checks if not c["passed"])


def gate_error(checks: list[dict[str, Any]], run: str) -> SynthfmError:
    """The error that stops the pipeline when a synthetic set fails its gate: what failed and what to do."""
    failed = [c for c in checks if not c["passed"]]
    advice = list(dict.fromkeys(ADVICE[c.get("family", "")] for c in failed if c.get("family", "") in ADVICE))
    return SynthfmError(f"synthetic set failed the quality gate: {describe_failures(checks)} (details in {run})",
                        "; ".join([*advice, "or change the thresholds under gate.at_most / gate.at_least"]))
