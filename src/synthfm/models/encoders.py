"""Encoder references, resolved in one place: 'random:<backbone>', a save_pretrained folder, a checkpoint file.

Adaptation, the latent-map job, the gate's feature spaces and the planner all accept the same reference
strings; this module parses them (`random_backbone`) and builds the encoder they name (`resolve_encoder`).
The raw-pixel baseline ('pixels') is adaptation's own and is handled there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from synthfm.errors import SynthfmError
from synthfm.models.backbones import create_backbone
from synthfm.models.checkpoint import from_pretrained, import_checkpoint

RANDOM_PREFIX = "random:"


def random_backbone(ref: str) -> str | None:
    """The registry backbone of a 'random:<backbone>' reference; None for any other reference."""
    return ref.removeprefix(RANDOM_PREFIX) if ref.startswith(RANDOM_PREFIX) else None


def resolve_encoder(ref: str, in_chans: int, backbone: str | None = None,
                    overrides: dict[str, Any] | None = None) -> nn.Module:
    """The encoder `ref` names, taking `in_chans` channels (a saved encoder with others is adapted on load).

    'random:<backbone>' builds the registry backbone with `overrides` (seed torch first for reproducible
    weights); a folder is a save_pretrained encoder; a file is a checkpoint of the registry `backbone`.
    """
    overrides = dict(overrides or {})
    name = random_backbone(ref)
    if name is not None:
        return create_backbone(name, in_chans, **overrides)
    path = Path(ref)
    if path.is_dir():
        return from_pretrained(path, in_chans)
    if backbone is None:
        raise SynthfmError(f"encoder {path} is a checkpoint file but no backbone is named",
                           "set 'backbone' to the registry name it was trained with (e.g. vit_large_p16_224)")
    return import_checkpoint(path, backbone, in_chans=in_chans, **overrides)
