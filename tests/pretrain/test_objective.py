"""The objective base and registry: declared no-op hooks, registration by decorator, lazy import by name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from synthfm.errors import SynthfmError
from synthfm.pretrain import mae  # noqa: F401  (registers 'mae' before the tests patch it)
from synthfm.pretrain import objective as objective_module
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.objective import OBJECTIVES, SingleModuleObjective, build_objective, register_objective


class Toy(SingleModuleObjective):
    """One linear 'encoder' under a wrapper: the loss is its output's mean square."""

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model.encoder(batch["image"].flatten(1))
        return out.pow(2).mean(), {}


def _cfg(objective: str) -> object:
    return pretrain_config({"objective": objective, "stages": [{"name": "s", "steps": 1,
                                                                "sources": [{"source": "rasd", "n": 4}]}]}, "test")


def test_the_base_hooks_are_declared_no_ops(tmp_path: Path) -> None:
    wrapper = nn.Module()
    wrapper.encoder = nn.Linear(4, 2)
    toy = Toy(wrapper)
    assert toy.views() is None and toy.open_source(None, tmp_path) is None  # type: ignore[arg-type]
    assert toy.after_step(0, 1) is None and toy.export_name == "encoder"
    assert toy.modules() == {"model": wrapper}


def test_registering_a_name_twice_is_refused() -> None:
    def build(cfg: object) -> Toy:
        raise AssertionError

    def other(cfg: object) -> Toy:
        raise AssertionError

    try:
        register_objective("toy_twice")(build)
        assert register_objective("toy_twice")(build) is build  # the same builder again: harmless
        with pytest.raises(ValueError, match="registered twice"):
            register_objective("toy_twice")(other)
    finally:
        OBJECTIVES.pop("toy_twice", None)


def test_a_registered_builder_is_what_build_objective_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    monkeypatch.setitem(OBJECTIVES, "mae", lambda cfg: made.append(cfg) or "built")
    cfg = _cfg("mae")
    assert build_objective(cfg) == "built" and made == [cfg]


def test_an_unloaded_objective_module_is_imported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusion registers itself when build_objective first asks for it (its module is not imported eagerly)."""
    monkeypatch.delitem(OBJECTIVES, "diffusion", raising=False)
    monkeypatch.delitem(sys.modules, "synthfm.pretrain.diffusion", raising=False)
    calls = []

    def fake_import(name: str) -> None:
        calls.append(name)
        if name == "synthfm.pretrain.diffusion":
            OBJECTIVES["diffusion"] = lambda cfg: "diffusion objective"

    cfg = _cfg("diffusion")
    monkeypatch.setattr(objective_module.importlib, "import_module", fake_import)
    assert build_objective(cfg) == "diffusion objective"
    assert calls[-1] == "synthfm.pretrain.diffusion" and calls.count("synthfm.pretrain.diffusion") == 1
    OBJECTIVES.pop("diffusion")


def test_an_objective_nobody_registered_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg("rasd")
    monkeypatch.delitem(OBJECTIVES, "rasd")
    monkeypatch.setattr(objective_module.importlib, "import_module", lambda name: None)
    with pytest.raises(SynthfmError, match="no objective 'rasd' is registered"):
        build_objective(cfg)


def test_a_config_names_a_registered_objective_or_its_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fixed list: a name is accepted when registered, or when synthfm/pretrain/<name>.py exists (diffusion is
    accepted without importing diffusers); anything else fails when the config is read."""
    monkeypatch.delitem(OBJECTIVES, "diffusion", raising=False)
    assert _cfg("diffusion").objective == "diffusion" and "diffusion" not in OBJECTIVES
    register_objective("toy_objective")(lambda cfg: Toy(nn.Module()))
    try:
        assert _cfg("toy_objective").objective == "toy_objective"
    finally:
        OBJECTIVES.pop("toy_objective")
    with pytest.raises(SynthfmError, match="unknown objective 'byol'"):
        _cfg("byol")


def test_default_export_saves_the_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrapper = nn.Module()
    wrapper.encoder = nn.Linear(4, 2)
    saved = []
    monkeypatch.setattr(objective_module, "save_pretrained",
                        lambda model, directory, **extra: saved.append((model, directory, extra)) or directory)
    assert Toy(wrapper).export(tmp_path / "enc", global_step=3) == tmp_path / "enc"
    assert saved == [(wrapper.encoder, tmp_path / "enc", {"global_step": 3})]
