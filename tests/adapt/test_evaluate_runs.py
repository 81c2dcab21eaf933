"""`synthfm evaluate EXP`: fairness tables from each run's saved predictions, label curves, the report's readers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from synthfm.adapt.commands import evaluate_command
from synthfm.adapt.experiment import run_experiment
from synthfm.data.manifest import load_card
from synthfm.errors import SynthfmError
from synthfm.evaluate.experiment import evaluate_experiment
from synthfm.evaluate.fairness import FairnessConfig
from synthfm.evaluate.predictions import run_path
from synthfm.evaluate.results import efficiency_curve, fairness_tables, load_results

SEEDS = (0, 1)
FCFG = FairnessConfig(attributes=["age", "sex", "site"], min_n=4, min_per_class=1, n_boot=200)


@pytest.fixture(scope="module")
def experiment(tiny_cfg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-seed, two-fraction linear probe on the phantom card."""
    out = tmp_path_factory.mktemp("exp") / "probe"
    run_experiment(tiny_cfg(policy="linear_probe", epochs=1, seeds=list(SEEDS), label_fractions=[0.5, 1.0]), out)
    return out


def test_predictions_carry_card_metadata(experiment: Path, phantom_card: Path) -> None:
    data = load_card(phantom_card)
    preds = pd.read_parquet(run_path(experiment, 1.0, 0) / "predictions_test.parquet")
    rows = data.df.iloc[preds["index"]]
    for field in ("age", "sex", "ethnicity", "device", "patient_id", "image_id"):
        np.testing.assert_array_equal(preds[field].to_numpy(), rows[field].to_numpy())
    assert len(preds) == len(data.indices("test"))


def test_fairness_tables_match_hand_computation(experiment: Path) -> None:
    tables = evaluate_experiment(experiment, FCFG)
    epochs = tables["finetune_curve"]  # one epoch per run: its logged validation AUROC, averaged over seeds
    assert list(epochs["epoch"]) == [1, 1] and (epochs["n"] == 2).all() and (epochs["seconds"] > 0).all()
    logged = [json.loads((run_path(experiment, 1.0, s) / "metrics.jsonl").read_text().splitlines()[0])["val_auroc"]
              for s in SEEDS]
    assert epochs.query("fraction == 1.0")["mean"].iloc[0] == pytest.approx(np.mean(logged))
    assert (experiment / "finetune_curve.parquet").is_file()
    sub = tables["subgroups"].query("fraction == 1.0 and split == 'test' and eval_set == 'internal'")
    assert set(sub["attribute"]) == {"age", "sex"}  # the phantom card records no site
    values = {}
    for seed in SEEDS:
        preds = pd.read_parquet(run_path(experiment, 1.0, seed) / "predictions_test.parquet")
        for sex, g in preds.groupby("sex"):
            row = sub.query("seed == @seed and attribute == 'sex' and group == @sex").iloc[0]
            small = len(g) < 4 or g["y"].nunique() < 2
            assert row["n"] == len(g) and bool(row["too_small"]) == small
            if not small:
                values[seed, sex] = roc_auc_score(g["y"], g["score"])
                assert row["auroc"] == pytest.approx(values[seed, sex])
                assert row["auroc_low"] <= row["auroc_high"]
        bands = pd.cut(preds["age"], [-np.inf, 40, 70, np.inf], right=False, labels=["0-40", "40-70", "70-120"])
        counts = sub.query("seed == @seed and attribute == 'age'").set_index("group")["n"]
        assert counts.to_dict() == {k: v for k, v in bands.value_counts().items() if v}
        both = [values.get((seed, s)) for s in ("F", "M")]
        gap = tables["gaps"].query("fraction == 1.0 and seed == @seed and attribute == 'sex' and metric == 'auroc_gap'")
        if None not in both:
            assert gap["value"].iloc[0] == pytest.approx(abs(both[0] - both[1]))
    summary = tables["subgroup_summary"].query("fraction == 1.0 and attribute == 'sex' and metric == 'auroc'")
    for sex in ("F", "M"):
        if all((s, sex) in values for s in SEEDS):
            mean = summary.query("group == @sex")["mean"].iloc[0]
            assert mean == pytest.approx(np.mean([values[s, sex] for s in SEEDS]))
    read = fairness_tables(experiment.parent)
    assert set(read) == {"subgroups", "subgroup_summary", "gaps", "gap_summary"}
    pd.testing.assert_frame_equal(read["subgroups"], tables["subgroups"], check_dtype=False)
    assert (experiment / "fairness" / "gap_summary.csv").is_file()


def test_planted_gap_found_from_run_predictions(experiment: Path, tmp_path: Path) -> None:
    exp = tmp_path / "planted"
    shutil.copytree(experiment, exp)
    rng = np.random.default_rng(0)
    n = 240
    expected = {}
    for seed in SEEDS:
        y = np.tile([0, 1], n // 2)
        sex = np.repeat(["F", "M"], n // 2)
        score = np.where(sex == "F", 0.1 + 0.8 * y, rng.uniform(0, 1, n))  # F perfect, M chance
        age = np.where(np.arange(n) % 3 == 0, 30.0, 60.0)
        for fraction in (0.5, 1.0):
            frame = pd.DataFrame({"index": np.arange(n), "y": y, "score": score, "sex": sex, "age": age})
            frame.to_parquet(run_path(exp, fraction, seed) / "predictions_test.parquet", index=False)
        m = sex == "M"
        pred = score >= 0.5
        expected[seed] = {"auroc_gap": 1.0 - roc_auc_score(y[m], score[m]),
                          "equalised_odds_difference": max(1 - pred[m & (y == 1)].mean(), pred[m & (y == 0)].mean())}
    tables = evaluate_experiment(exp, FairnessConfig())
    gaps = tables["gaps"].query("attribute == 'sex' and fraction == 1.0").set_index(["seed", "metric"])["value"]
    for seed in SEEDS:
        for name, value in expected[seed].items():
            assert gaps[seed, name] == pytest.approx(value)
    sub = tables["subgroups"].query("attribute == 'sex' and seed == 0 and fraction == 1.0").set_index("group")
    assert sub.loc["F", "auroc"] == 1.0 and sub.loc["F", "auroc_low"] == 1.0  # every resample is perfect
    assert sub.loc["M", "auroc_low"] < sub.loc["M", "auroc"] < sub.loc["M", "auroc_high"]
    summary = tables["gap_summary"].query("attribute == 'sex' and metric == 'auroc_gap' and fraction == 1.0")
    assert summary["mean"].iloc[0] == pytest.approx(np.mean([expected[s]["auroc_gap"] for s in SEEDS]))
    assert summary["mean"].iloc[0] > 0.4


def test_small_groups_reported_without_numbers(experiment: Path, tmp_path: Path) -> None:
    exp = tmp_path / "small"
    shutil.copytree(experiment, exp)
    tables = evaluate_experiment(exp, FairnessConfig(attributes=["sex"], min_n=1000, n_boot=0))
    assert tables["subgroups"]["too_small"].all() and "auroc" not in tables["subgroups"]
    summary = tables["subgroup_summary"]
    assert summary["too_small"].all() and summary["mean"].isna().all() and (summary["images"] > 0).all()
    assert tables["gaps"]["value"].isna().all()


def test_label_curve_and_results_readers(experiment: Path, tmp_path: Path, capsys) -> None:
    exp = tmp_path / "copy"
    shutil.copytree(experiment, exp)
    assert evaluate_command(exp) == 0
    assert "no subgroup tables" not in capsys.readouterr().out  # age and sex were split by
    curve = efficiency_curve(tmp_path).query("eval_set == 'internal' and split == 'test'").set_index("fraction")
    res = load_results(exp).query("metric == 'auroc' and split == 'test'")
    for fraction in (0.5, 1.0):
        v = res[res["fraction"] == fraction]["value"]
        assert curve.loc[fraction, "mean"] == pytest.approx(v.mean())
        assert curve.loc[fraction, "ci_high"] - v.mean() == pytest.approx(1.96 * v.std(ddof=1) / np.sqrt(2))
    both = load_results([experiment, exp])
    assert set(both["experiment"]) == {"probe", "copy"} and len(both) == 2 * len(res) * 14
    with pytest.raises(SynthfmError, match="not a finished adaptation experiment"):
        evaluate_experiment(run_path(exp, 1.0, 0).parent)


def test_a_vit_adapted_at_another_size_than_it_was_built_for_reloads(tiny_cfg, tmp_path: Path) -> None:
    """A random ViT built for 64 px, adapted at 32 px, finishes (its model card reloads the best classifier at 32 px)
    and reloads with the trainer's scores."""
    import torch

    from synthfm.adapt.adapted import load_adapted

    cfg = tiny_cfg(policy="finetune", epochs=1, warmup_epochs=0, image_size=32,
                   backbone_overrides={"depth": 1, "embed_dim": 48, "num_heads": 3})  # img_size left at 64
    exp = tmp_path / "exp"
    run_experiment(cfg, exp)
    model, _ = load_adapted(run_path(exp, 1.0, 0))
    assert model.encoder.pos_embed.shape[1] == 1 + (32 // 8) ** 2
    preds = pd.read_parquet(run_path(exp, 1.0, 0) / "predictions_test.parquet")
    data = load_card(cfg.card)
    from synthfm.data.readers import open_dataset

    ds = open_dataset(data, "test", size=32)
    x = torch.stack([ds[i]["image"] for i in range(4)])
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)[:, 1] if model(x).shape[1] > 1 else torch.sigmoid(model(x))[:, 0]
    assert np.allclose(probs.numpy(), preds["score"].to_numpy()[:4], atol=1e-5)
