"""The classifier trainer: freezing policies, layer-wise lr decay, best-val checkpoint, resume, fractions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from synthfm.data.manifest import load_card
from synthfm.evaluate.predictions import SCORING
from synthfm.models.backbones import create_backbone
from synthfm.models.checkpoint import from_pretrained, load_state, read_pretrained_config
from synthfm.train import trainer as tr
from synthfm.train.classifier import Classifier, build_head, lrd_param_groups
from synthfm.train.trainer import ClassifierTrainer, train_positions


class Trainer(ClassifierTrainer):
    """The classifier trainer with the adaptation results contract (as the gate's verifier runs it)."""

    def __init__(self, cfg, out, data=None) -> None:
        super().__init__(cfg, out, SCORING, data)


def _encoder_state(t: Trainer) -> dict[str, torch.Tensor]:
    """A copy of the trainer's encoder weights."""
    return {k: v.clone() for k, v in t.model.encoder.state_dict().items()}


@pytest.mark.parametrize("augment", [False, True])
def test_linear_probe_leaves_encoder_unchanged(tiny_recipe, tmp_path: Path, augment: bool) -> None:
    t = Trainer(tiny_recipe(policy="linear_probe", augment=augment), tmp_path)
    before, head = _encoder_state(t), t.model.head[1].weight.detach().clone()
    t.fit()
    after = t.model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head, t.model.head[1].weight)
    assert isinstance(t.model.head[0], torch.nn.BatchNorm1d) and not t.model.head[0].affine


def test_finetune_changes_encoder_and_sets_layer_lrs(tiny_recipe, tmp_path: Path) -> None:
    t = Trainer(tiny_recipe(policy="finetune", drop_path=0.2), tmp_path)
    before = _encoder_state(t)
    t.fit()
    after = t.model.encoder.state_dict()
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])
    assert not torch.equal(before["patch_embed.proj.weight"], after["patch_embed.proj.weight"])
    blocks = t.model.encoder.blocks
    assert isinstance(blocks[0].drop_path1, torch.nn.Identity) and blocks[1].drop_path2.drop_prob == 0.2
    top = max(g["lr"] for g in t.optimizer.param_groups)
    for g in t.optimizer.param_groups:  # depth 2: layers 0..3, lr ratio 0.65 ** (3 - layer)
        assert g["lr"] / top == pytest.approx(0.65 ** (3 - g["layer"]), rel=1e-12)


def test_layer_decay_groups_vit_tiny() -> None:
    net = Classifier(create_backbone("vit_tiny_p8_64"), build_head(192, 5, probe=False), frozen=False)
    groups = lrd_param_groups(net, 0.05, 0.65, depth=12)
    scale = {n: g["lr_scale"] for g in groups for p in g["params"] for n, q in net.named_parameters() if q is p}
    wd = {n: g["weight_decay"] for g in groups for p in g["params"] for n, q in net.named_parameters() if q is p}
    assert scale["head.weight"] == 1.0 and scale["encoder.norm.weight"] == 1.0
    assert scale["encoder.cls_token"] == pytest.approx(0.65 ** 13)
    assert scale["encoder.patch_embed.proj.weight"] == pytest.approx(0.65 ** 13)
    for k in range(12):
        assert scale[f"encoder.blocks.{k}.mlp.fc1.weight"] == pytest.approx(0.65 ** (12 - k))
    assert scale["encoder.blocks.4.attn.qkv.weight"] / scale["encoder.blocks.3.attn.qkv.weight"] == pytest.approx(
        1 / 0.65)
    assert wd["encoder.blocks.0.attn.qkv.weight"] == 0.05 and wd["encoder.blocks.0.attn.qkv.bias"] == 0.0
    assert wd["encoder.pos_embed"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_best_checkpoint_is_max_val_auroc(tiny_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = [0.5, 0.9, 0.7]  # validation AUROC of epochs 0, 1, 2 (later calls: the final evaluation)
    real_validate, real_save = Trainer.validate, Trainer.save_checkpoint
    saved: dict[int, dict[str, torch.Tensor]] = {}

    def validate(self, ds):
        out = real_validate(self, ds)
        return {**out, "auroc": fake.pop(0)}

    def save(self, epoch, best):
        saved[epoch] = {k: v.clone() for k, v in self.net.state_dict().items()}
        real_save(self, epoch, best)

    monkeypatch.setattr(Trainer, "validate", validate)
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    summary = Trainer(tiny_recipe(epochs=3, export_encoder=True), tmp_path).fit()
    logged = [r["val_auroc"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert logged == [0.5, 0.9, 0.7]
    assert summary["best_epoch"] == int(np.argmax(logged)) == 1 and summary["best_val_auroc"] == 0.9
    best = load_state(tmp_path / tr.BEST_FILE)
    assert all(torch.equal(best[k], saved[1][k]) for k in best)
    assert not torch.equal(best["head.weight"], saved[2]["head.weight"])
    exported = from_pretrained(summary["encoder"]).state_dict()  # the best epoch's encoder, loadable as a space
    assert Path(summary["encoder"]) == tmp_path / tr.ENCODER_DIR
    assert exported.keys() == {k.removeprefix("encoder.") for k in best if k.startswith("encoder.")}
    assert all(torch.equal(exported[k], saved[1][f"encoder.{k}"]) for k in exported)
    assert read_pretrained_config(summary["encoder"])["best_epoch"] == 1


def test_export_encoder_needs_finetune_and_keeps_old_hashes(tiny_recipe) -> None:
    """A probe has nothing to export; leaving export_encoder off keeps a config's run-directory hash."""
    with pytest.raises(ValueError, match="export_encoder needs policy 'finetune'"):
        tiny_recipe(policy="linear_probe", export_encoder=True)
    assert "export_encoder" not in tiny_recipe().model_dump()
    assert tiny_recipe(export_encoder=True).model_dump()["export_encoder"] is True


def test_resume_mid_seed_matches_uninterrupted(tiny_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_recipe(epochs=3)
    clean = Trainer(cfg, tmp_path / "clean").fit()
    real_save = Trainer.save_checkpoint

    def crash(self, epoch, best):
        real_save(self, epoch, best)
        if epoch == 1:
            raise KeyboardInterrupt("killed")

    with monkeypatch.context() as m:
        m.setattr(Trainer, "save_checkpoint", crash)
        with pytest.raises(KeyboardInterrupt):
            Trainer(cfg, tmp_path / "cut").fit()
    resumed = Trainer(cfg, tmp_path / "cut").fit()
    assert resumed["metrics"] == clean["metrics"] and resumed["best_epoch"] == clean["best_epoch"]
    a, b = (pd.read_parquet(tmp_path / d / "predictions_test.parquet") for d in ("clean", "cut"))
    pd.testing.assert_frame_equal(a, b)
    epochs = [r["epoch"] for r in map(json.loads, (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines())
              if "event" not in r]
    assert epochs == [0, 1, 2]


def test_label_fractions_nested(phantom_card: Path, tiny_recipe, tmp_path: Path) -> None:
    data = load_card(phantom_card)
    rows = data.indices("train")
    subsets = {f: set(rows[train_positions(data, "cataract", f, seed=0)]) for f in (0.25, 0.5, 1.0)}
    assert subsets[0.25] < subsets[0.5] < subsets[1.0] == set(rows)
    assert len(subsets[0.5]) == pytest.approx(len(rows) / 2, abs=2)
    pos = data.labels["cataract"][sorted(subsets[0.5])].sum()
    assert pos == int(np.ceil(0.5 * data.labels["cataract"][rows].sum()))  # stratified
    summary = Trainer(tiny_recipe(label_fractions=[0.5], epochs=1, policy="linear_probe"), tmp_path).fit()
    assert summary["train_images"] == len(subsets[0.5])
