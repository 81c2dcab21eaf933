"""The model card of an exported classifier: the encoder card's provenance plus its downstream results.

The shared parts (plain-timm snippet, pretraining provenance, licence table, limits) are
`synthfm.models.modelcard`'s; this module adds what only an adaptation run has: its saved predictions' metrics
with bootstrap 95% CIs and the across-seed and subgroup results of the experiment it belongs to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthfm.evaluate.fairness import bootstrap_auroc
from synthfm.evaluate.metrics import task_metrics
from synthfm.evaluate.predictions import read_predictions
from synthfm.models.modelcard import (
    LIMITS,
    front_matter,
    licence_section,
    pretraining_section,
    pretraining_sources,
    timm_snippet,
)


def bootstrap_ci(task_type: str, y: np.ndarray, p: np.ndarray, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """(value, CI low, CI high) of each metric of a prediction table: AUROC with a percentile 95% CI over
    class-stratified image resamples (evaluate.fairness.bootstrap_auroc, vectorised); other metrics as points
    (NaN bounds), their spread is the across-seed CI of the experiment summary."""
    out = {k: (float(v), float("nan"), float("nan")) for k, v in task_metrics(task_type, y, p).items()}
    if "auroc" in out:
        out["auroc"] = (out["auroc"][0], *bootstrap_auroc(y, p, n_boot, seed))
    return out


def metrics_section(run_dir: Path, task_type: str, splits: list[str], n_boot: int = 1000) -> list[str]:
    """Markdown table of a run's saved predictions: every metric, AUROC with a bootstrap 95% CI."""
    lines = ["## Downstream results", "",
             f"This run's saved predictions (`{run_dir}`): AUROC with a percentile 95% CI over {n_boot} "
             "class-stratified resamples of the images; the other metrics as measured (their across-seed CIs "
             "follow when the experiment has several seeds).", "",
             "| split | images | metric | value | 95% CI |", "| --- | --- | --- | --- | --- |"]
    for split in splits:
        path = run_dir / f"predictions_{split}.parquet"
        if not path.is_file():
            continue
        _, y, p = read_predictions(path)
        for name, (v, lo, hi) in bootstrap_ci(task_type, y, p, n_boot).items():
            ci = f"{lo:.4f} – {hi:.4f}" if np.isfinite(lo) else ""
            lines.append(f"| {split} | {len(y)} | {name} | {v:.4f} | {ci} |")
    return [*lines, ""]


def experiment_section(exp_dir: Path) -> list[str]:
    """Across-seed summary (mean and 95% CIs) and subgroup results of the experiment a run belongs to, if any."""
    lines: list[str] = []
    summary = exp_dir / "summary.csv"
    if summary.is_file():
        df = pd.read_csv(summary)
        lines += ["### Across seeds", "", f"From `{summary}` (mean over seeds; CI = mean ± 1.96·sd/√n).", "",
                  "| fraction | eval set | split | metric | seeds | mean | 95% CI |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r.fraction:g} | {r.eval_set} | {r.split} | {r.metric} | {r.n} | {r.mean:.4f} | "
                  f"{r.ci_low:.4f} – {r.ci_high:.4f} |" for r in df.itertuples()]
        lines.append("")
    subgroups = exp_dir / "fairness" / "subgroup_summary.csv"
    if subgroups.is_file():
        df = pd.read_csv(subgroups)
        df = df[(df["metric"] == "auroc") | df["too_small"]] if "metric" in df else df  # too small: no metric
        lines += ["### Subgroups", "", f"From `{subgroups}` (AUROC; groups below the size floor are marked).", "",
                  "| fraction | split | attribute | group | images | AUROC mean | 95% CI |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in df.itertuples():
            value = "too small" if r.too_small else f"{r.mean:.4f}"
            ci = "" if r.too_small else f"{r.ci_low:.4f} – {r.ci_high:.4f}"
            lines.append(f"| {r.fraction:g} | {r.split} | {r.attribute} | {r.group} | {r.images} | {value} | {ci} |")
        lines.append("")
    else:
        lines += ["Subgroup results: not computed (run `synthfm evaluate` on the experiment to add them).", ""]
    return lines


def classifier_card(info: dict[str, Any], run_dir: Path, encoder_config: dict[str, Any] | None,
                    card_fields: tuple[str, str, str]) -> str:
    """README.md of an exported classifier (`info` is its config.json); metrics from its adaptation run."""
    task = info["task"]
    records, _ = pretraining_sources(encoder_config or {})
    name, licence, citation = card_fields
    onnx = info.get("onnx")
    lines = [*front_matter([licence, *(r.licence for r in records)], "image-classification", info["modality"]),
             f"# {task['name']} classifier ({info['name']}, {info['policy']})", "",
             "## What it is", "",
             f"A {task['type']} classifier of `{task['name']}` (classes: {', '.join(task['classes'])}) on "
             f"{info['modality']} images at {info['image_size']} px, {info['in_chans']} channel(s): timm "
             f"`{info['architecture']}` with a {info['num_classes']}-output head, adapted by {info['policy']} on "
             f"card `{name}` (label fraction {info['label_fraction']:g}, seed {info['seed']}) from encoder "
             f"`{info['encoder']}`. Outputs are logits: "
             + ("sigmoid gives P(" + task["classes"][1] + ")." if task["type"] == "binary" else
                "sigmoid per class." if task["type"] == "multilabel" else "softmax over the classes.")
             + f" Inputs: the modality's normalisation (mean {info['mean']}, std {info['std']})"
             + (f" after `synthfm data prepare` ({info['prepare']})." if info.get("prepare") else "."), "",
             "## Load it", "", "```python", timm_snippet(info["architecture"], info["model_args"]), "```", "",
             "or `synthfm predict THIS_FOLDER IMAGES -o OUT` (same preprocessing as in training).", "",
             *([f"ONNX: `model.onnx` (opset {onnx['opset']}); on a batch of {onnx['batch']} its outputs match "
                f"PyTorch within {onnx['max_abs_diff']:.2e} (tolerance {onnx['atol']:g}, checked with "
                f"{onnx['checked_with']}).", ""] if onnx else []),
             *metrics_section(run_dir, task["type"], info.get("test_splits", ["test"])),
             *experiment_section(run_dir.parent.parent),
             *pretraining_section(encoder_config or {}), *LIMITS,
             *licence_section(records, {f"{name} (downstream)": (licence, citation)})]
    return "\n".join(lines)
