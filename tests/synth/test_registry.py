"""The procedural-generator registry: what a spec declares, the phantom per channel count, registration."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from synthfm.errors import SynthfmError
from synthfm.synth import registry
from synthfm.synth.fundus import FundusPhantom
from synthfm.synth.registry import GeneratorSpec, generator_spec, phantom_for_channels, register_generator
from synthfm.synth.writer import PhantomConfig


def test_specs_declare_channels_metadata_values_and_the_age_range() -> None:
    fundus, cxr = generator_spec("fundus_phantom"), generator_spec("cxr_phantom")
    assert (fundus.channels, cxr.channels) == (3, 1)
    assert fundus.metadata == ("age", "sex", "ethnicity", "device") and fundus.age_range == (20.0, 90.0)
    assert cxr.metadata_values["device"] == ["fixed_dr", "portable_cr", "film_scan"] and cxr.age_range == (1.0, 90.0)


def test_the_phantom_behind_a_bare_phantom_source_follows_the_channels() -> None:
    assert phantom_for_channels(3) == "fundus_phantom" and phantom_for_channels(1) == "cxr_phantom"
    with pytest.raises(SynthfmError, match="no procedural phantom makes 2-channel images"):
        phantom_for_channels(2)


def test_fitted_priors_become_fundus_overrides() -> None:
    fit = generator_spec("fundus_phantom").fit_overrides
    out = fit({"age": np.array([95.0, 0.2]), "amd": np.array([0.9, 0.1]), "sex": np.array([1.0, 3.0])})
    assert out == {"age_dependent_prevalence": False, "age_mean": 90.0, "age_sd": 1.0, "amd": 0.1, "sex": [0.25, 0.75]}
    FundusPhantom(**out)  # every key is one the phantom accepts


def test_a_registered_generator_is_accepted_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new procedural generator is its module plus one registration; configs then accept its name."""
    monkeypatch.setattr(registry, "GENERATORS", dict(registry.GENERATORS))
    with pytest.raises(ValidationError, match="unknown generator 'toy_phantom'"):
        PhantomConfig(generator="toy_phantom")
    register_generator("toy_phantom")(lambda: GeneratorSpec(FundusPhantom, "fundus", 3, {}, {"age": (0, 1)}, {}))
    assert PhantomConfig(generator="toy_phantom").generator == "toy_phantom"
