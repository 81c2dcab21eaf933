"""`run_quality`: fidelity, memorisation, label and metadata checks of a synthetic card, then the gate.

Outputs in the run directory (the HTML report reads them):

- `quality.json` - verdict, gate checks, every summary metric, spaces, counts, file names;
- `gate.csv` - metric, value, bound, threshold, passed;
- `fidelity.csv` - space, task, class, metric, value, n_synthetic, n_real (task/class 'all' = overall);
- `memorisation.csv` - one row per synthetic image (nearest real by pixels and by features, scores, flags);
- `memorisation_calibration.csv`, `near_copies.csv`, `near_copies.png`;
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
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path, atomic_write_json
from synthfm.quality.config import QualityConfig, SpaceConfig
from synthfm.quality.features import build_space, extract
from synthfm.quality.fidelity import fidelity_table, label_groups
from synthfm.quality.gate import evaluate_gate, gate_error, verdict
from synthfm.quality.labels import verify_labels, write_filtered_card
from synthfm.quality.memorisation import AuditInputs, audit, memorisation_metrics, thumbnail_grid
from synthfm.quality.metadata import distribution_table, metadata_metrics, predicted_metadata
from synthfm.runs import RunDir

STAGE = "quality"
SUMMARY = "quality.json"


def write_csv(df: pd.DataFrame, path: Path) -> str:
    """Write a table atomically; return its file name."""
    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False)
    return path.name


def real_partition(real: CardData, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows the audit indexes, held-out rows that calibrate it): the card's split, else a seeded draw."""
    train = real.indices("train")
    held = np.sort(np.concatenate([real.indices("val"), real.indices("test")]))
    if len(train) and len(held):
        return train, held
    rows = np.random.default_rng(seed).permutation(len(real))
    n_held = max(2, round(fraction * len(real)))
    return np.sort(rows[n_held:]), np.sort(rows[:n_held])


def shared_tasks(real: CardData, synth: CardData, task_map: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    """(real task, synthetic task, classes) for single-label tasks both cards have with the same class count."""
    names = {t.name: t for t in synth.card.tasks}
    out = []
    for t in real.card.tasks:
        s = names.get(task_map.get(t.name, t.name))
        if s is not None and t.type != "multilabel" and len(s.classes) == len(t.classes):
            out.append((t.name, s.name, t.classes))
    return out


def verifier_encoder(cfg: QualityConfig) -> dict[str, Any]:
    """The encoder the label verifier adapts: the first synthfm space's, unless labels.adapt names one."""
    if "encoder" in cfg.labels.adapt:
        return {}
    space: SpaceConfig | None = next((s for s in cfg.spaces if s.kind == "synthfm"), None)
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
        self.files: dict[str, str] = {}
        self.notes: list[str] = []

    def execute(self) -> dict[str, Any]:
        """Run every enabled check and the gate; return the summary written to quality.json."""
        cfg = self.cfg
        self.synth, self.real = load_card(cfg.synthetic), load_card(cfg.real)
        if self.synth.card.modality != self.real.card.modality:
            raise SynthfmError(f"synthetic card is {self.synth.card.modality} but the real card is "
                               f"{self.real.card.modality}", "compare cards of the same modality")
        self.train, self.heldout = real_partition(self.real, cfg.memorisation.heldout_fraction, cfg.seed)
        self.tasks = shared_tasks(self.real, self.synth, cfg.labels.task_map)
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

    def extract_all(self) -> None:
        """Features of every space and grey maps, for both cards, cached in the run directory."""
        spaces = [build_space(s, self.synth.card.modality) for s in self.cfg.spaces]
        self.space_names = [s.name for s in spaces]
        if len(set(self.space_names)) != len(spaces):
            raise SynthfmError(f"feature spaces share a name: {self.space_names}", "give each space a distinct 'name'")
        pix = self.cfg.memorisation.pixel_size if self.cfg.memorisation.enabled else None
        args = (self.cfg.batch_size, self.cfg.num_workers)
        self.sf = extract(self.synth, np.arange(len(self.synth)), spaces, pix, self.out / "cache", "synthetic", *args)
        self.rf = extract(self.real, np.arange(len(self.real)), spaces, pix, self.out / "cache", "real", *args)

    def fidelity(self) -> None:
        """fidelity.csv and the overall metrics of each space."""
        ref = self.real.indices(self.cfg.reference_split) if self.cfg.reference_split else np.arange(len(self.real))
        rows: list[dict[str, Any]] = []
        for name in self.space_names:
            groups = self._groups(ref)
            real_ref = self.rf[name] if len(ref) == len(self.real) else np.asarray(self.rf[name][ref])
            rows += fidelity_table(name, self.sf[name], real_ref, self.cfg.fidelity, self.cfg.seed, groups)
        table = pd.DataFrame(rows)
        self.files["fidelity"] = write_csv(table, self.out / "fidelity.csv")
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
        table, calib = audit(inp, m)
        self.metrics.update(memorisation_metrics(table))
        self.files["memorisation"] = write_csv(table, self.out / "memorisation.csv")
        self.files["memorisation_calibration"] = write_csv(calib, self.out / "memorisation_calibration.csv")
        drawn = thumbnail_grid(table, self.sf["pixels"], self.rf["pixels"], self.out / "near_copies.png", m.thumbnails)
        flagged = table[table["flagged"]].merge(pd.DataFrame(drawn, columns=["synthetic_id", "real_id", "grid_row"]),
                                                on="synthetic_id", how="left")
        self.files["near_copies"] = write_csv(flagged, self.out / "near_copies.csv")
        self.files["near_copies_png"] = "near_copies.png"

    def labels(self) -> None:
        """Label verification tables and the filtered card."""
        res = verify_labels(self.real, self.cfg.real, self.synth, self.cfg.labels, self.out / "label_check",
                            self.cfg.seed, self.cfg.batch_size, verifier_encoder(self.cfg))
        if not len(res.predictions):
            self.notes.append("label verification: no task shared by both cards")
            return
        self.metrics.update(res.metrics)
        for name, df in (("label_predictions", res.predictions), ("label_agreement", res.agreement),
                         ("label_confusion", res.confusion)):
            self.files[name] = write_csv(df, self.out / f"{name}.csv")
        if self.cfg.labels.filtered_card:
            card = write_filtered_card(self.synth, res.keep, self.out / "filtered")
            if card is None:
                self.notes.append("filtered card not written: shard cards stream every sample; use "
                                  "label_predictions.csv 'keep' to re-shard")
            else:
                self.files["filtered_card"] = "filtered/dataset.yaml"

    def metadata(self) -> None:
        """Metadata distribution tests and predicted-metadata tables."""
        dist = distribution_table(self.real, self.synth, self.cfg.metadata, self.tasks)
        first = self.space_names[0]
        pred = (predicted_metadata(self.rf[first], self.sf[first], self.real, self.synth, self.train, self.heldout,
                                   self.cfg.metadata, self.cfg.seed) if self.cfg.metadata.predict else pd.DataFrame())
        self.metrics.update(metadata_metrics(dist, pred))
        self.files["metadata_distributions"] = write_csv(dist, self.out / "metadata_distributions.csv")
        self.files["metadata_predictions"] = write_csv(pred, self.out / "metadata_predictions.csv")

    def finish(self) -> dict[str, Any]:
        """Gate, gate.csv and quality.json."""
        checks = evaluate_gate(self.metrics, self.cfg.gate)
        self.files["gate"] = write_csv(pd.DataFrame(checks, columns=["metric", "value", "bound", "threshold",
                                                                     "passed"]), self.out / "gate.csv")
        summary = {"verdict": verdict(checks), "checks": checks, "metrics": self.metrics,
                   "spaces": self.space_names, "synthetic": self.cfg.synthetic, "real": self.cfg.real,
                   "n_synthetic": len(self.synth), "n_real": len(self.real), "n_real_train": len(self.train),
                   "n_real_heldout": len(self.heldout), "files": self.files, "notes": self.notes}
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
