"""Encoders without pretraining that every experiment compares against: raw pixels and a CNN from scratch.

`pixels` is an encoder reference (like `random:<backbone>`) whose features are the image's own pixels, flattened
(C x H x W values at the adaptation's image size). Linear-probed, the probe head (BatchNorm without affine, then
Linear, trained with cross-entropy) is a multinomial logistic regression on standardised pixels, run through the
same label fractions, seeds, run directories, best-validation selection and statistics as every encoder. That is
why it is not scikit-learn's LogisticRegression: a second code path would need its own subsets, model selection
and results rows, and differences between the two would be differences of machinery, not of features.

The small CNN is the registry backbone `resnet18` (timm's ResNet-18 without its classifier), fine-tuned from
`random:resnet18`. It is not a ViT: the trainer skips layer-wise lr decay for it (`is_vit`) and gives it
stochastic depth through timm's own `drop_path_rate`.
"""

from __future__ import annotations

import torch
from torch import nn

from synthfm.errors import SynthfmError
from synthfm.models.encoders import RANDOM_PREFIX

PIXELS = "pixels"


class PixelEncoder(nn.Module):
    """Features = the image's pixels, flattened; the images arrive already resized to `image_size`."""

    def __init__(self, in_chans: int, image_size: int) -> None:
        super().__init__()
        self.in_chans, self.image_size = in_chans, image_size
        self.num_features = in_chans * image_size * image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.in_chans, self.image_size, self.image_size):
            raise SynthfmError(f"the pixels encoder expects images of {self.in_chans} x {self.image_size} x "
                               f"{self.image_size}, got {tuple(x.shape[1:])}",
                               "give every split at the adaptation's image_size")
        return x.flatten(1)


def pixels_problem(image_size: int | None, policy: str) -> tuple[str, str] | None:
    """(what is wrong, the fix) when the pixels encoder cannot run with these settings, else None."""
    if image_size is None:
        return ("encoder 'pixels' has no built-in image size",
                "set image_size (the size the encoders are probed at, e.g. 32 for RetinaMNIST)")
    if policy != "linear_probe":
        return (f"encoder 'pixels' has no weights, so policy '{policy}' has nothing to train",
                "use policy linear_probe (a logistic regression on the pixels)")
    return None


def pixel_encoder(in_chans: int, image_size: int | None, policy: str) -> PixelEncoder:
    """The raw-pixel 'encoder' of a linear probe; it needs the image size the probe reads its images at."""
    problem = pixels_problem(image_size, policy)
    if problem:
        raise SynthfmError(*problem)
    return PixelEncoder(in_chans, int(image_size))


def is_vit(encoder: nn.Module) -> bool:
    """Whether an encoder is a timm ViT (patch embedding and a list of blocks), which the ViT-only recipe needs."""
    return hasattr(encoder, "patch_embed") and hasattr(encoder, "blocks")


def builds_from_scratch(reference: str) -> bool:
    """Whether an encoder reference names no file (random init or raw pixels)."""
    return reference.startswith(RANDOM_PREFIX) or reference == PIXELS
