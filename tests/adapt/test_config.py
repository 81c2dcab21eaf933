"""Adaptation config: blr scaling, pixels checks, and new fields left out of the hash while at their default."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from synthfm.adapt.config import AdaptConfig
from synthfm.config import dump_config, validate_config

BASE = {"card": "c.yaml", "task": "t", "encoder": "random:vit_tiny_p8_64"}


def test_blr_sets_lr_by_batch_size_and_excludes_lr() -> None:
    """lr = blr * batch_size / 256 (64 x 1e-3 / 256 = 2.5e-4), again after a dump and reload; both is an error."""
    cfg = AdaptConfig(**BASE, blr=1e-3, batch_size=64)
    assert cfg.lr == pytest.approx(2.5e-4)
    back = validate_config(AdaptConfig, yaml.safe_load(dump_config(cfg)), "dump")
    assert back.lr == cfg.lr and back.model_dump() == cfg.model_dump()
    assert cfg.single(0.1, 3).lr == cfg.lr
    cfg.batch_size = 128
    assert cfg.lr == pytest.approx(5e-4)
    with pytest.raises(ValidationError, match=r"set lr .* or blr .*not both"):
        AdaptConfig(**BASE, blr=1e-3, lr=1e-3)


def test_new_fields_stay_out_of_the_dump_at_their_default() -> None:
    """An old config keeps its run-directory hash; a set field is dumped."""
    dump = AdaptConfig(**BASE).model_dump()
    assert not {"class_balance", "blr", "patience"} & set(dump)
    set_ = AdaptConfig(**BASE, class_balance="sampler", patience=3, blr=1e-3).model_dump()
    assert (set_["class_balance"], set_["patience"], set_["blr"]) == ("sampler", 3, 1e-3)


def test_pixels_config_needs_image_size_and_probe() -> None:
    with pytest.raises(ValidationError, match="no built-in image size"):
        AdaptConfig(**{**BASE, "encoder": "pixels"}, policy="linear_probe")
    with pytest.raises(ValidationError, match="nothing to train"):
        AdaptConfig(**{**BASE, "encoder": "pixels"}, image_size=32)
    assert AdaptConfig(**{**BASE, "encoder": "pixels"}, image_size=32, policy="linear_probe").image_size == 32


@pytest.mark.parametrize(("native", "expected"), [(False, "no"), (True, "bf16")])
def test_auto_precision_of_adaptation_follows_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool,
                                                          expected: str) -> None:
    """`auto` (the default) is bf16 only with native bf16, recorded resolved; on an fp32 machine the config hash is
    the one adaptation configs had before `auto` existed (explicit 'no')."""
    from synthfm import hardware
    from synthfm.runs import config_hash

    monkeypatch.setattr(hardware, "native_bf16", lambda device_type=None: native)
    base = {"card": "c", "task": "t", "encoder": "random:vit_tiny_p8_64"}
    cfg = AdaptConfig(**base)
    assert cfg.mixed_precision == expected and cfg.model_dump()["mixed_precision"] == expected
    assert AdaptConfig(**base, mixed_precision="bf16").mixed_precision == "bf16"
    assert (config_hash(cfg) == config_hash(AdaptConfig(**base, mixed_precision="no"))) is (not native)
