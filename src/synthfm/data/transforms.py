"""Tensor transforms chosen by modality preset (training augmentation or plain evaluation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from synthfm.data.modality import preset

Transform = Callable[[np.ndarray], torch.Tensor]


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 HxW or HxWxC array -> uint8 CxHxW tensor (no copy where possible)."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def build_transform(modality: str, size: int, train: bool = False,
                    scale: tuple[float, float] = (0.2, 1.0)) -> Transform:
    """Array -> normalised float tensor at `size`; with `train`, random resized crop + horizontal flip."""
    p = preset(modality)
    geo: list[Callable] = (
        [T.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
         T.RandomHorizontalFlip()]
        if train else [T.Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True)]
    )
    pipeline = T.Compose([*geo, T.ToDtype(torch.float32, scale=True), T.Normalize(p.mean, p.std)])

    def apply(arr: np.ndarray) -> torch.Tensor:
        """Apply the pipeline to one image array."""
        return pipeline(to_tensor(arr))

    return apply
