"""Tests of DINOv2: losses against hand computations, EMA teacher, centring, masking, multi-crop, the engine."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthfm.models.checkpoint import load_state
from synthfm.pretrain.config import DINOConfig, SourceConfig, all_recipes, pretrain_config
from synthfm.pretrain.data import RaSDSource, open_source
from synthfm.pretrain.dino import (
    DINOv2Objective,
    MultiCrop,
    block_mask,
    build_dino,
    dino_loss,
    ema_centre,
    ibot_loss,
    ibot_masks,
    koleo_loss,
    mask_block,
    sinkhorn_knopp,
    teacher_momentum,
)
from synthfm.pretrain.engine import Engine, checkpoint_dirs, pretrain
from synthfm.runs import RunDir
from synthfm.train.mixture import MixtureDataset, collate
from synthfm.train.optim import weight_decay_at


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phantom renders shared by this module's tests."""
    return tmp_path_factory.mktemp("sources")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on 2 busy cores, the tiny ops of these runs are several times faster without OpenMP."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(cache: Path, steps: int = 4, **kw: Any) -> dict[str, Any]:
    """Two-block ViT-Ti/8 DINOv2 at 32 px, local crops 16 px, 64 prototypes, batch 8."""
    cfg = {"recipe": "dinov2_vit_tiny_demo", "image_size": 32, "backbone_overrides": {"depth": 2}, "batch_size": 8,
           "dinov2": {"prototypes": 64, "hidden_dim": 64, "bottleneck_dim": 32, "local_size": 16, "max_masked": 8},
           "optim": {"lr": 1e-3, "warmup_steps": 2, "weight_decay": 0.04, "betas": (0.9, 0.999), "clip_grad": 3.0},
           "stages": [{"name": "a", "sources": [{"source": "phantom", "n": 16}], "steps": steps}],
           "log_every": 2, "checkpoint_every": 4, "cache_dir": str(cache)}
    return {**cfg, **kw}


def objective(cache: Path) -> DINOv2Objective:
    """A seeded tiny objective."""
    torch.manual_seed(0)
    return build_dino(pretrain_config(tiny(cache)))


def crops_batch(obj: DINOv2Objective, n: int = 4) -> dict[str, torch.Tensor]:
    """A collated batch of multi-crop views of random images."""
    torch.manual_seed(1)
    return collate([{"image": img, "source": 0, **obj.views()(img)} for img in torch.randn(n, 3, 32, 32)])


def test_recipes_are_listed_and_valid() -> None:
    """Both DINOv2 recipes validate; the paper recipe carries the 001 numbers."""
    recipes = all_recipes()
    assert {"dinov2_vit_large_paper", "dinov2_vit_tiny_demo", "mae_vit_large_paper"} <= set(recipes)
    cfg = pretrain_config({"recipe": "dinov2_vit_large_paper"})
    d = cfg.dinov2
    assert (cfg.backbone, cfg.objective, cfg.image_size) == ("vit_large_p14_224", "dinov2", 224)
    assert (d.hidden_dim, d.bottleneck_dim, d.prototypes, d.max_masked, d.local_size) == (2048, 384, 131072, 128, 96)
    assert (d.global_scale, d.local_scale, d.jitter, d.solarize_p) == ((0.32, 1.0), (0.05, 0.32),
                                                                        (0.4, 0.4, 0.2, 0.1), 0.2)
    assert (cfg.optim.lr, cfg.optim.warmup_epochs, cfg.stages[0].epochs, cfg.batch_size) == (2e-4, 10, 100, 80)


def test_multicrop_shapes_and_seeded_determinism() -> None:
    """2 global crops at 32 px and 3 local at 16 px; the same sample key gives the same views; collate stacks."""
    crop = MultiCrop(32, 16, 3)
    ds = MixtureDataset([RaSDSource(32, 3, 4, seed=0)], seed=5, views=crop)
    a, b, other = ds[(0, 1, 0)], ds[(0, 1, 0)], ds[(0, 1, 1)]
    assert a["global_crops"].shape == (2, 3, 32, 32) and a["local_crops"].shape == (3, 3, 16, 16)
    assert torch.equal(a["global_crops"], b["global_crops"]) and torch.equal(a["local_crops"], b["local_crops"])
    assert not torch.equal(a["global_crops"], other["global_crops"])
    assert not torch.equal(a["global_crops"][0], a["global_crops"][1])
    batch = collate([ds[(0, i, 0)] for i in range(4)])
    assert batch["global_crops"].shape == (4, 2, 3, 32, 32) and batch["local_crops"].shape == (4, 3, 3, 16, 16)
    assert MultiCrop(16, 8, 0)(torch.zeros(1, 16, 16))["local_crops"].shape == (0, 1, 8, 8)  # grayscale, no locals


def test_teacher_momentum_schedule() -> None:
    """Cosine 0.992 -> 1: 0.992 at step 0, 0.996 halfway, 1 at the end."""
    assert teacher_momentum(0, 10) == pytest.approx(0.992)
    assert teacher_momentum(5, 10) == pytest.approx(0.996)
    assert teacher_momentum(10, 10) == pytest.approx(1.0)


def test_teacher_is_ema_of_student(cache: Path) -> None:
    """After a step the teacher is m * old teacher + (1 - m) * student, m = teacher_momentum(step, total)."""
    obj = objective(cache)
    model = obj.model
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    old = [p.clone() for p in model.teacher.parameters()]
    obj.after_step(3, 10)
    m = teacher_momentum(3, 10)
    assert 0.992 < m < 1
    for t, o, s in zip(model.teacher.parameters(), old, model.student.parameters(), strict=True):
        torch.testing.assert_close(t, m * o + (1 - m) * s, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert float(model.temp_progress) == pytest.approx(0.4)


def test_centre_update_numbers(cache: Path) -> None:
    """ema_centre is 0.9 c + 0.1 mean; a training forward moves the CLS centre by that rule on the teacher's scores."""
    c, logits = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 4.0], [2.0, 0.0]])
    torch.testing.assert_close(ema_centre(c, logits, 0.9), torch.tensor([[0.9 * 1 + 0.1 * 1, 0.9 * -2 + 0.1 * 2]]))
    obj = objective(cache)
    model, batch = obj.model, crops_batch(obj)
    model.centre.fill_(0.25)
    with torch.no_grad():
        g = batch["global_crops"].transpose(0, 1).flatten(0, 1)
        expected = 0.9 * 0.25 + 0.1 * model.teacher.head(model.teacher.tokens(g)[0]).mean(0, keepdim=True)
    obj.loss(batch)
    torch.testing.assert_close(model.centre, expected, rtol=0, atol=1e-6)


def test_dino_loss_against_hand_computation() -> None:
    """Student views 0, 1 (globals) and 2 (local) against teacher views 0, 1: pairs (0,1), (1,0), (2,0), (2,1)."""
    torch.manual_seed(0)
    s = [torch.randn(2, 5) for _ in range(3)]
    t = [F.softmax(torch.randn(2, 5), -1) for _ in range(2)]
    pairs = [(0, 1), (1, 0), (2, 0), (2, 1)]
    hand = np.mean([-(t[j] * torch.log_softmax(s[i] / 0.1, -1)).sum(-1).mean().item() for i, j in pairs])
    assert dino_loss(s, t, 0.1).item() == pytest.approx(hand, rel=1e-5)


def test_koleo_on_three_points() -> None:
    """(1,0), (0,1), (0.6,0.8): nearest distances sqrt(0.8), sqrt(0.4), sqrt(0.4); scale does not matter."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    hand = -(math.log(math.sqrt(0.8)) + 2 * math.log(math.sqrt(0.4))) / 3
    assert koleo_loss(x).item() == pytest.approx(hand, abs=1e-5)
    assert koleo_loss(3 * x).item() == pytest.approx(hand, abs=1e-5)


def test_ibot_loss_is_on_masked_patches_only() -> None:
    """Per-image mean cross-entropy over masked patches, summed over images / all images; unmasked ones ignored."""
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 7), F.softmax(torch.randn(3, 5, 7), -1)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    ce = -(t * torch.log_softmax(s / 0.1, -1)).sum(-1)
    hand = (ce[0, :2].mean() + ce[2, 3]) / 3
    assert ibot_loss(s[mask], t[mask], mask, 0.1).item() == pytest.approx(hand.item(), rel=1e-5)
    s2 = s.clone()
    s2[~mask] = 100.0
    assert ibot_loss(s2[mask], t[mask], mask, 0.1).item() == pytest.approx(hand.item(), rel=1e-5)


def test_student_does_not_see_masked_patches(cache: Path) -> None:
    """Changing the pixels of masked patches leaves the student's output unchanged (mask token substituted)."""
    model = objective(cache).model.eval()
    imgs = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 5] = True  # patch row 1, col 1 of the 4 x 4 grid of 8 px patches
    changed = imgs.clone()
    changed[..., 8:16, 8:16] += 5.0
    a, b = model.student.tokens(imgs, mask), model.student.tokens(changed, mask)
    torch.testing.assert_close(a[0], b[0]) and torch.testing.assert_close(a[1], b[1])
    assert not torch.allclose(model.student.tokens(changed)[0], a[0])


def test_block_masks_are_rectangles_within_budget() -> None:
    """One block of budget 6 is a filled rectangle; 40-patch masks are mostly contiguous, never over budget."""
    torch.manual_seed(0)
    for _ in range(20):
        m = torch.zeros(8, 8, dtype=torch.bool)
        added = mask_block(m, 6, 4, 0.3)
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        box = m[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert 0 < added == m.sum() <= 6 and box.all()  # a single filled rectangle
    masks = torch.stack([block_mask((16, 16), 40, 128, 4, 0.3) for _ in range(20)]).reshape(20, 16, 16)
    assert (masks.sum((1, 2)) <= 40).all() and masks.sum() >= 0.8 * 20 * 40
    grid = F.pad(masks.float(), (1, 1, 1, 1))
    neighbours = grid[:, :-2, 1:-1] + grid[:, 2:, 1:-1] + grid[:, 1:-1, :-2] + grid[:, 1:-1, 2:]
    assert (neighbours[masks] >= 2).float().mean() > 0.7  # random 16 % masks: about 0.1


def test_ibot_mask_probability_and_ratio() -> None:
    """About mask_probability of crops are masked, with round(ratio * N) <= max_masked patches at most."""
    torch.manual_seed(0)
    masks = ibot_masks(200, (16, 16), DINOConfig(mask_ratio=(0.1, 0.5), max_masked=100))
    counts = masks.sum(1)
    assert 0.4 < (counts > 0).float().mean() < 0.6
    assert counts.max() <= 100 and counts[counts > 0].min() >= 4
    assert counts[counts > 0].float().mean() > 0.8 * (0.3 * 256)  # blocks fill close to the drawn ratio


def test_multicrop_masks_are_seeded_per_sample() -> None:
    """With masking, each sample carries (2, N) global-crop masks, identical whenever the same key is drawn."""
    cfg = DINOConfig(mask_probability=1.0, mask_ratio=(0.2, 0.4), max_masked=16)
    ds = MixtureDataset([RaSDSource(32, 3, 4, seed=0)], seed=5, views=MultiCrop(32, 16, 1, patch_size=8, masking=cfg))
    a, b, c = ds[(0, 1, 0)], ds[(0, 1, 0)], ds[(0, 2, 0)]
    assert a["ibot_masks"].shape == (2, 16) and a["ibot_masks"].sum(1).min() >= 3
    assert torch.equal(a["ibot_masks"], b["ibot_masks"]) and not torch.equal(a["ibot_masks"], c["ibot_masks"])
    assert collate([a, c])["ibot_masks"].shape == (2, 2, 16)


def sinkhorn_by_hand(logits: np.ndarray, temp: float, iterations: int) -> np.ndarray:
    """DINOv2's sinkhorn_knopp_teacher in numpy on one process: (B, K) scores -> (B, K) targets."""
    q = np.exp(logits / temp).T
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(axis=1, keepdims=True) / k
        q = q / q.sum(axis=0, keepdims=True) / b
    return (q * b).T


def test_sinkhorn_knopp_against_hand_computation() -> None:
    """3 iterations equal a numpy transcription; rows sum to 1; prototypes get balanced shares of the batch."""
    torch.manual_seed(0)
    logits = torch.rand(6, 4) * 2 - 1
    logits[:, 0] += 0.8  # prototype 0 dominates the plain softmax
    q = sinkhorn_knopp(logits, 0.1, 3)
    np.testing.assert_allclose(q.numpy(), sinkhorn_by_hand(logits.double().numpy(), 0.1, 3), rtol=1e-5)
    torch.testing.assert_close(q.sum(1), torch.ones(6))
    share = q.sum(0) / 6
    assert (F.softmax(logits / 0.1, -1).mean(0)[0]) > 0.6 and (share - 0.25).abs().max() < 0.05
    converged = sinkhorn_knopp(logits, 0.1, 200).sum(0)
    torch.testing.assert_close(converged, torch.full((4,), 6 / 4), rtol=1e-4, atol=1e-4)


def test_sinkhorn_option_and_separate_ibot_head(cache: Path) -> None:
    """Sinkhorn targets leave the centres alone; a separate iBOT head gets the iBOT gradient, the DINO head none."""
    data = tiny(cache)
    data["dinov2"].update(centring="sinkhorn_knopp", ibot_separate_head=True, ibot_prototypes=32, dino_weight=0.0,
                          koleo_weight=0.0, mask_probability=1.0)
    torch.manual_seed(0)
    obj = build_dino(pretrain_config(data))
    model = obj.model
    assert model.student.ibot_head is not None and model.patch_centre.shape == (1, 32)
    loss, logs = obj.loss(crops_batch(obj))
    loss.backward()
    assert logs["loss_ibot"] > 0 and float(model.centre.abs().sum()) == 0
    assert model.student.ibot_head.prototypes.weight.grad.abs().sum() > 0
    assert model.student.head.prototypes.weight.grad.abs().sum() == 0


def held_out_losses(obj: DINOv2Objective, cache: Path) -> dict[str, float]:
    """Eval-mode losses on 16 phantom images of another seed than the training ones (fixed views and masks)."""
    src = open_source(SourceConfig(source="phantom", n=16, seed=1), 32, 3, (1.0, 1.0), cache)
    ds = MixtureDataset([src], seed=99, views=obj.views())
    obj.model.eval()
    with torch.no_grad():
        _, logs = obj.model(collate([ds[(0, i, 0)] for i in range(len(src))]))
    obj.model.train()
    return {k: float(v) for k, v in logs.items()}


@pytest.mark.usefixtures("one_thread")
def test_student_learns_to_predict_a_fixed_teacher_on_held_out_images(cache: Path, tmp_path: Path) -> None:
    """20 engine steps against a frozen teacher (momentum 1) with Sinkhorn-Knopp targets, which are then a fixed
    function of the images: on held-out phantom images the student's KL to the teacher's assignments of the other
    global crop (DINO loss - teacher entropy) falls below half, and its iBOT loss on masked patches falls too.

    Measured on images never trained on, against unchanged targets, this is learning, not a drifting target.
    The weight decay follows its cosine, and the exported encoder is the (unchanged) teacher.
    """
    data = tiny(cache, steps=20, checkpoint_every=100)
    data["dinov2"].update(teacher_temp_warmup=0.0, momentum_teacher=1.0, centring="sinkhorn_knopp")
    cfg = pretrain_config(data)
    engine = Engine(cfg, tmp_path)
    teacher = {k: v.clone() for k, v in engine.objective.model.teacher.state_dict().items()}
    before = held_out_losses(engine.objective, cache)
    engine.fit()
    after = held_out_losses(engine.objective, cache)
    assert after["teacher_entropy"] == pytest.approx(before["teacher_entropy"], abs=1e-5)  # the same targets
    kl_before, kl_after = (x["loss_dino"] - x["teacher_entropy"] for x in (before, after))
    assert kl_after < 0.5 * kl_before and after["loss_ibot"] < 0.85 * before["loss_ibot"], (before, after)
    records = RunDir(tmp_path, "pretrain", cfg).metrics()
    assert len(records) == 10 and records[-1]["teacher_temp"] == pytest.approx(0.07)
    groups = torch.load(checkpoint_dirs(tmp_path)[-1] / "optimizer.pt", weights_only=True)["param_groups"]
    assert [g["weight_decay"] for g in groups] == [pytest.approx(weight_decay_at(19, 20, cfg.optim)), 0.0]
    exported = load_state(tmp_path / "encoder" / "model.safetensors")
    assert torch.equal(exported["cls_token"], teacher["backbone.cls_token"])


@pytest.mark.usefixtures("one_thread")
def test_interrupted_run_resumes_identically(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that dies after step 6 (checkpoint at 4) resumes to the same weights and losses as a clean run."""
    cfg = pretrain_config(tiny(cache, steps=8))
    pretrain(cfg, tmp_path / "clean")
    original = DINOv2Objective.after_step

    def die_at_six(self: DINOv2Objective, step: int, total: int) -> None:
        """Crash after optimiser step 6."""
        original(self, step, total)
        if step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(DINOv2Objective, "after_step", die_at_six)
    with pytest.raises(KeyboardInterrupt):
        Engine(cfg, tmp_path / "killed").fit()
    monkeypatch.setattr(DINOv2Objective, "after_step", original)
    assert [p.name for p in checkpoint_dirs(tmp_path / "killed")] == ["step_00000004"]
    pretrain(cfg, tmp_path / "killed")
    a, b = (load_state(checkpoint_dirs(tmp_path / r)[-1] / "model.safetensors") for r in ("clean", "killed"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in RunDir(tmp_path / r, "pretrain", cfg).metrics() if "loss" in r]
              for r in ("clean", "killed")]
    assert losses[0] == losses[1]
