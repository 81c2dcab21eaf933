"""`synthfm report RUN_ROOT`: one self-contained HTML file over a pipeline run (images embedded).

The report reads `RUN_ROOT/pipeline.json` (written by `synthfm run`) and each job's outputs. A section is a
function from the run to a list of HTML blocks; stages that are not in the pipeline get a line saying so,
never an empty table.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import yaml

from synthfm import __version__
from synthfm.analyze.jobs import STUDY_FILE
from synthfm.errors import SynthfmError
from synthfm.evaluate.results import (
    ARMS_FILE,
    COMPARISON_FILE,
    GAP_SUMMARY,
    LABEL_CURVE,
    LABELS_NEEDED,
    SUBGROUP_SUMMARY,
    TRAINING_CURVE,
)
from synthfm.io import atomic_write_text
from synthfm.jobs import PLAN_FILE
from synthfm.models.modelcard import GATE_FILE
from synthfm.report import figures
from synthfm.report.verdict import arms_verdict, chance_lines, fall_lines, gate_lines, verdict

TESTS_CAPTION = "paired t-tests by seed, or Nadeau-Bengio corrected resampled t-tests over CV folds (column test)"
POWER_CAPTION = "detectable_diff: the smallest difference detectable at 80% power (two-sided alpha 0.05)"


@dataclass
class Run:
    """A finished (or partly finished) pipeline run as the report sees it."""

    root: Path
    plan: dict[str, Any]
    grid: int = 8
    jobs: list[dict[str, Any]] = field(default_factory=list)

    @cached_property
    def adapt_summaries(self) -> pd.DataFrame:
        """Summary rows (mean, CI) of every adaptation job, with the job name as `model` (read once)."""
        from synthfm.evaluate.results import load_results, summary_table

        parts = [summary_table(load_results(j["dir"])).assign(model=j["name"]) for j in self.stage("adapt")]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def stage(self, stage: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Finished jobs of one stage (optionally one kind)."""
        return [j for j in self.jobs if j["stage"] == stage and (kind is None or j["kind"] == kind)
                and j["status"] in ("ran", "cached")]


@dataclass
class Section:
    """A titled part of the report: HTML blocks, or a note why it is empty."""

    id: str
    title: str
    blocks: list[str]


def esc(text: Any) -> str:
    """HTML-escape any value."""
    return html.escape(str(text))


def para(text: str) -> str:
    """A paragraph of escaped text."""
    return f"<p>{esc(text)}</p>"


def image(uri: str, alt: str) -> str:
    """An embedded image."""
    return f'<figure><img src="{uri}" alt="{esc(alt)}"><figcaption>{esc(alt)}</figcaption></figure>'


def table(df: pd.DataFrame, caption: str = "", digits: int = 3) -> str:
    """A DataFrame as an escaped HTML table."""
    shown = df.copy()
    for col in shown.select_dtypes(include="float").columns:
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.{digits}f}")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    body = shown.to_html(index=False, escape=True, border=0, classes="t")
    return re.sub(r"<table[^>]*>", f'<table class="t">{cap}', body, count=1)


def not_run(stage: str) -> list[str]:
    """The line for a stage the pipeline did not include."""
    return [para(f"This pipeline did not run the {stage} stage.")]


# ---- sections -----------------------------------------------------------------------------------------------

def summary_section(run: Run) -> Section:
    """Every job: status, time, folder; and the pipeline file."""
    rows = pd.DataFrame([{"job": f"{j['stage']}.{j['name']}", "kind": j["kind"], "status": j["status"],
                          "seconds": j.get("seconds"), "folder": Path(j["dir"]).name} for j in run.plan["jobs"]])
    spec = yaml.safe_dump(run.plan.get("spec", {}), sort_keys=False)
    return Section("summary", "Run summary", [
        para(f"Pipeline '{run.plan['name']}' from {run.plan.get('source')}, started {run.plan.get('started')}, "
             f"synthfm {run.plan.get('synthfm_version')} at commit {str(run.plan.get('git_commit'))[:12]}."),
        table(rows, digits=1),
        f"<details><summary>pipeline file</summary><pre>{esc(spec)}</pre></details>"])


def _card_images(card: str, n: int) -> tuple[list[np.ndarray], list[str], dict[str, Any]]:
    """The first n images of a card (spread over splits), captions from its first task, and its facts."""
    from synthfm.data.manifest import load_card
    from synthfm.data.readers import open_dataset, split_counts

    data = load_card(card, check_files=False)
    ds = open_dataset(data, None, transform=lambda a: a)
    task = data.card.tasks[0] if data.card.tasks else None
    imgs, caps = [], []
    for k, item in enumerate(iter(ds)):
        if k >= n:
            break
        imgs.append(np.asarray(item["image"]))
        caps.append(f"{task.name}={task.classes[int(item['labels'][task.name])]}"
                    if task and task.classes and item["labels"][task.name].ndim == 0 else "")
    facts = {"name": data.card.name, "modality": data.card.modality, "kind": data.card.provenance.kind,
             "rows": len(data), "splits": split_counts(data)}
    return imgs, caps, facts


def data_section(run: Run) -> Section:
    """Each card the pipeline made or read: real or synthetic, counts, a sample grid."""
    blocks = []
    for j in run.stage("data") + run.stage("synth"):
        if not str(j["output"]).endswith(".yaml"):
            continue
        imgs, caps, facts = _card_images(j["output"], run.grid)
        blocks.append(f"<h3>{esc(j['stage'])}.{esc(j['name'])}: {esc(facts['kind'])} "
                      f"{esc(facts['modality'])} card '{esc(facts['name'])}'</h3>")
        blocks.append(para(f"{facts['rows']} images; per split {facts['splits']}."))
        if imgs:
            blocks.append(image(figures.image_grid(imgs, caps, f"{facts['kind']}: {facts['name']}"),
                                f"{facts['kind']} samples from {j['name']}"))
    return Section("data", "Data: real and synthetic samples", blocks or not_run("data"))


def pretrain_section(run: Run) -> Section:
    """Loss curves of each pretraining job, stages coloured."""
    blocks = []
    for j in run.stage("pretrain"):
        path = Path(j["dir"]) / "metrics.jsonl"
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        df = pd.DataFrame([r for r in recs if "loss" in r])
        if df.empty:
            blocks.append(para(f"pretrain.{j['name']}: no loss was logged."))
            continue
        cfg = j["config"]
        blocks.append(image(figures.loss_curves(df, f"pretrain.{j['name']}: {cfg.get('objective')} "
                                                    f"{cfg.get('backbone')}"), f"loss of pretrain.{j['name']}"))
        last = df.groupby("stage", sort=False).tail(1)[["stage", "global_step", "loss", "images_per_s"]]
        blocks.append(table(last, f"last logged step of each curriculum stage of {j['name']}"))
    return Section("pretrain", "Pretraining", blocks or not_run("pretrain"))


def downstream_section(run: Run) -> Section:
    """Mean ± 95% CI per adaptation job and label fraction, then the A-vs-B tests."""
    summ = run.adapt_summaries
    if summ.empty:
        return Section("downstream", "Downstream results", not_run("adapt"))
    keep = summ[summ["metric"].isin(["auroc", "auprc", "balanced_accuracy", "kappa", "accuracy"])]
    cols = ["model", "dataset", "task", "policy", "fraction", "eval_set", "split", "metric", "n", "mean", "ci_low",
            "ci_high", "boot_low", "boot_high"]
    blocks = [table(keep[[c for c in cols if c in keep]], "mean over seeds with the 95% CI (1.96·sd/√n) and "
                                                          "a bootstrap CI")]
    for j in run.stage("evaluate", "compare"):
        comp = json.loads((Path(j["dir"]) / COMPARISON_FILE).read_text())
        df = pd.DataFrame(comp["rows"])
        blocks.append(table(df, f"{j['name']}: {comp['label_a'] or comp['a']} vs {comp['label_b'] or comp['b']} "
                                f"({comp['split']} {comp['metric']}; {TESTS_CAPTION}, Holm across rows; "
                                f"{POWER_CAPTION})"))
    return Section("downstream", "Downstream results", blocks + arms_blocks(run))


def arms_blocks(run: Run) -> list[str]:
    """Each many-arm comparison: per-arm curves with CI bands, the mean ± CI table, the tests, labels to match."""
    blocks = []
    for j in run.stage("evaluate", "arms"):
        doc = json.loads((Path(j["dir"]) / ARMS_FILE).read_text())
        title = doc.get("title") or j["name"]
        summ, tests = pd.DataFrame(doc["summary"]), pd.DataFrame(doc["tests"])
        blocks.append(f"<h3>{esc(title)}</h3>")
        for metric, g in summ.groupby("metric", sort=False):
            blocks.append(image(figures.efficiency_curves(g.rename(columns={"arm": "model"}), title,
                                                          f"{doc['split']} {metric}"), f"{title}: {metric} per arm"))
        blocks.append(table(summ[["metric", "arm", "fraction", "n", "mean", "ci_low", "ci_high"]],
                            f"{title}: mean over seeds with the 95% CI (1.96·sd/√n)"))
        cols = ["metric", "arm", "baseline", "fraction", "n", "mean_diff", "diff_ci_low", "diff_ci_high", "t", "p",
                "p_holm", "significant", "test", "detectable_diff"]  # CI and test columns absent from older arms.json
        blocks.append(table(tests[[c for c in cols if c in tests]],
                            f"{title}: {TESTS_CAPTION}, Holm per metric; {POWER_CAPTION}"))
        blocks.append(table(pd.DataFrame(doc["match"])[["metric", "arm", "reference", "target", "note"]],
                            f"{title}: labels needed to match {doc['reference']} at 100%"))
    return blocks


def _internal(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the internal test set (tables without external sets have no eval_set column)."""
    return df[df["eval_set"] == "internal"] if "eval_set" in df else df


def efficiency_section(run: Run) -> Section:
    """Label-efficiency curves with CI bands, and the labels each model needs to match the reference."""
    blocks = []
    for j in run.stage("evaluate", "efficiency"):
        curve = pd.read_csv(Path(j["dir"]) / f"{LABEL_CURVE}.csv").rename(columns={"experiment": "model"})
        needed = pd.read_csv(Path(j["dir"]) / f"{LABELS_NEEDED}.csv")
        blocks.append(image(figures.efficiency_curves(curve, f"evaluate.{j['name']}", f"test {curve['metric'].iat[0]}"),
                            f"label efficiency: {j['name']}"))
        blocks.append(table(needed[["experiment", "reference", "target", "fraction_needed", "note"]],
                            "fraction of labels each model needs to match the reference at its largest fraction"))
    summ = run.adapt_summaries
    if not blocks and not summ.empty and summ["fraction"].nunique() > 1:
        test = _internal(summ[(summ["metric"] == "auroc") & (summ["split"] == "test")])
        blocks = [image(figures.efficiency_curves(g, f"{ds} {task}", "test AUROC"), f"label efficiency on {ds} {task}")
                  for (ds, task), g in test.groupby(["dataset", "task"])]
    return Section("efficiency", "Label efficiency", blocks or [para("No adaptation job ran at more than one label "
                                                                     "fraction.")])


def fairness_section(run: Run) -> Section:
    """Subgroup AUROC with CIs per attribute and the gap figures, from saved predictions."""
    blocks = []
    for j in run.stage("evaluate", "fairness"):
        summ = _internal(pd.read_csv(Path(j["dir"]) / f"{SUBGROUP_SUMMARY}.csv"))
        gaps = pd.read_csv(Path(j["dir"]) / f"{GAP_SUMMARY}.csv")
        if summ.empty:
            blocks.append(para(f"evaluate.{j['name']}: the predictions carry no subgroup metadata."))
            continue
        top = summ[(summ["metric"] == j["config"]["metric"]) & (summ["split"] == "test")]
        top = top[top["fraction"] == top["fraction"].max()]
        blocks.append(image(figures.subgroup_bars(top, f"evaluate.{j['name']}: test {j['config']['metric']} "
                                                       "per subgroup (95% CI over seeds)"),
                            f"subgroups of {j['config']['experiment']}"))
        cols = ["attribute", "metric", "fraction", "n", "mean", "ci_low", "ci_high"]
        blocks.append(table(_internal(gaps)[[c for c in cols if c in gaps]], "gaps: largest minus smallest subgroup "
                                                                            "AUROC, and equalised-odds difference"))
    return Section("fairness", "Fairness per subgroup", blocks or not_run("fairness evaluation"))


def training_section(run: Run) -> Section:
    """Downstream score against the pretraining checkpoint it started from."""
    blocks = []
    for j in run.stage("evaluate", "checkpoints"):
        curve = _internal(pd.read_csv(Path(j["dir"]) / f"{TRAINING_CURVE}.csv"))
        test = curve[(curve["metric"] == "auroc") & (curve["split"] == "test")]
        test = test[test["fraction"] == test["fraction"].max()]
        blocks.append(image(figures.step_curve(test, f"evaluate.{j['name']}", "test AUROC"),
                            f"training-time efficiency: {j['name']}"))
    return Section("training", "Training-time efficiency", blocks or not_run("checkpoint evaluation"))


def artefact_section(stage: str, title: str) -> Callable[[Run], Section]:
    """A section that shows a stage's figures and small tables as its jobs wrote them."""

    def build(run: Run) -> Section:
        """Embed each job's PNGs and small CSV tables."""
        blocks = []
        for j in run.stage(stage):
            blocks.append(f"<h3>{esc(stage)}.{esc(j['name'])}</h3>")
            for png in sorted(Path(j["dir"]).glob("*.png"))[:12]:
                blocks.append(image(figures.png_uri(png.read_bytes()), f"{j['name']}: {png.stem}"))
            for csv in sorted(Path(j["dir"]).glob("*.csv"))[:6]:
                df = pd.read_csv(csv) if csv.stat().st_size > 1 else pd.DataFrame()
                if df.empty:
                    blocks.append(para(f"{j['name']}: {csv.name} is empty."))
                    continue
                if df.shape[1] > 16:  # per-image tables are for download, not for the page
                    blocks.append(para(f"{j['name']}: {csv.name} ({len(df)} rows x {df.shape[1]} columns) "
                                       f"in {j['dir']}"))
                    continue
                blocks.append(table(df.head(30), f"{j['name']}: {csv.stem}" + (" (first 30 rows)" if len(df) > 30
                                                                               else "")))
        return Section(stage, title, blocks or not_run(stage))

    return build


def limit_lines(run: Run) -> list[str]:
    """Adaptation jobs at chance level and label curves that fall (an arms job says this for its own arms)."""
    if run.stage("evaluate", "arms") or not run.stage("adapt"):
        return []
    from synthfm.evaluate.checks import chance_table, falling_curves
    from synthfm.evaluate.results import load_results

    results = pd.concat([load_results(j["dir"]).assign(model=j["name"]) for j in run.stage("adapt")],
                        ignore_index=True)
    summ = _internal(run.adapt_summaries)
    summ = summ[(summ["split"] == "test") & summ["metric"].isin(["auroc", "accuracy"])]
    return (chance_lines(chance_table(results, ["model"]).to_dict("records"), "model")
            + fall_lines(falling_curves(summ, ["model"]).to_dict("records"), "model"))


def verdict_lines(run: Run) -> list[str]:
    """Verdict sentences from every comparison job."""
    comps = []
    for j in run.stage("evaluate", "compare"):
        comp = json.loads((Path(j["dir"]) / COMPARISON_FILE).read_text())
        comp["label_a"] = comp["label_a"] or j["config"]["a"]
        comp["label_b"] = comp["label_b"] or j["config"]["b"]
        comps.append(comp)
    lines = [line for j in run.stage("evaluate", "arms")
             for line in arms_verdict(json.loads((Path(j["dir"]) / ARMS_FILE).read_text()))]
    lines += [line for j in run.stage("analyze", "vessel_study")  # the study writes its own sentences
              for line in json.loads((Path(j["dir"]) / STUDY_FILE).read_text())["verdict"]]
    lines = lines + verdict(comps) if comps or not lines else lines
    lines += limit_lines(run)
    gates = [j for j in run.jobs if j["stage"] == "quality" and (Path(j["dir"]) / GATE_FILE).is_file()]
    return lines + [line for j in gates  # a gate that stopped the run still says why
                    for line in gate_lines(f"quality.{j['name']}", json.loads((Path(j["dir"]) / GATE_FILE)
                                                                                .read_text()))]


SECTIONS: list[Callable[[Run], Section]] = [
    summary_section, data_section, artefact_section("quality", "Quality and privacy gate"), pretrain_section,
    downstream_section, efficiency_section, fairness_section, training_section,
    artefact_section("analyze", "Analysis: morphology, latent maps, Grad-CAM"),
]


def load_run(root: str | Path, grid: int = 8) -> Run:
    """Read a pipeline run's plan."""
    root = Path(root)
    plan_file = root / PLAN_FILE
    if not plan_file.is_file():
        raise SynthfmError(f"{root} is not a pipeline run (no pipeline.json)",
                           "point at the folder `synthfm run` wrote (its root, e.g. runs/demo)")
    plan = json.loads(plan_file.read_text())
    return Run(root, plan, grid, [j for j in plan["jobs"] if j["stage"] != "report"])


def render_report(root: str | Path, out: str | Path | None = None, title: str | None = None, grid: int = 8) -> Path:
    """Write the self-contained HTML report of a pipeline run; return its path."""
    run = load_run(root, grid)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(resources.files("synthfm.report") / "templates")),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    page = env.get_template("report.html.j2").render(
        title=title or f"synthfm report: {run.plan['name']}", description=run.plan.get("description", ""),
        generated=time.strftime("%Y-%m-%d %H:%M"), version=__version__, verdict=verdict_lines(run),
        sections=[s(run) for s in SECTIONS])
    out = Path(out or Path(root) / "report.html")
    atomic_write_text(out, page)
    return out
