"""Modality presets: channels, normalisation and preprocessing defaults, chosen by the card."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModalityPreset:
    """Defaults a modality brings: channel count, normalisation, and which preprocessing applies."""

    name: str
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fov_crop: bool
    intensity_window: bool


PRESETS: dict[str, ModalityPreset] = {
    "fundus": ModalityPreset("fundus", 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True, False),
    "cxr": ModalityPreset("cxr", 1, (0.5,), (0.25,), False, True),
    "volume": ModalityPreset("volume", 1, (0.5,), (0.25,), False, False),
}


def preset(modality: str) -> ModalityPreset:
    """The preset for a modality name."""
    return PRESETS[modality]
