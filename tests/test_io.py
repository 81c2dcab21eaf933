"""Atomic writes: files get the umask's mode (not mkstemp's 0600) unless a private mode is asked for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synthfm.io import atomic_path, atomic_write_bytes, atomic_write_json, current_umask, umask_mode


@pytest.fixture
def umask() -> object:
    """Run the test under umask 022 and restore the caller's afterwards."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path: Path, umask: object, mask: int) -> None:
    os.umask(mask)
    assert current_umask() == mask and umask_mode() == 0o666 & ~mask and umask_mode("dir") == 0o777 & ~mask
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_weights_follow_the_umask_though_safetensors_writes_a_private_file(tmp_path: Path, umask: object) -> None:
    import torch

    from synthfm.models.checkpoint import save_state

    save_state({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_private_mode_holds_from_the_first_byte(tmp_path: Path, umask: object) -> None:
    with atomic_path(tmp_path / "key.pem", mode=0o600) as tmp:
        assert tmp.stat().st_mode & 0o777 == 0o600  # before anything is written into it
        tmp.write_bytes(b"secret")
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    atomic_write_bytes(tmp_path / "salt", b"s" * 32, perms=0o600)
    assert (tmp_path / "salt").stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_table_by_suffix_and_pair(tmp_path: Path) -> None:
    """One writer for tables: Parquet or CSV by suffix (no temporary left), both for a pair, others refused."""
    import pandas as pd

    from synthfm.io import write_table, write_table_pair

    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert write_table(df, tmp_path / "t.csv") == "t.csv"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), df)
    write_table_pair(df, tmp_path / "both")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "both.parquet"), df)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "both.csv"), df)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both.csv", "both.parquet", "t.csv"]
    with pytest.raises(ValueError, match=r"not t\.json"):
        write_table(df, tmp_path / "t.json")


def test_one_file_hash_and_the_files_of_a_folder(tmp_path: Path) -> None:
    """file_sha256 is the SHA-256 of the bytes; folder_files skips hidden files and hidden folders at any depth."""
    import hashlib

    from synthfm.io import file_sha256, folder_files

    (tmp_path / "sub").mkdir()
    (tmp_path / ".cache").mkdir()
    for rel in ("b.txt", "sub/a.txt", ".lock", "sub/.x.tmp", ".cache/c.txt"):
        (tmp_path / rel).write_bytes(rel.encode() * 3)
    assert [p.relative_to(tmp_path).as_posix() for p in folder_files(tmp_path)] == ["b.txt", "sub/a.txt"]
    assert file_sha256(tmp_path / "b.txt") == hashlib.sha256(b"b.txtb.txtb.txt").hexdigest()
