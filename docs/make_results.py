"""Write docs/results.md from finished adaptation experiments (their summary tables), with the commands.

Usage: python docs/make_results.py runs/retinamnist_probe runs/retinamnist_finetune
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from synthfm.report.markdown import markdown_table

DOCS = Path(__file__).resolve().parent
PUBLISHED = """Published reference figures for RetinaMNIST (MedMNIST v2 benchmark, Yang et al., Scientific Data 2023,
test split, 28 px): ResNet-18 AUC 0.717 / ACC 0.524; ResNet-50 AUC 0.726 / ACC 0.528; Google AutoML Vision
AUC 0.750 / ACC 0.531."""


def experiment_section(exp: Path) -> str:
    """The command, the config's key settings and the test/val table of one experiment."""
    header = yaml.safe_load((exp / "config.yaml").read_text())
    cfg = header["config"]
    finished = json.loads((exp / "COMPLETE.json").read_text())["finished"]
    fmt = "%Y-%m-%dT%H:%M:%S%z"
    minutes = (datetime.strptime(finished, fmt) - datetime.strptime(header["created"], fmt)).total_seconds() / 60
    summary = pd.read_parquet(exp / "summary.parquet")
    summary = summary[summary["metric"].isin(["auroc", "accuracy", "kappa_quadratic", "balanced_accuracy"])]
    summary = summary.assign(**{"mean ± 1.96·sd/√n": [f"{m:.3f} ± {m - lo:.3f}" for m, lo in
                                                   zip(summary["mean"], summary["ci_low"], strict=True)],
                                "bootstrap 95% CI": [f"[{a:.3f}, {b:.3f}]" for a, b in
                                                     zip(summary["boot_low"], summary["boot_high"], strict=True)]})
    sets = ["eval_set"] if summary.get("eval_set", pd.Series(dtype=str)).nunique() > 1 else []  # external sets
    cols = [*sets, "split", "fraction", "metric", "n", "mean ± 1.96·sd/√n", "bootstrap 95% CI"]
    table = markdown_table(summary[cols].sort_values([*sets, "split", "fraction", "metric"]).to_dict("records"), cols)
    return (f"## {exp.name}\n\n{cfg['policy']} of `{cfg['encoder']}` on `{cfg['card']}` task `{cfg['task']}`, "
            f"{cfg['epochs']} epochs, image {cfg['image_size']} px, seeds {cfg['seeds']}; wall time "
            f"{minutes:.1f} min on the 2-core CPU machine (synthfm {header['synthfm_version']}, "
            f"commit {header['git_commit'][:8]}).\n\n"
            f"Command: `synthfm adapt configs/experiments/{exp.name}.yaml -o {exp}`\n\n{table}\n")


def main(paths: list[str]) -> None:
    """Write docs/results.md."""
    parts = ["# Results\n", "Written by `python docs/make_results.py " + " ".join(paths) + "` from the experiments' "
             "summary tables, plus the result snippets that benchmark scripts write to docs/bench/*.md (each names its "
             "command); nothing here is typed in by hand except the cited published figures.\n",
             PUBLISHED + "\n"]
    parts += [experiment_section(Path(p)) for p in paths]
    parts += [snippet.read_text() for snippet in sorted((DOCS / "bench").glob("*.md")) if snippet.name != "notes.md"]
    (DOCS / "results.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main(sys.argv[1:])
