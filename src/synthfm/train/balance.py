"""Class balance for fine-tuning on skewed labels (`class_balance: loss | sampler`), from the training subset only.

At 10-20% of RetinaMNIST's labels a fine-tuned encoder tends to predict the majority grade for every image.
Both remedies use scikit-learn's "balanced" class weights on the label-fraction training subset,
w_k = n / (K * n_k) over the K classes present (a class absent from the subset gets weight 0):
- `loss` weights each image's loss by w_y (cross-entropy normalised by the summed weights, as torch does);
- `sampler` draws each epoch's images with replacement, with probability proportional to w_y (every class
  equally often), from a generator seeded by (seed, epoch), so a resumed run draws the same images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import WeightedRandomSampler

from synthfm.errors import SynthfmError


def integer_labels(labels: np.ndarray, task_type: str) -> np.ndarray:
    """Class indices (N,) of a binary / multi-class / ordinal task; multilabel has no single class per image."""
    if task_type == "multilabel":
        raise SynthfmError("class_balance needs one class per image, but the task is multilabel",
                           "set class_balance to none for a multilabel task")
    return np.asarray(labels).reshape(len(labels)).astype(np.int64)


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's balanced weights n / (K * n_k) for the classes present; 0 for classes absent."""
    present = np.unique(labels)
    out = np.zeros(num_classes)
    out[present] = compute_class_weight("balanced", classes=present, y=labels)
    return out


def balanced_sampler(labels: np.ndarray, num_classes: int, seed: int) -> WeightedRandomSampler:
    """len(labels) draws with replacement, each class equally likely, from a generator seeded by `seed`."""
    weights = torch.as_tensor(class_weights(labels, num_classes)[labels], dtype=torch.double)
    return WeightedRandomSampler(weights, len(labels), replacement=True,
                                 generator=torch.Generator().manual_seed(seed))


def weighted_loss(task_type: str, logits: torch.Tensor, y: torch.Tensor, smoothing: float,
                  weight: torch.Tensor) -> torch.Tensor:
    """Label-smoothed loss with class weights: sum_i w_{y_i} l_i / sum_i w_{y_i} (binary BCE or cross-entropy)."""
    logits = logits.float()
    weight = weight.to(logits.device, torch.float32)
    if task_type == "binary":
        target = y.float().reshape(logits.shape) * (1 - smoothing) + 0.5 * smoothing
        w = weight[y.long().reshape(-1)].reshape(logits.shape)
        return (w * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).sum() / w.sum()
    return F.cross_entropy(logits, y.long(), weight=weight, label_smoothing=smoothing)
