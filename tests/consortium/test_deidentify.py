"""Path (b): EXIF and DICOM identifiers stripped, salted pseudonyms, unshared columns dropped, hub acceptance."""

from __future__ import annotations

import copy
import hashlib
import hmac
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from PIL import Image, PngImagePlugin
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from synthfm.consortium.deidentify import (
    DeidConfig,
    deidentified_problems,
    deidentify_card,
    load_salt,
    pseudonym,
)
from synthfm.data.manifest import load_card
from synthfm.errors import SynthfmError

SALT = b"0123456789abcdef-site-secret"
DICOM_PIXELS = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 100)


def write_dicom(path: Path) -> str:
    """A tiny DICOM with identifying, private and nested tags; returns its StudyInstanceUID."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "MRN-0003", "19400101"
    ds.InstitutionName, ds.StudyDate, ds.AccessionNumber = "St Elsewhere Eye Hospital", "20200101", "ACC42"
    ds.StudyInstanceUID, ds.Modality = generate_uid(), "OP"
    ref = Dataset()
    ref.ReferringPhysicianName = "Who^Doctor"
    ds.ReferencedStudySequence = [ref]
    ds.private_block(0x0009, "ACME", create=True).add_new(0x01, "LO", "secret note about Jane")
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 8, 8, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = DICOM_PIXELS.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.StudyInstanceUID)


@pytest.fixture
def raw_card(tmp_path: Path) -> Path:
    """A site's raw card: a JPEG with EXIF, a PNG with a text chunk, a DICOM; names in file names and a column."""
    root = tmp_path / "raw"
    (root / "img").mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x010E] = "Jane Doe, DOB 1931-02-03"  # ImageDescription
    exif[0x0132] = "2020:01:01 10:00:00"  # DateTime
    Image.fromarray(rgb).save(root / "img" / "jane_doe_left.jpg", exif=exif.tobytes(), quality=95)
    text = PngImagePlugin.PngInfo()
    text.add_text("Patient", "John Smith")
    Image.fromarray(rgb[::-1]).save(root / "img" / "john_smith.png", pnginfo=text)
    study_uid = write_dicom(root / "img" / "doe_jane.dcm")
    pd.DataFrame({
        "path": ["img/jane_doe_left.jpg", "img/john_smith.png", "img/doe_jane.dcm"],
        "patient": ["MRN-0001", "MRN-0002", "MRN-0003"], "name": ["Jane Doe", "John Smith", "Jane Doe"],
        "grade": [0, 2, 1], "age": [95, 61, 44], "sex": ["F", "M", "F"], "split": ["train", "train", "test"],
    }).to_csv(root / "manifest.csv", index=False)
    (root / "dataset.yaml").write_text(yaml.safe_dump({
        "name": "raw", "modality": "fundus", "split": {"column": "split"},
        "tasks": [{"name": "grade", "type": "ordinal", "classes": ["none", "mild", "severe"]}],
        "metadata": {"patient_id": "patient", "age": "age", "sex": "sex"}}))
    (root / "study_uid.txt").write_text(study_uid)
    return root


def test_deidentified_card_is_clean_and_accepted(raw_card: Path, tmp_path: Path) -> None:
    with Image.open(raw_card / "img" / "jane_doe_left.jpg") as img:
        assert img.getexif()  # the input really carries EXIF
    out = tmp_path / "deid"
    cfg = DeidConfig(site="site_c", shareable=["grade", "age", "sex"], keep_dicom=True)
    deidentify_card(raw_card, out, cfg, SALT)
    data = load_card(out)
    df = pd.read_csv(out / "manifest.csv")
    assert set(df.columns) == {"path", "image_id", "patient_id", "grade", "age", "sex", "site", "split"}
    expected = {hmac.new(SALT, m.encode(), hashlib.sha256).hexdigest()[:20] for m in ("MRN-0001", "MRN-0002",
                                                                                      "MRN-0003")}
    assert set(df["patient_id"]) == expected and list(df["image_id"]) == sorted(df["image_id"])
    assert sorted(df["age"]) == [44, 61, 90]  # 95 top-coded
    text = (out / "manifest.csv").read_text() + (out / "dataset.yaml").read_text()
    assert not any(s in text for s in ("Jane", "John", "jane", "john", "MRN", "doe", "smith"))
    for p in (out / "images").iterdir():
        with Image.open(p) as img:
            assert img.format == "PNG" and not img.getexif() and "Patient" not in img.info
    assert deidentified_problems(out) == [] and len(data) == 3 and data.card.task("grade").classes[2] == "severe"


def test_dicom_tags_are_stripped_and_pixels_kept(raw_card: Path, tmp_path: Path) -> None:
    out = tmp_path / "deid"
    deidentify_card(raw_card, out, DeidConfig(site="site_c", shareable=["grade"], keep_dicom=True), SALT)
    df = pd.read_csv(out / "manifest.csv")
    row = df[df["patient_id"] == pseudonym(SALT, "MRN-0003")].iloc[0]
    ds = pydicom.dcmread(out / "dicom" / f"{row['image_id']}.dcm")
    raw = (out / "dicom" / f"{row['image_id']}.dcm").read_bytes()
    for phi in (b"19400101", b"St Elsewhere", b"ACC42", b"Who^Doctor", b"20200101", b"Doe", b"MRN-0003"):
        assert phi not in raw, phi
    assert str(ds.PatientName) == str(ds.PatientID) == row["patient_id"] and ds.PatientIdentityRemoved == "YES"
    assert not any(e.tag.is_private for e in ds.iterall()) and "secret" not in str(ds)
    assert ds.StudyInstanceUID != (raw_card / "study_uid.txt").read_text()
    png = np.asarray(Image.open(out / row["path"]))
    expected = (DICOM_PIXELS / DICOM_PIXELS.max() * 255 + 0.5).astype(np.uint8)
    assert png.shape == (8, 8, 3) and np.array_equal(png[..., 0], expected)
    again = tmp_path / "again"
    deidentify_card(raw_card, again, DeidConfig(site="site_c", shareable=["grade"], keep_dicom=True), SALT)
    assert pydicom.dcmread(again / "dicom" / f"{row['image_id']}.dcm").StudyInstanceUID == ds.StudyInstanceUID


def test_pseudonyms_depend_on_the_salt() -> None:
    assert pseudonym(SALT, "MRN-1") == pseudonym(SALT, "MRN-1") != pseudonym(SALT + b"x", "MRN-1")


def test_split_and_unshareable_tasks(raw_card: Path, tmp_path: Path) -> None:
    deidentify_card(raw_card, tmp_path / "d", DeidConfig(site="site_c", shareable=["age"], split="train"), SALT)
    data = load_card(tmp_path / "d")
    assert len(data) == 2 and data.card.tasks == [] and "grade" not in data.df.columns


def test_salt_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNTHFM_SALT", raising=False)
    with pytest.raises(SynthfmError, match="shorter than 16 bytes"):
        load_salt()
    monkeypatch.setenv("SYNTHFM_SALT", "x" * 20)
    assert load_salt() == b"x" * 20
    (tmp_path / "salt").write_text("  " + "y" * 32 + "\n")
    assert load_salt(tmp_path / "salt") == b"y" * 32


def test_unknown_shareable_column_is_an_error(raw_card: Path, tmp_path: Path) -> None:
    with pytest.raises(SynthfmError, match=r"\['diagnosis'\] are not in the manifest"):
        deidentify_card(raw_card, tmp_path / "d", DeidConfig(site="site_c", shareable=["diagnosis"]), SALT)


def test_hub_refuses_a_raw_card(raw_card: Path) -> None:
    problems = " | ".join(deidentified_problems(raw_card))
    assert "not written by 'synthfm site deidentify'" in problems
    assert "undeclared columns ['name']" in problems and "not salted pseudonyms" in problems


PHI = {  # the elements the red team found surviving --keep-dicom, and more of the same kinds
    "ImageComments": "Jane Doe MRN-0003 seen by Dr Who", "ResponsiblePerson": "Doe^John",
    "CurrentPatientLocation": "Ward 7 bed 3", "StudyDescription": "Jane's left eye follow-up",
    "SeriesDescription": "Doe left OCT", "OperatorsName": "Tech^Tina", "PatientAddress": "1 High St",
    "OtherPatientIDs": "NHS-999", "AdditionalPatientHistory": "diabetic since 1990, lives alone",
    "InstitutionAddress": "Eye Road 5", "DeviceSerialNumber": "SN-12345", "StationName": "EYECAM-7",
    "RequestedProcedureDescription": "Jane fundus", "PerformedProcedureStepDescription": "Jane Doe OCT",
    "PatientTelephoneNumbers": "555-0100",
}


def test_dicom_phi_found_by_the_red_team_does_not_survive_keep_dicom(raw_card: Path, tmp_path: Path) -> None:
    """Basic profile in nested sequences, private tags dropped, age top-coded, free text gone unless allowed."""
    path = raw_card / "img" / "doe_jane.dcm"
    ds = pydicom.dcmread(path)
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.PatientAge, ds.PatientSex, ds.ResponsiblePersonRole = "095Y", "F", "PARENT"
    nested = Dataset()
    nested.PatientID, nested.PatientName, nested.ImageComments = "MRN-0003", "Doe^Jane", "nested note on Jane"
    nested.private_block(0x0011, "ACME", create=True).add_new(0x02, "LO", "private nested Jane")
    nested.TextValue = "free text naming Jane"
    ds.ReferencedImageSequence = [nested]
    ds.AnatomicRegionSequence = [copy.deepcopy(nested)]  # a sequence the profile keeps: its items are cleaned
    ds.save_as(path, enforce_file_format=True)
    out = tmp_path / "deid"
    cfg = DeidConfig(site="site_c", shareable=["grade"], keep_dicom=True, keep_text=["SeriesDescription"])
    deidentify_card(raw_card, out, cfg, SALT)
    kept = next((out / "dicom").iterdir())
    text = kept.read_bytes()
    for keyword, value in PHI.items():
        if keyword != "SeriesDescription":
            assert value.encode() not in text, keyword
    for leak in (b"MRN-0003", b"Doe^Jane", b"nested note", b"private nested", b"free text naming"):
        assert leak not in text, leak
    out_ds = pydicom.dcmread(kept)
    assert out_ds.PatientAge == "090Y" and out_ds.PatientSex == "F"  # the retain option, age top-coded
    assert out_ds.SeriesDescription == "Doe left OCT"  # explicitly allowed by keep_text
    assert "AnatomicRegionSequence" in out_ds and "TextValue" not in out_ds.AnatomicRegionSequence[0]
    assert not any(e.tag.is_private for e in out_ds.iterall())
    assert "Basic Application Level Confidentiality Profile" in out_ds.DeidentificationMethod
    assert [c.CodeValue for c in out_ds.DeidentificationMethodCodeSequence] == ["113100", "113108"]


def test_shared_card_drops_the_cards_free_text_unless_shared(raw_card: Path, tmp_path: Path) -> None:
    spec = yaml.safe_load((raw_card / "dataset.yaml").read_text())
    spec |= {"name": "st_elsewhere_jane_doe_clinic", "description": "Dr Who's patients at St Elsewhere",
             "license": "internal - ask Dr Who", "citation": "Who et al., St Elsewhere 2020"}
    (raw_card / "dataset.yaml").write_text(yaml.safe_dump(spec))
    deidentify_card(raw_card, tmp_path / "d", DeidConfig(site="site_c", shareable=["grade"]), SALT)
    text = (tmp_path / "d" / "dataset.yaml").read_text()
    assert "Who" not in text and "Elsewhere" not in text and "jane" not in text and "site_c_deid" in text
    cfg = DeidConfig(site="site_c", shareable=["grade"], share_text=["license"])
    deidentify_card(raw_card, tmp_path / "e", cfg, SALT)
    card = load_card(tmp_path / "e").card
    assert card.license == "internal - ask Dr Who" and "Who" not in card.description + card.name + card.citation
