"""The dataset card: `dataset.yaml`, the contract every stage reads and every generator writes.

A card names the modality, where the images are (a folder, a MedMNIST-style `.npz`, or
WebDataset shards), the manifest (one row per image), the tasks with their class names, which
manifest columns hold metadata, and where the data came from. A new dataset is a new card,
never new code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from synthfm.config import StrictModel, dump_config, read_yaml, validate_config
from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_text

CARD_FILE = "dataset.yaml"
SPLITS = ("train", "val", "test")
Modality = Literal["fundus", "cxr", "volume"]
MANIFEST = "manifest.parquet"  # the manifest file name of every card synthfm writes
FILE_FORMATS = ("folder", "dicom", "nifti")  # source formats whose manifest names one file per row
TaskType = Literal["binary", "multiclass", "ordinal", "multilabel"]


class TaskSpec(StrictModel):
    """A prediction task: its type, class names and the manifest column(s) holding it."""

    name: str
    type: TaskType
    classes: list[str] = Field(min_length=1)
    columns: list[str] = Field(default_factory=list, description="default: [name]; multilabel: one per class")

    @model_validator(mode="after")
    def _check_shape(self) -> TaskSpec:
        """Binary has two classes; multilabel has one column per class; others one column."""
        if not self.columns:
            self.columns = list(self.classes) if self.type == "multilabel" else [self.name]
        if self.type == "binary" and len(self.classes) != 2:
            raise ValueError(f"binary task '{self.name}' needs exactly 2 classes, got {self.classes}")
        if self.type == "multilabel" and len(self.columns) != len(self.classes):
            raise ValueError(f"multilabel task '{self.name}' needs one column per class")
        if self.type != "multilabel" and len(self.columns) != 1:
            raise ValueError(f"{self.type} task '{self.name}' takes exactly one column")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"task '{self.name}' has repeated class names {self.classes}")
        return self

    @property
    def num_outputs(self) -> int:
        """Width of a classifier head for this task."""
        return 1 if self.type == "binary" else len(self.classes)


class MetadataSpec(StrictModel):
    """Which manifest columns hold the standard metadata fields (None = not recorded)."""

    patient_id: str | None = None
    age: str | None = None
    sex: str | None = None
    ethnicity: str | None = None
    site: str | None = None
    device: str | None = None
    quality: str | None = None
    extra: list[str] = Field(default_factory=list)

    def columns(self) -> dict[str, str]:
        """Field name -> manifest column, for the fields that are present."""
        named = {k: v for k, v in self.model_dump().items() if k != "extra" and v}
        return named | {c: c for c in self.extra}


class SourceSpec(StrictModel):
    """Where the pixels are: a folder of image, DICOM or NIfTI files, an `.npz` of arrays, or WebDataset shards."""

    format: Literal["folder", "npz", "shards", "dicom", "nifti"] = "folder"
    root: str = Field(".", description="folder / dicom / nifti: root of the manifest's paths; npz: the .npz file; "
                                       "shards: folder of .tar shards")
    path_column: str = "path"
    index_column: str = "index"
    npz_key: str = "{split}_images"


class SplitSpec(StrictModel):
    """The manifest column holding the split, and how its values map to train/val/test."""

    column: str = "split"
    map: dict[str, str] = Field(default_factory=dict)

    @field_validator("map")
    @classmethod
    def _targets_known(cls, v: dict[str, str]) -> dict[str, str]:
        """Only map onto the canonical split names."""
        bad = sorted(set(v.values()) - set(SPLITS))
        if bad:
            raise ValueError(f"split.map targets must be one of {list(SPLITS)}, got {bad}")
        return v


class DerivedColumn(StrictModel):
    """A column computed from another by a regular expression (its first group, or whole match)."""

    source: str
    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        """Reject a pattern that does not compile."""
        try:
            re.compile(v)
        except re.error as err:
            raise ValueError(f"regex does not compile: {err}") from None
        return v


class Provenance(StrictModel):
    """Where the data came from: real, or made by a named generator."""

    kind: Literal["real", "synthetic"] = "real"
    generator: str | None = None
    checkpoint_hash: str | None = None
    row_columns: list[str] = Field(
        default_factory=list, description="per-row provenance columns, e.g. generator, condition, seed"
    )
    notes: str = ""


class DatasetCard(StrictModel):
    """`dataset.yaml`: everything a stage needs to know about a dataset."""

    name: str
    modality: Modality
    description: str = ""
    source: SourceSpec = Field(default_factory=SourceSpec)
    manifest: str = "manifest.csv"
    id_column: str | None = Field(None, description="unique image id; default: the path column, or split/index")
    split: SplitSpec | None = Field(default_factory=SplitSpec)
    tasks: list[TaskSpec] = Field(default_factory=list)
    metadata: MetadataSpec = Field(default_factory=MetadataSpec)
    masks: dict[str, str] = Field(default_factory=dict, description="mask name -> manifest column of mask paths")
    derive: dict[str, DerivedColumn] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict, description="dicom: manifest column -> DICOM keyword read "
                                                                    "from each file's header (e.g. age: PatientAge)")
    provenance: Provenance = Field(default_factory=Provenance)
    license: str = ""
    citation: str = ""
    omit_when_default: ClassVar[tuple[str, ...]] = ("tags",)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        """Task names are unique."""
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        return v

    @model_validator(mode="after")
    def _nifti_holds_volumes(self) -> DatasetCard:
        """NIfTI files are read as 3D volumes, so a nifti card's modality is 'volume'."""
        if self.source.format == "nifti" and self.modality != "volume":
            raise ValueError(f"source.format 'nifti' reads 3D volumes; set modality: volume (not '{self.modality}')")
        return self

    @model_validator(mode="after")
    def _tags_need_dicom(self) -> DatasetCard:
        """`tags` reads DICOM headers, so it needs `source.format: dicom` and keywords pydicom knows."""
        if not self.tags:
            return self
        if self.source.format != "dicom":
            raise ValueError(f"tags reads DICOM headers; it needs source.format 'dicom', not '{self.source.format}'")
        from pydicom.datadict import tag_for_keyword

        bad = sorted(kw for kw in self.tags.values() if tag_for_keyword(kw) is None)
        if bad:
            raise ValueError(f"tags: unknown DICOM keyword(s) {bad} (e.g. PatientAge, PatientSex, ViewPosition, "
                             "Manufacturer, ManufacturerModelName)")
        return self

    def task(self, name: str) -> TaskSpec:
        """Look up a task by name."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise SynthfmError(f"card '{self.name}' has no task '{name}'",
                           f"use one of: {[t.name for t in self.tasks]}")


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str) -> str:
    """Expand `${VAR}` and `${VAR:-default}` from the environment."""
    def repl(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is None:
                raise SynthfmError(f"environment variable {m.group(1)} is not set (used in a card path)",
                                   f"export {m.group(1)}=... or give a default as ${{{m.group(1)}:-path}}")
            value = m.group(2)
        return value
    return _VAR.sub(repl, text)


def resolve_path(card_dir: Path, value: str) -> Path:
    """A card path: environment variables expanded, relative paths taken from the card's folder."""
    p = Path(expand_vars(value)).expanduser()
    return p if p.is_absolute() else (card_dir / p)


def card_file(path: str | Path) -> Path:
    """The `dataset.yaml` for a card given as its folder or its YAML file."""
    path = Path(path)
    if path.is_dir():
        path = path / CARD_FILE
    if not path.is_file():
        raise SynthfmError(f"dataset card not found: {path}",
                           f"give a card folder holding {CARD_FILE}, or the path of a card YAML file")
    return path


def card_yaml(path: str | Path) -> Path:
    """A card folder or its YAML file, as the YAML path (not checked: a pipeline names cards not made yet)."""
    p = Path(path)
    return p / CARD_FILE if p.is_dir() or not p.suffix else p


def read_card(path: str | Path) -> tuple[DatasetCard, Path]:
    """Read and validate a card; return it with the folder its relative paths start from."""
    f = card_file(path)
    return validate_config(DatasetCard, read_yaml(f), str(f)), f.parent


def write_card(card: DatasetCard, out_dir: str | Path) -> Path:
    """Write `dataset.yaml` into `out_dir` atomically; return its path."""
    out = Path(out_dir) / CARD_FILE
    atomic_write_text(out, dump_config(card))
    return out
