"""Training-time efficiency: a linear probe from every checkpoint of a tiny pretraining run, tabulated by step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthfm.adapt.checkpoints import checkpoint_curve
from synthfm.errors import SynthfmError
from synthfm.evaluate.results import load_results, training_curve
from synthfm.models.checkpoint import from_pretrained, read_pretrained_config
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import pretrain


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step MAE run of a two-block ViT-Ti at 32 px on RaSD images, checkpointed at steps 2 and 4."""
    root = tmp_path_factory.mktemp("pretrain")
    cfg = pretrain_config({
        "recipe": "mae_vit_tiny_demo", "image_size": 32, "backbone_overrides": {"depth": 2}, "batch_size": 8,
        "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}, "log_every": 2, "checkpoint_every": 2,
        "keep_checkpoints": 5, "optim": {"lr": 1e-2, "warmup_steps": 1}, "cache_dir": str(root / "cache"),
        "stages": [{"name": "a", "sources": [{"source": "rasd", "n": 16}], "steps": 4}]})
    pretrain(cfg, root / "run")
    return root / "run"


def test_probe_from_each_checkpoint(pretrain_run: Path, tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg(policy="linear_probe", epochs=1, backbone_overrides={}, image_size=32)
    curve = checkpoint_curve(pretrain_run, cfg, tmp_path)
    test = curve.query("split == 'test' and metric == 'auroc'").set_index("pretrain_step")
    assert sorted(test.index) == [2, 4]
    for step in (2, 4):
        name = f"step_{step:08d}"
        assert read_pretrained_config(tmp_path / "encoders" / name)["global_step"] == step
        own = load_results(tmp_path / name).query("split == 'test' and metric == 'auroc'")["value"]
        assert test.loc[step, "mean"] == pytest.approx(own.mean()) and test.loc[step, "n"] == 1
    final = from_pretrained(pretrain_run / "encoder").state_dict()
    last = from_pretrained(tmp_path / "encoders" / "step_00000004").state_dict()
    first = from_pretrained(tmp_path / "encoders" / "step_00000002").state_dict()
    assert all(torch.equal(final[k], last[k]) for k in final)  # the last checkpoint is the final encoder
    assert not torch.equal(first["blocks.0.attn.qkv.weight"], last["blocks.0.attn.qkv.weight"])
    pd_curve = training_curve(tmp_path)
    assert pd_curve.equals(curve)
    assert (tmp_path / "training_curve.csv").is_file() and (tmp_path / "training_results.parquet").is_file()
    again = checkpoint_curve(pretrain_run, cfg, tmp_path)  # finished pieces are reused, not redone
    assert again.equals(curve)


def test_run_without_checkpoints_is_an_error(tiny_cfg, tmp_path: Path) -> None:
    with pytest.raises(SynthfmError, match="no pretraining checkpoints"):
        checkpoint_curve(tmp_path, tiny_cfg(), tmp_path / "out")
