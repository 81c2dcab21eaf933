"""Pipeline job kinds of the evaluate stage: comparisons, fairness, label efficiency, many arms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from synthfm.config import StrictModel, check_block, validate_config
from synthfm.evaluate.results import (
    ARMS_FILE,
    COMPARISON_FILE,
    GAP_SUMMARY,
    LABEL_CURVE,
    LABELS_NEEDED,
    SUBGROUP_SUMMARY,
)
from synthfm.io import atomic_write_json, write_table_pair
from synthfm.jobs import JobKinds, Kind, model_kind


class CompareJob(StrictModel):
    """Paired (by seed) t-tests of adaptation experiment A vs B per label fraction, Holm-corrected."""

    a: str = Field(description="experiment A, usually ${adapt.<job>}")
    b: str = Field(description="experiment B (the baseline)")
    metric: str = "auroc"
    split: str = "test"
    label_a: str | None = Field(None, description="name of A in tables and the verdict (default: job name)")
    label_b: str | None = None

def _compare_run(cfg: CompareJob, out: Path) -> dict[str, Any]:
    """Write the comparison table (CSV + JSON records)."""
    from synthfm.evaluate.results import compare
    from synthfm.io import atomic_path

    table = compare(cfg.a, cfg.b, metric=cfg.metric, split=cfg.split)
    with atomic_path(out / "comparison.csv", ".csv") as tmp:
        table.to_csv(tmp, index=False)
    records = json.loads(table.to_json(orient="records"))
    atomic_write_json(out / COMPARISON_FILE, {"a": cfg.a, "b": cfg.b, "label_a": cfg.label_a,
                                                "label_b": cfg.label_b, "metric": cfg.metric,
                                                "split": cfg.split, "rows": records})
    return {"rows": len(records)}

class FairnessJob(StrictModel):
    """Subgroup tables and gaps from an adaptation experiment's saved predictions (`synthfm evaluate`)."""

    experiment: str = Field(description="adaptation experiment, usually ${adapt.<job>}")
    fairness: dict[str, Any] = Field(default_factory=dict, description="FairnessConfig keys (attributes, min_n...)")
    metric: str = "auroc"

    @field_validator("fairness")
    @classmethod
    def _fairness_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """FairnessConfig keys, checked when the pipeline is planned."""
        from synthfm.evaluate.fairness import FairnessConfig

        return check_block(FairnessConfig, value)

def _fairness_run(cfg: FairnessJob, out: Path) -> dict[str, Any]:
    """Compute the tables (written beside the experiment too) and keep copies in the job folder."""
    from synthfm.evaluate.experiment import evaluate_experiment
    from synthfm.evaluate.fairness import FairnessConfig

    tables = evaluate_experiment(cfg.experiment, validate_config(FairnessConfig, cfg.fairness, "fairness"),
                                 cfg.metric)
    for name in (SUBGROUP_SUMMARY, GAP_SUMMARY):
        write_table_pair(tables[name], out / name)
    return {"subgroups": int(tables[SUBGROUP_SUMMARY].shape[0])}

class EfficiencyJob(StrictModel):
    """Label-efficiency curves of several experiments and the label fraction each needs to match a reference."""

    models: dict[str, str] = Field(description="display name -> adaptation experiment (${adapt.<job>})")
    reference: str = Field(description="the display name whose score at its largest fraction is the target")
    metric: str = "auroc"
    split: str = "test"

def _efficiency_run(cfg: EfficiencyJob, out: Path) -> dict[str, Any]:
    """Write label_curve and labels_needed tables."""
    import pandas as pd

    from synthfm.evaluate.efficiency import label_curve, labels_needed
    from synthfm.evaluate.results import load_results

    results = pd.concat([load_results(path).assign(experiment=name) for name, path in cfg.models.items()])
    needed = labels_needed(results, cfg.reference, cfg.metric, cfg.split)
    write_table_pair(label_curve(results, cfg.metric, cfg.split), out / LABEL_CURVE)
    write_table_pair(needed, out / LABELS_NEEDED)
    return {row["experiment"]: row["note"] for row in needed.to_dict("records")}

class ArmsJob(StrictModel):
    """Many arms at once: mean ± CI per arm and fraction, t-tests vs baselines (one Holm family), labels to match."""

    arms: dict[str, str] = Field(description="display name -> adaptation experiment (${adapt.<job>}), in table order")
    baselines: list[str] = Field(min_length=1, description="arms every other arm is tested against")
    reference: str = Field(description="the arm whose mean at 100% labels the others must match")
    metrics: list[str] = Field(default_factory=lambda: ["auroc", "accuracy"], min_length=1)
    split: str = "test"
    title: str | None = Field(None, description="what the arms share, e.g. 'linear probe, RetinaMNIST DR grade'")
    controls: list[str] = Field(default_factory=list, description="arms without pretraining (raw pixels, a CNN from "
                                "scratch): tested like baselines; the verdict says if any pretrained arm beats each")
    omit_when_default: ClassVar[tuple[str, ...]] = ("controls",)

    @model_validator(mode="after")
    def _controls_are_arms(self) -> ArmsJob:
        """Each control is one of the arms (checked when the pipeline is planned, before anything runs)."""
        missing = [c for c in self.controls if c not in self.arms]
        if missing:
            raise ValueError(f"'controls' names {missing}, which are not arms; use names from {list(self.arms)}")
        return self

def _arms_run(cfg: ArmsJob, out: Path) -> dict[str, Any]:
    """Write arms_summary, arms_tests, arms_match (CSV + Parquet) and arms.json for the report."""
    from synthfm.evaluate.arms import arm_tables

    tables = arm_tables(cfg.arms, [*cfg.baselines, *cfg.controls], cfg.reference, cfg.metrics, cfg.split)
    for name, df in tables.items():
        write_table_pair(df, out / f"arms_{name}")
    doc = {**cfg.model_dump(), **{name: json.loads(df.to_json(orient="records")) for name, df in tables.items()}}
    atomic_write_json(out / ARMS_FILE, doc)
    return {"tests": len(doc["tests"]), "significant": sum(bool(r["significant"]) for r in doc["tests"])}


JOB_KINDS: JobKinds = {"evaluate": {
    "compare": Kind(model_kind(CompareJob), _compare_run, help="paired t-tests A vs B, Holm"),
    "fairness": Kind(model_kind(FairnessJob), _fairness_run, lambda cfg, d: d, lambda cfg: [cfg.experiment],
                     help="subgroup metrics and gaps from saved predictions"),
    "efficiency": Kind(model_kind(EfficiencyJob), _efficiency_run, inputs=lambda cfg: list(cfg.models.values()),
                       help="label-efficiency curves, labels needed to match a reference"),
    "arms": Kind(model_kind(ArmsJob), _arms_run, inputs=lambda cfg: list(cfg.arms.values()),
                 help="many arms: mean ± CI, t-tests vs baselines (Holm over all), labels to match"),
}}
