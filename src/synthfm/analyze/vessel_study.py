"""Did phantom pretraining help vessel segmentation? The same U-Net with and without phantoms, over seeds.

On a card with manual vessel masks (CHASE_DB1), with a fixed, patient-disjoint test set (default: the last 8
manifest rows, the split of `benchmarks/eval_vessels.py`) and the rest as real training images, per seed:

* `unet_phantom_then_real` - the TinyUNet trained on rendered fundus phantoms (their exact vessel masks),
  then fine-tuned on the real training images;
* `unet_real_only` - the same U-Net, same real steps and seed, from random init (the row that tells whether
  phantoms helped);
* `unet_phantom_only` - the phantom-trained U-Net before fine-tuning (no real image seen);

and once (deterministic): a classical filter (Sato, scikit-image) and the second observer's manual masks.
Metrics per test image inside a thresholded field of view against the first observer, averaged per seed;
the summary gives mean and 95% CI over seeds, and a paired t-test (by seed, at least 3 seeds) of
phantom-then-real against real-only per metric. Each (arm, seed) is written atomically on its own, so a killed
study resumes at the first unfinished one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import Field
from scipy import stats

from synthfm.analyze.jobs import STUDY_FILE
from synthfm.analyze.morphology import _resize, read_mask
from synthfm.analyze.unet import (
    Example,
    TinyUNet,
    UNetConfig,
    load_unet,
    make_example,
    phantom_examples,
    predict_unet,
    save_unet,
    train_unet,
)
from synthfm.analyze.vessels import field_of_view, segment_classical, segmentation_metrics
from synthfm.config import StrictModel
from synthfm.data.images import load_image
from synthfm.data.manifest import ID, CardData, load_card
from synthfm.errors import SynthfmError
from synthfm.evaluate.results import summary_table
from synthfm.evaluate.stats import holm, paired_test
from synthfm.io import atomic_write_json, write_table_pair
from synthfm.runs import RunDir

STAGE = "analyze.vessel_study"
METRICS = ("dice", "auc", "accuracy", "sensitivity", "specificity")
PRETRAINED, FINETUNED, REAL_ONLY = "unet_phantom_only", "unet_phantom_then_real", "unet_real_only"
SECOND_OBSERVER = "second_observer"
PER_IMAGE, SUMMARY, TESTS = "per_image", "summary", "tests"


class VesselStudyConfig(StrictModel):
    """Card, test images, U-Net budget and seeds of a phantom-pretraining study for vessel segmentation."""

    card: str = Field(description="dataset.yaml of a card with manual vessel masks")
    mask: str = Field("vessel", description="the reference mask (first observer)")
    second_observer: str | None = Field("vessel_2nd_observer", description="a second manual mask, scored as a "
                                                                            "method (human agreement); null: none")
    test_ids: list[str] | None = Field(None, description="test rows by manifest id; default: the last `test_last`")
    test_last: int = Field(8, ge=1, description="test rows: the last N manifest rows (when test_ids is unset)")
    work_size: int = Field(512, ge=64, description="longest side the U-Nets train and predict at")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    phantom_images: int = Field(24, ge=1, description="rendered phantoms for pretraining")
    phantom_seed: int = 1000
    pretrain_steps: int = Field(400, ge=1, description="U-Net steps on phantoms")
    finetune_steps: int = Field(400, ge=1, description="U-Net steps on the real training images (both arms)")
    unet: UNetConfig = Field(default_factory=UNetConfig, description="width, batch, patch, lr, threads "
                                                                     "(steps and seed are set per arm)")
    classical: list[Literal["sato", "frangi"]] = Field(default_factory=lambda: ["sato"])


# ---- images -----------------------------------------------------------------------------------------------
def native_image(data: CardData, row: int) -> np.ndarray:
    """The native RGB image of one manifest row of a folder card."""
    return load_image(data.image_path(row), 3, where=f"manifest row {row + 1}")


def upsample(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A probability map resized (bilinear) to the native image shape."""
    return np.asarray(Image.fromarray(prob.astype(np.float32)).resize((shape[1], shape[0]), Image.BILINEAR))


def test_rows(cfg: VesselStudyConfig, data: CardData) -> list[int]:
    """Manifest rows of the test images (named ids, or the last N rows)."""
    ids = data.df[ID].astype(str).tolist()
    if cfg.test_ids is None:
        if cfg.test_last >= len(ids):
            raise SynthfmError(f"test_last is {cfg.test_last} but card {cfg.card} has only {len(ids)} rows",
                               "leave some rows for training: lower test_last")
        return list(range(len(ids) - cfg.test_last, len(ids)))
    missing = [i for i in cfg.test_ids if i not in ids]
    if missing:
        raise SynthfmError(f"test_ids {missing[:3]} are not manifest ids of card {cfg.card}",
                           f"use ids as the manifest spells them, e.g. {ids[:2]}")
    return [ids.index(i) for i in cfg.test_ids]


def check_card(cfg: VesselStudyConfig, data: CardData) -> None:
    """The card must be a folder card with the named masks."""
    for name in [cfg.mask] + ([cfg.second_observer] if cfg.second_observer else []):
        if name not in data.card.masks:
            raise SynthfmError(f"card {cfg.card} has no mask '{name}'",
                               f"use one of {sorted(data.card.masks)} (mask / second_observer)")
    if data.card.source.format == "shards":
        raise SynthfmError(f"card {cfg.card} is a shard card; the vessel study reads native images and masks",
                           "point at the original folder card")


def check_patients(data: CardData, train_rows: list[int], rows_test: list[int]) -> None:
    """No patient may have images on both sides of the split."""
    pid = data.patient_ids()
    shared = sorted(set(pid.iloc[train_rows]) & set(pid.iloc[rows_test]))
    if shared:
        raise SynthfmError(f"patients {shared[:3]} of card {data.card.name} have images in both the test and the "
                           "training rows", "choose test_ids that hold every image of their patients")


def real_examples(cfg: VesselStudyConfig, data: CardData, rows: list[int]) -> list[Example]:
    """U-Net training examples of the real training rows at the work size."""
    out = []
    for r in rows:
        small = _resize(native_image(data, r), cfg.work_size)
        out.append(make_example(small, read_mask(data, r, cfg.mask, small.shape[:2]), field_of_view(small)))
    return out


# ---- scoring ----------------------------------------------------------------------------------------------
class TestSet:
    """Native test images, reference and second-observer masks and fields of view, read once."""

    def __init__(self, cfg: VesselStudyConfig, data: CardData, rows: list[int]) -> None:
        self.rows, self.ids = rows, [str(data.df[ID].iat[r]) for r in rows]
        self.images = [native_image(data, r) for r in rows]
        self.ref = [read_mask(data, r, cfg.mask, im.shape[:2]) > 0 for r, im in zip(rows, self.images, strict=True)]
        self.fov = [field_of_view(im) for im in self.images]
        self.second = ([read_mask(data, r, cfg.second_observer, im.shape[:2]) > 0
                        for r, im in zip(rows, self.images, strict=True)] if cfg.second_observer else None)

    def score(self, predict: Any) -> list[dict[str, float]]:
        """Metrics of `predict(k) -> (binary mask, score)` on every test image."""
        return [segmentation_metrics(*predict(k), self.ref[k], self.fov[k]) for k in range(len(self.rows))]

    def unet(self, net: TinyUNet, work_size: int) -> list[dict[str, float]]:
        """Metrics of a U-Net predicting at the work size, upsampled to native size, thresholded at 0.5."""
        def predict(k: int) -> tuple[np.ndarray, np.ndarray]:
            small = _resize(self.images[k], work_size)
            prob = upsample(predict_unet(net, small, field_of_view(small)), self.images[k].shape[:2]) * self.fov[k]
            return prob > 0.5, prob
        return self.score(predict)


def _records(method: str, seed: int | None, test: TestSet, per: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Tidy rows: one per test image and metric."""
    return [{"method": method, "seed": seed, "image": test.ids[k], "metric": m, "value": float(per[k][m])}
            for k in range(len(per)) for m in METRICS]


# ---- the study --------------------------------------------------------------------------------------------
def _unit(run: RunDir, name: str) -> Path:
    """The result file of one finished (arm, seed) or deterministic method."""
    return run.path / "units" / f"{name}.json"


def _done(path: Path) -> list[dict[str, Any]] | None:
    """The saved rows of a finished unit, or None."""
    return json.loads(path.read_text()) if path.is_file() else None


def _seed_units(cfg: VesselStudyConfig, run: RunDir, test: TestSet, train: list[Example] | None,
                seed: int) -> list[dict[str, Any]]:
    """The three U-Net arms of one seed (the phantom U-Net is saved and reused by its fine-tuning)."""
    rows: list[dict[str, Any]] = []
    pre_dir = run.path / "unets" / f"phantom_seed_{seed}"
    for arm in (PRETRAINED, FINETUNED, REAL_ONLY):
        path = _unit(run, f"{arm}_seed_{seed}")
        saved = _done(path)
        if saved is None:
            if arm == PRETRAINED:
                net = load_unet(pre_dir) if (pre_dir / "config.json").is_file() else None
                if net is None:
                    net = train_unet(phantom_examples(cfg.phantom_images, cfg.phantom_seed, cfg.work_size),
                                     cfg.unet.model_copy(update={"steps": cfg.pretrain_steps, "seed": seed}))
                    save_unet(net, pre_dir, trained_on="fundus_phantom", steps=cfg.pretrain_steps, seed=seed)
            else:
                init = load_unet(pre_dir) if arm == FINETUNED else None
                net = train_unet(train or [], cfg.unet.model_copy(update={"steps": cfg.finetune_steps, "seed": seed}),
                                 init=init)
            saved = _records(arm, seed, test, test.unet(net, cfg.work_size))
            atomic_write_json(path, saved)
        rows += saved
    return rows


def _fixed_units(cfg: VesselStudyConfig, run: RunDir, test: TestSet) -> list[dict[str, Any]]:
    """Classical filters and the second observer (no seed)."""
    rows: list[dict[str, Any]] = []
    for method in cfg.classical:
        path = _unit(run, method)
        saved = _done(path)
        if saved is None:
            saved = _records(method, None, test,
                             test.score(lambda k, m=method: segment_classical(test.images[k], test.fov[k], m)))
            atomic_write_json(path, saved)
        rows += saved
    if test.second is not None:
        per = test.score(lambda k: (test.second[k], test.second[k].astype(float)))  # type: ignore[index]
        rows += _records(SECOND_OBSERVER, None, test, [r | {"auc": float("nan")} for r in per])
    return rows


def difference_ci(d: pd.Series) -> tuple[float, float]:
    """95% t interval of the mean paired difference (NaN below 2 pairs)."""
    n = len(d)
    if n < 2:
        return float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n))
    return float(d.mean() - half), float(d.mean() + half)


def summarise_study(per_image: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per method x metric: mean and CI over seeds of the per-seed image means; paired tests by seed."""
    per_seed = (per_image.dropna(subset=["value"]).groupby(["method", "seed", "metric"], dropna=False)["value"]
                .mean().reset_index())
    summary = summary_table(per_seed, by=("method", "metric"))
    tests = []
    for metric in METRICS:
        wide = per_seed[per_seed["metric"] == metric].pivot(index="seed", columns="method", values="value")
        if {FINETUNED, REAL_ONLY} <= set(wide.columns):
            pair = wide[[FINETUNED, REAL_ONLY]].dropna()
            t = paired_test(pair[FINETUNED], pair[REAL_ONLY])
            low, high = difference_ci(pair[FINETUNED] - pair[REAL_ONLY])
            tests.append({"arm": FINETUNED, "baseline": REAL_ONLY, "metric": metric, "n": t.n,
                          "difference": float((pair[FINETUNED] - pair[REAL_ONLY]).mean()), "ci_low": low,
                          "ci_high": high, "t": t.t, "p": t.p, "note": t.note})
    tests = pd.DataFrame(tests)
    if len(tests):  # one family over the metrics; Dice is the primary (pre-specified) one the verdict reads
        tests["p_holm"] = holm(tests["p"].fillna(1.0).to_numpy())
    return summary, tests


def _mean(summary: pd.DataFrame, method: str, metric: str) -> float:
    """Mean over seeds of one method's metric (NaN when absent)."""
    sel = summary[(summary["method"] == method) & (summary["metric"] == metric)]
    return float(sel["mean"].iloc[0]) if len(sel) else float("nan")


def verdict_lines(card: str, n_test: int, summary: pd.DataFrame, tests: pd.DataFrame) -> list[str]:
    """Plain sentences for the report: each paired test with its CI and p, the references, and the verdict."""
    lines = []
    for row in tests.to_dict("records"):
        p = "n/a" if np.isnan(row["p"]) else f"{row['p']:.3g}, Holm over the {len(tests)} metrics {row['p_holm']:.3g}"
        note = f" Caution: {row['note']}." if row["note"] else ""
        lines.append(f"Vessel segmentation on {card} ({n_test} test images, {row['n']} seeds), U-Net pretrained on "
                     f"phantoms then fine-tuned vs the same U-Net on real images only: test {row['metric']} "
                     f"{_mean(summary, FINETUNED, row['metric']):.3f} vs {_mean(summary, REAL_ONLY, row['metric']):.3f}"
                     f", difference {row['difference']:+.3f} (95% CI {row['ci_low']:+.3f} to {row['ci_high']:+.3f}), "
                     f"paired t-test over seeds p={p}.{note}")
    refs = [f"{m} {_mean(summary, m, 'dice'):.3f}" for m in summary["method"].unique()
            if m not in (FINETUNED, REAL_ONLY)]
    lines.append(f"For reference, Dice of the other methods: {', '.join(refs)}.")
    dice = tests[tests["metric"] == "dice"].to_dict("records")
    if not dice or np.isnan(dice[0]["p"]):
        lines.append("Verdict (vessels): no test could be made (fewer than 3 seeds or no spread).")
    elif dice[0]["p"] < 0.05:  # Dice is the primary metric: its own p decides, the others are secondary
        word = "helped" if dice[0]["difference"] > 0 else "hurt"
        lines.append(f"Verdict (vessels): phantom pretraining {word} (Dice {dice[0]['difference']:+.3f}, "
                     f"p={dice[0]['p']:.3g}).")
    else:
        lines.append("Verdict (vessels): phantom pretraining made no significant difference to Dice, the primary "
                     f"metric ({dice[0]['difference']:+.3f}, p={dice[0]['p']:.3g}).")
    others = tests[(tests["metric"] != "dice") & (tests["p_holm"] < 0.05)]
    if len(others):
        lines.append("Secondary metrics that differ after Holm's correction: " + ", ".join(
            f"{r['metric']} {r['difference']:+.3f} (Holm p={r['p_holm']:.3g})" for r in others.to_dict("records"))
            + ".")
    return lines


def run_vessel_study(cfg: VesselStudyConfig, out: str | Path) -> Path:
    """Run (or resume) the study in `out`; write per-image, summary and test tables and vessel_study.json."""
    run = RunDir(out, STAGE, cfg)
    if run.open() == "done":
        return run.path
    data = load_card(cfg.card)
    check_card(cfg, data)
    rows_test = test_rows(cfg, data)
    train_rows = [r for r in range(len(data)) if r not in set(rows_test)]
    check_patients(data, train_rows, rows_test)
    test = TestSet(cfg, data, rows_test)
    train = None
    records = _fixed_units(cfg, run, test)
    for seed in cfg.seeds:
        if train is None and not all(_unit(run, f"{a}_seed_{seed}").is_file() for a in (FINETUNED, REAL_ONLY)):
            train = real_examples(cfg, data, train_rows)
        records += _seed_units(cfg, run, test, train, seed)
    per_image = pd.DataFrame(records, columns=["method", "seed", "image", "metric", "value"])
    summary, tests = summarise_study(per_image)
    for name, df in ((PER_IMAGE, per_image), (SUMMARY, summary), (TESTS, tests)):
        write_table_pair(df, run.path / name)
    atomic_write_json(run.path / STUDY_FILE, {
        "card": data.card.name, "test_images": test.ids, "train_images": len(train_rows), "seeds": cfg.seeds,
        "summary": summary.to_dict("records"), "tests": tests.to_dict("records"),
        "verdict": verdict_lines(data.card.name, len(rows_test), summary, tests)})
    run.complete(test_images=len(rows_test), train_images=len(train_rows), seeds=len(cfg.seeds))
    return run.path
