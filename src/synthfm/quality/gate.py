"""The gate: every configured threshold checked against the computed metrics, and a verdict."""

from __future__ import annotations

import math
from typing import Any

from synthfm.errors import SynthfmError
from synthfm.quality.config import GateConfig


def matching(metrics: dict[str, float], key: str) -> list[str]:
    """Metric names a threshold key names: the exact metric, or a family ('FD' -> FD_<space>, ...)."""
    if key in metrics:
        return [key]
    return sorted(m for m in metrics if m.startswith(f"{key}_"))


def evaluate_gate(metrics: dict[str, float], gate: GateConfig) -> list[dict[str, Any]]:
    """One check per (threshold, matching metric): metric, value, bound, threshold, passed."""
    checks = []
    for bound, table in (("at_most", gate.at_most), ("at_least", gate.at_least)):
        for key, limit in table.items():
            names = matching(metrics, key)
            if not names:
                raise SynthfmError(f"gate threshold '{key}' ({bound} {limit}) names no computed metric; computed: "
                                   f"{', '.join(sorted(metrics))}",
                                   "use one of those names (or a family such as FD, KID, precision), or enable the "
                                   "check that computes it")
            for name in names:
                value = metrics[name]
                ok = not math.isnan(value) and (value <= limit if bound == "at_most" else value >= limit)
                checks.append({"metric": name, "value": value, "bound": bound, "threshold": limit, "passed": ok})
    return checks


def verdict(checks: list[dict[str, Any]]) -> str:
    """'pass' when every check passed."""
    return "pass" if all(c["passed"] for c in checks) else "fail"


def describe_failures(checks: list[dict[str, Any]]) -> str:
    """'FD_x = 83.2 > at_most 50; ...' for the failed checks."""
    sign = {"at_most": ">", "at_least": "<"}
    return "; ".join(f"{c['metric']} = {c['value']:.4g} {sign[c['bound']]} {c['bound']} {c['threshold']:g}"
                     for c in checks if not c["passed"])


def gate_error(checks: list[dict[str, Any]], run: str) -> SynthfmError:
    """The error that stops the pipeline when a synthetic set fails its gate."""
    return SynthfmError(f"synthetic set failed the quality gate: {describe_failures(checks)} (details in {run})",
                        "improve or filter the synthetic set (the label-verified card is in filtered/), or change "
                        "the thresholds under gate.at_most / gate.at_least")
