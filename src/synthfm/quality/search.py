"""Exact, memory-bounded k-nearest-neighbour search in blocks (torch matmul), for any number of rows.

Queries and the index are read a block at a time through callables, so neither side is ever held whole:
memory is one (query block x index block) similarity matrix plus the running top-k of each query. Each
row may carry several variants (flips of a query, crops of an index image); a pair's similarity is the
best over their variants. Cost is one pass over the index per query block, so 1M x 1M is a matter of
compute (a GPU, or more blocks), not of memory.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Block = Callable[[int, int], torch.Tensor]  # (start, stop) -> (rows, variants, dim) unit vectors


def rows_block(x: np.ndarray, normalise: bool = True) -> Block:
    """Blocks of a (N, D) array as one-variant unit vectors (cosine similarity)."""

    def get(start: int, stop: int) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x[start:stop], dtype=np.float32))
        if normalise:
            t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return t[:, None, :]

    return get


def topk_search(queries: Block, n_queries: int, index: Block, n_index: int, k: int, chunk: int = 512,
                exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar index rows of every query: (similarities (Nq, k) descending, indices (Nq, k)).

    With `exclude_self`, query i is never matched to index row i (a set searched against itself).
    """
    k = min(k, n_index - int(exclude_self))
    sims = np.empty((n_queries, k), np.float32)
    idx = np.empty((n_queries, k), np.int64)
    for q0 in range(0, n_queries, chunk):
        q = queries(q0, min(q0 + chunk, n_queries))
        best_s = torch.full((len(q), k), -torch.inf)
        best_i = torch.zeros((len(q), k), dtype=torch.long)
        for i0 in range(0, n_index, chunk):
            r = index(i0, min(i0 + chunk, n_index))
            s = pair_similarity(q, r)
            if exclude_self:
                _mask_self(s, q0, i0)
            cand_s = torch.cat([best_s, s], 1)
            cand_i = torch.cat([best_i, torch.arange(i0, i0 + len(r)).expand(len(q), -1)], 1)
            best_s, pos = cand_s.topk(k, dim=1)
            best_i = cand_i.gather(1, pos)
        sims[q0:q0 + len(q)], idx[q0:q0 + len(q)] = best_s.numpy(), best_i.numpy()
    return sims, idx


def pair_similarity(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(Nq, V, D) x (Nr, W, D) -> (Nq, Nr): the best dot product over the variants of both rows."""
    nq, v, d = q.shape
    nr, w, _ = r.shape
    s = q.reshape(nq * v, d) @ r.reshape(nr * w, d).T
    return s.view(nq, v, nr, w).amax(dim=(1, 3))


def _mask_self(s: torch.Tensor, q0: int, i0: int) -> None:
    """Set the similarity of each query to itself (same global row) to -inf, in place."""
    rows = torch.arange(q0, q0 + s.shape[0])
    cols = rows - i0
    ok = (cols >= 0) & (cols < s.shape[1])
    s[torch.nonzero(ok).flatten(), cols[ok]] = -torch.inf
