"""Path (b): `synthfm site deidentify` for sites that send images, and the hub's check of what they send.

Every image is decoded and re-encoded as a bare PNG (no EXIF, XMP, ICC or text chunks survive); DICOM files
are read with pydicom and de-identified by the PS3.15 Basic Application Level Confidentiality Profile (the
Table E.1-1 actions as dicom-anonymizer ships them, applied in every nested sequence; private tags dropped;
UIDs re-derived from the salt) with one retain option - Retain Patient Characteristics, for sex and an age
top-coded to `age_cap` - and every other free-text element removed unless the site lists it in `keep_text`.
Patient and image ids become salted HMAC-SHA256 pseudonyms, file names are the pseudonyms (an original file
name can hold a name), rows are reordered by pseudonym, ages above `age_cap` are top-coded, every manifest
column not declared shareable is dropped, and the card's own free text (name, description, licence, citation)
is replaced by neutral text unless the site lists it in `share_text`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pydicom
from dicomanonymizer import simpledicomanonymizer as ps315
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
IMAGE_PATH = re.compile(r"^images/[0-9a-f]{20}\.png$")
MANIFEST = "manifest.csv"
PROFILE_TABLE = "dicomfields_2026c"  # PS3.15 Table E.1-1 as dicom-anonymizer ships it
PROFILE = "PS3.15 Basic Application Level Confidentiality Profile; Retain Patient Characteristics Option (sex, age)"
RETAINED = ("PatientSex", "PatientAge")  # the retain option: kept, age top-coded
FREE_TEXT_VRS = ("LT", "ST", "UT", "UC")
CARD_TEXT = ("name", "description", "license", "citation")
PNG_INFO_OK = {"dpi", "gamma", "srgb", "aspect", "transparency"}


class DeidConfig(StrictModel):
    """What a sending site shares: its name and the manifest columns it declares shareable."""

    site: str
    shareable: list[str] = Field(description="manifest columns the site may share (labels and metadata)")
    age_cap: float | None = Field(90.0, description="ages above this are written as this (None: no top-coding)")
    keep_dicom: bool = Field(False, description="also keep the stripped DICOM files under dicom/")
    split: str | None = Field(None, description="send only this split's rows (None: every row)")
    keep_text: list[str] = Field(default_factory=list, description="DICOM keywords of free text the site allows "
                                 "to leave (e.g. StudyDescription); every other free-text element is removed")
    share_text: list[Literal["name", "description", "license", "citation"]] = Field(
        default_factory=list, description="card fields copied into the shared card (default: none; they can "
                                          "name people and hospitals)")


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


def profile_actions() -> tuple[dict[tuple[int, int], Any], list[tuple[tuple[int, ...], Any]]]:
    """The basic profile's actions by tag, and its repeating-group (masked) tags, from dicom-anonymizer."""
    actions = ps315.initialize_actions(PROFILE_TABLE)
    return ({t: a for t, a in actions.items() if len(t) == 2}, [(t, a) for t, a in actions.items() if len(t) == 4])


def top_coded_age(value: str, cap: float | None) -> str | None:
    """A DICOM age string (nnnD/W/M/Y) top-coded to `cap` years; None when it does not parse."""
    match = re.fullmatch(r"(\d{3})([DWMY])", str(value).strip())
    if match is None:
        return None
    years = int(match[1]) / {"D": 365.25, "W": 52.18, "M": 12, "Y": 1}[match[2]]
    return f"{int(cap):03d}Y" if cap is not None and years > cap else match[0]


def strip_dicom(ds: pydicom.Dataset, patient: str, salt: bytes, age_cap: float | None = 90.0,
                keep_text: tuple[str, ...] = ()) -> pydicom.Dataset:
    """De-identify a dataset by the basic profile in every nested sequence (see the module docstring)."""
    by_tag, masked = profile_actions()
    kept = set(keep_text) | set(RETAINED)

    def uid(value: str) -> str:
        """The salted replacement of a UID (the same UID maps to the same replacement at this site)."""
        return generate_uid(entropy_srcs=[salt.hex(), str(value)])

    def action_of(tag: tuple[int, int]) -> Any:
        """The profile's action for a tag (exact, then repeating groups), or None."""
        if tag in by_tag:
            return by_tag[tag]
        return next((a for m, a in masked if tag[0] & m[2] == m[0] & m[2] and tag[1] & m[3] == m[1] & m[3]), None)

    def apply(dataset: pydicom.Dataset, elem: Any) -> None:
        """One element: kept when retained or allowed, else the profile's action, else free text removed."""
        action = action_of((elem.tag.group, elem.tag.element))
        if elem.tag.is_private:
            del dataset[elem.tag]
        elif elem.keyword == "PatientAge":
            age = top_coded_age(elem.value, age_cap)
            if age is None:
                del dataset[elem.tag]
            else:
                elem.value = age
        elif elem.keyword in kept:
            return
        elif action is not None and elem.VR == "UI" and action is not ps315.delete:
            elem.value = [uid(v) for v in elem.value] if elem.VM > 1 else uid(elem.value)
        elif action is not None:
            action(dataset, elem.tag)
        elif elem.VR in FREE_TEXT_VRS:
            del dataset[elem.tag]

    ds.remove_private_tags()
    ds.walk(apply)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        meta.walk(apply)
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient
    ds.PatientName = patient
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = f"synthfm: {PROFILE}"
    ds.DeidentificationMethodCodeSequence = [_code("113100", "Basic Application Confidentiality Profile"),
                                             _code("113108", "Retain Patient Characteristics Option")]
    return ds


def _code(value: str, meaning: str) -> pydicom.Dataset:
    """A DCM code item (CID 7050, de-identification methods)."""
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


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


def _image(path: Path, channels: int, patient: str, salt: bytes, keep: Path | None, cfg: DeidConfig) -> np.ndarray:
    """Decode one image to bare pixels (DICOM stripped first, and kept when asked)."""
    if not _is_dicom(path):
        return load_image(path, channels, where=str(path))
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises several types for a bad file
        raise SynthfmError(f"cannot read DICOM {path}: {err}", "replace the file or drop its row") from None
    ds = strip_dicom(ds, patient, salt, cfg.age_cap, tuple(cfg.keep_text))
    if keep is not None:
        with atomic_path(keep) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    return dicom_pixels(ds, channels)


def _shared_card(card: DatasetCard, shareable: set[str], has_split: bool, site: str,
                 share_text: tuple[str, ...] = ()) -> DatasetCard:
    """The card of the de-identified copy: only shareable tasks and metadata, pseudonymous ids, the site, and
    neutral text in place of the card's free text unless the site shares it (`share_text`)."""
    tasks = [t for t in card.tasks if set(t.columns) <= shareable]
    fields = {k: c for k, c in card.metadata.model_dump().items()
              if k not in ("extra", "patient_id", "site") and c and c in shareable}
    meta = MetadataSpec(**fields, patient_id="patient_id", site="site",
                        extra=[c for c in card.metadata.extra if c in shareable])
    shared = {f: getattr(card, f) for f in CARD_TEXT if f in share_text}
    return DatasetCard(
        name=f"{shared['name']}_{site}_deid" if "name" in shared else f"{site}_deid", modality=card.modality,
        description=f"{shared['description']} (de-identified)" if "description" in shared
        else f"de-identified {card.modality} images from site {site}",
        source=SourceSpec(format="folder", root=".", path_column="path"), manifest=MANIFEST, id_column="image_id",
        split=SplitSpec(column="split") if has_split else None, tasks=tasks, metadata=meta,
        provenance=Provenance(kind="real", notes=f"{MARKER}; site {site}"),
        **{f: shared[f] for f in ("license", "citation") if f in shared},
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
        arr = _image(data.image_path(i), channels, patient, salt, keep, cfg)
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
    return write_card(_shared_card(data.card, set(cfg.shareable), has_split, cfg.site, tuple(cfg.share_text)), out)


def _spec_problems(spec: DatasetCard, card_dir: Path) -> list[str]:
    """A de-identified card is a folder card reading manifest.csv in its own folder, nothing else."""
    if spec.source.format != "folder" or spec.source.root != "." or spec.manifest != MANIFEST or spec.tags:
        return [f"card {card_dir / 'dataset.yaml'} reads from {spec.source.format} root {spec.source.root!r}, "
                f"manifest {spec.manifest!r}; a de-identified card is a folder card with root '.' and {MANIFEST}"]
    return []


def _file_problems(card_dir: Path) -> list[str]:
    """The card, its manifest and every image are regular files (no links) at images/<pseudonym>.png."""
    problems = [f"{p} is a symbolic link; the hub reads only files inside the card folder"
                for p in (card_dir / "dataset.yaml", card_dir / MANIFEST, card_dir / "images") if p.is_symlink()]
    if problems:
        return problems
    paths = pd.read_csv(card_dir / MANIFEST, usecols=["path"], dtype=str, keep_default_na=False)["path"]
    for row, rel in enumerate(paths, start=2):
        if not IMAGE_PATH.match(rel):
            problems.append(f"{card_dir / MANIFEST} row {row}: path {rel!r} is not images/<pseudonym>.png "
                            "(absolute paths, '..' and other folders are refused)")
        elif (card_dir / rel).is_symlink() or not (card_dir / rel).is_file() or (card_dir / rel).stat().st_nlink > 1:
            problems.append(f"{card_dir / MANIFEST} row {row}: {rel} is a link or not a regular file")
        if len(problems) >= 3:
            break
    return problems


def card_layout_problems(card: str | Path) -> list[str]:
    """Where a received card could make the hub read outside it: the card, its manifest and every image must
    be regular files (no links) in the card folder, laid out as `site deidentify` writes them."""
    spec, card_dir = read_card(card)
    return _spec_problems(spec, card_dir) or _file_problems(card_dir)


def deidentified_problems(card: str | Path) -> list[str]:
    """Why the hub should not accept a real card (empty when it is a de-identified card it can take)."""
    problems = []
    spec, card_dir = read_card(card)
    if MARKER not in spec.provenance.notes:
        problems.append("the card was not written by 'synthfm site deidentify'")
    wrong_spec = _spec_problems(spec, card_dir)
    if wrong_spec:  # its manifest is not read: it could point anywhere
        return problems + wrong_spec
    data = load_card(card, check_files=False)
    allowed = set(declared_columns(spec)) | {"site", "image_id"}
    extra = sorted(c for c in data.df.columns if not c.startswith("_") and c not in allowed)
    if extra:
        problems.append(f"manifest has undeclared columns {extra} (could hold identifiers)")
    pid = spec.metadata.patient_id
    if pid and not data.df[pid].astype(str).str.match(PSEUDONYM).all():
        problems.append(f"column '{pid}' holds values that are not salted pseudonyms")
    layout = _file_problems(card_dir)
    if layout:  # no file outside the card is opened
        return problems + layout
    for i in range(len(data)):
        with Image.open(data.image_path(i)) as img:
            kept = sorted(set(img.info) - PNG_INFO_OK)
            if img.format != "PNG" or kept:
                problems.append(f"{data.image_path(i).name} is {img.format} with metadata {kept}; expected bare PNG")
                break
    return problems
