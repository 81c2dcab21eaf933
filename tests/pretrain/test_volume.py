"""3D pretraining: MAE and RaSD prototypes on a volume ViT, RaSD's 3D stream, and a NIfTI card through
prepare -> pretrain -> linear probe at smoke size."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from synthfm.adapt.config import AdaptConfig
from synthfm.adapt.trainer import adapt_one
from synthfm.data.prepare import prepare_card
from synthfm.data.preprocess import PrepareConfig
from synthfm.errors import SynthfmError
from synthfm.models.checkpoint import from_pretrained
from synthfm.models.vit3d import is_volume_encoder
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import pretrain
from synthfm.pretrain.mae import build_mae
from synthfm.pretrain.rasd_objective import build_rasd
from synthfm.pretrain.volume import MaskedAutoencoder3d, PrototypeDisentangler3d, RaSDVolumeSource, second_view3d


def tiny(recipe: str, **kw: object) -> dict:
    """The 3D demo recipe cut to two blocks, batch 2, a few steps."""
    return {"recipe": recipe, "backbone_overrides": {"depth": 2}, "batch_size": 2, "log_every": 1,
            "checkpoint_every": 100, "optim": {"lr": 1e-3, "warmup_steps": 1},
            "stages": [{"name": "main", "sources": [{"source": "rasd", "n": 8}], "steps": 3}], **kw}


def test_mae3d_masks_three_quarters_and_seeds_per_sample() -> None:
    objective = build_mae(pretrain_config(tiny("mae3d_vit_tiny_demo")))
    model = objective.model
    assert isinstance(model, MaskedAutoencoder3d) and model.decoder_pos_embed.shape == (1, 65, 128)
    vols, seeds = torch.randn(3, 1, 32, 32, 32), torch.tensor([5, 6, 7])
    loss, pred, mask = model(vols, seeds)
    # 64 cubic patches, 16 kept: exactly 48 masked per volume; 8^3 voxels predicted per patch
    assert pred.shape == (3, 64, 512) and mask.sum(1).tolist() == [48, 48, 48] and torch.isfinite(loss)
    _, _, alone = model(vols[1:2], seeds[1:2])
    assert torch.equal(alone[0], mask[1])  # a sample's mask depends on its seed, not its batch


def test_rasd3d_prototypes_and_second_view() -> None:
    objective = build_rasd(pretrain_config(tiny("rasd3d_vit_tiny_demo")))
    assert isinstance(objective.model, PrototypeDisentangler3d)
    src = RaSDVolumeSource(32, 4, seed=0)
    batch = [src[i] for i in range(2)]
    vols, masks = torch.stack([b["image"] for b in batch]), torch.stack([b["mask"] for b in batch])
    assert vols.shape == (2, 1, 32, 32, 32) and masks.shape == (2, 32, 32, 32) and masks.max() >= 2
    loss, logs = objective.model(vols, masks, torch.tensor([1, 2]))
    assert torch.isfinite(loss) and logs["prototypes_per_image"] >= 2
    feats, cov = objective.model.views(vols, masks)[0]
    assert feats.shape == (2, 64, 128) and torch.allclose(cov.sum(1), torch.ones(2, 64))
    # the second view is a function of each sample's seed: the same seeds give the same crop, flip and gain
    onehot = torch.nn.functional.one_hot(masks.long()).permute(0, 4, 1, 2, 3).float()
    seeds = torch.tensor([3, 4])
    out, lab = second_view3d(vols, onehot, (1.0, 1.0), seeds)
    out2, _ = second_view3d(vols, onehot, (1.0, 1.0), seeds)
    assert torch.equal(out, out2) and lab.shape == onehot.shape


def test_volume_encoder_needs_one_channel_and_volume_sources(tmp_path: Path) -> None:
    with pytest.raises(SynthfmError, match="set in_chans: 1"):
        build_mae(pretrain_config(tiny("mae3d_vit_tiny_demo", in_chans=3)))
    cfg = pretrain_config(tiny("mae3d_vit_tiny_demo", stages=[
        {"name": "main", "sources": [{"source": "phantom", "n": 4}], "steps": 1}]))
    with pytest.raises(SynthfmError, match="no 3D phantom"):
        pretrain(cfg, tmp_path / "run")


@pytest.mark.parametrize("recipe", ["mae3d_vit_tiny_demo", "rasd3d_vit_tiny_demo"])
def test_engine_pretrains_on_the_rasd_3d_stream(tmp_path: Path, recipe: str) -> None:
    summary = pretrain(pretrain_config(tiny(recipe)), tmp_path / "run")
    assert summary["global_steps"] == 3 and np.isfinite(summary["final_loss"])
    encoder = from_pretrained(tmp_path / "run" / "encoder")
    assert is_volume_encoder(encoder) and encoder(torch.randn(1, 1, 32, 32, 32)).shape == (1, 192)


def _lesion_card(root: Path, n: int = 16) -> Path:
    """Anisotropic NIfTI volumes (2 mm slices), half with a bright blob; train/val/test by row."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        vol = rng.normal(100, 10, (24, 24, 12)).astype(np.float32)  # (x, y, z) at 1 x 1 x 2 mm
        if i % 2:
            c = rng.integers(6, 18, 2)
            vol[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, 4:8] += 300
        root.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), root / f"v{i:02d}.nii.gz")
        rows.append({"path": f"v{i:02d}.nii.gz", "lesion": ["no", "yes"][i % 2],
                     "split": "train" if i < 10 else "val" if i < 12 else "test"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    spec = {"name": "lesions", "modality": "volume", "source": {"format": "nifti", "root": "."},
            "tasks": [{"name": "lesion", "type": "binary", "classes": ["no", "yes"]}]}
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root


def test_nifti_card_prepare_pretrain_linear_probe(tmp_path: Path) -> None:
    """A NIfTI card through prepare -> 3D MAE on the card mixed with RaSD's 3D stream -> linear probe."""
    card = prepare_card(_lesion_card(tmp_path / "src"), tmp_path / "prepared", PrepareConfig(size=32))
    cfg = pretrain_config(tiny("mae3d_vit_tiny_demo", stages=[
        {"name": "main", "sources": [{"source": str(card.parent), "split": "train"}, {"source": "rasd", "n": 8}],
         "steps": 3}]))
    pretrain(cfg, tmp_path / "pre")
    probe = AdaptConfig(card=str(card), task="lesion", encoder=str(tmp_path / "pre" / "encoder"),
                        policy="linear_probe", epochs=2, warmup_epochs=0, batch_size=4, lr=1e-2, seeds=[0])
    result = adapt_one(probe, tmp_path / "probe")
    assert (tmp_path / "probe" / "COMPLETE.json").is_file() and result["train_images"] == 10
    preds = pd.read_parquet(tmp_path / "probe" / "predictions_test.parquet")
    assert len(preds) == 4 and set(result["metrics"]) == {"val", "test"}
    # a bright blob is an easy signal: frozen features after 3 MAE steps rank the test pairs better than chance
    assert result["metrics"]["test"]["auroc"] > 0.5
