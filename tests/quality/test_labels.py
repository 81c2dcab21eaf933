"""Label verification: the verifier finds a planted fraction of wrong labels; the correction is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synthfm.data.manifest import load_card
from synthfm.quality.config import LabelCheckConfig
from synthfm.quality.labels import mislabelled_fraction, verify_labels, write_filtered_card
from synthfm.synth.writer import PhantomConfig, render_phantom

from .conftest import TINY_SPACE, merge_cards

WRONG = 0.2


def test_mislabelled_fraction_inverts_a_known_confusion() -> None:
    real = np.array([[90, 10], [20, 80]])  # verifier: P(pred | true) on real held-out images
    pi = np.array([0.7, 0.3])  # given class 0, of which 30% are truly class 1
    observed = np.array([pi @ (real / real.sum(1, keepdims=True)) * 1000, [0, 1000]])
    est = mislabelled_fraction(observed, real)
    assert est[0] == pytest.approx(0.3, abs=1e-6)
    assert est[1] == pytest.approx(0.0, abs=1e-6)


def _balanced(root: Path, name: str, n: int, seed: int, edit=None, ratios=(0.5, 0.25, 0.25)) -> Path:
    parts = [render_phantom(root / f"{name}{c}", PhantomConfig(n=n, size=64, seed=seed + c, ratios=ratios,
                                                               condition={"cataract": c})) for c in (0, 1)]
    return merge_cards(parts, root / name, edit)


def test_label_verification_finds_planted_wrong_fraction(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def flip(df: pd.DataFrame) -> pd.DataFrame:
        wrong = rng.choice(len(df), round(WRONG * len(df)), replace=False)
        df.loc[wrong, "cataract"] = 1 - df.loc[wrong, "cataract"]
        df["truly"] = 1
        df.loc[wrong, "truly"] = 0
        return df

    real_card = _balanced(tmp_path, "real", 60, 0)
    synth_card = _balanced(tmp_path, "synth", 50, 10, flip)
    real, synth = load_card(real_card), load_card(synth_card)
    cfg = LabelCheckConfig(tasks=["cataract"], adapt={"epochs": 15})
    res = verify_labels(real, str(real_card), synth, cfg, tmp_path / "check", seed=0, batch_size=32,
                        encoder=TINY_SPACE)
    n = len(synth)
    se = np.sqrt(WRONG * (1 - WRONG) / n)
    assert abs(res.metrics["label_mislabelled_cataract"] - WRONG) <= 3 * se, res.agreement
    assert abs(res.metrics["label_disagreement"] - WRONG) <= 3 * se + 0.05, res.agreement
    truly = synth.df["truly"].to_numpy() == 1
    assert (res.keep == truly).mean() >= 0.85  # the filter keeps mostly the correctly labelled images
    assert set(res.confusion["source"]) == {"synthetic", "real_heldout"}
    card = write_filtered_card(synth, res.keep, tmp_path / "filtered")
    kept = load_card(card)
    assert len(kept) == int(res.keep.sum())
    assert set(kept.df["image_id"]) == set(synth.df["image_id"][res.keep])


def test_filtered_card_from_shards_streams_only_kept_samples(tmp_path: Path) -> None:
    from synthfm.data.readers import open_dataset

    card = render_phantom(tmp_path / "shards", PhantomConfig(n=12, size=32, seed=3, format="shards", shard_size=5))
    synth = load_card(card)
    keep = np.zeros(len(synth), bool)
    keep[[0, 4, 5, 11]] = True
    filtered = load_card(write_filtered_card(synth, keep, tmp_path / "filtered"))
    assert filtered.card.source.format == "shards" and len(filtered) == 4
    assert list(filtered.df["image_id"]) == list(synth.df["image_id"][keep])
    streamed = {int(s["index"]): s["image"] for s in open_dataset(filtered)}
    assert sorted(streamed) == [0, 1, 2, 3]
    originals = {int(s["index"]): s["image"] for s in open_dataset(synth)}
    for pos, row in enumerate(np.flatnonzero(keep)):
        assert (streamed[pos] == originals[row]).all()
