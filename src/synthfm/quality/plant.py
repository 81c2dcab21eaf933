"""Planted near-copies: real images disguised the ways a copy might be, to measure the audit's recall.

Each transform takes a uint8 HxWx3 image and a generator: `exact`, `hflip`, `vflip`, `crop90` (a random
crop of 90% of each side, resized back), `jpeg70` (JPEG at quality 70), `brighten` (every channel times 1.3,
clipped) and `jitter` (torchvision ColorJitter(0.4, 0.4, 0.2, 0.1): brightness, contrast, saturation, hue - the
project's DINOv2 setting).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T


def crop(image: np.ndarray, rng: np.random.Generator, fraction: float = 0.9) -> np.ndarray:
    """A random crop of `fraction` of each side, resized back to the original size (bicubic)."""
    h, w = image.shape[:2]
    ch, cw = round(h * fraction), round(w * fraction)
    r, c = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.asarray(Image.fromarray(image[r:r + ch, c:c + cw]).resize((w, h), Image.BICUBIC))


def jpeg(image: np.ndarray, quality: int = 70) -> np.ndarray:
    """Round trip through JPEG at `quality`."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def brighten(image: np.ndarray, gain: float = 1.3) -> np.ndarray:
    """Every channel times `gain`, clipped to 255 (an over-exposed copy)."""
    return np.clip(image.astype(np.float32) * gain, 0, 255).round().astype(np.uint8)


def jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """torchvision ColorJitter(0.4, 0.4, 0.2, 0.1), seeded from rng."""
    torch.manual_seed(int(rng.integers(2**31)))
    out = T.ColorJitter(0.4, 0.4, 0.2, 0.1)(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    return out.permute(1, 2, 0).numpy()


TRANSFORMS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "exact": lambda a, rng: a.copy(),
    "hflip": lambda a, rng: a[:, ::-1].copy(),
    "vflip": lambda a, rng: a[::-1].copy(),
    "crop90": crop,
    "jpeg70": lambda a, rng: jpeg(a),
    "brighten": lambda a, rng: brighten(a),
    "jitter": jitter,
}


def plant(images: np.ndarray, per_kind: int, seed: int,
          kinds: tuple[str, ...] = tuple(TRANSFORMS)) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(copies, source row of each, transform of each): `per_kind` random sources per transform."""
    rng = np.random.default_rng(seed)
    out, src, names = [], [], []
    for kind in kinds:
        for i in rng.choice(len(images), per_kind, replace=False):
            out.append(TRANSFORMS[kind](images[i], rng))
            src.append(int(i))
            names.append(kind)
    return np.stack(out), np.asarray(src), names
