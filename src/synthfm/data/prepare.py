"""`synthfm data prepare`: preprocess a card into a new card (folder or shards); resumable."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthfm.config import StrictModel
from synthfm.data.card import CARD_FILE, FILE_FORMATS, MANIFEST, SourceSpec, SplitSpec, write_card
from synthfm.data.digest import path_digest
from synthfm.data.images import encode_png, load_image
from synthfm.data.manifest import ID, SPLIT, CardData, load_card
from synthfm.data.preprocess import PrepareConfig, preprocess, quality_flag
from synthfm.data.shard_index import open_random_access
from synthfm.data.shards import ShardRecord, plan_shards, write_shards_resumable
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path, atomic_write_bytes
from synthfm.progress import progress_bar
from synthfm.runs import RunDir

PROGRESS_FILE = "progress.jsonl"


class PrepareRun(StrictModel):
    """The resolved inputs of one prepare run (its config hash keys the run directory)."""

    source_card: str
    source_digest: str = ""  # of the source card's YAML and manifest: edited labels or rows are a new run
    config: PrepareConfig


def _stem(text: str) -> str:
    """A file-name-safe stem."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(text).stem)[:60] or "img"


class _Source:
    """Row-wise access to source images and masks, whatever the card's format."""

    def __init__(self, data: CardData) -> None:
        self.data = data
        self.rows = open_random_access(data)  # every row, in manifest order (shards read by offset)

    def image(self, i: int) -> np.ndarray:
        """Row i's image."""
        return self.rows.raw(i)

    def masks(self, i: int) -> dict[str, np.ndarray]:
        """Row i's masks, by mask name."""
        out = {}
        for name, col in self.data.card.masks.items():
            path = self.data.source_root / str(self.data.df[col].iat[i])
            out[name] = load_image(path, 1, where=f"mask '{name}' of manifest row {i + 1}")
        return out


def prepare_card(card_path: str | Path, out_dir: str | Path, cfg: PrepareConfig | None = None) -> Path:
    """Preprocess every image of a card into `out_dir`, writing a new card; return its dataset.yaml."""
    cfg = cfg or PrepareConfig()
    data = load_card(card_path)
    if cfg.limit is not None and cfg.limit < len(data):
        data = data.subset(np.arange(cfg.limit))
    out = Path(out_dir).resolve()
    if out == data.card_dir.resolve() or out == data.source_root.resolve():
        raise SynthfmError(f"prepare would write into the source card's folder {out}",
                           "choose a different --out; the source is never modified")
    run = RunDir(out, "data.prepare", PrepareRun(source_card=str(Path(card_path).resolve()),
                                                 source_digest=path_digest(card_path, images=False),
                                                 config=cfg))
    if run.open() == "done":
        return out / CARD_FILE
    done = run.done_rows(PROGRESS_FILE)
    volumes = data.card.source.format == "nifti"
    if volumes and cfg.format == "shards":
        raise SynthfmError("NIfTI volumes are prepared into a folder of NIfTI files, not shards",
                           "use --format folder for a nifti card")
    writer = _write_volumes if volumes else _write_shards if cfg.format == "shards" else _write_folder
    writer(data, _Source(data), run, cfg, done)
    card_path_out = _finish(data, run, cfg, run.done_rows(PROGRESS_FILE))
    run.complete(images=len(data), format=cfg.format, size=cfg.size)
    return card_path_out


def _process(src: _Source, i: int, cfg: PrepareConfig) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Preprocess row i."""
    return preprocess(src.image(i), src.data.card.modality, cfg, src.masks(i))


def _rel(data: CardData, i: int) -> str:
    """Output image path (relative to the new card) for row i."""
    return f"images/{i:07d}_{_stem(str(data.df[ID].iat[i]))}.png"


def _write_folder(data: CardData, src: _Source, run: RunDir, cfg: PrepareConfig, done: dict) -> None:
    """Write each image (and mask) as PNG, atomically, skipping rows already done."""
    todo = [i for i in range(len(data)) if i not in done]
    for i in progress_bar(todo, "prepare", total=len(todo)):
        img, masks, q = _process(src, i, cfg)
        rel = _rel(data, i)
        atomic_write_bytes(run.path / rel, encode_png(img))
        for name, m in masks.items():
            atomic_write_bytes(run.path / f"masks/{name}/{Path(rel).name}", encode_png(m))
        run.append(PROGRESS_FILE, [{"row": i, "path": rel, **q}])


def _write_volumes(data: CardData, src: _Source, run: RunDir, cfg: PrepareConfig, done: dict) -> None:
    """Resample, window, fit and resize each NIfTI volume into a uint8 .nii.gz, atomically, skipping rows done."""
    from synthfm.data.nifti import nifti_bytes, prepare_volume, read_nifti

    todo = [i for i in range(len(data)) if i not in done]
    for i in progress_bar(todo, "prepare volumes", total=len(todo)):
        vol, spacing = read_nifti(data.image_path(i), where=f"manifest row {i + 1}")
        out, out_spacing, q = prepare_volume(vol, spacing, cfg.size, cfg.fit, cfg.spacing, cfg.window_percentiles)
        q["quality_flag"] = quality_flag(q, cfg.quality)
        rel = _rel(data, i).removesuffix(".png") + ".nii.gz"
        atomic_write_bytes(run.path / rel, nifti_bytes(out, out_spacing))
        run.append(PROGRESS_FILE, [{"row": i, "path": rel, **q}])


def _write_shards(data: CardData, src: _Source, run: RunDir, cfg: PrepareConfig, done: dict) -> None:
    """Write shards atomically; a shard whose rows are all logged is skipped on resume."""
    def make(i: int, name: str) -> tuple[ShardRecord, dict[str, Any]]:
        """One preprocessed shard record and its progress row."""
        img, _, q = _process(src, i, cfg)
        meta = {"row": i, "id": str(data.df[ID].iat[i]),
                "labels": {k: np.asarray(v).tolist() for k, v in data.row_labels(i).items()}}
        return ShardRecord(f"{i:07d}", img, meta), {"row": i, "path": f"shards/{name}#{i:07d}", **q}

    plan = plan_shards(data.df[SPLIT].tolist(), cfg.shard_size)
    write_shards_resumable(run, plan, make, cfg.encoding, PROGRESS_FILE, "prepare shards")


def _finish(data: CardData, run: RunDir, cfg: PrepareConfig, done: dict[int, dict[str, Any]]) -> Path:
    """Write the new manifest and card (last, so a card on disk means all images are there)."""
    q = pd.DataFrame([done[i] for i in range(len(data))]).drop(columns=["row"])
    df = data.df.drop(columns=[ID, SPLIT]).reset_index(drop=True)
    old_path = data.card.source.path_column
    if data.card.source.format in FILE_FORMATS and old_path in df.columns:
        df = df.rename(columns={old_path: "source_path"})
    df["image_id"] = data.df[ID].to_numpy()
    df = pd.concat([df.drop(columns=[c for c in q.columns if c in df.columns]), q], axis=1)
    masks = {}
    for name, col in data.card.masks.items():
        df[col] = [f"masks/{name}/{Path(p).name}" for p in q["path"]]
        masks[name] = col
    split = None
    if data.card.split is not None:
        df["split"] = data.df[SPLIT].to_numpy()
        split = SplitSpec(column="split")
    with atomic_path(run.path / MANIFEST) as tmp:
        df.to_parquet(tmp, index=False)
    src = (SourceSpec(format="shards", root="shards") if cfg.format == "shards"
           else SourceSpec(format="nifti" if data.card.source.format == "nifti" else "folder", root=".",
                           path_column="path"))
    card = data.card.model_copy(update={
        "source": src, "manifest": MANIFEST, "id_column": "image_id", "split": split, "derive": {}, "tags": {},
        "masks": masks if cfg.format == "folder" else {},
        "description": (data.card.description + f" [prepared: {cfg.size}px {cfg.format}]").strip(),
    })
    return write_card(card, run.path)
