"""DINO's weighted k-NN on a toy set whose votes are computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthfm.errors import SynthfmError
from synthfm.evaluate.knn import TEMPERATURE, K, knn_scores
from synthfm.evaluate.metrics import task_metrics

# Memory bank (magnitudes differ on purpose: only directions count) and one query along (1, 0.2).
BANK = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 3.0], [-1.0, 0.0], [0.5, -1.0]])
QUERY = torch.tensor([[5.0, 1.0]])
# Cosines with the query: 1/√1.04 = 0.980581, 0.196116, 1.2/(√1.04·√2) = 0.832050, -0.980581,
# 0.3/(√1.04·√1.25) = 0.263117. The 3 nearest are rows 0, 2, 4; at T = 0.5 their weights exp(s/T) are
# 7.107577, 5.280921, 1.692548 (sum 14.081046), so their vote shares are:
SHARE = {0: 0.5047620, 2: 0.3750376, 4: 0.1202004}


def test_multiclass_votes_are_weighted_shares_of_the_k_nearest() -> None:
    y = torch.tensor([0, 1, 1, 0, 2])  # rows 0, 2, 4 carry classes 0, 1, 2
    p = knn_scores(BANK, y, QUERY, "multiclass", 3, k=3, temperature=0.5)
    np.testing.assert_allclose(p, [[SHARE[0], SHARE[2], SHARE[4]]], atol=1e-6)
    # k = 2: only rows 0 and 2 vote, 7.107577 / 12.388498 and 5.280921 / 12.388498
    np.testing.assert_allclose(knn_scores(BANK, y, QUERY, "ordinal", 3, k=2, temperature=0.5),
                               [[0.5737238, 0.4262762, 0.0]], atol=1e-6)


def test_binary_and_multilabel_scores_are_weighted_fractions_of_positives() -> None:
    binary = knn_scores(BANK, torch.tensor([1, 1, 0, 0, 1]), QUERY, "binary", 2, k=3, temperature=0.5)
    assert binary.shape == (1,)
    np.testing.assert_allclose(binary, [SHARE[0] + SHARE[4]], atol=1e-6)
    labels = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 0], [0, 1]])
    multi = knn_scores(BANK, labels, QUERY, "multilabel", 2, k=3, temperature=0.5)
    np.testing.assert_allclose(multi, [[SHARE[0] + SHARE[2], SHARE[2] + SHARE[4]]], atol=1e-6)


def test_defaults_are_dinos_and_k_is_capped_by_the_bank() -> None:
    assert (K, TEMPERATURE) == (20, 0.07)
    y = torch.tensor([0, 1, 1, 0, 2])
    p = knn_scores(BANK, y, QUERY, "multiclass", 3)  # k = 20 > 5 rows: every row votes
    w = np.exp(np.array([0.980581, 0.196116, 0.832050, -0.980581, 0.263117]) / 0.07)
    np.testing.assert_allclose(p, [[(w[0] + w[3]) / w.sum(), (w[1] + w[2]) / w.sum(), w[4] / w.sum()]], rtol=1e-4)


def test_scores_feed_the_task_metrics_and_other_tasks_are_refused() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.arange(40) % 2
    x = centres[y] + 0.1 * torch.randn(40, 3, generator=gen)
    p = knn_scores(x[:30], y[:30], x[30:], "binary", 2)
    assert task_metrics("binary", y[30:].numpy(), p)["auroc"] == 1.0
    with pytest.raises(SynthfmError, match="not 'regression'"):
        knn_scores(x, y, x, "regression", 1)
    with pytest.raises(SynthfmError, match="empty memory bank"):
        knn_scores(x[:0], y[:0], x, "binary", 2)
