"""Smoke sizes for the shipped pipelines: the same file, with its sizes and steps overridden.

`smoke(doc)` walks every job's config and shrinks what sets the cost (image counts and sizes, steps, epochs,
seeds, batch sizes, model widths) while keeping every job, reference and setting that decides what runs. Where
a shipped recipe needs what a test machine lacks, the override says so: ViT-L becomes the tiny ViT, a latent
diffusion generator (its VAE weights are downloaded by the user) becomes the pixel one, bf16 becomes fp32,
and a quality gate reports without stopping (a generator trained for two steps cannot pass it); any ViT backbone
becomes the tiny one (at most 4 blocks deep), and the gate's domain encoder and label verifier train for one epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CAPS = {"n": 40, "size": 32, "batch_size": 8, "shard_size": 16, "image_size": 64, "limit": 16, "kid_subsets": 2,
        "n_boot": 20, "n_samples": 8, "synthesize": 20, "work_size": 64, "phantom_images": 2, "test_last": 2,
        "folds": 2, "repeats": 1}
SET = {"steps": 2, "epochs": 1, "warmup_epochs": 0, "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1,
       "pretrain_steps": 2, "finetune_steps": 2}
TINY_VIT = "vit_tiny_p8_64"
SMALL_UNET = {"block_out_channels": [16, 32], "attention": [False, False], "layers_per_block": 1, "norm_num_groups": 8}


def _value(key: str, value: Any) -> Any:
    """One overridden value."""
    if key in SET and isinstance(value, int | float) and not isinstance(value, bool):
        return SET[key]
    if key in CAPS and isinstance(value, int) and not isinstance(value, bool):
        return min(value, CAPS[key])
    if key == "seeds" and isinstance(value, list):
        return value[:2]
    if key == "label_fractions" and isinstance(value, list):
        return value[-1:]
    if key == "recipe" and isinstance(value, str) and value.startswith("mae_"):
        return "mae_vit_tiny_demo"
    if key == "encoder" and isinstance(value, str) and value.startswith("random:vit"):  # a CNN stays itself
        return f"random:{TINY_VIT}"
    if key == "backbone" and isinstance(value, str) and value.startswith("vit_"):
        return TINY_VIT
    if key == "mixed_precision" and value == "bf16":
        return "no"
    if key == "dtype" and value == "bfloat16":
        return "float32"
    if key == "unet" and isinstance(value, dict) and "width" not in value:  # a diffusion UNet (not the vessel one)
        return {**value, **SMALL_UNET}
    return shrink(value)


def shrink(value: Any) -> Any:
    """A config with every cost-setting value overridden, recursively."""
    if isinstance(value, dict):
        out = {k: _value(k, v) for k, v in value.items()}
        if "task" in out and "encoder" in out:  # an adaptation: its defaults (50 epochs, 5 seeds) are shrunk too
            out = {"seeds": [0, 1], **out, "epochs": 1, "warmup_epochs": 0}
        if out.get("model") == "latent":  # the VAE weights are the user's download
            out["model"] = "pixel"
            out.pop("vae", None)
        if "image_size" in out and "recipe" in out:  # pretraining: the encoder is built for the smoke size
            out["backbone_overrides"] = {**out.get("backbone_overrides", {}), "img_size": out["image_size"]}
        if TINY_VIT in (out.get("backbone"), str(out.get("encoder", "")).removeprefix("random:")):
            overrides = out.get("backbone_overrides", {})  # the tiny ViT at most 4 blocks deep (of 12)
            out["backbone_overrides"] = {**overrides, "depth": min(overrides.get("depth", 12), 4)}
        return out
    if isinstance(value, list):
        return [shrink(v) for v in value]
    return value


def smoke(doc: dict[str, Any], root: Path) -> dict[str, Any]:
    """The pipeline at smoke size: config files a job names are inlined (shrunk), the run root is `root`."""
    out = shrink(doc)
    for job in (out.get("quality") or {}).values():  # a 2-step generator cannot pass the gate: report, carry on
        if isinstance(job, dict):
            cfg = job.setdefault("config", {})
            cfg["gate"] = {**cfg.get("gate", {}), "stop_on_fail": False}
            # its domain encoder and label verifier are trained for one epoch (defaults: 30 and 20)
            cfg["domain"] = {**cfg.get("domain", {}), "epochs": 1, "warmup_epochs": 0}
            labels = cfg.setdefault("labels", {})
            labels["adapt"] = {**labels.get("adapt", {}), "epochs": 1, "warmup_epochs": 0}
    for stage in ("synth",):
        for name, job in (out.get(stage) or {}).items():
            if isinstance(job, dict) and isinstance(job.get("consortium"), str):
                inline = yaml.safe_load((REPO / job["consortium"]).read_text())
                out[stage][name] = {"consortium": shrink(inline)}
    return {**out, "root": str(root)}


def small_data(src: Path, dst: Path, per_group: int = 6) -> Path:
    """A copy of the real data folder with `per_group` rows per split x first-task class of every shipped card
    (images linked, .npz arrays subset), to point SYNTHFM_DATA at: the same cards, fewer rows."""
    import os

    import numpy as np
    import pandas as pd

    from synthfm.data.card import read_card
    from synthfm.data.manifest import SPLIT, load_card

    os.environ["SYNTHFM_DATA"] = str(src)
    try:
        for card_path in sorted((REPO / "configs" / "cards").glob("*.yaml")):
            card, _ = read_card(card_path)
            data = load_card(card_path, check_files=False)
            key = [SPLIT] + ([card.tasks[0].name] if card.tasks else [])
            labels = pd.Series(data.labels[card.tasks[0].name].tolist() if card.tasks else 0, index=data.df.index)
            groups = data.df.assign(**{key[-1]: labels.astype(str)}) if card.tasks else data.df
            rows = groups.groupby(key, sort=True).head(per_group).index.to_numpy()
            manifest = Path(str(data.source_root).replace(str(src), str(dst)))
            raw = pd.read_csv(Path(str(card.manifest).replace("${SYNTHFM_DATA:-../../../shared/data}", str(src))))
            sub = raw.iloc[rows].reset_index(drop=True)
            out_dir = dst / Path(card.manifest).parent.name
            out_dir.mkdir(parents=True, exist_ok=True)
            if card.source.format == "npz":
                with np.load(data.source_root) as npz:
                    arrays = dict(npz)
                col = card.source.index_column
                for split in sub["split"].unique():
                    keep = sub["split"] == split
                    take = sub.loc[keep, col].to_numpy()
                    arrays[f"{split}_images"] = arrays[f"{split}_images"][take]
                    arrays[f"{split}_labels"] = arrays[f"{split}_labels"][take]
                    sub.loc[keep, col] = np.arange(keep.sum())
                np.savez(manifest, **arrays)
            else:
                for col in [card.source.path_column, *card.masks.values()]:
                    for rel in sub[col].dropna():
                        link = manifest / str(rel)
                        link.parent.mkdir(parents=True, exist_ok=True)
                        if not link.exists():
                            link.symlink_to(data.source_root / str(rel))
            sub.to_csv(out_dir / "manifest.csv", index=False)
    finally:
        del os.environ["SYNTHFM_DATA"]
    return dst
