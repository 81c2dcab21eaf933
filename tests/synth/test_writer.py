"""Tests of `render_phantom`: cards that load, ground-truth labels, no-op reruns, resume, target matching."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chisquare

from synthfm.data.images import load_image
from synthfm.data.manifest import load_card
from synthfm.data.readers import open_dataset
from synthfm.data.vocabulary import AGE_EDGES
from synthfm.errors import SynthfmError
from synthfm.synth.fundus import FUNDUS_TASKS, FundusPhantom
from synthfm.synth.registry import generator_spec
from synthfm.synth.targets import TargetConfig
from synthfm.synth.writer import PhantomConfig, plan_conditions, render_phantom

ORIGINAL_GENERATE = FundusPhantom.generate
FOLDER = PhantomConfig(n=6, size=64, seed=1)
SHARDS = PhantomConfig(n=8, size=64, seed=1, format="shards", shard_size=3)  # 7 train + 1 test rows
SEXES = ("F", "M")
# Target card counts by [DR grade 0/2/4][sex F/M][age band <40 / 40-70 / >70]; strongly sex-skewed.
TARGET_COUNTS = np.array([[[40, 25, 10], [8, 6, 3]],
                          [[6, 20, 12], [20, 30, 8]],
                          [[2, 10, 8], [12, 6, 14]]])
TARGET_GRADES = (0, 2, 4)
BAND_AGES = (30.0, 55.0, 80.0)


class Killed(RuntimeError):
    """Stands in for the process dying mid-run."""


def spy_generate(monkeypatch: pytest.MonkeyPatch, limit: int | None = None) -> list[int]:
    """Record the seed of every image rendered; raise Killed once `limit` images are done."""
    seeds: list[int] = []

    def generate(self: FundusPhantom, condition: dict[str, Any], seed: int, size: int = 256) -> Any:
        if limit is not None and len(seeds) >= limit:
            raise Killed(f"killed after {limit} images")
        seeds.append(seed)
        return ORIGINAL_GENERATE(self, condition, seed, size)

    monkeypatch.setattr(FundusPhantom, "generate", generate)
    return seeds


def progress_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Rows the writer has logged as finished."""
    path = run_dir / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def output_bytes(run_dir: Path) -> dict[str, bytes]:
    """Every image, mask and shard file of a run, by relative path."""
    files = [p for sub in ("images", "masks", "shards") for p in (run_dir / sub).rglob("*") if p.is_file()]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


def rerender(row: pd.Series, size: int) -> np.ndarray:
    """Render a manifest row again from its recorded condition and seed."""
    return ORIGINAL_GENERATE(FundusPhantom(), json.loads(row["condition"]), int(row["seed"]), size).image


def check_ground_truth(df: pd.DataFrame, labels: dict[str, np.ndarray]) -> None:
    """Card labels and metadata equal the condition recorded in each row's params."""
    for i, row in df.iterrows():
        truth = json.loads(row["params"])["condition"]
        assert {t: int(labels[t][i]) for t in FUNDUS_TASKS} == {t: truth[t] for t in FUNDUS_TASKS}
        assert (row["age"], row["sex"], row["ethnicity"], row["device"]) == (
            truth["age"], truth["sex"], truth["ethnicity"], truth["device"])
        assert json.loads(row["params"])["seed"] == row["seed"]


# ----------------------------------------------------------------------------- cards


def test_folder_card_loads_with_ground_truth(tmp_path: Path) -> None:
    """A folder card loads; labels match params; each image and mask file is the re-rendered sample."""
    data = load_card(render_phantom(tmp_path / "card", FOLDER))
    assert len(data) == FOLDER.n and data.card.provenance.kind == "synthetic"
    assert data.df["seed"].nunique() == FOLDER.n and sorted(data.card.masks) == sorted(
        ["vessels", "artery_vein", "disc", "cup", "lesions", "fov"])
    check_ground_truth(data.df, data.labels)
    for i, row in data.df.iterrows():
        sample = ORIGINAL_GENERATE(FundusPhantom(), json.loads(row["condition"]), int(row["seed"]), FOLDER.size)
        np.testing.assert_array_equal(load_image(data.image_path(i)), sample.image)
        fov = load_image(data.source_root / row["mask_fov"], channels=1)
        np.testing.assert_array_equal(fov.squeeze(), sample.masks["fov"])


def test_shard_card_loads_with_ground_truth(tmp_path: Path) -> None:
    """A shard card loads and streams every image once, with the manifest's labels and the rendered pixels."""
    data = load_card(render_phantom(tmp_path / "card", SHARDS))
    assert len(data) == SHARDS.n and data.card.source.format == "shards"
    check_ground_truth(data.df, data.labels)
    seen = []
    for item in open_dataset(data, transform=lambda a: a):
        i = item["index"]
        seen.append(i)
        assert {k: int(v) for k, v in item["labels"].items()} == {t: int(data.labels[t][i]) for t in FUNDUS_TASKS}
        np.testing.assert_array_equal(item["image"], rerender(data.df.iloc[i], SHARDS.size))
    assert sorted(seen) == list(range(SHARDS.n))


def test_same_config_twice_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished run is not rendered again and its files are untouched; a new config there is refused."""
    card = render_phantom(tmp_path / "card", FOLDER)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "card").rglob("*") if p.is_file()}
    rendered = spy_generate(monkeypatch, limit=0)
    assert render_phantom(tmp_path / "card", FOLDER) == card
    assert rendered == []
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "card").rglob("*") if p.is_file()} == stamps
    with pytest.raises(SynthfmError, match="different config"):
        render_phantom(tmp_path / "card", FOLDER.model_copy(update={"seed": 2}))


@pytest.mark.parametrize("cfg", [FOLDER, SHARDS], ids=["folder", "shards"])
def test_killed_run_resumes_to_identical_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                cfg: PhantomConfig) -> None:
    """After a kill only unfinished images are rendered again, and the output is byte-identical."""
    reference = render_phantom(tmp_path / "reference", cfg)
    killed_after = 5  # folder: 5 images written; shards of 3: the kill lands inside a shard
    spy_generate(monkeypatch, limit=killed_after)
    with pytest.raises(Killed):
        render_phantom(tmp_path / "run", cfg)
    done = progress_rows(tmp_path / "run")
    if cfg.format == "folder":
        assert len(done) == killed_after
    else:  # images of the half-written shard are lost with it; finished shards are on disk
        assert killed_after - cfg.shard_size < len(done) < killed_after
        assert all((tmp_path / "run" / r["path"].split("#")[0]).is_file() for r in done)
    assert not (tmp_path / "run" / "COMPLETE.json").exists()
    assert not [p for p in (tmp_path / "run").rglob("*.tmp*")]
    resumed = spy_generate(monkeypatch)
    card = render_phantom(tmp_path / "run", cfg)
    assert len(resumed) == cfg.n - len(done)
    assert not set(resumed) & {r["seed"] for r in done}
    assert output_bytes(tmp_path / "run") == output_bytes(tmp_path / "reference")
    pd.testing.assert_frame_equal(load_card(card).df, load_card(reference).df)


def test_fixed_condition_applies_to_every_image(tmp_path: Path) -> None:
    """Labels and metadata in `condition` are in every row, as given and as rendered."""
    cond = {"dr_grade": 3, "glaucoma": "yes", "sex": "F", "device": "canon"}
    data = load_card(render_phantom(tmp_path / "card", PhantomConfig(n=4, size=64, condition=cond)))
    assert data.labels["dr_grade"].tolist() == [3] * 4 and data.labels["glaucoma"].tolist() == [1] * 4
    assert set(data.df["sex"]) == {"F"} and set(data.df["device"]) == {"canon"}
    assert all(json.loads(c) == cond for c in data.df["condition"])
    check_ground_truth(data.df, data.labels)


def test_unknown_condition_key_is_an_error(tmp_path: Path) -> None:
    """An unknown key names itself and lists the allowed ones."""
    with pytest.raises(SynthfmError, match="colour") as err:
        render_phantom(tmp_path / "card", PhantomConfig(n=2, size=64, condition={"colour": "blue"}))
    assert "dr_grade" in err.value.fix


def test_rejected_condition_leaves_folder_reusable(tmp_path: Path) -> None:
    """After an unknown-key error, the corrected config renders into the same folder."""
    with pytest.raises(SynthfmError):
        render_phantom(tmp_path / "card", PhantomConfig(n=2, size=64, condition={"colour": "blue"}))
    assert load_card(render_phantom(tmp_path / "card", PhantomConfig(n=2, size=64))).df.shape[0] == 2


def test_priors_override_the_generator_priors(tmp_path: Path) -> None:
    """`priors` reach the generator: DR grades drawn only from the grades given non-zero probability."""
    cfg = PhantomConfig(n=12, size=32, priors={"dr_grade": [0.0, 0.0, 0.0, 0.5, 0.5]})
    data = load_card(render_phantom(tmp_path / "card", cfg))
    assert set(data.labels["dr_grade"].tolist()) <= {3, 4} and len(set(data.labels["dr_grade"].tolist())) == 2
    check_ground_truth(data.df, data.labels)


@pytest.mark.parametrize(("generator", "priors", "named"), [
    ("fundus_phantom", {"dr_grades": [1.0]}, "dr_grades"),
    ("fundus_phantom", {"dr_grade": [0.5, 0.5]}, "dr_grade"),
    ("cxr_phantom", {"tb": [0.5, 0.5]}, "cxr_phantom"),
])
def test_bad_priors_are_one_clear_error(tmp_path: Path, generator: str, priors: dict, named: str) -> None:
    """Unknown, malformed or unsupported priors name themselves before any file is written."""
    with pytest.raises(SynthfmError, match=named) as err:
        render_phantom(tmp_path / "card", PhantomConfig(generator=generator, n=2, size=32, priors=priors))
    assert "priors" in err.value.fix and not (tmp_path / "card").exists()


# ----------------------------------------------------------------------------- target distribution


def _target_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Replace make_card's rows' labels and metadata with the TARGET_COUNTS design."""
    cells = [(g, s, b) for g in range(3) for s in range(2) for b in range(3)]
    rows = [(TARGET_GRADES[g], SEXES[s], BAND_AGES[b] + k % 7) for g, s, b in cells
            for k in range(TARGET_COUNTS[g, s, b])]
    assert len(rows) == len(df)
    return df.assign(dr=[r[0] for r in rows], sex=[r[1] for r in rows], age=[r[2] for r in rows])


@pytest.fixture
def target_card(make_card: Callable[..., Path]) -> Path:
    """A real-looking card whose DR grade x sex x age-band counts are TARGET_COUNTS."""
    tasks = [{"name": "dr", "type": "ordinal", "classes": ["none", "mild", "moderate", "severe", "pdr"]}]
    return make_card(n=int(TARGET_COUNTS.sum()), card={"tasks": tasks}, rows=_target_rows, name="target")


def _joint_counts(conds: list[dict[str, Any]]) -> np.ndarray:
    """Counts of the planned conditions in the [grade 0..4][sex][age band] table."""
    counts = np.zeros((5, 2, 3), int)
    for c in conds:
        counts[c["dr_grade"], SEXES.index(c["sex"]), int(np.digitize(c["age"], AGE_EDGES[1:-1]))] += 1
    return counts


def test_target_distribution_met_within_sampling_error(target_card: Path) -> None:
    """Planned conditions follow the target's joint label x sex x age band law (chi-square), not another one."""
    target = TargetConfig(card=str(target_card), task_map={"dr": "dr_grade"})
    cfg = PhantomConfig(n=400, seed=3, target=target, condition={"glaucoma": 1})
    conds = plan_conditions(cfg, generator_spec("fundus_phantom"))
    assert len(conds) == cfg.n and all(c["glaucoma"] == 1 for c in conds)
    assert all(20.0 <= c["age"] <= 90.0 for c in conds)
    observed = _joint_counts(conds)
    assert observed[[1, 3]].sum() == 0  # grades absent from the target are never drawn
    observed = observed[list(TARGET_GRADES)].ravel()
    p_target = TARGET_COUNTS.ravel() / TARGET_COUNTS.sum()
    assert chisquare(observed, cfg.n * p_target).pvalue > 0.01
    p_swapped = TARGET_COUNTS[:, ::-1].ravel() / TARGET_COUNTS.sum()  # same marginals of grade and band, sex flipped
    assert chisquare(observed, cfg.n * p_swapped).pvalue < 1e-6


def test_fixed_condition_overrides_target(target_card: Path) -> None:
    """A fixed key beats the target's value; other keys still come from the target."""
    target = TargetConfig(card=str(target_card), task_map={"dr": "dr_grade"})
    conds = plan_conditions(PhantomConfig(n=50, target=target, condition={"sex": "M"}),
                            generator_spec("fundus_phantom"))
    assert {c["sex"] for c in conds} == {"M"} and {c["dr_grade"] for c in conds} == set(TARGET_GRADES)


def test_parameter_overrides_reach_the_generator(tmp_path: Path) -> None:
    """A rendering parameter in the condition (cup_to_disc) is accepted and recorded in params."""
    card = render_phantom(tmp_path / "c", PhantomConfig(n=2, size=64, condition={"cup_to_disc": 0.8}))
    data = load_card(card)
    assert all(abs(json.loads(p)["cup_to_disc"] - 0.8) < 1e-9 for p in data.df["params"])
