"""Grad-CAM heat maps (pytorch-grad-cam) for ViT and CNN classifiers, overlays, a grid and a pointing game.

ViT (timm): the target layer is the last block's first norm; its tokens are turned back into a feature map
by dropping the prefix tokens (class and register tokens, `num_prefix_tokens`) and reshaping the patch
tokens to the patch grid. CNN: the last convolution. A one-output (binary) head is explained through its
logit. The pointing game counts an image as a hit when the heat map's maximum falls inside the lesion mask
(dilated by a tolerance); the heat ratio is the mean heat inside the lesions over the mean heat elsewhere in
the field of view.

`synthfm analyze gradcam ADAPT_RUN`: the classifier of a finished adaptation run (its `config.yaml` and
`best.safetensors`) on `n` images of a split. Run directory: `gradcam/<id>.png` (image | overlay),
`gradcam_grid.png` (every image and overlay), `gradcam_scores.csv` (id, label, score, target class and, with
lesion masks, pointing hit and heat ratio).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image
from pydantic import Field
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy import ndimage as ndi
from torch import nn

from synthfm.analyze.plots import image_grid
from synthfm.config import StrictModel, validate_config
from synthfm.data.images import encode_png
from synthfm.data.manifest import ID, load_card
from synthfm.data.readers import open_dataset
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path, atomic_write_bytes
from synthfm.runs import RunDir

STAGE = "analyze.gradcam"
Reshape = Callable[[torch.Tensor], torch.Tensor]


def vit_reshape(encoder: nn.Module) -> Reshape:
    """Token sequence (B, prefix + H*W, C) -> feature map (B, C, H, W), dropping class/register tokens."""
    prefix = int(encoder.num_prefix_tokens)
    gh, gw = (int(v) for v in encoder.patch_embed.grid_size)

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        """Drop the prefix tokens and lay the patch tokens out on the patch grid."""
        patches = tokens[:, prefix:, :]
        if patches.shape[1] != gh * gw:
            raise SynthfmError(f"ViT gives {patches.shape[1]} patch tokens, expected {gh}x{gw}",
                               "run Grad-CAM at the image size the encoder was built for")
        return patches.reshape(tokens.shape[0], gh, gw, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


def cam_target(model: nn.Module) -> tuple[list[nn.Module], Reshape | None]:
    """Target layers and reshape transform: a ViT's last block norm1, else the last Conv2d."""
    encoder = getattr(model, "encoder", model)
    if hasattr(encoder, "blocks") and hasattr(encoder, "num_prefix_tokens"):
        return [encoder.blocks[-1].norm1], vit_reshape(encoder)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise SynthfmError(f"{type(model).__name__} is neither a timm ViT nor has a Conv2d layer",
                           "pass a ViT classifier (adaptation run) or a CNN")
    return [convs[-1]], None


def grad_cam(model: nn.Module, images: torch.Tensor, targets: list[int]) -> np.ndarray:
    """Grad-CAM heat maps (B, H, W) in [0, 1] for each image's target output."""
    layers, reshape = cam_target(model)
    frozen = getattr(model, "frozen", False)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval().requires_grad_(True)
    if frozen:
        model.frozen = False  # a linear probe's encoder must pass gradients for the CAM
    try:
        with GradCAM(model=model, target_layers=layers, reshape_transform=reshape) as cam:
            return cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    finally:
        if frozen:
            model.frozen = True
        for n, p in model.named_parameters():
            p.requires_grad_(grads[n])


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


def overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The heat map blended over the image (uint8 RGB)."""
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, heat, use_rgb=True)


# ---- adaptation runs ----------------------------------------------------------------------------------
def load_adapted(run_dir: str | Path) -> tuple[nn.Module, object]:
    """The best classifier of a finished adaptation run, and its AdaptConfig."""
    from synthfm.adapt.config import AdaptConfig
    from synthfm.adapt.trainer import BEST_FILE, fit_image_size, load_encoder, make_classifier
    from synthfm.models.checkpoint import load_state

    run_dir = Path(run_dir)
    if not (run_dir / BEST_FILE).is_file() or not (run_dir / "config.yaml").is_file():
        raise SynthfmError(f"{run_dir} is not a finished adaptation run ({BEST_FILE} or config.yaml missing)",
                           "point at one seed's run folder of 'synthfm adapt' (it holds best.safetensors)")
    cfg = validate_config(AdaptConfig, yaml.safe_load((run_dir / "config.yaml").read_text())["config"],
                          str(run_dir / "config.yaml"))
    data = load_card(cfg.card, check_files=False)
    task = data.card.task(cfg.task)
    torch.manual_seed(cfg.seeds[0])  # as the trainer does: a random-init probe's encoder is rebuilt, not saved
    encoder = load_encoder(cfg, data.channels)
    if cfg.image_size:  # as the trainer does: a ViT built for another size takes the run's (positions resampled)
        fit_image_size(encoder, cfg.image_size, cfg.encoder)
    probe = cfg.policy == "linear_probe"
    model = make_classifier(encoder, cfg, task.num_outputs)
    state = load_state(run_dir / BEST_FILE)
    (model.head if probe and not cfg.augments else model).load_state_dict(state)
    return model.eval(), cfg


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
    size = acfg.image_size or int(model.encoder.patch_embed.img_size[0])
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
