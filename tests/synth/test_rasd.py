"""Tests of RaSD randomized synthesis and its on-the-fly stream."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from synthfm.synth.rasd import RaSDConfig, RaSDGenerator, RaSDStream, render_rasd, sample_seed

CLEAN = {"texture": 0.0, "bias": 0.0, "gamma": 0.0, "blur": 0.0, "noise": 0.0, "shading": 0.0}


def _render(seed: int, **kw: object) -> object:
    """Render one sample with config overrides."""
    return render_rasd(RaSDConfig(**kw), np.random.default_rng(seed))


def test_deterministic_by_seed() -> None:
    """The same seed gives the same bytes, masks and params; another seed does not."""
    a, b, c = _render(3), _render(3), _render(4)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.masks["structures"], b.masks["structures"])
    assert json.dumps(a.params) == json.dumps(b.params)
    assert a.image.tobytes() != c.image.tobytes()


@pytest.mark.parametrize(
    ("kw", "image_shape", "mask_shape"),
    [
        ({}, (64, 64), (64, 64)),
        ({"channels": 3, "size": 48}, (48, 48, 3), (48, 48)),
        ({"dims": 3, "size": 32}, (32, 32, 32), (32, 32, 32)),
    ],
)
def test_shapes(kw: dict, image_shape: tuple, mask_shape: tuple) -> None:
    """2D grayscale, 2D RGB and 3D volumes have the documented shapes and dtypes."""
    s = _render(0, **kw)
    assert s.image.shape == image_shape and s.image.dtype == np.uint8
    assert s.masks["structures"].shape == mask_shape and s.masks["structures"].dtype == np.uint8
    json.dumps(s.params)


@pytest.mark.parametrize("dims", [2, 3])
def test_structure_count_in_range(dims: int) -> None:
    """Every image has between min and max structures, each present in the mask as 1..K."""
    lo, hi = 2, 6
    for seed in range(12):
        s = _render(seed, dims=dims, size=64 if dims == 2 else 24, n_structures=(lo, hi))
        k = s.params["n_structures"]
        assert lo <= k <= hi
        assert set(np.unique(s.masks["structures"])) - {0} == set(range(1, k + 1))
        assert all(v > 0 for v in s.params["voxels"])


def test_clean_image_is_its_label_map() -> None:
    """Without texture, shading, bias, contrast curve, blur and noise, each region shows its recorded level."""
    for seed in range(5):
        s = _render(seed, **CLEAN)
        labels, img = s.masks["structures"], s.image.astype(float) / 255
        levels = np.asarray(s.params["levels"])[:, 0]
        assert np.abs(img - levels[labels]).max() <= 1 / 255


@pytest.mark.parametrize("channels", [1, 3])
def test_structures_stand_out_from_background(channels: int) -> None:
    """Before noise, each structure's mean intensity differs from the background's by at least min_contrast."""
    cfg = {**CLEAN, "channels": channels, "min_contrast": 0.1}
    for seed in range(5):
        s = _render(seed, **cfg)
        labels = s.masks["structures"]
        img = s.image.reshape(*labels.shape, channels).astype(float) / 255
        if not (labels == 0).any():
            continue
        background = img[labels == 0].mean(0)
        for k in range(1, s.params["n_structures"] + 1):
            assert np.all(np.abs(img[labels == k].mean(0) - background) >= 0.1 - 2 / 255)


def test_full_appearance_keeps_regions_apart() -> None:
    """With texture, bias, blur and noise on, region means still follow the recorded levels."""
    means, levels = [], []
    for seed in range(8):
        s = _render(seed, size=96)
        labels, img = s.masks["structures"], s.image.astype(float) / 255
        for k in np.unique(labels):
            means.append(img[labels == k].mean())
            levels.append(s.params["levels"][k][0])
    assert np.corrcoef(means, levels)[0, 1] > 0.8


def test_config_validation_names_field() -> None:
    """Impossible settings raise ValueError naming the field."""
    with pytest.raises(ValueError, match="dims"):
        RaSDConfig(dims=4)
    with pytest.raises(ValueError, match="channels"):
        RaSDConfig(dims=3, channels=3)
    with pytest.raises(ValueError, match="n_structures"):
        RaSDConfig(n_structures=(5, 2))
    with pytest.raises(ValueError, match="min_contrast"):
        RaSDConfig(min_contrast=0.2, n_structures=(3, 8))


def test_generator_protocol() -> None:
    """RaSDGenerator renders by seed, takes config overrides and rejects unknown keys."""
    gen = RaSDGenerator()
    a, b = gen.generate({"n_structures": (2, 2)}, seed=1, size=32), gen.generate({"n_structures": (2, 2)}, 1, 32)
    assert a.image.shape == (32, 32) and a.image.tobytes() == b.image.tobytes()
    assert a.params["n_structures"] == 2
    with pytest.raises(ValueError, match="colour"):
        gen.generate({"colour": 1}, seed=0, size=32)


def _collect(stream: RaSDStream, workers: int = 0) -> list[dict]:
    """All samples of a finite stream through a DataLoader."""
    return list(DataLoader(stream, batch_size=None, num_workers=workers))


def test_stream_items() -> None:
    """Items are float32 CxHxW images in [0, 1], int64 masks and the sample's seed, matching render_rasd."""
    cfg = RaSDConfig(size=32, channels=3)
    item = next(iter(RaSDStream(cfg, seed=9, length=3)))
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.int64
    assert item["index"] == 0 and item["seed"] == sample_seed(9, 0)
    ref = render_rasd(cfg, np.random.default_rng(item["seed"]))
    assert np.array_equal((item["image"] * 255).round().byte().permute(1, 2, 0).numpy(), ref.image)


def test_stream_3d_items() -> None:
    """3D items are 1xDxHxW images and DxHxW masks."""
    item = next(iter(RaSDStream(RaSDConfig(dims=3, size=16), seed=0)))
    assert item["image"].shape == (1, 16, 16, 16) and item["mask"].shape == (16, 16, 16)


def test_two_workers_match_single_process() -> None:
    """Two DataLoader workers produce no duplicates and exactly the single-process stream."""
    stream = RaSDStream(RaSDConfig(size=24), seed=5, length=10)
    single, multi = _collect(stream), _collect(stream, workers=2)
    assert len(multi) == len(single) == len(stream) == 10
    assert len({item["seed"] for item in multi}) == 10
    assert len({item["image"].numpy().tobytes() for item in multi}) == 10
    by_index = {item["index"]: item for item in multi}
    assert sorted(by_index) == list(range(10))
    for item in single:
        assert torch.equal(item["image"], by_index[item["index"]]["image"])
        assert torch.equal(item["mask"], by_index[item["index"]]["mask"])


def test_start_offset_continues_stream() -> None:
    """A stream resumed at `start` yields exactly the remaining samples of the full stream."""
    cfg = RaSDConfig(size=24)
    full = _collect(RaSDStream(cfg, seed=2, length=8))
    resumed = RaSDStream(cfg, seed=2, length=8, start=5)
    tail = _collect(resumed, workers=2)
    assert len(resumed) == 3 and [item["index"] for item in tail] == [5, 6, 7]
    for a, b in zip(full[5:], tail, strict=True):
        assert a["seed"] == b["seed"] and torch.equal(a["image"], b["image"])


def test_infinite_stream() -> None:
    """length=None streams forever and has no len()."""
    stream = RaSDStream(RaSDConfig(size=16), seed=0)
    assert [item["index"] for item in itertools.islice(iter(stream), 5)] == [0, 1, 2, 3, 4]
    with pytest.raises(TypeError):
        len(stream)
