"""Class balance of the training subset: balanced weights, the weighted loss and the seeded balanced sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthfm.errors import SynthfmError
from synthfm.train.balance import balanced_sampler, class_weights, integer_labels, weighted_loss


def test_class_weights_are_n_over_k_n_k_and_zero_when_absent() -> None:
    """Labels 0,0,0,1,2,2 of 4 classes: n=6 over the 3 present classes -> 6/9, 6/3, 6/6; class 3 absent -> 0."""
    assert class_weights(np.array([0, 0, 0, 1, 2, 2]), 4) == pytest.approx([2 / 3, 2.0, 1.0, 0.0])


def test_weighted_loss_matches_hand_computed_values() -> None:
    """Binary: (w0 l0 + w1 l1) / (w0 + w1); multi-class: -sum w_y log p_y / sum w_y (no smoothing)."""
    w = torch.tensor([1.0, 3.0])
    binary = weighted_loss("binary", torch.tensor([2.0, 0.0]), torch.tensor([0, 1]), 0.0, w)
    assert binary.item() == pytest.approx((math.log(1 + math.e ** 2) + 3 * math.log(2)) / 4, rel=1e-6)
    logits, y, w3 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([0, 1]), torch.tensor([2.0, .5, 1.])
    logp = logits.log_softmax(-1)
    manual = -(2.0 * logp[0, 0] + 0.5 * logp[1, 1]) / 2.5
    assert weighted_loss("ordinal", logits, y, 0.0, w3).item() == pytest.approx(manual.item(), rel=1e-6)
    same = weighted_loss("multiclass", logits, y, 0.1, torch.ones(3))  # equal weights: the plain smoothed loss
    assert same.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1).item())


def test_sampler_draws_classes_equally_and_repeats_per_seed() -> None:
    """90 images of class 0 and 10 of class 1: about half the draws are class 1; the same seed, the same draws."""
    labels = np.array([0] * 90 + [1] * 10)
    draws = list(balanced_sampler(labels, 2, seed=7))
    assert len(draws) == 100 and 35 < int(labels[draws].sum()) < 65  # unbalanced: 10 expected, binomial sd 5
    assert draws == list(balanced_sampler(labels, 2, seed=7)) != list(balanced_sampler(labels, 2, seed=8))


def test_multilabel_tasks_are_refused() -> None:
    with pytest.raises(SynthfmError, match="multilabel"):
        integer_labels(np.zeros((4, 3)), "multilabel")
    assert integer_labels(np.array([[1], [0]]), "binary").tolist() == [1, 0]
