"""Fidelity in a named feature space: Fréchet distance, KID, precision/recall, density/coverage.

FD uses moments accumulated block by block (any number of images in bounded memory) and torch-fidelity's
`fid_statistics_to_metric`; KID is torch-fidelity's polynomial-kernel unbiased MMD over random subsets;
precision/recall are torch-fidelity's k-NN-ball estimates (Kynkäänniemi et al.); density/coverage follow
Naeem et al. (2020) with the same balls, computed in blocks. KID and PRDC use a random subsample per
side (`kid_max_samples`, `prdc_max_samples`), as is usual for these estimators.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import calculate_precision_recall_part

from synthfm.quality.config import FidelityConfig

BLOCK = 4096


def moments(x: np.ndarray, block: int = BLOCK) -> dict[str, np.ndarray]:
    """Mean and covariance (float64, n-1 denominator) of the rows of x, read `block` rows at a time."""
    n, d = x.shape
    shift = np.asarray(x[: min(n, block)], np.float64).mean(0)
    s, ss = np.zeros(d), np.zeros((d, d))
    for i in range(0, n, block):
        c = np.asarray(x[i:i + block], np.float64) - shift
        s += c.sum(0)
        ss += c.T @ c
    mean = s / n
    cov = (ss - n * np.outer(mean, mean)) / max(n - 1, 1)
    return {"mu": mean + shift, "sigma": cov}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of a and b (torch-fidelity's formula)."""
    return float(fid_statistics_to_metric(moments(a), moments(b), verbose=False)[KEY_METRIC_FID])


def kid(a: np.ndarray, b: np.ndarray, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """KID (mean, sd over subsets): cubic polynomial kernel, unbiased MMD^2, subsets capped at the smaller set."""
    size = min(subset_size, len(a), len(b))
    fa, fb = (torch.from_numpy(np.array(x, np.float32)) for x in (a, b))
    out = kid_features_to_metric(fa, fb, kid_subsets=subsets, kid_subset_size=size, verbose=False, rng_seed=seed)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def _kth_radius(x: torch.Tensor, k: int, block: int = BLOCK) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row."""
    return torch.cat([torch.cdist(x[i:i + block], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), block)])


def density_coverage(fake: torch.Tensor, real: torch.Tensor, k: int, block: int = BLOCK) -> tuple[float, float]:
    """Naeem et al.: density = mean number of real k-NN balls holding a fake, / k; coverage = share of real
    balls holding at least one fake."""
    radius = _kth_radius(real, k, block)
    inside = 0.0
    nearest = torch.full((len(real),), torch.inf)
    for i in range(0, len(fake), block):
        d = torch.cdist(fake[i:i + block], real)
        inside += float((d <= radius[None, :]).sum())
        nearest = torch.minimum(nearest, d.min(0).values)
    return inside / (k * len(fake)), float((nearest <= radius).float().mean())


def prdc(fake: np.ndarray, real: np.ndarray, k: int) -> dict[str, float]:
    """Precision, recall (torch-fidelity), density and coverage for fake vs real features."""
    f, r = (torch.from_numpy(np.array(x, np.float32)) for x in (fake, real))
    k = min(k, len(f) - 1, len(r) - 1)
    precision, recall = calculate_precision_recall_part(f, r, neighborhood=k, batch_size=BLOCK)
    density, coverage = density_coverage(f, r, k)
    return {"precision": float(precision), "recall": float(recall), "density": density, "coverage": coverage}


def subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most n rows of x, drawn without replacement and kept in order (loaded into memory)."""
    if len(x) <= n:
        return np.array(x, np.float32)
    return np.asarray(x[np.sort(rng.choice(len(x), n, replace=False))], np.float32)


def fidelity_metrics(fake: np.ndarray, real: np.ndarray, cfg: FidelityConfig, seed: int) -> dict[str, float]:
    """FD, KID (mean and sd), precision, recall, density and coverage of one pair of feature sets."""
    rng = np.random.default_rng(seed)
    kf, kr = subsample(fake, cfg.kid_max_samples, rng), subsample(real, cfg.kid_max_samples, rng)
    kid_mean, kid_sd = kid(kf, kr, cfg.kid_subsets, cfg.kid_subset_size, seed)
    pf, pr = subsample(fake, cfg.prdc_max_samples, rng), subsample(real, cfg.prdc_max_samples, rng)
    return {"FD": frechet_distance(fake, real), "KID": kid_mean, "KIDstd": kid_sd, **prdc(pf, pr, cfg.prdc_k)}


def sharpness(maps: np.ndarray) -> float:
    """Median over images of var(Laplacian) / var(image) of uint8 grey maps (n, S, S): fine detail relative to
    contrast, unchanged by brightness and contrast, lowered by blur and raised by noise."""
    g = torch.from_numpy(np.asarray(maps, np.float32))[:, None]
    lap = torch.nn.functional.conv2d(g, torch.tensor([[[[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]]]))
    ratio = lap.flatten(1).var(1) / g[..., 1:-1, 1:-1].flatten(1).var(1).clamp_min(1e-6)
    return float(ratio.median())


def label_groups(labels: np.ndarray, classes: list[str]) -> dict[str, np.ndarray]:
    """Row positions per class: class index for single-label tasks, positives per column for multilabel."""
    if labels.ndim == 2:
        return {c: np.flatnonzero(labels[:, k] == 1) for k, c in enumerate(classes)}
    return {c: np.flatnonzero(labels == k) for k, c in enumerate(classes)}


def fidelity_table(space: str, fake: np.ndarray, real: np.ndarray, cfg: FidelityConfig, seed: int,
                   groups: list[tuple[str, str, np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """Tidy rows (space, task, class, metric, value, n_synthetic, n_real): overall, then each label group."""
    rows = _rows(space, "all", "all", fidelity_metrics(fake, real, cfg, seed), len(fake), len(real))
    for task, cls, fi, ri in groups if cfg.per_label else []:
        if min(len(fi), len(ri)) >= cfg.min_per_label:
            m = fidelity_metrics(fake[np.sort(fi)], real[np.sort(ri)], cfg, seed)
            rows += _rows(space, task, cls, m, len(fi), len(ri))
    return rows


def _rows(space: str, task: str, cls: str, metrics: dict[str, float], nf: int, nr: int) -> list[dict[str, Any]]:
    """One tidy row per metric."""
    return [{"space": space, "task": task, "class": cls, "metric": k, "value": v, "n_synthetic": nf, "n_real": nr}
            for k, v in metrics.items()]
