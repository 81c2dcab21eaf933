"""NIfTI volumes: axis order and spacing, resampling, cube fitting, prepare into a volume card, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from synthfm.data.inspect import inspect_card
from synthfm.data.manifest import load_card
from synthfm.data.nifti import fit_cube, read_nifti, resample
from synthfm.data.prepare import prepare_card
from synthfm.data.preprocess import PrepareConfig
from synthfm.data.readers import open_dataset
from synthfm.errors import SynthfmError


def test_read_gives_zyx_array_and_spacing(tmp_path: Path, nifti_file) -> None:
    vol = np.zeros((4, 5, 6), np.int16)  # stored (x, y, z)
    vol[3, 1, 2] = 7
    arr, spacing = read_nifti(nifti_file(tmp_path / "v.nii.gz", vol, (0.5, 0.8, 2.5)))
    assert arr.shape == (6, 5, 4) and arr.dtype == np.float32 and arr[2, 1, 3] == 7
    assert spacing == (2.5, pytest.approx(0.8), 0.5)


def test_four_d_and_non_nifti_files_are_clear_errors(tmp_path: Path, nifti_file) -> None:
    with pytest.raises(SynthfmError, match=r"4D NIfTI of shape \(4, 4, 4, 3\) \(3 volumes\) where a 3D volume is "
                                           r"expected") as err:
        read_nifti(nifti_file(tmp_path / "t.nii.gz", np.zeros((4, 4, 4, 3), np.float32)))
    assert "slicer" in err.value.fix
    arr, _ = read_nifti(nifti_file(tmp_path / "one.nii", np.ones((4, 4, 4, 1), np.float32)))
    assert arr.shape == (4, 4, 4)
    (tmp_path / "x.nii.gz").write_bytes(b"not gzip, not nifti")
    with pytest.raises(SynthfmError, match="not a readable NIfTI file"):
        read_nifti(tmp_path / "x.nii.gz")


def test_resample_to_target_spacing() -> None:
    vol = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    out, spacing = resample(vol, (3.0, 1.0, 1.0), (1.5, 2.0, 1.0))
    # 4 slices of 3 mm -> 8 of 1.5 mm; 6 rows of 1 mm -> 3 of 2 mm; columns unchanged
    assert out.shape == (8, 3, 8) and spacing == (1.5, 2.0, 1.0)
    assert out.min() >= vol.min() and out.max() <= vol.max()


def test_fit_cube_pad_and_crop() -> None:
    vol = np.ones((2, 4, 6), np.uint8)
    padded, side = fit_cube(vol, "pad")
    assert side == 6 and padded.sum() == 48 and padded[2:4, 1:5, :].all() and not padded[0].any()
    cropped, side = fit_cube(np.arange(2 * 4 * 6).reshape(2, 4, 6), "crop")
    assert side == 2 and cropped.shape == (2, 2, 2) and cropped[0, 0, 0] == 1 * 6 + 2  # rows 1:3, cols 2:4


def _volume_card(root: Path, nifti_file, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        vol = rng.normal(100, 5, (12, 10, 8)).astype(np.float32)  # (x, y, z), 1 x 1 x 2 mm
        if i % 2:
            vol[2:6, 2:6, 2:5] += 400
        nifti_file(root / f"vols/{i}.nii.gz", vol, (1.0, 1.0, 2.0))
        rows.append({"path": f"vols/{i}.nii.gz", "lesion": i % 2, "split": "train" if i < 4 else "test"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    spec = {"name": "toy_volumes", "modality": "volume", "source": {"format": "nifti", "root": "."},
            "tasks": [{"name": "lesion", "type": "binary", "classes": ["no", "yes"]}]}
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root


def test_volume_card_reads_inspects_and_prepares(tmp_path: Path, nifti_file) -> None:
    card = _volume_card(tmp_path / "src", nifti_file)
    data = load_card(card)
    s = open_dataset(data, "train")[1]
    assert s["image"].shape == (1, 8, 10, 12) and s["image"].dtype.is_floating_point is False
    assert open_dataset(data, "train", size=16)[0]["image"].shape == (1, 16, 16, 16)
    rep = inspect_card(card, sample=0)
    assert not rep.errors and rep.images["sizes"] == {"8x10x12": 6}
    assert "spacing 2x1x1" in next(iter(rep.images["modes"]))
    out = prepare_card(card, tmp_path / "prep", PrepareConfig(size=16, spacing=(2.0, 2.0, 2.0)))
    prepared = load_card(out)
    assert prepared.card.source.format == "nifti"
    row = prepared.df.iloc[0]
    # source 8 x 10 x 12 voxels of 2 x 1 x 1 mm -> resampled to 8 x 5 x 6 of 2 mm -> padded to an 8-cube -> 16
    assert row["source_shape"] == "8x10x12" and row["source_spacing_z"] == 2.0 and row["spacing_z"] == 1.0
    vol, spacing = read_nifti(prepared.image_path(0))
    assert vol.shape == (16, 16, 16) and spacing == (1.0, 1.0, 1.0)
    s = open_dataset(prepared, "train", size=16)[1]
    assert s["image"].shape == (1, 16, 16, 16) and int(s["labels"]["lesion"]) == 1
    with pytest.raises(SynthfmError, match="not shards"):
        prepare_card(card, tmp_path / "sh", PrepareConfig(size=16, format="shards"))


def test_nifti_card_must_be_a_volume_card(tmp_path: Path, nifti_file) -> None:
    card = _volume_card(tmp_path, nifti_file, n=2)
    spec = yaml.safe_load((card / "dataset.yaml").read_text()) | {"modality": "cxr"}
    (card / "dataset.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SynthfmError, match="set modality: volume"):
        load_card(card)
