"""The one record every procedural generator returns, and the generator protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class PhantomSample:
    """One generated image with the ground truth it carries.

    image:    HxWx3 uint8 (RGB) or HxW uint8 (grayscale); DxHxW uint8 for volumes.
    masks:    name -> uint8 array of the image's spatial shape (0/1 binary, or a small label map).
    labels:   task name -> class index (int), e.g. {"dr_grade": 3, "glaucoma": 1}.
    metadata: condition metadata, e.g. {"age": 63.0, "sex": "F", "ethnicity": "asian", "device": "topcon"}.
    params:   every rendering parameter used, JSON-serialisable scalars/lists (ground truth for tests).
    """

    image: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


class Generator(Protocol):
    """A procedural generator: a condition (labels + metadata) and a seed in, one sample out."""

    name: str

    def generate(self, condition: dict[str, Any], seed: int, size: int) -> PhantomSample:
        """Render one sample for `condition` (missing keys are drawn from the generator's priors)."""
        ...
