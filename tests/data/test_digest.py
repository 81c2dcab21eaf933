"""Content digests: an edited manifest, label or image changes a card's digest; an unchanged file is not re-read."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from synthfm.data import digest
from synthfm.data.digest import card_files, file_digests, path_digest


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHFM_CACHE", str(tmp_path / "cache"))


def test_card_digest_follows_manifest_yaml_and_image_bytes(make_card: Callable[..., Path]) -> None:
    card = make_card(n=6)
    first = path_digest(card)
    assert path_digest(card) == first
    df = pd.read_csv(card / "manifest.csv")
    df.loc[2, "grade"] = 0  # a relabelled row
    df.to_csv(card / "manifest.csv", index=False)
    relabelled = path_digest(card)
    assert relabelled != first
    (card / "img/004.png").write_bytes((card / "img/004.png").read_bytes() + b"\0")
    assert path_digest(card) != relabelled
    assert {p.name for p in card_files(card)} >= {"dataset.yaml", "manifest.csv", "000.png", "005.png"}


def test_unchanged_fingerprint_is_not_reread_and_a_touch_keeps_the_digest(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 1000)
    reads: list[str] = []
    real = digest.file_sha256
    monkeypatch.setattr(digest, "file_sha256", lambda p: reads.append(Path(p).name) or real(p))
    first = file_digests([f])
    assert file_digests([f]) == first and reads == ["a.bin"]
    os.utime(f, ns=(1, 1))  # size+mtime changed: hashed in full again, same bytes -> same digest
    assert file_digests([f]) == first and reads == ["a.bin", "a.bin"]
    f.write_bytes(b"y" * 1000)
    assert file_digests([f]) != first


def test_prepare_refuses_to_reuse_a_folder_prepared_from_other_bytes(make_card: Callable[..., Path],
                                                                     tmp_path: Path) -> None:
    from synthfm.data.prepare import prepare_card
    from synthfm.data.preprocess import PrepareConfig
    from synthfm.errors import SynthfmError

    card = make_card(n=6)
    cfg = PrepareConfig(size=16)
    prepare_card(card, tmp_path / "prep", cfg)
    prepare_card(card, tmp_path / "prep", cfg)  # same bytes: reused
    df = pd.read_csv(card / "manifest.csv")
    df.loc[1, "grade"] = 0
    df.to_csv(card / "manifest.csv", index=False)
    with pytest.raises(SynthfmError, match="different config"):
        prepare_card(card, tmp_path / "prep", cfg)
