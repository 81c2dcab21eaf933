"""The real sets in ../shared/data load, inspect, split and prepare through their cards alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthfm.data.inspect import inspect_card
from synthfm.data.manifest import SPLIT, load_card
from synthfm.data.prepare import prepare_card
from synthfm.data.preprocess import PrepareConfig
from synthfm.data.readers import open_dataset
from synthfm.data.splits import SplitConfig, split_card

EXPECTED = {"retinamnist": 1600, "chase_db1": 28, "csdi_cataract": 187, "pneumonia_kermany_224": 1024}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_card_loads_and_inspects(name: str, cards_dir: Path, shared_data: Path) -> None:
    rep = inspect_card(cards_dir / f"{name}.yaml", sample=10)
    assert rep.rows == EXPECTED[name] and not rep.errors


def test_retinamnist_official_split_counts(cards_dir: Path, shared_data: Path) -> None:
    rep = inspect_card(cards_dir / "retinamnist.yaml", sample=5)
    assert rep.splits == {"test": 400, "train": 1080, "val": 120}
    assert rep.labels["dr_grade"]["train"] == {"0": 486, "1": 128, "2": 206, "3": 194, "4": 66}


def test_pneumonia_split_map_and_patients(cards_dir: Path, shared_data: Path) -> None:
    data = load_card(cards_dir / "pneumonia_kermany_224.yaml")
    assert (data.df[SPLIT] == "train").sum() == 400 and data.channels == 1
    assert int(data.labels["pneumonia"].sum()) == 390 + 200


def test_csdi_patients_derived_from_names(cards_dir: Path, shared_data: Path) -> None:
    data = load_card(cards_dir / "csdi_cataract.yaml")
    pid = data.df.set_index("source_id")["patient"]
    assert pid["HJX1.jpg"] == pid["HJX2.jpg"] == "HJX"
    assert pid["cataract_001.png"] != pid["cataract_002.png"]


@pytest.mark.parametrize("name", ["chase_db1", "csdi_cataract"])
def test_split_then_prepare(name: str, cards_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    split = split_card(cards_dir / f"{name}.yaml", tmp_path / "split", SplitConfig(ratios=(0.6, 0.2, 0.2)))
    data = load_card(split)
    assert set(data.df[SPLIT]) == {"train", "val", "test"}
    prepared = load_card(prepare_card(split, tmp_path / "prep", PrepareConfig(size=64, limit=6)))
    sample = open_dataset(prepared)[0]
    assert sample["image"].shape == (3, 64, 64)
    if name == "chase_db1":
        mask = prepared.card_dir / prepared.df["vessel_mask_1stHO"].iat[0]
        assert mask.is_file()


def test_retinamnist_prepare_to_shards(cards_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    card = prepare_card(cards_dir / "retinamnist.yaml", tmp_path / "rm",
                        PrepareConfig(size=32, format="shards", encoding="npy", limit=50, shard_size=20))
    data = load_card(card)
    batch = [s for s in open_dataset(data, "train")]
    assert len(batch) == 50 and batch[0]["image"].shape == (3, 32, 32)


def test_cxr_prepare_is_grayscale(cards_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    data = load_card(prepare_card(cards_dir / "pneumonia_kermany_224.yaml", tmp_path / "cxr",
                                  PrepareConfig(size=64, limit=4)))
    img = open_dataset(data)[0]["image"]
    assert img.shape == (1, 64, 64) and int(img.max()) == 255 and int(img.min()) == 0


def test_import_real_retinamnist_npz(shared_data: Path, tmp_path: Path) -> None:
    from synthfm.data.npz import import_npz

    card = import_npz(shared_data / "retinamnist/retinamnist.npz", tmp_path / "rm", "retinamnist",
                      task="dr_grade", task_type="ordinal")
    rep = inspect_card(card, sample=5)
    assert rep.splits == {"test": 400, "train": 1080, "val": 120}
    assert rep.labels["dr_grade"]["test"] == {"0": 174, "1": 46, "2": 92, "3": 68, "4": 20}
