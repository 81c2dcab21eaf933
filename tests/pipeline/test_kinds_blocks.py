"""Nested config blocks that jobs pass on as written are still checked when the pipeline is planned."""

from __future__ import annotations

import pytest

from synthfm.adapt.jobs import CheckpointsJob
from synthfm.config import validate_config
from synthfm.errors import SynthfmError
from synthfm.evaluate.jobs import FairnessJob
from synthfm.quality.jobs import QualityJob


@pytest.mark.parametrize(("model", "data", "named"), [
    (QualityJob, {"synthetic": "s", "real": "r", "config": {"gatee": {}}}, "unknown key 'gatee'"),
    (QualityJob, {"synthetic": "s", "real": "r", "config": {"labels": {"adapt": {"epochz": 3}}}},
     "unknown key 'epochz'"),
    (FairnessJob, {"experiment": "e", "fairness": {"min_nn": 3}}, "unknown key 'min_nn'"),
    (CheckpointsJob, {"pretrain": "p", "adapt": {"card": "c", "task": "t", "epochs": "many"}}, "'epochs': 'many'"),
])
def test_a_typo_in_a_nested_block_fails_at_planning(model: type, data: dict, named: str) -> None:
    """The error names the block's bad key; nothing has to run first."""
    with pytest.raises(SynthfmError, match=named):
        validate_config(model, data, "pipeline.yaml")


def test_a_valid_block_is_kept_as_written() -> None:
    """The block is not filled with defaults, so the job's key (a hash of its config) does not change."""
    job = validate_config(QualityJob, {"synthetic": "s", "real": "r", "config": {"gate": {"stop_on_fail": False}}},
                          "pipeline.yaml")
    assert job.config == {"gate": {"stop_on_fail": False}}


def test_kinds_are_collected_from_their_stages_and_a_clash_is_refused() -> None:
    """Every section has kinds, each from the stage package that owns it; one kind defined twice is an error."""
    import pytest

    from synthfm.jobs import Kind
    from synthfm.pipeline.kinds import KINDS, collect
    from synthfm.pipeline.spec import STAGES

    assert list(KINDS) == list(STAGES) and all(KINDS[s] for s in STAGES)
    assert KINDS["synth"]["generator"].run.__module__ == "synthfm.pretrain.jobs"
    assert KINDS["evaluate"]["arms"].run.__module__ == "synthfm.evaluate.jobs"
    kind = Kind(lambda raw, where: raw, lambda cfg, out: {})
    with pytest.raises(ValueError, match=r"\['x'\] of section 'data' are defined twice"):
        collect({"data": {"x": kind}}, {"data": {"x": kind}})
