"""Grad-CAM heat maps (pytorch-grad-cam) of ViT and CNN classifiers, and their overlay on the image.

ViT (timm): the target layer is the last block's first norm; its tokens are turned back into a feature map by
dropping the prefix tokens (class and register tokens, `num_prefix_tokens`) and reshaping the patch tokens to
the patch grid. CNN: the last convolution. A one-output (binary) head is explained through its logit. Used by
`synthfm predict --cam` and by the `analyze gradcam` job (which adds the pointing game).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from synthfm.errors import SynthfmError

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


def overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The heat map blended over the image (uint8 RGB)."""
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, heat, use_rgb=True)
