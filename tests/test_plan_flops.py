"""Module-level FLOP counts on the meta device against torch.utils.flop_counter on real tensors, and by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from synthfm.models.backbones import create_backbone
from synthfm.plan_flops import count_model, on_meta
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.mae import build_mae
from synthfm.synth.diffusion.config import UNetConfig
from synthfm.synth.diffusion.model import ConditionalUNet, unet_kwargs

B = 2


def reference(model: nn.Module, *inputs: torch.Tensor, train: bool) -> float:
    """flop_counter's total per sample (attention through the math kernel, which it counts on CPU too)."""
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH), torch.set_grad_enabled(train):
        out = model(*inputs)
        if train:
            (out[0] if isinstance(out, tuple) else out).float().sum().backward()
    return counter.get_total_flops() / inputs[0].shape[0]


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(*shape, device="meta", dtype=dtype)


def test_two_linears_by_hand() -> None:
    """Linear(10, 20) -> Linear(20, 5): forward 2(10x20 + 20x5) = 600 per sample; backward: the first layer's
    input (plain data) gets no gradient, so 400 (its weights) + 2 x 200 (the second's weights and input)."""
    net = on_meta(lambda: nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5)))
    cost = count_model(net, meta(3, 10))
    assert (cost.forward, cost.backward) == (600, 800)
    assert cost.activations == 20 + 20 + 5  # the outputs of Linear, ReLU and Linear
    assert cost.params == 10 * 20 + 20 + 20 * 5 + 5
    net.requires_grad_(False)  # frozen: no backward at all
    assert count_model(net, meta(3, 10)).backward == 0


def test_transformer_block_activations_follow_korthikanti() -> None:
    """A timm ViT block keeps 16 x width elements per token (two norms h, qkv 3h, attention h, proj h, fc1 4h,
    GELU 4h, fc2 h): 32 bytes per token and width in 16-bit, against Korthikanti et al.'s 34 with fused attention."""
    from timm.models.vision_transformer import Block

    block = on_meta(lambda: Block(64, 4))
    cost = count_model(block, meta(2, 10, 64))
    assert cost.activations == 16 * 64 * 10


def test_mae_training_step_matches_flop_counter() -> None:
    cfg = pretrain_config({"recipe": "mae_vit_tiny_demo", "image_size": 32,
                           "backbone_overrides": {"img_size": 32, "depth": 3}})
    ours = count_model(on_meta(lambda: build_mae(cfg).model).train(), meta(B, 3, 32, 32))
    assert ours.train == pytest.approx(reference(build_mae(cfg).model.train(), torch.randn(B, 3, 32, 32), train=True),
                                       rel=1e-9)


@pytest.mark.parametrize(("frozen", "train"), [(False, False), (False, True), (True, True)])
def test_vit_forward_finetune_and_frozen_match_flop_counter(frozen: bool, train: bool) -> None:
    """Inference, fine-tuning, and a frozen encoder under grad (only the head would train)."""
    def build() -> nn.Module:
        return create_backbone("vit_tiny_p8_64", 3, img_size=32, depth=2).requires_grad_(not frozen)

    ours = count_model(on_meta(build), meta(B, 3, 32, 32), train=train)
    real = build()
    x = torch.randn(B, 3, 32, 32)
    if frozen:  # flop_counter needs something to differentiate: a trainable head on the frozen features
        head = nn.Linear(192, 1)
        ref = reference(nn.Sequential(real, head), x, train=True) - 2 * 2 * 192  # minus the head: fwd + weight grad
    else:
        ref = reference(real, x, train=train)
    assert (ours.train if train else ours.forward) == pytest.approx(ref, rel=1e-9)
    if frozen:
        assert ours.backward == 0


@pytest.mark.parametrize("train", [False, True])
def test_conditional_unet_matches_flop_counter(train: bool) -> None:
    unet = UNetConfig(block_out_channels=(8, 16), attention=(False, True), layers_per_block=1, norm_num_groups=8)
    kw = unet_kwargs(unet, 16, 3)
    ours = count_model(on_meta(lambda: ConditionalUNet(kw, [3])).train(train), meta(B, 3, 16, 16),
                       meta(B, dtype=torch.long), meta(B, 1, dtype=torch.long), train=train)
    torch.manual_seed(0)
    ref = reference(ConditionalUNet(kw, [3]).train(train), torch.randn(B, 3, 16, 16), torch.tensor([3, 500]),
                    torch.tensor([[1], [2]]), train=train)
    assert (ours.train if train else ours.forward) == pytest.approx(ref, rel=1e-9)
