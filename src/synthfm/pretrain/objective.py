"""Shared shape of objectives that train one module and export its `encoder` attribute."""

from __future__ import annotations

from torch import nn


class SingleModuleObjective:
    """An objective with one trained module under `name`; subclasses define `loss(batch)`."""

    name = "model"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def modules(self) -> dict[str, nn.Module]:
        """The trained modules by name (checkpoint keys are prefixed with these names)."""
        return {self.name: self.model}

    def encoder(self) -> nn.Module:
        """The backbone to export after pretraining (heads and decoders are discarded)."""
        return self.model.encoder
