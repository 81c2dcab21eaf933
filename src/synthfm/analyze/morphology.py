"""`synthfm analyze morphology CARD`: per-image retinal morphology indices of a card, resumably.

Every image is resized so its longest side is `size` (indices in pixels refer to that size; None keeps the
native size), its field of view found, its vessels segmented (classical Sato/Frangi vesselness, or the small
U-Net trained on phantom masks and on the card's manual masks of its train split), and the vessel indices,
the optic disc / cup estimate and, where the card has them, the indices of its reference vessel mask
(`ref_*`), the segmentation's Dice/AUC against it, and artery/vein indices of its artery/vein label map are
written to one row. Rows are appended to `progress.jsonl` in batches (synced), so a killed run resumes
without redoing finished rows; the table is written last.

Run directory: `morphology_<card>.parquet` and `.csv` (one row per image), `morphology_summary_<card>.csv`
(count, mean, sd, median per index), `morphology_examples.png` (image, vessels, disc/cup for a few rows),
`segmenter/` (the trained U-Net, when used), `progress.jsonl`, `config.yaml`, `COMPLETE.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import Field

from synthfm.analyze import indices as ix
from synthfm.analyze.plots import image_grid
from synthfm.analyze.unet import (
    UNetConfig,
    load_unet,
    make_example,
    phantom_examples,
    predict_unet,
    save_unet,
    train_unet,
)
from synthfm.analyze.vessels import field_of_view, segment_classical, segmentation_metrics
from synthfm.config import StrictModel
from synthfm.data.images import load_image
from synthfm.data.manifest import ID, SPLIT, CardData, load_card
from synthfm.data.readers import open_dataset
from synthfm.errors import SynthfmError
from synthfm.io import write_table, write_table_pair
from synthfm.progress import progress_bar
from synthfm.runs import RunDir

STAGE = "analyze.morphology"
PROGRESS = "progress.jsonl"
SEGMENTER_DIR = "segmenter"
VESSEL_MASKS = ("vessels", "vessel")
AV_MASKS = ("artery_vein",)
Segmenter = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class MorphologyConfig(StrictModel):
    """Which card, which segmenter, at which size; where reference masks are."""

    card: str
    segmenter: Literal["sato", "frangi", "unet"] = "sato"
    size: int | None = Field(512, ge=32, description="longest image side for the analysis; None = native")
    split: str | None = Field(None, description="only this split (default: every row)")
    limit: int | None = Field(None, ge=1, description="only the first N rows")
    vessel_mask: str | None = Field(None, description="card mask with reference vessels (default vessels/vessel)")
    artery_vein_mask: str | None = Field(None, description="card mask with artery (1) / vein (2) labels")
    train_masks: Literal["train", "all", "none"] = Field(
        "train", description="U-Net: which of the card's rows with vessel masks it also trains on")
    unet: UNetConfig = Field(default_factory=UNetConfig)
    unet_dir: str | None = Field(None, description="use this trained U-Net instead of training one")
    batch_size: int = Field(16, ge=1, description="rows per synced progress write")
    examples: int = Field(4, ge=0, description="rows shown in morphology_examples.png")


# ---- images and masks ---------------------------------------------------------------------------------
def _pick_mask(data: CardData, given: str | None, defaults: tuple[str, ...]) -> str | None:
    """The card mask to use: the one named, else the first default the card has."""
    if given is not None:
        if given not in data.card.masks:
            raise SynthfmError(f"card '{data.card.name}' has no mask '{given}'",
                               f"use one of {sorted(data.card.masks)} or leave it unset")
        return given
    return next((m for m in defaults if m in data.card.masks), None)


def _resize(arr: np.ndarray, size: int | None, nearest: bool = False) -> np.ndarray:
    """Resize so the longest side is `size` (bicubic; nearest for masks)."""
    h, w = arr.shape[:2]
    if size is None or max(h, w) == size:
        return arr
    s = size / max(h, w)
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(arr).resize((max(1, round(w * s)), max(1, round(h * s))), method))


def read_mask(data: CardData, row: int, name: str, shape: tuple[int, int]) -> np.ndarray:
    """A card mask of one row (label values kept), at the given shape."""
    path = data.source_root / str(data.df[data.card.masks[name]].iat[row])
    arr = load_image(path, channels=1, where=f"mask '{name}' of manifest row {row + 1}")
    if arr.max() == 255 and len(np.unique(arr)) <= 2:
        arr = (arr > 0).astype(np.uint8)
    if arr.shape[:2] == tuple(shape):
        return arr
    return np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def iter_images(data: CardData, rows: list[int], size: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """(manifest row, RGB uint8 image at `size`) for the wanted rows, in manifest order."""
    wanted = set(rows)
    ds = open_dataset(data)
    if data.card.source.format == "shards":
        for item in ds:
            if item["index"] in wanted:
                yield item["index"], _resize(item["image"].permute(1, 2, 0).numpy(), size)
        return
    pos = {int(r): p for p, r in enumerate(ds.rows)}
    for r in rows:
        img = ds.raw(pos[r])
        yield r, _resize(np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img, size)


# ---- segmenters ---------------------------------------------------------------------------------------
def training_examples(cfg: MorphologyConfig, data: CardData, vessel: str | None) -> list:
    """U-Net training examples: rendered phantoms and the card's masked rows allowed by `train_masks`."""
    out = phantom_examples(cfg.unet.phantom_images, cfg.unet.phantom_seed, cfg.size or 512)
    if vessel and cfg.train_masks != "none" and data.card.source.format != "shards":
        rows = data.indices("train") if cfg.train_masks == "train" else data.indices()
        for r, rgb in iter_images(data, [int(r) for r in rows], cfg.size):
            out.append(make_example(rgb, read_mask(data, r, vessel, rgb.shape[:2]), field_of_view(rgb)))
    return out


def build_segmenter(cfg: MorphologyConfig, data: CardData, run: RunDir, vessel: str | None) -> Segmenter:
    """The segmentation function: classical, or a U-Net (loaded, or trained and saved in the run)."""
    if cfg.segmenter != "unet":
        return lambda rgb, fov: segment_classical(rgb, fov, cfg.segmenter)  # type: ignore[arg-type]
    saved = Path(cfg.unet_dir) if cfg.unet_dir else run.path / SEGMENTER_DIR
    if cfg.unet_dir or (saved / "config.json").is_file():
        net = load_unet(saved)
    else:
        net = train_unet(training_examples(cfg, data, vessel), cfg.unet)
        save_unet(net, saved, trained_on=data.card.name, size=cfg.size)

    def segment(rgb: np.ndarray, fov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """U-Net probability and its 0.5 threshold."""
        p = predict_unet(net, rgb, fov)
        return p > 0.5, p

    return segment


# ---- one row ------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """A JSON-friendly scalar."""
    if isinstance(value, np.generic):
        return value.item()
    return None if value is pd.NA else value


def row_info(data: CardData, r: int) -> dict[str, Any]:
    """Id, split, labels and metadata of one manifest row."""
    info: dict[str, Any] = {"row": r, "id": str(data.df[ID].iat[r]), "split": str(data.df[SPLIT].iat[r])}
    info.update({f"label_{task}": _plain(v[r]) for task, v in data.labels.items() if np.ndim(v[r]) == 0})
    for field, col in data.card.metadata.columns().items():
        info[field] = _plain(data.df[col].iat[r])
    return info


def measure(rgb: np.ndarray, segment: Segmenter, masks: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every index of one image (plus reference-mask indices and metrics where masks are given)."""
    fov = field_of_view(rgb)
    vessels, score = segment(rgb, fov)
    disc = ix.disc_cup(rgb, fov)
    out: dict[str, Any] = {"height": rgb.shape[0], "width": rgb.shape[1], "fov_radius_px": ix.fov_radius(fov),
                           **ix.vessel_indices(vessels, fov),
                           **{k: v for k, v in disc.items() if not isinstance(v, np.ndarray)}}
    if "vessel" in masks:
        ref = masks["vessel"] > 0
        out.update({f"seg_{k}": v for k, v in segmentation_metrics(vessels, score, ref, fov).items()})
        out.update({f"ref_{k}": v for k, v in ix.vessel_indices(ref, fov).items()})
    if "artery_vein" in masks:
        out.update(ix.artery_vein_indices(masks["artery_vein"], fov))
    return {k: _plain(v) for k, v in out.items()}


# ---- the run ------------------------------------------------------------------------------------------
def table_name(data: CardData) -> str:
    """File stem of a card's morphology table."""
    return f"morphology_{data.card.name}"


def _rows(cfg: MorphologyConfig, data: CardData) -> list[int]:
    """Manifest rows to analyse."""
    rows = [int(r) for r in data.indices(cfg.split)]
    return rows[: cfg.limit] if cfg.limit else rows


def _masks_of(data: CardData, r: int, shape: tuple[int, int], names: dict[str, str | None]) -> dict[str, np.ndarray]:
    """The reference masks of one row that the card has (folder cards only)."""
    if data.card.source.format != "folder":
        return {}
    return {key: read_mask(data, r, name, shape) for key, name in names.items() if name}


def repair_tail(path: Path) -> None:
    """End a progress log torn by a kill with a newline, so the next record starts on its own line."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def run_morphology(cfg: MorphologyConfig, out: str | Path, stop_after: int | None = None) -> Path:
    """Measure every selected row of the card into the run directory; return the table's Parquet path.

    `stop_after` (for tests) raises KeyboardInterrupt after that many synced batches, as a kill would.
    """
    run = RunDir(out, STAGE, cfg)
    data = load_card(cfg.card)
    table = run.path / f"{table_name(data)}.parquet"
    if run.open() == "done":
        return table
    names = {"vessel": _pick_mask(data, cfg.vessel_mask, VESSEL_MASKS),
             "artery_vein": _pick_mask(data, cfg.artery_vein_mask, AV_MASKS)}
    segment = build_segmenter(cfg, data, run, names["vessel"])
    rows = _rows(cfg, data)
    repair_tail(run.path / PROGRESS)
    done = run.done_rows(PROGRESS)
    todo = [r for r in rows if r not in done]
    buffer: list[dict[str, Any]] = []
    batches = 0
    for r, rgb in progress_bar(iter_images(data, todo, cfg.size), f"morphology {data.card.name}", total=len(todo)):
        buffer.append({**row_info(data, r), **measure(rgb, segment, _masks_of(data, r, rgb.shape[:2], names))})
        if len(buffer) >= cfg.batch_size:
            run.append(PROGRESS, buffer)
            buffer, batches = [], batches + 1
            if stop_after is not None and batches >= stop_after:
                raise KeyboardInterrupt("stopped after a batch (test hook)")
    run.append(PROGRESS, buffer)
    done = run.done_rows(PROGRESS)
    df = pd.DataFrame([done[r] for r in rows])
    write_tables(run.path, table_name(data), df)
    if cfg.examples:
        example_figure(data, rows[: cfg.examples], cfg, segment, run.path / "morphology_examples.png")
    run.complete(card=data.card.name, rows=len(df), table=table.name)
    return table


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Count, mean, sd and median of every numeric index column."""
    skip = {"row", "height", "width"}
    cols = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])
            and pd.api.types.is_float_dtype(df[c])]
    stats = df[cols].agg(["count", "mean", "std", "median"]).T.reset_index()
    return stats.rename(columns={"index": "index_name", "std": "sd"})


def write_tables(directory: Path, stem: str, df: pd.DataFrame) -> None:
    """The per-image table as Parquet and CSV, and its summary CSV (each written atomically)."""
    write_table_pair(df, directory / stem)
    write_table(summary(df), directory / f"{stem.replace('morphology_', 'morphology_summary_')}.csv")


def _outline(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a mask."""
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask)


def example_figure(data: CardData, rows: list[int], cfg: MorphologyConfig, segment: Segmenter, path: Path) -> None:
    """Image, segmented vessels and disc (green) / cup (blue) outlines for a few rows."""
    grid, labels = [], []
    for r, rgb in iter_images(data, rows, cfg.size):
        fov = field_of_view(rgb)
        vessels, _ = segment(rgb, fov)
        dc = ix.disc_cup(rgb, fov)
        marked = rgb.copy()
        marked[_outline(dc["disc"])] = (0, 255, 0)
        marked[_outline(dc["cup"])] = (0, 128, 255)
        grid.append([rgb, vessels.astype(np.uint8) * 255, marked])
        labels.append(str(data.df[ID].iat[r]))
    if grid:
        image_grid(grid, ["image", f"vessels ({cfg.segmenter})", "disc / cup"], path, labels)
