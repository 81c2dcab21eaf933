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


def class_index(task: str, classes: list[str], value: Any) -> int:
    """Class index of a condition value given as an index, a bool or a class name."""
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    if isinstance(value, (bool, int, np.integer)) and 0 <= int(value) < len(classes):
        return int(value)
    raise ValueError(f"condition '{task}'={value!r} is not one of {classes} (or an index 0..{len(classes) - 1})")


def check_range(key: str, value: Any, bounds: tuple[float, float]) -> float:
    """A numeric condition value inside its closed range."""
    if not isinstance(value, (int, float, np.number)) or not bounds[0] <= float(value) <= bounds[1]:
        raise ValueError(f"condition '{key}'={value!r} must be a number in [{bounds[0]}, {bounds[1]}]")
    return float(value)


def check_choice(key: str, value: Any, allowed: list[str]) -> Any:
    """A categorical condition value among the allowed ones."""
    if value not in allowed:
        raise ValueError(f"condition '{key}'={value!r} is not one of {allowed}")
    return value
