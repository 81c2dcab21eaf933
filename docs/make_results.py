"""Write docs/results.md from finished runs, with the commands that made them.

Usage: python docs/make_results.py runs/retinamnist_headline [runs/chase_vessels ...]
(rewrites the sections of the runs given and keeps every other section of docs/results.md as it is)

A pipeline root (it holds pipeline.json, written by `synthfm run`) becomes a headline section: the plain
verdict, per many-arm comparison (`arms` evaluate jobs) the mean ± 95% CI of every arm at every label
fraction, the paired tests against the baseline arms (Holm over the family), the label fraction each arm needs
to match the reference at 100%, our 100%-label scores beside the cited published figures, and the time every
job took. An adaptation experiment folder becomes a table of its summary.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from synthfm.analyze.jobs import STUDY_FILE
from synthfm.evaluate.results import ARMS_FILE
from synthfm.jobs import PLAN_FILE
from synthfm.models.modelcard import GATE_FILE
from synthfm.report.markdown import markdown_table
from synthfm.report.verdict import arms_verdict

DOCS = Path(__file__).resolve().parent
PUBLISHED = """Published reference figures for RetinaMNIST (MedMNIST v2 benchmark, Yang et al., Scientific Data 2023,
test split, 28 px): ResNet-18 AUC 0.717 / ACC 0.524; ResNet-50 AUC 0.726 / ACC 0.528; Google AutoML Vision
AUC 0.750 / ACC 0.531."""
MEDMNIST = "MedMNIST v2 (Yang et al., Scientific Data 2023), RetinaMNIST test split, 28 px"
MEDMNIST_PLUS = ("MedMNIST+ (Doerrich et al. 2024, Rethinking model prototyping through the MedMNIST+ dataset "
                 "collection), RetinaMNIST at 28 px, best per metric")
PUBLISHED_ROWS = {  # the only figures typed in by hand: cited, not measured here; keyed by the card's name
    "retinamnist": [
        {"model": "ResNet-18 (28 px)", "AUROC": "0.717", "accuracy": "0.524", "source": MEDMNIST},
        {"model": "ResNet-50 (28 px)", "AUROC": "0.726", "accuracy": "0.528", "source": MEDMNIST},
        {"model": "Google AutoML Vision", "AUROC": "0.750", "accuracy": "0.531", "source": MEDMNIST},
        {"model": "VGG16, end-to-end (28 px)", "AUROC": "0.754", "accuracy": "", "source": MEDMNIST_PLUS},
        {"model": "ViT-B/16, linear probe (28 px)", "AUROC": "", "accuracy": "0.543", "source": MEDMNIST_PLUS},
    ],
}


def ci(mean: float, low: float) -> str:
    """'mean ± half-width'."""
    return f"{mean:.3f} ± {mean - low:.3f}"


def num(value: float | None, fmt: str) -> str:
    """A number for a table; 'n/a' where no test ran (None or NaN)."""
    return "n/a" if value is None or value != value else format(value, fmt)


def arms_tables(doc: dict) -> str:
    """One arms job as markdown: mean ± CI per arm and fraction, tests, labels to match."""
    summ = pd.DataFrame(doc["summary"])
    parts = []
    tests = pd.DataFrame(doc["tests"])
    cv = "test" in tests and (tests["test"] == "corrected resampled t").any()
    unit = "runs (CV folds x repeats x seeds; the interval ignores their overlap, read the corrected tests)" if cv \
        else "seeds"
    for metric in doc["metrics"]:
        m = summ[summ["metric"] == metric]
        fractions = sorted(m["fraction"].unique())
        rows = [{"arm": arm, **{f"{100 * f:g}%": ci(r["mean"].iat[0], r["ci_low"].iat[0])
                                for f in fractions if not (r := g[g["fraction"] == f]).empty}}
                for arm, g in m.groupby("arm", sort=False)]
        parts.append(f"Test {metric}, mean ± 1.96·sd/√n over {int(m['n'].max())} {unit}, by share of training "
                     f"labels:\n\n{markdown_table(rows)}\n")
    rows = [{"metric": r.metric, "arm": r.arm, "vs": r.baseline, "labels": f"{100 * r.fraction:g}%",
             "difference": f"{r.mean_diff:+.3f}", "t": num(r.t, ".2f"), "p": num(r.p, ".3g"),
             "Holm p": num(r.p_holm, ".3g"), "significant": "yes" if r.significant else "no",
             "detectable at 80% power": num(getattr(r, "detectable_diff", None), ".3f"),
             "note": r.note if "note" in tests and isinstance(r.note, str) else ""}
            for r in tests.itertuples()]
    if not any(r["note"] for r in rows):
        rows = [{k: v for k, v in r.items() if k != "note"} for r in rows]
    how = ("Nadeau-Bengio corrected resampled t-tests over cross-validation folds (seeds averaged per fold)" if cv
           else "Paired t-tests over seeds")
    parts.append(f"{how} against each baseline arm; Holm's correction over every test of a metric "
                 f"({len(tests) // len(doc['metrics'])} per metric). 'Detectable at 80% power' is the smallest "
                 "difference the test would detect with 80% power (two-sided alpha 0.05) at the observed "
                 f"variance of the paired differences:\n\n{markdown_table(rows)}\n")
    match = pd.DataFrame(doc["match"])
    rows = [{"metric": r.metric, "arm": r.arm, "target": f"{r.target:.3f}", "labels needed": r.note}
            for r in match.itertuples() if r.arm != doc["reference"]]
    parts.append(f"Share of labels each arm needs to match {doc['reference']} at 100% of the labels (read off "
                 f"the mean curve, linearly interpolated):\n\n{markdown_table(rows)}\n")
    return "\n".join(parts)


def beside_published(docs: list[dict], dataset: str, size: str) -> str:
    """Our 100%-label test scores of every arm next to the cited published figures of the dataset (if any)."""
    rows = list(PUBLISHED_ROWS.get(dataset, []))
    for doc in docs:
        summ = pd.DataFrame(doc["summary"])
        top = summ[summ["fraction"] == summ["fraction"].max()]
        for arm, g in top.groupby("arm", sort=False):
            vals = dict(zip(g["metric"], zip(g["mean"], g["ci_low"], strict=True), strict=True))
            rows.append({"model": f"ours: {arm}, {doc.get('title') or ''}",
                         **{col: ci(*vals[key]) if key in vals else "" for col, key in
                            (("AUROC", "auroc"), ("accuracy", "accuracy"))}, "source": f"this run ({size})"})
    return markdown_table(rows)


GATE_METRICS = ("FD", "precision", "recall", "coverage", "density", "label_agreement", "near_copies")


def gate_lines(jobs: list[dict]) -> str:
    """The quality gate's verdict and headline metrics of every synthetic set the pipeline checked."""
    lines = []
    for j in (j for j in jobs if j["kind"] == "gate"):
        q = json.loads((Path(j["dir"]) / GATE_FILE).read_text())
        figures = ", ".join(f"{k} {v:.3g}" for k, v in q["metrics"].items() if k.startswith(GATE_METRICS)
                            and not k.startswith("FDmax"))
        lines.append(f"- quality.{j['name']}: gate **{q['verdict']}** ({q['n_synthetic']} synthetic vs "
                     f"{q['n_real']} real images): {figures}. Tables in `{j['dir']}`.")
    return "\n".join(lines)


def vessel_tables(doc: dict) -> str:
    """A vessel study as markdown: mean ± CI over seeds per method and metric, then the paired tests."""
    summ = pd.DataFrame(doc["summary"])
    rows = [{"method": method, **{m: ci(r["mean"].iat[0], r["ci_low"].iat[0]) if not (r := g[g["metric"] == m]).empty
                                  and r["mean"].iat[0] == r["mean"].iat[0] else "-" for m in VESSEL_METRICS}}
            for method, g in summ.groupby("method", sort=False)]
    tests = [{"metric": t["metric"], "difference": f"{t['difference']:+.3f}",
              "95% CI": f"[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]", "t": num(t["t"], ".2f"),
              "p": num(t["p"], ".3g"), "seeds": t["n"]} for t in doc["tests"]]
    return (f"Test images: {', '.join(doc['test_images'])}; {doc['train_images']} real training images; "
            f"mean ± 1.96·sd/√n over seeds {doc['seeds']} of the per-seed mean over test images (methods without a "
            f"seed ran once):\n\n{markdown_table(rows)}\n\n"
            f"U-Net pretrained on phantoms then fine-tuned minus the same U-Net on real images only, paired by "
            f"seed:\n\n{markdown_table(tests)}\n")


VESSEL_METRICS = ("dice", "auc", "accuracy", "sensitivity", "specificity")


def pipeline_section(root: Path) -> str:
    """The section of one pipeline run: verdict, gate, arms or vessel tables, published context, job times."""
    plan = json.loads((root / PLAN_FILE).read_text())
    jobs = [j for j in plan["jobs"] if j["stage"] != "report"]
    arms = [json.loads((Path(j["dir"]) / ARMS_FILE).read_text()) for j in jobs if j["kind"] == "arms"]
    vessels = [json.loads((Path(j["dir"]) / STUDY_FILE).read_text()) for j in jobs
               if j["kind"] == "vessel_study"]
    total = sum(j.get("seconds") or 0 for j in jobs) / 60
    timing = markdown_table([{"job": f"{j['stage']}.{j['name']}", "kind": j["kind"],
                              "minutes": f"{(j.get('seconds') or 0) / 60:.1f}",
                              "load (1 min, start / end)": " / ".join(map(str, j.get("load_1m") or ["?"]))}
                             for j in jobs])
    verdict = "\n".join(f"- {line}" for line in [*(x for doc in arms for x in arms_verdict(doc)),
                                                 *(x for doc in vessels for x in doc["verdict"])])
    body = "\n".join([*(f"### {doc.get('title') or 'arms'}\n\n{arms_tables(doc)}" for doc in arms),
                      *(f"### Vessel segmentation, {doc['card']}\n\n{vessel_tables(doc)}" for doc in vessels)])
    gate = (f"**The synthetic set, as the quality gate saw it**\n\n{gate_lines(jobs)}\n\n" if gate_lines(jobs)
            else "")
    dataset, size = plan_dataset(plan)
    cited = ("The published models were trained with their own recipes and sizes; they are context, not a "
             "paired comparison." if dataset in PUBLISHED_ROWS else
             f"No published figures are cited for `{dataset}` (none on this split and protocol is known to us).")
    published = (f"### {'Beside published figures' if dataset in PUBLISHED_ROWS else 'At 100% of the labels'}"
                 f"\n\n{beside_published(arms, dataset, size)}\n\n{cited} Accuracy is the share of test images "
                 "on the most likely class; a model that predicts the majority class for everything scores the "
                 "test set's majority share.\n\n" if arms else "")
    return (f"## {plan['name']}\n\n{plan.get('description', '')}\n\n"
            f"Command: `synthfm run {plan['source']}` then `python docs/make_results.py {root}`; "
            f"{total:.0f} min of job time on the 2-core CPU machine (synthfm {plan['synthfm_version']}, commit "
            f"{str(plan['git_commit'])[:8]}). The HTML report is `{root}/report.html`.\n\n"
            f"**Verdict, in plain words**\n\n{verdict}\n\n{gate}{body}\n{published}"
            f"### Time per job (the budget of each arm)\n\n{timing}\n")


def plan_dataset(plan: dict) -> tuple[str, str]:
    """The card name and image size of a pipeline's first adaptation job (for the published figures)."""
    for j in plan["jobs"]:
        if j["kind"] == "adapt":
            cfg = yaml.safe_load((Path(j["dir"]) / "config.yaml").read_text())["config"]
            card = yaml.safe_load(Path(cfg["card"]).read_text()) if Path(cfg["card"]).is_file() else {}
            return str(card.get("name", "")), f"{cfg.get('image_size')} px"
    return "", ""


def cv_text(cfg: dict) -> str:
    """', 5-fold cross-validation x 3 repeats over card rows [all]' for a cv config ('' without one)."""
    cv = cfg.get("cv")
    if not cv:
        return ""
    return (f", {cv.get('folds', 5)}-fold cross-validation x {cv.get('repeats', 3)} repeats over card rows "
            f"{cv.get('pool', ['all'])} (folds in `cv_folds.csv`)")


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
            f"{cfg['epochs']} epochs, image {cfg['image_size']} px, seeds {cfg['seeds']}{cv_text(cfg)}; wall time "
            f"{minutes:.1f} min on the 2-core CPU machine (synthfm {header['synthfm_version']}, "
            f"commit {header['git_commit'][:8]}).\n\n"
            f"Command: `synthfm adapt configs/experiments/{exp.name}.yaml -o {exp}`\n\n{table}\n")


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first '## ' heading, and every (heading, whole section) in order."""
    parts = ("\n" + text).split("\n## ")
    return parts[0].lstrip("\n"), [(p.split("\n", 1)[0], "## " + p) for p in parts[1:]]


def same_title(a: str, b: str) -> bool:
    """Two section headings name the same run (an older headline section carried a 'Headline: ' prefix)."""
    return a.removeprefix("Headline: ").strip() == b.removeprefix("Headline: ").strip()


def merge_sections(old: list[tuple[str, str]], new: list[tuple[str, str]],
                   snippets: list[tuple[str, str]]) -> list[str]:
    """Run sections: each new one replaces its namesake in place (else is added after the last run section);
    sections of runs not given are kept as they are; the benchmark snippets are refreshed and come last."""
    snippet_titles = [t for t, _ in snippets]
    runs = [(t, body) for t, body in old if not any(same_title(t, x) for x in snippet_titles)]
    out = [next((body for t2, body in new if same_title(t, t2)), body) for t, body in runs]
    out += [body for t, body in new if not any(same_title(t, t2) for t2, _ in runs)]
    return [b.rstrip("\n") + "\n" for b in out + [body for _, body in snippets]]


def main(paths: list[str]) -> None:
    """Rewrite the sections of the given runs in docs/results.md (others are kept) and refresh the snippets."""
    target = DOCS / "results.md"
    _, old = split_sections(target.read_text()) if target.is_file() else ("", [])
    new = [split_sections(pipeline_section(Path(p)) if (Path(p) / PLAN_FILE).is_file()
                          else experiment_section(Path(p)))[1][0] for p in paths]
    snippets = [split_sections(snippet.read_text())[1][0] for snippet in sorted((DOCS / "bench").glob("*.md"))
                if snippet.name != "notes.md"]
    head = ["# Results\n", "Each section is written by `python docs/make_results.py RUN...` from the run's tables "
            "(the sections of runs not named are kept as they were), plus the result snippets that benchmark scripts "
            "write to docs/bench/*.md (each names its command); nothing here is typed in by hand except the cited "
            "published figures.\n", PUBLISHED + "\n"]
    target.write_text("\n".join(head + merge_sections(old, new, snippets)))


if __name__ == "__main__":
    main(sys.argv[1:])
