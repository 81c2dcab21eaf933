"""Import a MedMNIST-style `.npz` (`{split}_images`, `{split}_labels`) as a dataset card.

Everything is checked before anything is written: the arrays load without pickle, images are uint8
(N, H, W) or (N, H, W, C), labels are finite non-negative integers with one row per image and the same
width in every split, and the options (modality, task type, class names) fit the labels. The manifest is
written first and the card last, so a failed import never leaves a card behind.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd

from synthfm.config import dump_config, validate_config
from synthfm.data.card import CARD_FILE, MANIFEST, SPLITS, DatasetCard, Modality, TaskType
from synthfm.data.manifest import load_card
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path
from synthfm.locks import folder_lock


def _array(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """One array of the archive, with a clear error for pickled or corrupt members."""
    try:
        return npz[key]
    except ValueError as err:
        raise SynthfmError(f"{path}: array '{key}' cannot be read without pickle ({err})",
                           "save it as a plain numeric array (np.savez with uint8 images and integer labels)") from None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise SynthfmError(f"{path}: array '{key}' is corrupt or truncated ({err})",
                           "re-download or re-export the .npz") from None


def _check_images(images: np.ndarray, key: str, path: Path) -> None:
    """uint8 (N, H, W) or (N, H, W, 1|3)."""
    if images.dtype != np.uint8:
        raise SynthfmError(f"{path}: '{key}' has dtype {images.dtype}, not uint8",
                           "store images as uint8 0..255 (scale and cast floats before saving)")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise SynthfmError(f"{path}: '{key}' has shape {images.shape}; expected (N, H, W) or (N, H, W, 1|3)",
                           "store one 2-D grey or RGB image per row")


def _check_labels(labels: np.ndarray, key: str, n_images: int, path: Path) -> np.ndarray:
    """Finite non-negative integer labels, one row per image; returned as int64 (N, K)."""
    if labels.dtype.kind not in "iub" and labels.dtype.kind != "f":
        raise SynthfmError(f"{path}: '{key}' has dtype {labels.dtype}; labels must be integers",
                           "store class indices as integers")
    if len(labels) != n_images:
        raise SynthfmError(f"{path}: '{key}' has {len(labels)} rows but the images array has {n_images}",
                           "give exactly one label row per image")
    lab = labels.reshape(len(labels), -1)
    if lab.dtype.kind == "f":
        bad = ~np.isfinite(lab) | (lab != np.round(lab))
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise SynthfmError(f"{path}: '{key}' row {row} holds {lab[row].tolist()}, not a whole-number class index",
                               "store class indices as integers (no NaN, no fractions)")
    lab = lab.astype(np.int64)
    if (lab < 0).any():
        row = int(np.argwhere(lab < 0)[0][0])
        raise SynthfmError(f"{path}: '{key}' row {row} holds a negative label {lab[row].tolist()}",
                           "class indices start at 0")
    return lab


def _task(task: str, task_type: str, classes: list[str] | None, width: int, allv: np.ndarray) -> dict:
    """The card's task mapping, checked against the labels."""
    if task_type not in get_args(TaskType):
        raise SynthfmError(f"--task-type {task_type!r} is not a task type", f"use one of {list(get_args(TaskType))}")
    if classes is not None:
        if any(not c.strip() for c in classes):
            raise SynthfmError(f"--classes {','.join(classes)!r} has an empty class name", "name every class")
        if len(set(classes)) != len(classes):
            raise SynthfmError(f"--classes {','.join(classes)!r} repeats a class name", "give each class once")
    if width > 1:
        cols = classes or [f"{task}_{j}" for j in range(width)]
        if len(cols) != width or allv.max() > 1:
            raise SynthfmError(f"--classes: the labels have {width} columns of 0/1 (multilabel) but "
                               f"{len(cols)} class names were given" if len(cols) != width else
                               "multilabel labels (several columns) must be 0/1", "give one class name per column")
        return {"name": task, "type": "multilabel", "classes": cols, "columns": cols}
    k = int(allv.max()) + 1
    if task_type == "binary" and k > 2:
        raise SynthfmError(f"--task-type binary, but the labels hold {k} classes (0..{k - 1})",
                           "use --task-type multiclass or ordinal")
    if task_type == "multilabel":
        raise SynthfmError("--task-type multilabel needs one label column per class; the labels have one column",
                           "use --task-type binary, multiclass or ordinal")
    names = classes or [str(i) for i in range(max(k, 2) if task_type == "binary" else k)]
    if len(names) < k:
        raise SynthfmError(f"--classes names {len(names)} classes but the labels go up to {k - 1}",
                           f"give {k} class names")
    return {"name": task, "type": task_type, "classes": names}


def import_npz(npz_path: str | Path, out_dir: str | Path, name: str, modality: Modality = "fundus",
               task: str = "label", task_type: TaskType = "multiclass", classes: list[str] | None = None) -> Path:
    """Write a card (manifest + dataset.yaml) that reads the arrays in place, keeping the official split."""
    if modality not in get_args(Modality):
        raise SynthfmError(f"--modality {modality!r} is not a modality", f"use one of {list(get_args(Modality))}")
    path = Path(npz_path).resolve()
    if not path.is_file():
        raise SynthfmError(f".npz file not found: {path}", "check the path")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise SynthfmError(f"cannot read {path} as .npz: {err}", "give a MedMNIST-style .npz") from None
    with npz:
        splits = [s for s in SPLITS if f"{s}_images" in npz.files]
        if not splits:
            raise SynthfmError(f"{path} has no train_images/val_images/test_images arrays (has {npz.files})",
                               "give a MedMNIST-style .npz")
        labels = {}
        for s in splits:
            if f"{s}_labels" not in npz.files:
                raise SynthfmError(f"{path} has {s}_images but no {s}_labels", "add the labels array to the .npz")
            images = _array(npz, f"{s}_images", path)
            _check_images(images, f"{s}_images", path)
            labels[s] = _check_labels(_array(npz, f"{s}_labels", path), f"{s}_labels", len(images), path)
    widths = {s: lab.shape[1] for s, lab in labels.items()}
    if len(set(widths.values())) > 1:
        raise SynthfmError(f"{path}: label arrays differ in width: " + ", ".join(f"{s}_labels {w}" for s, w in
                                                                                 widths.items()),
                           "give every split's labels the same columns")
    allv = np.concatenate(list(labels.values()))
    if not len(allv):
        raise SynthfmError(f"{path}: every images array is empty", "give at least one image")
    spec = _task(task, task_type, classes, allv.shape[1], allv)
    df = pd.concat([pd.DataFrame({"split": s, "index": np.arange(len(lab))}) for s, lab in labels.items()],
                   ignore_index=True)
    for j, c in enumerate(spec.get("columns", [task])):
        df[c] = allv[:, j]
    card = validate_config(DatasetCard, {
        "name": name, "modality": modality, "source": {"format": "npz", "root": str(path)}, "manifest": MANIFEST,
        "tasks": [spec], "description": f"imported from {path.name}"}, f"import of {path}")
    out = Path(out_dir)
    card_path = out / CARD_FILE
    with folder_lock(out):
        with atomic_path(out / MANIFEST) as tmp:
            df.to_parquet(tmp, index=False)
        with atomic_path(card_path) as tmp:  # checked in place before it becomes the card
            tmp.write_text(dump_config(card))
            load_card(tmp)
    return card_path
