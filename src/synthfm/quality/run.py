"""`run_quality`: fidelity, memorisation, label and metadata checks of a synthetic card, then the gate.

Every synthetic metric is judged against real data: the real card is split into a reference (its training
rows) and a held-out part, the same metrics are computed for the held-out real images against the reference at
the same sample size as the synthetic ones, and the gate bounds the ratios (`FD_ratio_<space>`,
`<metric>_rel_<space>`, `label_agreement_rel_<task>`). The default feature space is a domain encoder fine-tuned
on the real card (`synthfm.quality.domain`, cached).

Outputs in the run directory (the HTML report reads them):

- `quality.json` - verdict, gate checks, every summary metric, spaces (with what each one is), counts, files;
- `gate.csv` - metric, value, bound, threshold, passed, family, synthetic, real_baseline;
- `baseline.csv` - space, metric, synthetic, real_pair, relative, n (synthetic vs held-out real, same n);
- `fidelity.csv` - space, task, class, metric, value, n_synthetic, n_real (task/class 'all' = overall);
- `memorisation.csv` - one row per synthetic image (nearest real by pixels and by features, scores, flags);
- `memorisation_calibration.csv`, `near_copies.csv`, `near_copies.png`;
- `real_duplicates.csv` - held-out real images that duplicate a training image (a finding about the data);
- `label_predictions.csv`, `label_agreement.csv`, `label_confusion.csv`, `filtered/dataset.yaml`;
- `metadata_distributions.csv`, `metadata_predictions.csv`;
- `cache/` - features and grey maps (memory-mapped .npy), `label_check/<task>/` - the verifier's runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthfm.data.manifest import ID, CardData, load_card
from synthfm.data.splits import patient_cuts
from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_json, write_table
from synthfm.models.modelcard import GATE_FILE
from synthfm.quality.config import DOMAIN, QualityConfig, SpaceConfig
from synthfm.quality.domain import domain_encoder
from synthfm.quality.features import build_space, extract, space_name
from synthfm.quality.fidelity import fidelity_metrics, fidelity_table, label_groups, sharpness
from synthfm.quality.gate import evaluate_gate, gate_error, verdict
from synthfm.quality.labels import verify_labels, write_filtered_card
from synthfm.quality.memorisation import AuditInputs, audit, memorisation_metrics, thumbnail_grid
from synthfm.quality.metadata import distribution_table, metadata_metrics, predicted_metadata
from synthfm.runs import RunDir

STAGE = "quality"
SUMMARY = GATE_FILE  # the gate verdict a model card cites


def real_partition(real: CardData, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows the audit indexes, held-out rows that calibrate it): the card's split, else a seeded draw of
    whole patients (the card's `metadata.patient_id`; each image its own patient without one) until `fraction` of
    the images are held out. A held-out image of a training patient (a follow-up X-ray) is no stranger to the
    training set, so it would calibrate the audit against that patient's own images."""
    train = real.indices("train")
    held = np.sort(np.concatenate([real.indices("val"), real.indices("test")]))
    if len(train) and len(held):
        return train, held
    held, train = patient_cuts(real.patient_ids().to_numpy(), [max(fraction, 2 / max(len(real), 1))], seed)
    return np.sort(train), np.sort(held)


def baseline_rows(real: CardData, cfg: QualityConfig) -> tuple[np.ndarray, np.ndarray]:
    """(reference rows, held-out rows) of the real-vs-real baseline; an error when the card is too small."""
    train, held = real_partition(real, cfg.memorisation.heldout_fraction, cfg.seed)
    ref = real.indices(cfg.reference_split) if cfg.reference_split else train
    held = np.setdiff1d(held, ref)
    b = cfg.baseline
    if len(held) < b.min_heldout or len(ref) < b.min_reference:
        raise SynthfmError(f"real card '{real.card.name}' ({len(real)} images) is too small for a held-out split: "
                           f"{len(ref)} reference and {len(held)} held-out images, the baseline needs at least "
                           f"{b.min_reference} and {b.min_heldout}",
                           "use a larger real card (or give it val/test rows with synthfm data split), or lower "
                           "baseline.min_reference / baseline.min_heldout")
    return ref, held


def check_labels(real: CardData, synth: CardData, task_map: dict[str, str]) -> None:
    """A synthetic task that shares a name with a real task must use only the real task's classes, in order."""
    real_tasks = {t.name: t for t in real.card.tasks}
    inverse = {v: k for k, v in task_map.items()}
    for st in synth.card.tasks:
        rt = real_tasks.get(inverse.get(st.name, st.name))
        if rt is None or st.classes == rt.classes:
            continue
        if st.type == "multilabel":
            used = [c for k, c in enumerate(st.classes) if (synth.labels[st.name][:, k] == 1).any()]
        else:
            used = [st.classes[k] for k in sorted(set(synth.labels[st.name].tolist()))]
        lacking = [c for c in used if c not in rt.classes]
        where = f"synthetic card '{synth.card.name}' task '{st.name}'"
        if lacking:
            raise SynthfmError(f"{where} has labels the real card '{real.card.name}' lacks: {lacking} (real task "
                               f"'{rt.name}' has {rt.classes})",
                               "generate only classes the real card has, drop those rows, or compare against a "
                               "real card that has them")
        raise SynthfmError(f"{where} lists classes {st.classes} but the real task '{rt.name}' lists {rt.classes}",
                           "write the synthetic card with the real task's classes in the same order")


def relative_metrics(synthetic: dict[str, float], real: dict[str, float]) -> dict[str, float]:
    """Synthetic metrics relative to the real held-out pair's: FD ratio and <metric>_rel (synthetic / real)."""
    out = {}
    for name, key in (("FD", "FD_ratio"), ("precision", "precision_rel"), ("recall", "recall_rel"),
                      ("density", "density_rel"), ("coverage", "coverage_rel")):
        s, r = synthetic[name], real[name]
        out[key] = s / r if r > 0 else (float("inf") if s > 0 else 1.0)
    return out


RELATIVE_OF = {"FD_ratio": "FD", "precision_rel": "precision", "recall_rel": "recall", "density_rel": "density",
               "coverage_rel": "coverage"}


def shared_tasks(real: CardData, synth: CardData, task_map: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    """(real task, synthetic task, classes) for single-label tasks both cards have with the same class count."""
    names = {t.name: t for t in synth.card.tasks}
    out = []
    for t in real.card.tasks:
        s = names.get(task_map.get(t.name, t.name))
        if s is not None and t.type != "multilabel" and len(s.classes) == len(t.classes):
            out.append((t.name, s.name, t.classes))
    return out


def verifier_encoder(cfg: QualityConfig, spaces: list[SpaceConfig]) -> dict[str, Any]:
    """The encoder the label verifier adapts: the first synthfm space's, unless labels.adapt names one."""
    if "encoder" in cfg.labels.adapt:
        return {}
    space: SpaceConfig | None = next((s for s in spaces if s.kind == "synthfm"), None)
    if space is None:
        raise SynthfmError("label verification needs an encoder to adapt and no synthfm feature space is configured",
                           "set labels.adapt.encoder (a save_pretrained dir) or add a synthfm space")
    return {"encoder": space.encoder, "backbone_overrides": space.backbone_overrides}


class QualityRun:
    """One quality run: cards, features and the checks, writing tables into the run directory."""

    def __init__(self, synth_card: str | Path, real_card: str | Path, cfg: QualityConfig, out: str | Path) -> None:
        self.cfg = cfg.model_copy(update={"synthetic": str(synth_card), "real": str(real_card)})
        self.run = RunDir(out, STAGE, self.cfg)
        self.out = Path(out)
        self.metrics: dict[str, float] = {}
        self.baselines: dict[str, tuple[float, float]] = {}
        self.files: dict[str, str] = {}
        self.notes: list[str] = []
        self.space_info: list[dict[str, Any]] = []

    def execute(self) -> dict[str, Any]:
        """Run every enabled check and the gate; return the summary written to quality.json."""
        cfg = self.cfg
        self.synth, self.real = load_card(cfg.synthetic), load_card(cfg.real)
        if self.synth.card.modality != self.real.card.modality:
            raise SynthfmError(f"synthetic card is {self.synth.card.modality} but the real card is "
                               f"{self.real.card.modality}", "compare cards of the same modality")
        check_labels(self.real, self.synth, cfg.labels.task_map)
        self.train, self.heldout = real_partition(self.real, cfg.memorisation.heldout_fraction, cfg.seed)
        self.reference, self.base_heldout = baseline_rows(self.real, cfg)
        self.tasks = shared_tasks(self.real, self.synth, cfg.labels.task_map)
        self.spaces = self.resolve_spaces()
        self.extract_all()
        if cfg.fidelity.enabled:
            self.fidelity()
        if cfg.memorisation.enabled:
            self.memorisation()
        if cfg.labels.enabled:
            self.labels()
        if cfg.metadata.enabled:
            self.metadata()
        return self.finish()

    def resolve_spaces(self) -> list[SpaceConfig]:
        """The configured spaces with the domain encoder trained (or found in the cache); what each one is."""
        out = []
        for s in self.cfg.spaces:
            if s.kind == "synthfm" and s.encoder == DOMAIN:
                path, info = domain_encoder(self.real, self.cfg.real, self.cfg.domain)
                s = s.model_copy(update={"encoder": str(path), "name": s.name or f"synthfm-domain-{info['task']}"})
            elif s.kind == "synthfm" and s.encoder.startswith("random:"):
                info = {"kind": "random", "description": f"untrained random-init {s.encoder.removeprefix('random:')}"
                        " (asked for explicitly): not a domain space, it follows colour and layout more than "
                        "anatomy"}
            elif s.kind == "synthfm":
                info = {"kind": "encoder", "description": f"encoder {s.encoder}"}
            else:
                info = {"kind": s.kind, "description": f"{s.kind} weights {s.weights}"}
            out.append(s)
            self.space_info.append({"name": space_name(s), **info})
        return out

    def extract_all(self) -> None:
        """Features of every space and grey maps, for both cards, cached in the run directory."""
        spaces = [build_space(s, self.synth.card.modality) for s in self.spaces]
        self.space_names = [s.name for s in spaces]
        if len(set(self.space_names)) != len(spaces):
            raise SynthfmError(f"feature spaces share a name: {self.space_names}", "give each space a distinct 'name'")
        pix = self.cfg.memorisation.pixel_size  # grey maps: the audit and the sharpness ratio
        args = (self.cfg.batch_size, self.cfg.num_workers)
        self.sf = extract(self.synth, np.arange(len(self.synth)), spaces, pix, self.out / "cache", "synthetic", *args)
        self.rf = extract(self.real, np.arange(len(self.real)), spaces, pix, self.out / "cache", "real", *args)

    def fidelity(self) -> None:
        """fidelity.csv, the overall metrics of each space, and baseline.csv: each relative to the real pair."""
        ref = self.reference
        rng = np.random.default_rng(self.cfg.seed)
        n = min(len(self.synth), len(self.base_heldout))
        syn_rows = np.sort(rng.choice(len(self.synth), n, replace=False))
        held_rows = np.sort(rng.choice(self.base_heldout, n, replace=False))
        rows: list[dict[str, Any]] = []
        base: list[dict[str, Any]] = []
        for name in self.space_names:
            groups = self._groups(ref)
            real_ref = np.asarray(self.rf[name][ref])
            rows += fidelity_table(name, self.sf[name], real_ref, self.cfg.fidelity, self.cfg.seed, groups)
            syn = fidelity_metrics(np.asarray(self.sf[name][syn_rows]), real_ref, self.cfg.fidelity, self.cfg.seed)
            real = fidelity_metrics(np.asarray(self.rf[name][held_rows]), real_ref, self.cfg.fidelity, self.cfg.seed)
            for key, value in relative_metrics(syn, real).items():
                metric = RELATIVE_OF[key]
                self.metrics[f"{key}_{name}"] = value
                self.baselines[f"{key}_{name}"] = (syn[metric], real[metric])
                base.append({"space": name, "metric": metric, "synthetic": syn[metric], "real_pair": real[metric],
                             "relative": value, "relative_name": key, "n": n})
        syn_s, real_s = sharpness(self.sf["pixels"][syn_rows]), sharpness(self.rf["pixels"][held_rows])
        self.metrics["sharpness_ratio"] = syn_s / real_s
        self.baselines["sharpness_ratio"] = (syn_s, real_s)
        base.append({"space": "pixels", "metric": "sharpness", "synthetic": syn_s, "real_pair": real_s,
                     "relative": syn_s / real_s, "relative_name": "sharpness_ratio", "n": n})
        self.files["baseline"] = write_table(pd.DataFrame(base), self.out / "baseline.csv")
        table = pd.DataFrame(rows)
        self.files["fidelity"] = write_table(table, self.out / "fidelity.csv")
        overall = table[table["task"] == "all"]
        self.metrics.update({f"{r.metric}_{r.space}": float(r.value) for r in overall.itertuples()})
        per = table[(table["task"] != "all") & (table["metric"] == "FD")]
        for space, grp in per.groupby("space"):
            self.metrics[f"FDmaxlabel_{space}"] = float(grp["value"].max())

    def _groups(self, ref: np.ndarray) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
        """(task, class, synthetic positions, reference positions) of every shared label class."""
        out = []
        for rname, sname, classes in self.tasks:
            sg = label_groups(self.synth.labels[sname], classes)
            rg = label_groups(self.real.labels[rname][ref], classes)
            out += [(rname, c, sg[c], rg[c]) for c in classes]
        return out

    def memorisation(self) -> None:
        """memorisation.csv, calibration, near-copy table and thumbnails."""
        m = self.cfg.memorisation
        first = self.space_names[0]
        inp = AuditInputs(self.sf["pixels"], self.rf["pixels"], self.sf[first], self.rf[first], self.train,
                          self.heldout, self.synth.df[ID].to_numpy(), self.real.df[ID].to_numpy())
        table, calib, heldout = audit(inp, m)
        dups = heldout[heldout["duplicate"]].drop(columns="duplicate")
        self.metrics.update(memorisation_metrics(table))
        self.metrics["real_duplicate_pairs"] = float(len(dups))
        self.files["real_duplicates"] = write_table(dups, self.out / "real_duplicates.csv")
        if len(dups):
            self.notes.append(f"data finding: {len(dups)} held-out real image(s) duplicate a real training image "
                              f"(pixel similarity >= {m.duplicate_similarity}); left out of the audit's calibration, "
                              "listed in real_duplicates.csv")
        self.files["memorisation"] = write_table(table, self.out / "memorisation.csv")
        self.files["memorisation_calibration"] = write_table(calib, self.out / "memorisation_calibration.csv")
        drawn = thumbnail_grid(table, self.sf["pixels"], self.rf["pixels"], self.out / "near_copies.png", m.thumbnails)
        flagged = table[table["flagged"]].merge(pd.DataFrame(drawn, columns=["synthetic_id", "real_id", "grid_row"]),
                                                on="synthetic_id", how="left")
        self.files["near_copies"] = write_table(flagged, self.out / "near_copies.csv")
        self.files["near_copies_png"] = "near_copies.png"

    def labels(self) -> None:
        """Label verification tables and the filtered card."""
        res = verify_labels(self.real, self.cfg.real, self.synth, self.cfg.labels, self.out / "label_check",
                            self.cfg.seed, self.cfg.batch_size, verifier_encoder(self.cfg, self.spaces))
        if not len(res.predictions):
            self.notes.append("label verification: no task shared by both cards")
            return
        self.metrics.update(res.metrics)
        self.baselines.update(res.baselines)
        for name, df in (("label_predictions", res.predictions), ("label_agreement", res.agreement),
                         ("label_confusion", res.confusion)):
            self.files[name] = write_table(df, self.out / f"{name}.csv")
        if self.cfg.labels.filtered_card:
            write_filtered_card(self.synth, res.keep, self.out / "filtered")
            self.files["filtered_card"] = "filtered/dataset.yaml"

    def metadata(self) -> None:
        """Metadata distribution tests and predicted-metadata tables."""
        dist = distribution_table(self.real, self.synth, self.cfg.metadata, self.tasks)
        first = self.space_names[0]
        pred = (predicted_metadata(self.rf[first], self.sf[first], self.real, self.synth, self.train, self.heldout,
                                   self.cfg.metadata, self.cfg.seed) if self.cfg.metadata.predict else pd.DataFrame())
        self.metrics.update(metadata_metrics(dist, pred))
        self.files["metadata_distributions"] = write_table(dist, self.out / "metadata_distributions.csv")
        self.files["metadata_predictions"] = write_table(pred, self.out / "metadata_predictions.csv")

    def finish(self) -> dict[str, Any]:
        """Gate, gate.csv and quality.json."""
        suffixes = self.space_names + [t[0] for t in self.tasks]
        checks = evaluate_gate(self.metrics, self.cfg.gate, suffixes, self.baselines)
        columns = ["metric", "value", "bound", "threshold", "passed", "family", "synthetic", "real_baseline"]
        self.files["gate"] = write_table(pd.DataFrame(checks, columns=columns), self.out / "gate.csv")
        summary = {"verdict": verdict(checks), "checks": checks, "metrics": self.metrics,
                   "spaces": self.space_names, "space_info": self.space_info, "synthetic": self.cfg.synthetic,
                   "real": self.cfg.real, "n_synthetic": len(self.synth), "n_real": len(self.real),
                   "n_real_train": len(self.train), "n_real_heldout": len(self.heldout),
                   "baseline": {"reference": len(self.reference), "heldout": len(self.base_heldout),
                                "sample_size": min(len(self.synth), len(self.base_heldout))},
                   "files": self.files, "notes": self.notes}
        atomic_write_json(self.out / SUMMARY, summary)
        return summary


def run_quality(synth_card: str | Path, real_card: str | Path, cfg: QualityConfig | None = None,
                out: str | Path = "runs/quality") -> dict[str, Any]:
    """Check a synthetic card against a real one; write the tables and quality.json; return the summary.

    A set that fails the gate raises SynthfmError naming each failed metric and threshold (after every
    output is written), unless `gate.stop_on_fail` is false.
    """
    job = QualityRun(synth_card, real_card, cfg or QualityConfig(), out)
    if job.run.open() == "done":
        summary = json.loads((job.out / SUMMARY).read_text())
    else:
        summary = job.execute()
        job.run.complete(verdict=summary["verdict"], **{k: summary[k] for k in ("n_synthetic", "n_real")})
    if summary["verdict"] == "fail" and job.cfg.gate.stop_on_fail:
        raise gate_error(summary["checks"], str(job.out / SUMMARY))
    return summary
