"""Typed configs: unknown keys and bad values are errors naming the key, value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from synthfm.config import StrictModel, dump_config, load_config, validate_config
from synthfm.errors import SynthfmError


class Inner(StrictModel):
    lr: float = 1e-3
    warmup: int = Field(10, ge=0)


class Outer(StrictModel):
    name: str = "run"
    optim: Inner = Field(default_factory=Inner)


def test_defaults_in_code_yaml_holds_differences(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 0.5\n")
    cfg = load_config(Outer, tmp_path / "c.yaml")
    assert cfg.optim.lr == 0.5 and cfg.optim.warmup == 10 and cfg.name == "run"
    assert "warmup: 10" in dump_config(cfg)


def test_unknown_nested_key_lists_allowed() -> None:
    with pytest.raises(SynthfmError, match=r"unknown key 'optim.lrr'; allowed keys here: lr, warmup"):
        validate_config(Outer, {"optim": {"lrr": 1}}, "x.yaml")


def test_bad_value_names_key_value_and_rule() -> None:
    with pytest.raises(SynthfmError, match=r"bad value for 'optim.warmup': -1 \(Input should be greater than"):
        validate_config(Outer, {"optim": {"warmup": -1}}, "x.yaml")


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(SynthfmError, match="not valid YAML"):
        load_config(Outer, tmp_path / "bad.yaml")
    with pytest.raises(SynthfmError, match="not found"):
        load_config(Outer, tmp_path / "none.yaml")


def test_non_mapping_rejected() -> None:
    with pytest.raises(SynthfmError, match="must hold a mapping"):
        validate_config(Outer, [1, 2], "x.yaml")



class Grown(Outer):
    """Outer after a release added two fields."""

    tags: list[str] = Field(default_factory=list)
    fast: bool = False
    omit_when_default = ("tags", "fast")


def test_fields_added_later_keep_old_hashes() -> None:
    """A field in omit_when_default is dumped (and hashed) only when it differs from its default."""
    from synthfm.runs import config_hash
    from synthfm.synth.writer import PhantomConfig

    assert Grown().model_dump() == Outer().model_dump()
    assert config_hash(Grown(name="a")) == config_hash(Outer(name="a"))
    assert Grown(tags=["x"]).model_dump()["tags"] == ["x"] and Grown(fast=True).model_dump()["fast"] is True
    assert "priors" not in PhantomConfig().model_dump()
    assert PhantomConfig(priors={"amd": 0.1}).model_dump(mode="json")["priors"] == {"amd": 0.1}
