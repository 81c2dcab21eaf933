"""Import a MedMNIST-style `.npz` (`{split}_images`, `{split}_labels`) as a dataset card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from synthfm.data.card import SPLITS, DatasetCard, Modality, SourceSpec, TaskSpec, TaskType, write_card
from synthfm.data.manifest import load_card
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path

MANIFEST = "manifest.parquet"


def _labels(npz: np.lib.npyio.NpzFile, split: str, path: Path) -> np.ndarray:
    """The (N, K) label array of one split."""
    key = f"{split}_labels"
    if key not in npz:
        raise SynthfmError(f"{path} has {split}_images but no {key}", "add the labels array to the .npz")
    lab = npz[key]
    return lab.reshape(len(lab), -1)


def import_npz(npz_path: str | Path, out_dir: str | Path, name: str, modality: Modality = "fundus",
               task: str = "label", task_type: TaskType = "multiclass", classes: list[str] | None = None) -> Path:
    """Write a card (manifest + dataset.yaml) that reads the arrays in place, keeping the official split."""
    path = Path(npz_path).resolve()
    if not path.is_file():
        raise SynthfmError(f".npz file not found: {path}", "check the path")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SynthfmError(f"cannot read {path} as .npz: {err}", "give a MedMNIST-style .npz") from None
    with npz:
        splits = [s for s in SPLITS if f"{s}_images" in npz]
        if not splits:
            raise SynthfmError(f"{path} has no train_images/val_images/test_images arrays (has {list(npz)})",
                               "give a MedMNIST-style .npz")
        labels = {s: _labels(npz, s, path) for s in splits}
    width = {lab.shape[1] for lab in labels.values()}.pop()
    frames = [pd.DataFrame({"split": s, "index": np.arange(len(lab))}) for s, lab in labels.items()]
    df = pd.concat(frames, ignore_index=True)
    allv = np.concatenate(list(labels.values()))
    if width == 1:
        k = int(allv.max()) + 1
        spec = TaskSpec(name=task, type="binary" if task_type == "binary" else task_type,
                        classes=classes or [str(i) for i in range(max(k, 2 if task_type == "binary" else k))])
        df[task] = allv[:, 0].astype(np.int64)
    else:
        cols = classes or [f"{task}_{j}" for j in range(width)]
        spec = TaskSpec(name=task, type="multilabel", classes=cols, columns=cols)
        for j, c in enumerate(cols):
            df[c] = allv[:, j].astype(np.int64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / MANIFEST) as tmp:
        df.to_parquet(tmp, index=False)
    card = DatasetCard(name=name, modality=modality, source=SourceSpec(format="npz", root=str(path)),
                       manifest=MANIFEST, tasks=[spec], description=f"imported from {path.name}")
    card_path = write_card(card, out)
    load_card(card_path)
    return card_path
