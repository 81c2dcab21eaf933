"""`synth merge`: shard cards joined into one card that every stage reads like any other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from synthfm.cli import app, main
from synthfm.data.manifest import load_card
from synthfm.data.shard_index import open_random_access
from synthfm.errors import SynthfmError
from synthfm.synth.merge import merge_cards
from synthfm.synth.writer import PhantomConfig, render_phantom


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two fundus phantom shard cards (10 and 7 images, different seeds; their ids and patients overlap)."""
    root = tmp_path_factory.mktemp("parts")
    return [render_phantom(root / f"p{j}", PhantomConfig(format="shards", n=n, size=32, shard_size=4, seed=j))
            for j, n in enumerate((10, 7))]


def test_merge_keeps_every_image_and_makes_ids_unique(parts: list[Path], tmp_path: Path) -> None:
    """17 rows in part order, each the same pixels and labels as in its part; shared ids get the part prefix."""
    merged = load_card(merge_cards(parts, tmp_path / "m"))
    assert len(merged) == 17 and merged.df["image_id"].is_unique
    assert merged.card.provenance.kind == "synthetic" and "merge_part" in merged.card.provenance.row_columns
    whole = open_random_access(merged)
    pos = 0
    for part in parts:
        data = load_card(part)
        ds = open_random_access(data)
        for i in range(len(data)):
            assert np.array_equal(whole.raw(pos), ds.raw(i))
            for task, labels in data.labels.items():
                assert np.array_equal(merged.labels[task][pos], labels[i])
            pos += 1
    assert sorted(p.name for p in (tmp_path / "m" / "shards").glob("*.tar"))[0].count("-p") == 1
    patients = merged.df[merged.card.metadata.patient_id].astype(str)
    assert patients.groupby(merged.df["merge_part"]).apply(lambda s: set(s)).pipe(
        lambda sets: not (sets.iloc[0] & sets.iloc[1]))


def test_merge_again_is_a_noop_and_the_cli_prints_the_card(parts: list[Path], tmp_path: Path) -> None:
    """A second merge of the same parts does no work; the CLI prints the merged card's path."""
    first = merge_cards(parts, tmp_path / "m")
    stamp = first.stat().st_mtime_ns
    result = CliRunner().invoke(app, ["synth", "merge", str(parts[0]), str(parts[1]), "-o", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(first) and first.stat().st_mtime_ns == stamp


def test_merge_refuses_folder_cards_and_mixed_modalities(parts: list[Path], tmp_path: Path, capsys) -> None:
    """A folder card or a chest X-ray part is one clear error naming the part."""
    folder = render_phantom(tmp_path / "folder", PhantomConfig(n=4, size=32))
    with pytest.raises(SynthfmError, match="folder card; merge joins shard cards"):
        merge_cards([parts[0], folder], tmp_path / "a")
    cxr = render_phantom(tmp_path / "cxr", PhantomConfig(generator="cxr_phantom", format="shards", n=4, size=32))
    with pytest.raises(SynthfmError, match="is cxr, the first part is fundus"):
        merge_cards([parts[0], cxr], tmp_path / "b")
    with pytest.raises(SystemExit) as exit_:
        main(["synth", "merge", str(parts[0]), str(folder), "-o", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "folder card" in err and "Traceback" not in err
    assert not (tmp_path / "c" / "dataset.yaml").exists()
