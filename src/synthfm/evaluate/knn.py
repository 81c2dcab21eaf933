"""Weighted k-NN evaluation of frozen features, as in DINO (Caron et al. 2021): cosine, k = 20, T = 0.07.

Features are L2-normalised; each query's k most similar memory-bank rows (cosine similarity s) vote with
weight exp(s / T). The votes become class scores in the format the trainer's heads produce, so the same task
metrics (AUROC, accuracy, ...) apply:

- multiclass / ordinal: score of class c = sum of the weights of neighbours labelled c, divided by the sum of all
  k weights (a probability vector, N x K; DINO's prediction is its argmax);
- binary: P(positive) = weighted fraction of positive neighbours (N,);
- multilabel: per label, the weighted fraction of neighbours carrying it (N x K).

Any other task type (e.g. a regression target) is refused: a vote of neighbours' labels is not defined there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from synthfm.errors import SynthfmError

K = 20
TEMPERATURE = 0.07
VOTED = ("binary", "multiclass", "ordinal", "multilabel")


def knn_scores(bank: torch.Tensor, bank_y: torch.Tensor, query: torch.Tensor, task_type: str, num_classes: int,
               k: int = K, temperature: float = TEMPERATURE, chunk: int = 1024) -> np.ndarray:
    """Class scores of `query` rows by a temperature-weighted vote of their k nearest `bank` rows (cosine)."""
    if task_type not in VOTED:
        raise SynthfmError(f"k-NN evaluation is defined for {list(VOTED)} tasks, not '{task_type}'",
                           "turn it off for this task (probes.knn: false)")
    if len(bank) == 0:
        raise SynthfmError("k-NN evaluation has an empty memory bank (no training images)",
                           "use a larger label fraction")
    bank = F.normalize(bank.float(), dim=1)
    if task_type in ("multiclass", "ordinal"):
        targets = F.one_hot(bank_y.long().reshape(-1), num_classes).float()
    else:
        targets = bank_y.float().reshape(len(bank), -1)
    k = min(k, len(bank))
    out = []
    for part in F.normalize(query.float(), dim=1).split(chunk):
        sims, idx = (part @ bank.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        votes = (weights.unsqueeze(-1) * targets[idx]).sum(dim=1)
        out.append(votes / weights.sum(dim=1, keepdim=True))
    scores = torch.cat(out).numpy()
    return scores.reshape(-1) if task_type == "binary" else scores
