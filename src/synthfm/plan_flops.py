"""Module-level FLOP and activation counts of a model, from one forward pass on the meta device (no memory, no math).

Every `nn.Linear`, `nn.Conv2d` and attention module (timm's and diffusers') adds its multiply-accumulates x 2
from its input and output shapes; backward costs are added per module from what needs a gradient: the weight
gradient when the module has trainable weights, the input gradient when its input requires grad (so a frozen
encoder, or a first layer fed plain images, costs less). Elementwise work (norms, activations, softmax) is not
counted, as in `torch.utils.flop_counter`, which the tests compare these counts with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class ModelCost:
    """Per-sample costs of one model call: forward and backward FLOPs, activation elements, parameters.

    `activations` counts the output elements of every leaf module plus each attention's output: for a
    transformer block that is 16 x width per token, i.e. 32 bytes in 16-bit, close to the 34 x width of
    Korthikanti et al. (2022) for what backward keeps with a fused attention kernel.
    """

    forward: float = 0.0
    backward: float = 0.0
    activations: float = 0.0
    params: int = 0
    trainable: int = 0

    @property
    def train(self) -> float:
        """Forward + backward FLOPs (one training step of one sample)."""
        return self.forward + self.backward

    def scaled(self, k: float) -> ModelCost:
        """This cost times k (e.g. several crops or views per sample)."""
        return ModelCost(self.forward * k, self.backward * k, self.activations * k, self.params, self.trainable)


def _attention_classes() -> tuple[tuple[type, Callable[[nn.Module, tuple], tuple[int, int, int]]], ...]:
    """Attention modules whose score and value products are not Linear layers: (class, (batch, tokens, width))."""
    out: list[tuple[type, Callable[[nn.Module, tuple], tuple[int, int, int]]]] = []
    from timm.models.vision_transformer import Attention as TimmAttention

    def timm_shape(m: nn.Module, inp: tuple) -> tuple[int, int, int]:
        b, n, _ = inp[0].shape
        return b, n, m.num_heads * m.head_dim

    out.append((TimmAttention, timm_shape))
    try:
        from diffusers.models.attention_processor import Attention as DiffusersAttention
    except ImportError:  # pragma: no cover - diffusers is a dependency
        return tuple(out)

    def diffusers_shape(m: nn.Module, inp: tuple) -> tuple[int, int, int]:
        x = inp[0]
        tokens = math.prod(x.shape[2:]) if x.ndim == 4 else x.shape[1]
        return x.shape[0], tokens, m.to_q.out_features

    out.append((DiffusersAttention, diffusers_shape))
    return tuple(out)


def _weights_train(m: nn.Module) -> bool:
    """Whether the module's own weights get gradients."""
    return any(p.requires_grad for p in m.parameters(recurse=False))


def count_model(model: nn.Module, *inputs: Any, train: bool = True, **kwargs: Any) -> ModelCost:
    """FLOPs and kept activation elements of `model(*inputs)` per sample (batch = first input's first dim).

    The model and inputs should live on the meta device (see `on_meta`); nothing is computed. With `train`, the
    backward pass is counted for every module whose weights or input need a gradient.
    """
    cost = ModelCost(params=sum(p.numel() for p in model.parameters()),
                     trainable=sum(p.numel() for p in model.parameters() if p.requires_grad))
    attention = _attention_classes()
    batch = next(x for x in inputs if isinstance(x, torch.Tensor)).shape[0]

    def add(fwd: float, m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        cost.forward += fwd
        if train:
            needs_input = isinstance(x, torch.Tensor) and x.requires_grad
            cost.backward += fwd * (int(_weights_train(m)) + int(needs_input))

    def hook(m: nn.Module, inp: tuple, out: Any) -> None:
        x = inp[0] if inp else None
        if isinstance(out, torch.Tensor) and not isinstance(m, nn.Identity | nn.Dropout) and \
                next(m.children(), None) is None:
            cost.activations += out.numel()  # every leaf module's output (norms, activations, linears...)
        if isinstance(m, nn.Linear):
            add(2.0 * out.numel() * m.in_features, m, x, out)
        elif isinstance(m, nn.Conv2d | nn.Conv1d):
            k = math.prod(m.kernel_size) * (m.in_channels // m.groups)
            add(2.0 * out.numel() * k, m, x, out)
        else:
            for cls, shape in attention:
                if isinstance(m, cls):
                    b, n, width = shape(m, inp)
                    fwd = 4.0 * b * n * n * width  # q k^T and attn v
                    cost.forward += fwd
                    cost.activations += b * n * width  # the attention output (fused kernels keep no n x n map)
                    if train and isinstance(x, torch.Tensor) and x.requires_grad:
                        cost.backward += 2 * fwd
                    break

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.set_grad_enabled(train):
            model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return ModelCost(cost.forward / batch, cost.backward / batch, cost.activations / batch, cost.params,
                     cost.trainable)


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model with every parameter and buffer on the meta device (free, whatever its size)."""
    with torch.device("meta"):
        return build()
