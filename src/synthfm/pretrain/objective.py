"""What an objective is to the engine: a small base with declared hooks, and a timm-style registry.

An objective is one file that subclasses `Objective` (or `SingleModuleObjective`) and registers its builder:

    @register_objective("mae")
    def build_mae(cfg: PretrainConfig) -> MAEObjective: ...

The engine calls every hook unconditionally; the base's defaults are no-ops (no per-sample views, the engine's
own sources, nothing after a step, the encoder exported with save_pretrained). A builder whose module the engine
does not import (one with heavy dependencies, e.g. `diffusion`) is found by importing `synthfm.pretrain.<name>`
the first time that objective is asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from synthfm.errors import SynthfmError
from synthfm.models.checkpoint import save_pretrained

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from synthfm.pretrain.config import PretrainConfig, SourceConfig


class Objective:
    """A self-supervised (or generative) objective: trained modules by name, a loss per batch, what to export."""

    export_name = "encoder"  # the exported folder's name in the run directory

    def modules(self) -> dict[str, nn.Module]:
        """The trained modules by name (checkpoint keys are prefixed with these names)."""
        raise NotImplementedError

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of a batch and the scalars to log."""
        raise NotImplementedError

    def encoder(self) -> nn.Module:
        """The backbone to export after pretraining (heads and decoders are discarded)."""
        raise NotImplementedError

    def views(self) -> Callable[[torch.Tensor], dict[str, torch.Tensor]] | None:
        """A per-sample view transform the data mixture applies (multi-crop); None: one image per sample."""
        return None

    def open_source(self, src: SourceConfig, cache: Path) -> Dataset | None:
        """The objective's own dataset for a source (e.g. with conditions or volumes); None: the engine's."""
        return None

    def after_step(self, step: int, total: int) -> None:
        """Called after every optimiser step (e.g. a teacher's or an EMA's update)."""

    def export(self, directory: Path, **extra: Any) -> Path:
        """Save what the run exports: by default the encoder with save_pretrained."""
        return save_pretrained(self.encoder(), directory, **extra)


class SingleModuleObjective(Objective):
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


Builder = Callable[["PretrainConfig"], Objective]
OBJECTIVES: dict[str, Builder] = {}
BUILTIN_MODULES = ("synthfm.pretrain.mae", "synthfm.pretrain.dino", "synthfm.pretrain.rasd_objective")  # light


def _where(builder: Builder) -> str:
    """module.qualname of a builder."""
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', repr(builder))}"


def register_objective(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register an objective's builder under `name` (the config's `objective`)."""
    def add(builder: Builder) -> Builder:
        if name in OBJECTIVES and _where(OBJECTIVES[name]) != _where(builder):  # a module reload is not a clash
            raise ValueError(f"objective {name!r} is registered twice: {_where(OBJECTIVES[name])}, {_where(builder)}")
        OBJECTIVES[name] = builder
        return builder
    return add


def _load_builtins() -> None:
    """Import the built-in objectives' modules (each registers its objective)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def _module_exists(name: str) -> bool:
    """Whether `synthfm.pretrain.<name>` is a module (found without importing it)."""
    try:
        return importlib.util.find_spec(f"synthfm.pretrain.{name}") is not None
    except (ImportError, ValueError):
        return False


def check_objective(name: str) -> str:
    """A known objective's name: registered by a built-in module, or the name of a module that registers it on
    import (checked without importing it, so validating a config does not load e.g. diffusers)."""
    _load_builtins()
    if name in OBJECTIVES or (name.isidentifier() and _module_exists(name)):
        return name
    raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)} (or a module "
                     f"synthfm/pretrain/<name>.py that registers one)")


def build_objective(cfg: PretrainConfig) -> Objective:
    """The registered objective of a config, built (its module imported on first use when not yet loaded)."""
    _load_builtins()
    if cfg.objective not in OBJECTIVES:
        module = f"synthfm.pretrain.{cfg.objective}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # the module exists but lacks a dependency: say which
                raise
    if cfg.objective not in OBJECTIVES:
        raise SynthfmError(f"no objective {cfg.objective!r} is registered", f"use one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[cfg.objective](cfg)
