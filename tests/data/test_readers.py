"""One dataset interface over folder, npz and shards: the same samples whatever the format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from synthfm.data.manifest import load_card
from synthfm.data.npz import import_npz
from synthfm.data.prepare import prepare_card
from synthfm.data.preprocess import PrepareConfig
from synthfm.data.readers import CardDataset, ShardDataset, open_dataset
from synthfm.data.shards import ShardRecord, iter_shards, shard_urls, write_shard
from synthfm.errors import SynthfmError


def _npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 10), ("val", 3), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 5).reshape(n, 1).astype(np.uint8)
    path = tmp_path / "toy.npz"
    np.savez(path, **arrays)
    return path


def test_import_npz_keeps_official_split_and_pixels(tmp_path: Path) -> None:
    npz = _npz(tmp_path)
    card = import_npz(npz, tmp_path / "card", "toy", task="grade", task_type="ordinal")
    data = load_card(card)
    assert {s: len(data.indices(s)) for s in ("train", "val", "test")} == {"train": 10, "val": 3, "test": 4}
    ds = open_dataset(data, "test")
    with np.load(npz) as z:
        np.testing.assert_array_equal(ds[2]["image"].permute(1, 2, 0).numpy(), z["test_images"][2])
        assert int(ds[2]["labels"]["grade"]) == int(z["test_labels"][2, 0])


def test_import_npz_rejects_non_medmnist(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(SynthfmError, match="no train_images"):
        import_npz(tmp_path / "x.npz", tmp_path / "c", "x")


def test_folder_dataset_with_transform_and_loader(make_card) -> None:
    data = load_card(make_card(n=8))
    ds = open_dataset(data, size=12, train=True)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 12, 12) and batch["image"].dtype == torch.float32
    assert batch["labels"]["grade"].tolist() == [0, 1, 2, 0]


def test_corrupt_image_in_loader_names_file(make_card) -> None:
    card = make_card(n=4)
    (card / "img/002.png").write_bytes(b"garbage")
    ds = CardDataset(load_card(card))
    with pytest.raises(SynthfmError, match=r"img/002.png \(manifest row 3\)"):
        ds[2]


def test_shards_equal_folder(make_card, tmp_path: Path) -> None:
    src = make_card(n=10, rows=lambda df: df.assign(split=["train"] * 7 + ["test"] * 3),
                    card={"split": {"column": "split"}, "metadata": {}})
    folder = prepare_card(src, tmp_path / "f", PrepareConfig(size=16, fov_crop=False))
    shards = prepare_card(src, tmp_path / "s", PrepareConfig(size=16, fov_crop=False, format="shards",
                                                             encoding="npy", shard_size=3))
    a, b = load_card(folder), load_card(shards)
    assert len(shard_urls(b.source_root, "train")) == 3
    fs = {int(s["index"]): s for s in open_dataset(a, "train")}
    ss = {int(s["index"]): s for s in open_dataset(b, "train")}
    assert sorted(fs) == sorted(ss) == list(range(7))
    for i in fs:
        assert torch.equal(fs[i]["image"], ss[i]["image"])
        assert int(fs[i]["labels"]["grade"]) == int(ss[i]["labels"]["grade"])


def test_shard_stream_splits_across_workers_without_duplicates(tmp_path: Path, make_card) -> None:
    for k in range(4):
        write_shard(tmp_path / f"train-{k:06d}.tar",
                    (ShardRecord(f"{k}{j:03d}", np.full((4, 4, 3), j, np.uint8), {"row": k * 10 + j})
                     for j in range(5)),
                    "png")
    data = load_card(make_card(n=40, card={"source": {"format": "shards", "root": str(tmp_path)}}))
    ds = ShardDataset(data, split=None)
    rows = [int(r) for b in DataLoader(ds, batch_size=5, num_workers=2) for r in b["index"]]
    assert sorted(rows) == sorted(k * 10 + j for k in range(4) for j in range(5))


def test_shard_write_is_atomic(tmp_path: Path) -> None:
    def boom():
        yield ShardRecord("a", np.zeros((2, 2, 3), np.uint8))
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        write_shard(tmp_path / "x-000000.tar", boom(), "npy")
    assert list(tmp_path.iterdir()) == []


def test_npy_shards_never_unpickle(tmp_path: Path) -> None:
    import io
    import json
    import tarfile
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with tarfile.open(tmp_path / "t-000000.tar", "w") as tar:
        for name, data in (("k.npy", buf.getvalue()), ("k.json", json.dumps({"row": 0}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SynthfmError, match="corrupt npy"):
        list(iter_shards([str(tmp_path / "t-000000.tar")], 3))


def test_no_shards_found(make_card, tmp_path: Path) -> None:
    data = load_card(make_card(n=2, card={"source": {"format": "shards", "root": str(tmp_path)}}))
    with pytest.raises(SynthfmError, match="no shards"):
        ShardDataset(data)
