"""Memorisation audit: planted near-copies flagged, genuine images not; blocked search is exact."""

from __future__ import annotations

import numpy as np
import torch

from synthfm.quality.config import MemorisationConfig
from synthfm.quality.features import grey_maps
from synthfm.quality.memorisation import AuditInputs, Nearest, audit, flag, memorisation_metrics
from synthfm.quality.plant import TRANSFORMS, plant
from synthfm.quality.search import rows_block, topk_search


def _maps(images: np.ndarray) -> np.ndarray:
    return grey_maps(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), 96).numpy()


def test_planted_copies_flagged_and_genuine_not(audit_images: dict[str, np.ndarray]) -> None:
    train, held, genuine = audit_images["train"], audit_images["heldout"], audit_images["genuine"]
    copies, src, kinds = plant(train, per_kind=14, seed=0)
    synth = np.concatenate([genuine, copies])
    real = np.concatenate([train, held])
    inp = AuditInputs(_maps(synth), _maps(real), None, None, np.arange(len(train)),
                      np.arange(len(train), len(real)), np.array([f"s{i}" for i in range(len(synth))]),
                      np.array([f"r{i}" for i in range(len(real))]))
    table, calib, _ = audit(inp, MemorisationConfig(chunk=128))
    flagged = table["flagged"].to_numpy()
    g = len(genuine)
    recall = flagged[g:].mean()
    false_pos = flagged[:g].mean()
    assert recall >= 0.99, {k: flagged[g:][np.array(kinds) == k].mean() for k in TRANSFORMS}
    assert false_pos <= 0.01
    assert (table["pixel_real_row"].to_numpy()[g:] == src).all()  # each copy found its source
    assert calib.loc[calib["view"] == "pixel", "heldout_flagged"].item() == 0
    assert memorisation_metrics(table)["near_copies"] == flagged.sum()


def test_blocked_search_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    q, x = rng.normal(size=(37, 5)).astype(np.float32), rng.normal(size=(53, 5)).astype(np.float32)
    qn, xn = q / np.linalg.norm(q, axis=1, keepdims=True), x / np.linalg.norm(x, axis=1, keepdims=True)
    full = qn @ xn.T
    sims, idx = topk_search(rows_block(q), len(q), rows_block(x), len(x), k=4, chunk=8)
    assert np.array_equal(idx, np.argsort(-full, axis=1)[:, :4])
    assert np.allclose(sims, np.sort(full, axis=1)[:, ::-1][:, :4], atol=1e-5)
    _, self_idx = topk_search(rows_block(x), len(x), rows_block(x), len(x), k=1, chunk=8, exclude_self=True)
    brute = xn @ xn.T
    np.fill_diagonal(brute, -np.inf)
    assert np.array_equal(self_idx[:, 0], brute.argmax(1))


def test_a_flag_needs_a_high_score_and_a_real_images_closeness() -> None:
    """Held-out real: scores 0..0.1, best similarities 0.6..0.9 -> threshold 0.15, floor (median) 0.75. An image
    unlike anything real that stands out from its shortlist (score 0.3, similarity 0.35) is not a copy."""
    held = Nearest(np.zeros(5, int), np.array([0.6, 0.7, 0.75, 0.8, 0.9]), np.array([0.0, 0.02, 0.05, 0.08, 0.1]))
    syn = Nearest(np.zeros(4, int), np.array([0.99, 0.35, 0.99, 0.74]), np.array([0.4, 0.3, 0.1, 0.3]))
    flags, thr, floor = flag(syn, held, MemorisationConfig(calibration_quantile=1.0))
    assert (thr, floor) == (np.float64(0.1) + 0.05, 0.75)
    assert flags.tolist() == [True, False, False, False]
