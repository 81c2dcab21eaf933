"""Schedules and parameter groups of the training core, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from synthfm.pretrain.config import pretrain_config
from synthfm.train.optim import lr_at, param_groups, weight_decay_at


def test_lr_schedule_numbers() -> None:
    """Linear warm-up reaches the peak at the last warm-up step; cosine is halfway at mid-decay, floor at the end."""
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.2) == pytest.approx(0.6)
    assert lr_at(100, 100, 10, 1.0, 0.2) == pytest.approx(0.2)
    assert lr_at(3, 10, 0, 2.0) == pytest.approx(2.0 * 0.5 * (1 + np.cos(np.pi * 0.3)))


def test_param_groups_skip_decay_on_norms_biases_tokens() -> None:
    """Matrices decay; biases, norms, class/mask tokens and position embeddings (3-D or not) do not."""
    module = nn.Module()
    module.proj = nn.Linear(4, 3)
    module.norm = nn.LayerNorm(3)
    module.pos_embed = nn.Parameter(torch.zeros(1, 5, 3))
    module.cls_token = nn.Parameter(torch.zeros(1, 1, 3))
    module.frozen = nn.Linear(3, 3).requires_grad_(False)
    decay, plain = param_groups(module, 0.05)
    names = {id(p): n for n, p in module.named_parameters()}
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert [names[id(p)] for p in decay["params"]] == ["proj.weight"]
    assert sorted(names[id(p)] for p in plain["params"]) == ["cls_token", "norm.bias", "norm.weight", "pos_embed",
                                                              "proj.bias"]


def test_weight_decay_schedule() -> None:
    """Cosine 0.04 -> 0.2: 0.04 at step 0, 0.12 halfway, 0.2 at the end; constant without weight_decay_end."""
    optim = pretrain_config({"recipe": "dinov2_vit_tiny_demo"}).optim
    assert (optim.weight_decay, optim.weight_decay_end) == (0.04, 0.2)
    assert [weight_decay_at(s, 10, optim) for s in (0, 5, 10)] == [pytest.approx(v) for v in (0.04, 0.12, 0.2)]
    constant = optim.model_copy(update={"weight_decay_end": None})
    assert weight_decay_at(7, 10, constant) == 0.04
