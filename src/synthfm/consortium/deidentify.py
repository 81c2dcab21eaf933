"""Path (b): `synthfm site deidentify` for sites that send images, and the hub's check of what they send.

Every image is decoded and re-encoded as a bare PNG (no EXIF, XMP, ICC or text chunks survive); DICOM files
are read with pydicom, stripped of identifying tags (a subset of the PS3.15 basic profile, private tags and
UIDs re-derived from the salt) and their pixels exported. Patient and image ids become salted HMAC-SHA256
pseudonyms, file names are the pseudonyms (an original file name can hold a name), rows are reordered by
pseudonym, ages above `age_cap` are top-coded, and every manifest column not declared shareable is dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydantic import Field
from pydicom.uid import generate_uid

from synthfm.config import StrictModel
from synthfm.consortium.keys import check_site_name
from synthfm.data.card import DatasetCard, MetadataSpec, Provenance, SourceSpec, SplitSpec, read_card, write_card
from synthfm.data.images import encode_png, load_image
from synthfm.data.manifest import ID, SPLIT, declared_columns, load_card
from synthfm.data.modality import preset
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path, atomic_write_bytes
from synthfm.progress import progress_bar

SALT_ENV = "SYNTHFM_SALT"
MARKER = "deidentified-by: synthfm site deidentify"
PSEUDONYM = re.compile(r"^[0-9a-f]{20}$")
MANIFEST = "manifest.csv"
IDENTIFYING_TAGS = (
    "PatientName", "PatientBirthDate", "PatientBirthTime", "PatientBirthName", "PatientAddress",
    "PatientTelephoneNumbers", "PatientMotherBirthName", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "MedicalRecordLocator", "PatientComments", "MilitaryRank", "BranchOfService",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy", "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician",
    "StationName", "DeviceSerialNumber", "AccessionNumber", "StudyID", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime",
    "AcquisitionDateTime", "InstanceCreationDate", "InstanceCreationTime", "StudyDescription",
    "SeriesDescription", "RequestAttributesSequence", "ReferencedPatientSequence", "AdmittingDiagnosesDescription",
    "Occupation", "AdditionalPatientHistory", "PatientSize", "PatientWeight", "IssuerOfPatientID",
)
UID_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
PNG_INFO_OK = {"dpi", "gamma", "srgb", "aspect", "transparency"}


class DeidConfig(StrictModel):
    """What a sending site shares: its name and the manifest columns it declares shareable."""

    site: str
    shareable: list[str] = Field(description="manifest columns the site may share (labels and metadata)")
    age_cap: float | None = Field(90.0, description="ages above this are written as this (None: no top-coding)")
    keep_dicom: bool = Field(False, description="also keep the stripped DICOM files under dicom/")
    split: str | None = Field(None, description="send only this split's rows (None: every row)")


def load_salt(salt_file: str | Path | None = None) -> bytes:
    """The site's secret salt: a file, or $SYNTHFM_SALT; at least 16 bytes."""
    if salt_file is not None:
        path = Path(salt_file)
        if not path.is_file():
            raise SynthfmError(f"salt file not found: {path}", "give the site's secret salt file")
        salt = path.read_bytes().strip()
    else:
        salt = os.environ.get(SALT_ENV, "").encode()
    if len(salt) < 16:
        raise SynthfmError("the pseudonymisation salt is missing or shorter than 16 bytes",
                           f"write one with: python -c 'import secrets; print(secrets.token_hex(32))' > salt; "
                           f"pass --salt-file salt (or set {SALT_ENV}); keep it secret and reuse it")
    return salt


def pseudonym(salt: bytes, value: Any) -> str:
    """A salted HMAC-SHA256 pseudonym (20 hex digits) of an id."""
    return hmac.new(salt, str(value).encode(), hashlib.sha256).hexdigest()[:20]


def strip_dicom(ds: pydicom.Dataset, patient: str, salt: bytes) -> pydicom.Dataset:
    """Remove identifying and private tags (nested sequences too); re-derive UIDs; set the pseudonym."""
    ds.remove_private_tags()

    def drop(dataset: pydicom.Dataset, elem: Any) -> None:
        """Delete an identifying element wherever it sits."""
        if elem.keyword in IDENTIFYING_TAGS:
            del dataset[elem.tag]

    ds.walk(drop)
    for kw in UID_TAGS:
        if kw in ds:
            setattr(ds, kw, generate_uid(entropy_srcs=[salt.hex(), str(getattr(ds, kw))]))
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient
    ds.PatientName = patient
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthfm: PS3.15 basic profile subset"
    return ds


def _is_dicom(path: Path) -> bool:
    """DICOM by its preamble ('DICM' at byte 128) or suffix."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def dicom_pixels(ds: pydicom.Dataset, channels: int) -> np.ndarray:
    """A DICOM's pixels as uint8 (min-max scaled, MONOCHROME1 inverted, channels as the modality wants)."""
    arr = ds.pixel_array.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    out = np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 255 - out
    if channels == 3 and out.ndim == 2:
        return np.repeat(out[:, :, None], 3, axis=2)
    if channels == 1 and out.ndim == 3:
        return np.asarray(Image.fromarray(out).convert("L"))
    return out


def _image(path: Path, channels: int, patient: str, salt: bytes, keep: Path | None) -> np.ndarray:
    """Decode one image to bare pixels (DICOM stripped first, and kept when asked)."""
    if not _is_dicom(path):
        return load_image(path, channels, where=str(path))
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises several types for a bad file
        raise SynthfmError(f"cannot read DICOM {path}: {err}", "replace the file or drop its row") from None
    ds = strip_dicom(ds, patient, salt)
    if keep is not None:
        with atomic_path(keep) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    return dicom_pixels(ds, channels)


def _shared_card(card: DatasetCard, shareable: set[str], has_split: bool, site: str) -> DatasetCard:
    """The card of the de-identified copy: only shareable tasks and metadata, pseudonymous ids, the site."""
    tasks = [t for t in card.tasks if set(t.columns) <= shareable]
    fields = {k: c for k, c in card.metadata.model_dump().items()
              if k not in ("extra", "patient_id", "site") and c and c in shareable}
    meta = MetadataSpec(**fields, patient_id="patient_id", site="site",
                        extra=[c for c in card.metadata.extra if c in shareable])
    return DatasetCard(
        name=f"{card.name}_{site}_deid", modality=card.modality, description=f"{card.description} (de-identified)",
        source=SourceSpec(format="folder", root=".", path_column="path"), manifest=MANIFEST, id_column="image_id",
        split=SplitSpec(column="split") if has_split else None, tasks=tasks, metadata=meta,
        provenance=Provenance(kind="real", notes=f"{MARKER}; site {site}"), license=card.license,
        citation=card.citation,
    )


def deidentify_card(card: str | Path, out_dir: str | Path, cfg: DeidConfig, salt: bytes) -> Path:
    """Write a de-identified copy of a folder card to `out_dir`; return its dataset.yaml."""
    check_site_name(cfg.site)
    data = load_card(card)
    if cfg.split is not None:
        data = data.subset(data.indices(cfg.split))
        if not len(data):
            raise SynthfmError(f"{card} has no rows in split {cfg.split!r}", "choose another split, or none")
    if data.card.source.format != "folder":
        raise SynthfmError(f"deidentify reads folder cards; {card} is '{data.card.source.format}'",
                           "send npz/shard data as a folder card (synthfm data prepare --format folder)")
    unknown = sorted(set(cfg.shareable) - set(data.df.columns))
    if unknown:
        raise SynthfmError(f"shareable columns {unknown} are not in the manifest of {card}",
                           f"choose from {sorted(c for c in data.df.columns if not c.startswith('_'))}")
    out = Path(out_dir)
    channels = preset(data.card.modality).channels
    has_split = data.card.split is not None
    rows = []
    for i in progress_bar(range(len(data)), "deidentify", total=len(data)):
        patient = pseudonym(salt, data.patient_ids().iat[i])
        image_id = pseudonym(salt, f"image:{data.df[ID].iat[i]}")
        keep = out / "dicom" / f"{image_id}.dcm" if cfg.keep_dicom else None
        arr = _image(data.image_path(i), channels, patient, salt, keep)
        atomic_write_bytes(out / "images" / f"{image_id}.png", encode_png(arr))
        row = {"path": f"images/{image_id}.png", "image_id": image_id, "patient_id": patient,
               **{c: data.df[c].iat[i] for c in cfg.shareable}, "site": cfg.site}
        if has_split:
            row["split"] = data.df[SPLIT].iat[i]
        rows.append(row)
    df = pd.DataFrame(rows).sort_values("image_id").reset_index(drop=True)
    age_col = data.card.metadata.age
    if cfg.age_cap is not None and age_col in cfg.shareable:
        df[age_col] = pd.to_numeric(df[age_col], errors="coerce").clip(upper=cfg.age_cap)
    with atomic_path(out / MANIFEST, ".csv") as tmp:
        df.to_csv(tmp, index=False)
    return write_card(_shared_card(data.card, set(cfg.shareable), has_split, cfg.site), out)


def deidentified_problems(card: str | Path) -> list[str]:
    """Why the hub should not accept a real card (empty when it is a de-identified card it can take)."""
    problems = []
    spec, _ = read_card(card)
    if MARKER not in spec.provenance.notes:
        problems.append("the card was not written by 'synthfm site deidentify'")
    data = load_card(card)
    allowed = set(declared_columns(spec)) | {"site", "image_id"}
    extra = sorted(c for c in data.df.columns if not c.startswith("_") and c not in allowed)
    if extra:
        problems.append(f"manifest has undeclared columns {extra} (could hold identifiers)")
    pid = spec.metadata.patient_id
    if pid and not data.df[pid].astype(str).str.match(PSEUDONYM).all():
        problems.append(f"column '{pid}' holds values that are not salted pseudonyms")
    for i in range(len(data)):
        with Image.open(data.image_path(i)) as img:
            kept = sorted(set(img.info) - PNG_INFO_OK)
            if img.format != "PNG" or kept:
                problems.append(f"{data.image_path(i).name} is {img.format} with metadata {kept}; expected bare PNG")
                break
    return problems
