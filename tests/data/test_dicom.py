"""DICOM input: LUTs and windowing to 8 bits (hand-computed values), tags into the manifest, one error per bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from pydicom.pixels import get_decoder
from pydicom.uid import HTJ2KLossless, JPEGLSLossless

from synthfm.cli import main
from synthfm.data.dicom import read_dicom, tag_value
from synthfm.data.inspect import inspect_card
from synthfm.data.manifest import load_card
from synthfm.data.readers import open_dataset
from synthfm.errors import SynthfmError

PIXELS = np.array([[0, 1000, 2000], [3000, 4000, 4095]], np.uint16)


def test_window_maps_the_12_bit_range_to_8_bits(tmp_path: Path, dicom_file) -> None:
    # LINEAR window C=2048, W=4096 over the unsigned 12-bit output range 0..4095 (PS3.3 C.11.2.1.2.1):
    # y = ((x - 2047.5) / 4095 + 0.5) * 4095 = x, then 8 bits = round(x * 255 / 4095): 1000 -> 62.27 -> 62
    arr, notes = read_dicom(dicom_file(tmp_path / "a.dcm", PIXELS, WindowCenter=2048, WindowWidth=4096))
    np.testing.assert_array_equal(arr, [[0, 62, 125], [187, 249, 255]])
    assert arr.dtype == np.uint8 and "VOI window" in notes[0]


def test_modality_lut_then_window(tmp_path: Path, dicom_file) -> None:
    # rescale 2x - 1000 (HU-like): stored 500 -> 0, 0 -> -1000, 1000 -> 1000; window C=0, W=2000.
    # output range -1000 .. 4095*2-1000 = 7190; y(0) = ((0 + 0.5) / 1999 + 0.5) * 8190 - 1000 = 3097.05
    # 8 bits: (3097.05 + 1000) * 255 / 8190 = 127.56 -> 128; -1000 and below -> 0; >= 1000 -> 255
    px = np.array([[0, 500, 1000, 4095]], np.uint16)
    arr, _ = read_dicom(dicom_file(tmp_path / "b.dcm", px, RescaleSlope=2, RescaleIntercept=-1000,
                                   WindowCenter=0, WindowWidth=2000))
    np.testing.assert_array_equal(arr, [[0, 128, 255, 255]])


def test_monochrome1_is_inverted_and_full_range_without_voi(tmp_path: Path, dicom_file) -> None:
    # no VOI: the data range 0..4095 maps to 0..255; MONOCHROME1 (high = dark) is inverted to 255 - v
    arr, notes = read_dicom(dicom_file(tmp_path / "c.dcm", PIXELS, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(arr, 255 - np.array([[0, 62, 125], [187, 249, 255]]))
    assert any("MONOCHROME1" in n for n in notes)


def test_bad_files_give_one_clear_error_each(tmp_path: Path, dicom_file) -> None:
    (tmp_path / "x.dcm").write_bytes(b"\x89PNG not a dicom at all")
    with pytest.raises(SynthfmError, match="not a DICOM file"):
        read_dicom(tmp_path / "x.dcm")
    with pytest.raises(SynthfmError, match="no pixel data") as err:
        read_dicom(dicom_file(tmp_path / "sr.dcm", None))
    assert "drop its row" in err.value.fix
    missing = [ts for ts in (JPEGLSLossless, HTJ2KLossless) if not get_decoder(ts).is_available]
    if not missing:
        pytest.skip("every compressed transfer syntax tried has a decoder installed here")
    with pytest.raises(SynthfmError, match="no decoder for it is installed") as err:
        read_dicom(dicom_file(tmp_path / "j.dcm", PIXELS, transfer_syntax=missing[0]))
    assert missing[0].name in err.value.message and "pip install pylibjpeg" in err.value.fix


def test_tag_values() -> None:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientAge, ds.PatientSex, ds.ViewPosition = "045Y", "F", "PA"
    assert tag_value(ds, "PatientAge") == 45.0 and tag_value(ds, "PatientSex") == "F"
    ds.PatientAge = "006M"
    assert tag_value(ds, "PatientAge") == 0.5
    assert tag_value(ds, "Manufacturer") is None


def _xray_folder(root: Path, dicom_file, n: int = 8) -> Path:
    """A folder of DICOM chest X-rays (a bright square on half of them) and a labels CSV, as a hospital exports."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        px = rng.integers(200, 600, (40, 32)).astype(np.uint16)
        if i % 2:
            px[10:30, 8:24] = 3500
        name = f"study{i:02d}/img.dcm"
        dicom_file(root / "dicom" / name, px, photometric="MONOCHROME1" if i == 3 else "MONOCHROME2",
                   PatientID=f"P{i // 2}", PatientAge=f"{40 + i:03d}Y", PatientSex="FM"[i % 2],
                   ViewPosition="PA" if i < 6 else "AP", Manufacturer="Acme")
        rows.append({"file": name, "finding": ["normal", "opacity"][i % 2], "split": "train" if i < 6 else "test"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def _card(root: Path, tags: dict[str, str] | None = None) -> Path:
    spec = {"name": "hospital_cxr", "modality": "cxr", "manifest": "labels.csv",
            "source": {"format": "dicom", "root": "dicom", "path_column": "file"},
            "tags": tags if tags is not None else {"patient": "PatientID", "age": "PatientAge", "sex": "PatientSex",
                                                   "view": "ViewPosition", "device": "Manufacturer"},
            "tasks": [{"name": "finding", "type": "binary", "classes": ["normal", "opacity"]}],
            "metadata": {"patient_id": "patient", "age": "age", "sex": "sex", "device": "device",
                         "extra": ["view"]}}
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root


def test_tags_fill_manifest_columns_and_reader_yields_8_bit(tmp_path: Path, dicom_file) -> None:
    data = load_card(_card(_xray_folder(tmp_path, dicom_file)))
    assert data.df["age"].tolist() == [40.0 + i for i in range(8)]
    assert data.df["sex"].tolist() == list("FMFMFMFM") and data.df["view"].tolist()[5:7] == ["PA", "AP"]
    sample = open_dataset(data, "train")[1]
    img = sample["image"]
    assert img.shape == (1, 40, 32) and img.dtype.is_floating_point is False
    assert int(img[0, 20, 16]) == 255 and int(sample["labels"]["finding"]) == 1  # the opacity is the maximum


def test_tags_need_a_dicom_card_and_known_keywords(tmp_path: Path, dicom_file) -> None:
    root = _card(_xray_folder(tmp_path, dicom_file), tags={"age": "PatientAgeX"})
    with pytest.raises(SynthfmError, match="PatientAgeX"):
        load_card(root)


def test_inspect_reports_a_bad_file_by_path(tmp_path: Path, dicom_file) -> None:
    root = _card(_xray_folder(tmp_path, dicom_file), tags={})
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    spec["metadata"] = {}
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    (root / "dicom/study02/img.dcm").write_bytes(b"JFIF but no dicom")
    rep = inspect_card(root, sample=0)
    assert [p.where for p in rep.errors] == [str(root / "dicom/study02/img.dcm")]
    assert "not a DICOM file" in rep.errors[0].message
    assert rep.images["modes"] == {"MONOCHROME2 12-bit": 6, "MONOCHROME1 12-bit": 1}


def _cli(args: list[str], capsys) -> tuple[int, str]:
    """Run the synthfm command in-process; (exit code, stdout + stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_folder_of_dicom_xrays_through_inspect_and_prepare_cli(tmp_path: Path, dicom_file, capsys) -> None:
    """The README's path for a new user: a folder of DICOM files + a CSV of labels -> inspect -> prepare."""
    root = _card(_xray_folder(tmp_path / "site", dicom_file))
    code, out = _cli(["data", "inspect", str(root)], capsys)
    assert code == 0, out
    assert "card OK" in out and "MONOCHROME1 12-bit" in out and "'PA': 6" in out
    prepared = tmp_path / "prepared"
    code, out = _cli(["data", "prepare", str(root), "-o", str(prepared), "--size", "16"], capsys)
    assert code == 0, out
    data = load_card(prepared)
    assert data.card.source.format == "folder" and not data.card.tags
    assert data.df["age"].tolist()[:2] == [40.0, 41.0] and set(data.df["view"]) == {"PA", "AP"}
    assert data.df["source_path"].tolist()[0] == "study00/img.dcm"
    img = np.asarray(Image.open(prepared / data.df["path"].iat[1]))
    assert img.shape == (16, 16) and img.dtype == np.uint8
    (root / "dicom/study05/img.dcm").write_bytes(b"garbage")
    code, out = _cli(["data", "prepare", str(root), "-o", str(tmp_path / "again"), "--size", "16"], capsys)
    assert code == 2 and "Traceback" not in out and "fix:" in out
    assert "manifest row 6" in out and "not a DICOM file" in out


def test_signed_ct_window(tmp_path: Path, dicom_file) -> None:
    # signed 16-bit CT, HU = stored - 1024; soft-tissue window C=40, W=400 over the signed output range
    # -32768 - 1024 .. 32767 - 1024: y(HU 40) = ((40 - 39.5) / 399 + 0.5) * 65535 - 33792 = -942.4,
    # 8 bits: (-942.4 + 33792) * 255 / 65535 = 127.82 -> 128; HU -160 and below -> 0, HU 240 and above -> 255
    px = np.array([[0, 1064, 864, 1264]], np.int16)  # HU -1024, 40, -160, 240
    arr, _ = read_dicom(dicom_file(tmp_path / "ct.dcm", px, bits=16, RescaleSlope=1, RescaleIntercept=-1024,
                                   WindowCenter=40, WindowWidth=400))
    np.testing.assert_array_equal(arr, [[0, 128, 0, 255]])


def test_voi_lut_sequence(tmp_path: Path, dicom_file) -> None:
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 10]  # 4 entries from stored value 0, 10-bit output
    lut.add_new("LUTData", "US", [0, 300, 600, 1023])
    path = dicom_file(tmp_path / "lut.dcm", np.array([[0, 1, 2, 3, 9]], np.uint16), VOILUTSequence=[lut])
    arr, _ = read_dicom(path)
    # output 0..1023 scaled to 8 bits: 300 -> 74.78 -> 75, 600 -> 149.56 -> 150; past the table -> last entry
    np.testing.assert_array_equal(arr, [[0, 75, 150, 255, 255]])


def test_manifest_of_absolute_paths(tmp_path: Path, dicom_file) -> None:
    paths = [dicom_file(tmp_path / "pacs" / f"{i}.dcm", PIXELS + i) for i in range(2)]
    pd.DataFrame({"path": [str(p) for p in paths], "finding": ["normal", "opacity"]}).to_csv(
        tmp_path / "m.csv", index=False)
    (tmp_path / "card.yaml").write_text(yaml.safe_dump({
        "name": "paths", "modality": "cxr", "manifest": "m.csv", "split": None, "source": {"format": "dicom"},
        "tasks": [{"name": "finding", "type": "binary", "classes": ["normal", "opacity"]}]}))
    data = load_card(tmp_path / "card.yaml")
    assert open_dataset(data)[1]["image"].shape == (1, 2, 3)


def test_new_user_path_dicom_folder_to_linear_probe(tmp_path: Path, dicom_file, capsys) -> None:
    """docs/data.md's walk-through: DICOM folder + labels.csv -> inspect -> split -> prepare -> adapt (probe)."""
    root = _xray_folder(tmp_path / "site", dicom_file, n=16)
    labels = pd.read_csv(root / "labels.csv").drop(columns=["split"])
    labels.to_csv(root / "labels.csv", index=False)
    spec = yaml.safe_load(_card(root).joinpath("dataset.yaml").read_text()) | {"split": None}
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    steps = [["data", "inspect", str(root)],
             ["data", "split", str(root), "-o", str(tmp_path / "split"), "--stratify", "finding",
              "--ratios", "0.5,0.25,0.25"],
             ["data", "prepare", str(tmp_path / "split"), "-o", str(tmp_path / "prepared"), "--size", "32"]]
    for args in steps:
        code, out = _cli(args, capsys)
        assert code == 0, (args, out)
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump({
        "card": str(tmp_path / "prepared"), "task": "finding", "encoder": "random:vit_tiny_p8_64",
        "backbone_overrides": {"img_size": 32}, "policy": "linear_probe", "epochs": 1, "warmup_epochs": 0,
        "batch_size": 4, "seeds": [0]}))
    code, out = _cli(["adapt", str(tmp_path / "probe.yaml"), "-o", str(tmp_path / "probe")], capsys)
    assert code == 0, out
    results = pd.read_csv(tmp_path / "probe" / "results.csv")
    assert set(results["split"]) == {"val", "test"} and (results["metric"] == "auroc").any()


def test_colour_dicom_to_card_channels(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 2, 3, 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(tmp_path / "fundus.dcm", enforce_file_format=True)
    arr, _ = read_dicom(tmp_path / "fundus.dcm")
    np.testing.assert_array_equal(arr, rgb)
    from synthfm.data.images import from_pixels

    # ITU-R 601 luma as Pillow computes it: 255 * 299 / 1000 = 76.2 -> 76
    assert from_pixels(arr, 1)[0, 0] == 76 and from_pixels(arr, 3) is arr


def test_multi_frame_dicom_uses_the_first_frame(tmp_path: Path, dicom_file) -> None:
    frames = np.stack([PIXELS, 4095 - PIXELS])
    path = dicom_file(tmp_path / "mf.dcm", PIXELS, WindowCenter=2048, WindowWidth=4096)
    from pydicom import dcmread

    ds = dcmread(path)
    ds.NumberOfFrames, ds.PixelData = 2, frames.astype("<u2").tobytes()
    ds.save_as(path)
    arr, notes = read_dicom(path)
    np.testing.assert_array_equal(arr, [[0, 62, 125], [187, 249, 255]])
    assert notes[0] == "multi-frame DICOM (2 frames): first frame used"


def test_manifest_values_win_over_tags(tmp_path: Path, dicom_file) -> None:
    root = _xray_folder(tmp_path, dicom_file, n=4)
    labels = pd.read_csv(root / "labels.csv")
    labels["sex"] = ["O", None, None, "F"]
    labels.to_csv(root / "labels.csv", index=False)
    data = load_card(_card(root))
    assert data.df["sex"].tolist() == ["O", "M", "F", "F"]  # headers say F, M, F, M: they fill only the gaps
