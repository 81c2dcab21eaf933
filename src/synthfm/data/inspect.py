"""`synthfm data inspect`: validate a card and summarise counts, metadata, images and problems."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthfm.data.images import open_image, to_array
from synthfm.data.manifest import SPLIT, CardData, load_card
from synthfm.data.readers import open_dataset
from synthfm.errors import SynthfmError


@dataclass
class Problem:
    """Something wrong or doubtful found in a card: severity, where, what, and the fix."""

    severity: str
    where: str
    message: str
    fix: str = ""


@dataclass
class InspectReport:
    """What `inspect` found."""

    name: str
    modality: str
    rows: int
    splits: dict[str, int]
    labels: dict[str, dict[str, dict[str, int]]]
    metadata: dict[str, dict[str, Any]]
    images: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        """Problems of severity 'error'."""
        return [p for p in self.problems if p.severity == "error"]


def label_counts(data: CardData) -> dict[str, dict[str, dict[str, int]]]:
    """task -> split -> class name -> count."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for task in data.card.tasks:
        lab = data.labels[task.name]
        per: dict[str, dict[str, int]] = {}
        for split in sorted(set(data.df[SPLIT])):
            rows = data.df[SPLIT].to_numpy() == split
            c = np.bincount(lab[rows], minlength=len(task.classes)) if lab.ndim == 1 else lab[rows].sum(axis=0)
            per[split or "(none)"] = {n: int(v) for n, v in zip(task.classes, c, strict=True)}
        out[task.name] = per
    return out


def metadata_summary(data: CardData) -> dict[str, dict[str, Any]]:
    """Per metadata field: numeric summary, or the most common values with counts."""
    out: dict[str, dict[str, Any]] = {}
    for field_name, col in data.card.metadata.columns().items():
        s = data.df[col]
        missing = int(s.isna().sum())
        num = pd.to_numeric(s, errors="coerce")
        if field_name != "patient_id" and num.notna().sum() == s.notna().sum() and s.notna().any():
            out[field_name] = {"min": float(num.min()), "median": float(num.median()), "max": float(num.max()),
                               "missing": missing}
        else:
            vc = s.astype("string").value_counts()
            out[field_name] = {"distinct": len(vc), "top": {str(k): int(v) for k, v in vc.head(6).items()},
                               "missing": missing}
    return out


def image_summary(data: CardData, sample: int, problems: list[Problem], seed: int = 0) -> dict[str, Any]:
    """Decode up to `sample` images (all with sample=0): sizes, modes, and every unreadable one."""
    n = len(data)
    rng = np.random.default_rng(seed)
    rows = np.arange(n) if sample <= 0 or sample >= n else np.sort(rng.choice(n, sample, replace=False))
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    conversions: Counter[str] = Counter()
    fmt = data.card.source.format
    if fmt in ("dicom", "nifti"):
        for i in rows.tolist():
            path = data.image_path(i)
            try:
                size, mode, notes = _file_summary(fmt, path, f"manifest row {i + 1}")
            except SynthfmError as err:
                problems.append(Problem("error", str(path), err.message, err.fix))
                continue
            sizes[size] += 1
            modes[mode] += 1
            conversions.update(notes)
    elif fmt == "folder":
        for i in rows.tolist():
            where = f"manifest row {i + 1}"
            try:
                img = open_image(data.image_path(i), where)
            except SynthfmError as err:
                problems.append(Problem("error", str(data.image_path(i)), err.message, err.fix))
                continue
            sizes[f"{img.width}x{img.height}"] += 1
            modes[img.mode] += 1
            for note in to_array(img, data.channels)[1]:
                problems.append(Problem("warning", str(data.image_path(i)), note,
                                        "re-export the image as 8-bit RGB (fundus) or grayscale (cxr)"))
    else:
        ds = open_dataset(data)
        for k, sample_ in enumerate(ds):
            if k >= len(rows):
                break
            shape = tuple(sample_["image"].shape)
            sizes[f"{shape[-1]}x{shape[-2]}"] += 1
            modes[f"{shape[0]}ch uint8"] += 1
    out = {"checked": int(sum(sizes.values())), "sizes": dict(sizes.most_common(8)), "modes": dict(modes)}
    return out | ({"conversions": dict(conversions)} if conversions else {})


def _file_summary(fmt: str, path: Path, where: str) -> tuple[str, str, list[str]]:
    """Size, mode and conversion notes of one DICOM image or NIfTI volume (decoding it fully)."""
    if fmt == "dicom":
        from synthfm.data.dicom import dicom_pixels, read_dataset

        ds = read_dataset(path, where)
        arr, notes = dicom_pixels(ds, path, where)
        mode = f"{ds.get('PhotometricInterpretation', '?')} {ds.get('BitsStored', '?')}-bit"
        return f"{arr.shape[1]}x{arr.shape[0]}", mode, notes
    from synthfm.data.nifti import read_volume

    vol, spacing, stored = read_volume(path, where)
    return "x".join(str(n) for n in vol.shape), f"NIfTI {stored} spacing {'x'.join(f'{s:g}' for s in spacing)}", []


def inspect_card(path: str | Path, sample: int = 200) -> InspectReport:
    """Validate a card (raising on structural errors) and summarise it."""
    data = load_card(path)
    problems: list[Problem] = []
    if data.card.tasks and not data.card.metadata.patient_id:
        problems.append(Problem("warning", "metadata.patient_id", "no patient id: splits cannot be checked for "
                                "patient leakage", "declare metadata.patient_id if the manifest has one"))
    if (data.df[SPLIT] == "").all() and data.card.split is not None:
        problems.append(Problem("warning", "split", "no rows have a split", "run 'synthfm data split'"))
    images = image_summary(data, sample, problems)
    return InspectReport(data.card.name, data.card.modality, len(data),
                         {k or "(none)": int(v) for k, v in data.df[SPLIT].value_counts().sort_index().items()},
                         label_counts(data), metadata_summary(data), images, problems)
