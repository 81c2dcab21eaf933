"""Generator configs: each kind's options validate as its own model when the config is read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from synthfm.consortium.generators import GeneratorConfig


def test_diffusion_options_are_kept_as_written() -> None:
    options = {"steps": 5, "diffusion": {"prediction_type": "epsilon"}, "pretrain": {"optim": {"lr": 1e-3}},
               "sampler": {"steps": 10}}
    assert GeneratorConfig(kind="diffusion", options=options).options == options


@pytest.mark.parametrize(("options", "named"), [
    ({"stepz": 3}, "stepz"),
    ({"diffusion": {"predction_type": "x"}}, "predction_type"),
    ({"sampler": {"name": "euler"}}, "name"),
    ({"pretrain": {"optm": {}}}, "optm"),
])
def test_a_typo_in_diffusion_options_fails_when_read(options: dict, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        GeneratorConfig(kind="diffusion", options=options)


def test_the_phantom_kind_takes_no_options() -> None:
    with pytest.raises(ValidationError, match="unknown key 'steps'"):
        GeneratorConfig(kind="phantom", options={"steps": 10})
