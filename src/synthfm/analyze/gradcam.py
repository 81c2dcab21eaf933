"""The `analyze gradcam` job: Grad-CAM heat maps of an adapted classifier, overlays, a grid and a pointing game.

The heat maps are synthfm.models.gradcam's (ViT: last block's first norm; CNN: last convolution). The
pointing game counts an image as a hit when the heat map's maximum falls inside the lesion mask (dilated by a
tolerance); the heat ratio is the mean heat inside the lesions over the mean heat elsewhere in the field of
view.

`synthfm analyze gradcam ADAPT_RUN`: the classifier of a finished adaptation run (its `config.yaml` and
`best.safetensors`) on `n` images of a split. Run directory: `gradcam/<id>.png` (image | overlay),
`gradcam_grid.png` (every image and overlay), `gradcam_scores.csv` (id, label, score, target class and, with
lesion masks, pointing hit and heat ratio).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pydantic import Field
from scipy import ndimage as ndi

from synthfm.adapt.adapted import load_adapted
from synthfm.analyze.plots import image_grid
from synthfm.config import StrictModel
from synthfm.data.images import encode_png
from synthfm.data.manifest import ID, load_card
from synthfm.data.readers import open_dataset
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path, atomic_write_bytes
from synthfm.models.backbones import image_size
from synthfm.models.gradcam import grad_cam, overlay
from synthfm.runs import RunDir

STAGE = "analyze.gradcam"


def pointing_hit(heat: np.ndarray, mask: np.ndarray, tolerance: int) -> bool:
    """Whether the heat map's maximum lies inside the mask dilated by `tolerance` pixels."""
    region = ndi.binary_dilation(mask > 0, iterations=tolerance) if tolerance else mask > 0
    return bool(region.flat[int(np.argmax(heat))])


def heat_ratio(heat: np.ndarray, mask: np.ndarray, fov: np.ndarray | None = None) -> float:
    """Mean heat inside the mask over mean heat outside it (within the field of view)."""
    inside = mask > 0
    outside = ~inside & (fov > 0 if fov is not None else True)
    if not inside.any() or not outside.any():
        return float("nan")
    return float(heat[inside].mean() / max(float(heat[outside].mean()), 1e-8))


class GradCAMConfig(StrictModel):
    """Which classifier, which images, which class to explain."""

    adapt_run: str = Field(description="one finished adaptation run folder (config.yaml + best.safetensors)")
    card: str | None = Field(None, description="default: the card the classifier was adapted on")
    split: str | None = "test"
    n: int = Field(16, ge=1)
    target: int | None = Field(None, ge=0, description="class to explain (default: the predicted class)")
    lesion_mask: str | None = Field(None, description="card mask for the pointing game (default: lesions)")
    tolerance: int = Field(2, ge=0, description="pointing-game tolerance in pixels (at the CAM's size)")
    batch_size: int = Field(8, ge=1)


def _targets(logits: torch.Tensor, target: int | None) -> list[int]:
    """The output to explain per image: the given class, the predicted class, or the single logit."""
    if logits.shape[1] == 1:
        return [0] * len(logits)
    return [target] * len(logits) if target is not None else logits.argmax(1).tolist()


def run_gradcam(cfg: GradCAMConfig, out: str | Path) -> Path:
    """Heat maps, overlays, grid and scores for `n` images; return the scores CSV."""
    run = RunDir(out, STAGE, cfg)
    if run.open() == "done":
        return run.path / "gradcam_scores.csv"
    model, acfg = load_adapted(cfg.adapt_run)
    data = load_card(cfg.card or acfg.card)
    size = image_size(model.encoder, acfg.image_size)
    ds = open_dataset(data, cfg.split, size=size)
    if not hasattr(ds, "raw"):
        raise SynthfmError(f"card '{data.card.name}' is stored as shards", "run Grad-CAM on a folder or npz card")
    mask_name = cfg.lesion_mask or ("lesions" if "lesions" in data.card.masks else None)
    rows, grid = [], []
    picks = list(range(min(cfg.n, len(ds))))
    for start in range(0, len(picks), cfg.batch_size):
        chunk = [ds[p] for p in picks[start:start + cfg.batch_size]]
        x = torch.stack([c["image"] for c in chunk])
        with torch.no_grad():
            logits = model(x)
        targets = _targets(logits, cfg.target)
        heat = grad_cam(model, x, targets)
        for c, h, t, lg in zip(chunk, heat, targets, logits, strict=True):
            rows.append(_score_row(data, c, h, t, lg, ds, size, mask_name, cfg, run.path, grid))
    scores = pd.DataFrame(rows)
    with atomic_path(run.path / "gradcam_scores.csv", ".csv") as tmp:
        scores.to_csv(tmp, index=False)
    image_grid([g[1] for g in grid], ["image", "Grad-CAM"], run.path / "gradcam_grid.png", [g[0] for g in grid])
    summary = {"images": len(scores)}
    if "pointing_hit" in scores:
        summary |= {"pointing_accuracy": float(scores["pointing_hit"].mean()),
                    "mean_heat_ratio": float(scores["heat_ratio"].mean())}
    run.complete(**summary)
    return run.path / "gradcam_scores.csv"


def _score_row(data, item, heat, target, logits, raw, size, mask_name, cfg, out, grid) -> dict:
    """Save one overlay and return its scores row (pointing game when the card has lesion masks)."""
    from synthfm.analyze.morphology import read_mask

    r = int(item["index"])
    img = raw.raw(int(np.flatnonzero(raw.rows == r)[0]))
    img = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img
    rgb = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))
    ov = overlay(rgb, heat)
    ident = str(data.df[ID].iat[r])
    atomic_write_bytes(out / "gradcam" / f"{ident.replace('/', '_')}.png", encode_png(np.concatenate([rgb, ov], 1)))
    grid.append((ident, [rgb, ov]))
    row = {"id": ident, "row": r, "target": target, "logit": float(logits[target])}
    row |= {f"label_{k}": int(v) for k, v in item["labels"].items() if v.ndim == 0}
    if mask_name and data.card.source.format == "folder":
        mask = read_mask(data, r, mask_name, heat.shape)
        row |= {"pointing_hit": pointing_hit(heat, mask, cfg.tolerance), "heat_ratio": heat_ratio(heat, mask)}
    return row
