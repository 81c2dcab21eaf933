"""Tests of the procedural chest X-ray phantom."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synthfm.synth.base import PhantomSample
from synthfm.synth.cxr import CONDITION_KEYS, CXR_FINDINGS, CXR_METADATA, CXR_TASKS, CXRPhantom

SIZE = 128
DEVICES = CXR_METADATA["device"]


@pytest.fixture(scope="module")
def phantom() -> CXRPhantom:
    """One phantom shared by the tests."""
    return CXRPhantom()


def _extent(mask: np.ndarray) -> int:
    """Columns from the first to the last one holding mask pixels."""
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1)


def test_sample_structure(phantom: CXRPhantom) -> None:
    """Grayscale uint8 image, uint8 masks of the image's shape, labels/metadata/params complete and JSON-ready."""
    s = phantom.generate({"tb": 1}, seed=3, size=SIZE)
    assert isinstance(s, PhantomSample)
    assert s.image.shape == (SIZE, SIZE) and s.image.dtype == np.uint8
    assert {"lungs", "heart", "ribs", "clavicles", "findings"} <= set(s.masks)
    for name, mask in s.masks.items():
        assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8, name
        assert mask.any(), name
    for name in ("lungs", "heart", "ribs", "clavicles"):
        assert set(np.unique(s.masks[name])) <= {0, 1}
    assert set(s.labels) == set(CXR_TASKS)
    assert set(s.metadata) == set(CXR_METADATA)
    assert {"anatomy", "ribs", "clavicles", "heart", "findings", "finding_counts", "device"} <= set(s.params)
    json.dumps(s.params)


def test_same_seed_same_bytes(phantom: CXRPhantom) -> None:
    """Same condition and seed give identical bytes; another seed gives another image."""
    a = phantom.generate({"tb": 1, "device": "film_scan"}, seed=11, size=SIZE)
    b = phantom.generate({"tb": 1, "device": "film_scan"}, seed=11, size=SIZE)
    c = phantom.generate({"tb": 1, "device": "film_scan"}, seed=12, size=SIZE)
    assert a.image.tobytes() == b.image.tobytes()
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert json.dumps(a.params) == json.dumps(b.params)
    assert a.image.tobytes() != c.image.tobytes()


def test_missing_keys_drawn_from_priors(phantom: CXRPhantom) -> None:
    """An empty condition is filled deterministically with allowed values."""
    a, b = (phantom.generate({}, seed=5, size=64) for _ in range(2))
    assert a.metadata == b.metadata and a.labels == b.labels
    assert a.metadata["sex"] in CXR_METADATA["sex"] and a.metadata["device"] in DEVICES
    lo, hi = CXR_METADATA["age"]
    assert lo <= a.metadata["age"] <= hi


@pytest.mark.parametrize("seed", range(4))
def test_findings_follow_tb(phantom: CXRPhantom, seed: int) -> None:
    """tb=0 has an empty findings mask; tb=1 a non-empty one whose labels are the flagged findings."""
    normal = phantom.generate({"tb": 0}, seed=seed, size=SIZE)
    sick = phantom.generate({"tb": 1}, seed=seed, size=SIZE)
    assert not normal.masks["findings"].any()
    assert not any(normal.labels[f] for f in CXR_FINDINGS)
    assert sick.masks["findings"].any()
    flagged = {CXR_FINDINGS.index(f) + 1 for f in CXR_FINDINGS if sick.labels[f]}
    assert set(np.unique(sick.masks["findings"])) - {0} <= flagged
    assert {f for f, n in sick.params["finding_counts"].items() if n} == {f for f in CXR_FINDINGS if sick.labels[f]}


@pytest.mark.parametrize("finding", CXR_FINDINGS)
def test_requested_finding_is_drawn(phantom: CXRPhantom, finding: str) -> None:
    """A requested finding implies tb=1 and appears in the findings mask with its label value."""
    s = phantom.generate({finding: 1}, seed=7, size=SIZE)
    assert s.labels["tb"] == 1 and s.labels[finding] == 1
    assert (s.masks["findings"] == CXR_FINDINGS.index(finding) + 1).any()


@pytest.mark.parametrize(("seed", "device"), [(0, "fixed_dr"), (1, "portable_cr"), (2, "film_scan"), (3, "fixed_dr")])
def test_ctr_measured_from_masks(phantom: CXRPhantom, seed: int, device: str) -> None:
    """Heart width over thoracic (lung) width equals the recorded cardiothoracic ratio."""
    for size in (SIZE, 256):
        s = phantom.generate({"device": device}, seed=seed, size=size)
        measured = _extent(s.masks["heart"]) / _extent(s.masks["lungs"])
        assert measured == pytest.approx(s.params["anatomy"]["ctr"], abs=2.5 / _extent(s.masks["lungs"]))


def test_ctr_condition_is_honoured(phantom: CXRPhantom) -> None:
    """A requested cardiothoracic ratio is rendered (cardiomegaly at 0.6)."""
    s = phantom.generate({"ctr": 0.6}, seed=4, size=256)
    assert s.params["anatomy"]["ctr"] == 0.6
    assert _extent(s.masks["heart"]) / _extent(s.masks["lungs"]) == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("device", DEVICES)
def test_lungs_darker_than_mediastinum(phantom: CXRPhantom, device: str) -> None:
    """Aerated lungs are darker than the mediastinum and the heart shadow."""
    for seed in range(3):
        s = phantom.generate({"tb": 0, "device": device}, seed=seed, size=SIZE)
        lungs = s.image[s.masks["lungs"] > 0].mean()
        assert lungs + 40 < s.image[s.masks["mediastinum"] > 0].mean()
        assert lungs + 40 < s.image[s.masks["heart"] > 0].mean()


def test_heart_left_of_patient(phantom: CXRPhantom) -> None:
    """Most of the heart lies on the image's right (the patient's left, PA view)."""
    s = phantom.generate({}, seed=9, size=SIZE)
    cols = np.nonzero(s.masks["heart"])[1]
    midline = s.params["anatomy"]["midline"] * SIZE
    assert (cols > midline).mean() > 0.55


@pytest.mark.parametrize("seed", range(4))
def test_findings_brighten_lungs(phantom: CXRPhantom, seed: int) -> None:
    """Inside the findings mask the tb=1 image is brighter than the same-seed tb=0 image; opacities too."""
    cond = {"age": 50.0, "sex": "M", "device": "fixed_dr"}
    normal = phantom.generate({**cond, "tb": 0}, seed=seed, size=SIZE)
    sick = phantom.generate({**cond, "tb": 1, "opacity": 1}, seed=seed, size=SIZE)
    assert np.array_equal(normal.masks["lungs"], sick.masks["lungs"])
    for region in (sick.masks["findings"] > 0, sick.masks["findings"] == 1):
        assert region.any()
        assert sick.image[region].mean() > normal.image[region].mean() + 10


def test_breast_shadows_for_adult_women(phantom: CXRPhantom) -> None:
    """Adult female films carry breast soft-tissue density over the lower lungs; male and child films do not."""
    base = {"tb": 0, "age": 35.0, "device": "fixed_dr"}
    female = phantom.generate({**base, "sex": "F"}, seed=2, size=SIZE)
    male = phantom.generate({**base, "sex": "M"}, seed=2, size=SIZE)
    girl = phantom.generate({**base, "sex": "F", "age": 6.0}, seed=2, size=SIZE)
    lungs = male.masks["lungs"] > 0
    assert female.image[lungs].mean() > male.image[lungs].mean() + 2
    assert female.params["breasts"]["density"] > 0
    assert girl.params["breasts"]["density"] == 0


def test_bone_density_falls_with_age(phantom: CXRPhantom) -> None:
    """Rib contrast against the lungs is lower in the elderly (osteopenia)."""

    def rib_contrast(age: float) -> float:
        s = phantom.generate({"tb": 0, "age": age, "sex": "M", "device": "fixed_dr"}, seed=1, size=SIZE)
        ribs, lungs = s.masks["ribs"] > 0, s.masks["lungs"] > 0
        return float(s.image[ribs & lungs].mean() - s.image[~ribs & lungs].mean())

    assert rib_contrast(88.0) < rib_contrast(35.0)


def test_devices_differ_in_noise(phantom: CXRPhantom) -> None:
    """Portable CR films are noisier than fixed DR films of the same patient."""

    def noise(device: str) -> float:
        s = phantom.generate({"tb": 0, "age": 40.0, "sex": "M", "device": device}, seed=0, size=SIZE)
        step = np.abs(np.diff(s.image.astype(float), axis=0))
        return float(np.median(step[s.masks["lungs"][1:] > 0]))

    assert noise("portable_cr") > noise("fixed_dr")


def test_unknown_key_names_it_and_lists_allowed(phantom: CXRPhantom) -> None:
    """An unknown condition key is a ValueError naming the key and the allowed keys."""
    with pytest.raises(ValueError, match="bogus") as err:
        phantom.generate({"tb": 1, "bogus": 3}, seed=0, size=64)
    assert all(k in str(err.value) for k in CONDITION_KEYS)


@pytest.mark.parametrize(
    "condition",
    [
        {"tb": 2},
        {"tb": "maybe"},
        {"sex": "X"},
        {"device": "ct"},
        {"age": 150.0},
        {"ctr": 0.9},
        {"tb": 0, "cavity": 1},
        {"tb": 1, **dict.fromkeys(CXR_FINDINGS, 0)},
    ],
)
def test_bad_values_raise(phantom: CXRPhantom, condition: dict) -> None:
    """Out-of-range or inconsistent condition values are rejected."""
    with pytest.raises(ValueError):
        phantom.generate(condition, seed=0, size=64)


def test_class_names_accepted(phantom: CXRPhantom) -> None:
    """Task values may be class names as well as indices."""
    s = phantom.generate({"tb": "yes", "nodule": "yes"}, seed=0, size=64)
    assert s.labels["tb"] == 1 and s.labels["nodule"] == 1
