"""Memorisation audit of a site's generator against the site's own images, before anything leaves the site.

The audit samples the generator on conditions drawn from the released summary and finds each sample's
nearest real images. Backend `quality` is the project's memorisation audit (`synthfm.quality`) when it is
installed; backend `minimal` is a clearly-marked stand-in kept in this package until then: grayscale pixels at
a small size, standardised per image, compared with the site's images and their horizontal flips; a sample is
flagged as a near-copy when its nearest real image is much closer than the next ones (distance to the nearest
under `ratio` x the mean distance to the 2nd..6th nearest, the relative test of Carlini et al. 2023, which
does not flag a sample just for lying in a dense, featureless region). The same statistic over the real images
(leave-one-out) is reported as the reference. Only counts and quantiles are written - never an image, an index
or an id of a real row.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torch.utils.data import IterableDataset

from synthfm.config import StrictModel
from synthfm.consortium.conditions import CardSchema
from synthfm.consortium.generators import ConditionalGenerator
from synthfm.consortium.summary import draw_conditions
from synthfm.data.manifest import load_card
from synthfm.data.readers import open_dataset
from synthfm.errors import SynthfmError

FORMAT = "synthfm.consortium.audit/1"
MINIMAL = "minimal-nn: pixel nearest neighbour in synthfm.consortium.audit (stand-in for synthfm.quality's audit)"


class AuditConfig(StrictModel):
    """How many samples to audit, at what size, and when a sample counts as a near-copy."""

    n_samples: int = Field(32, ge=1)
    size: int = Field(32, ge=8, description="side at which images are compared")
    ratio: float = Field(1 / 3, gt=0, lt=1, description="flag when d(nearest) < ratio x mean d(2nd..6th nearest)")
    neighbours: int = Field(5, ge=1, description="how many next-nearest real images the nearest is compared with")
    max_flagged: float = Field(0.0, ge=0, le=1, description="largest flagged fraction that still passes")
    max_real: int = Field(2000, ge=2, description="real images compared against (first rows of the split)")
    seed: int = Field(7919, description="seed of the audit's conditions and sample seeds")
    backend: Literal["auto", "quality", "minimal"] = "auto"


def audit_seeds(seed: int, n: int) -> list[int]:
    """Sample seeds of the audit, from their own SeedSequence namespace."""
    return [int(s) for s in np.random.SeedSequence([seed, 0xA0D17]).generate_state(n, np.uint32)]


def features(arr: np.ndarray, size: int) -> torch.Tensor:
    """A uint8 image -> grayscale at size x size, standardised to zero mean and unit norm (flattened)."""
    img = Image.fromarray(arr).convert("L").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).flatten()
    x = x - x.mean()
    return x / x.norm().clamp_min(1e-6)


def real_features(card: str | Path, split: str | None, cfg: AuditConfig) -> torch.Tensor:
    """Features of the site's real images (the first `max_real` rows of the split)."""
    data = load_card(card)
    ds = open_dataset(data, split, transform=lambda arr: features(arr, cfg.size))
    items = iter(ds) if isinstance(ds, IterableDataset) else (ds[j] for j in range(len(ds)))
    out = [item["image"] for item in itertools.islice(items, cfg.max_real)]
    if len(out) < 2:
        raise SynthfmError(f"card {card} has {len(out)} image(s) in split {split!r}; the audit needs at least 2",
                           "audit on a split with more images")
    return torch.stack(out)


def _flipped(feats: torch.Tensor, size: int) -> torch.Tensor:
    """Horizontally flipped copies of flattened size x size features."""
    return feats.view(-1, size, size).flip(-1).reshape(len(feats), -1)


def neighbour_ratios(query: torch.Tensor, bank: torch.Tensor, m: int,
                     exclude: torch.Tensor | None = None) -> torch.Tensor:
    """d(nearest) / mean d(2nd..(m+1)th nearest) per query row; `exclude` masks bank columns per row."""
    d = torch.cdist(query, bank)
    if exclude is not None:
        d = d.masked_fill(exclude, float("inf"))
    s = d.topk(m + 1, dim=1, largest=False).values
    return s[:, 0] / s[:, 1:].mean(dim=1).clamp_min(1e-12)


def _quantiles(x: torch.Tensor) -> dict[str, float]:
    """A few low quantiles (the memorisation end) and the median."""
    return {q: float(x.quantile(float(q))) for q in ("0.0", "0.01", "0.05", "0.5")}


def nearest_neighbour_audit(synthetic: torch.Tensor, real: torch.Tensor, cfg: AuditConfig) -> dict[str, Any]:
    """The minimal audit on features: each sample's nearest-neighbour ratio against the real images."""
    n = len(real)
    if n < cfg.neighbours + 2:
        raise SynthfmError(f"the audit needs at least {cfg.neighbours + 2} real images, got {n}",
                           "audit on a split with more images, or lower audit.neighbours")
    bank = torch.cat([real, _flipped(real, cfg.size)])
    ratio = neighbour_ratios(synthetic, bank, cfg.neighbours)
    own = torch.zeros(n, 2 * n, dtype=torch.bool)
    own[torch.arange(n), torch.arange(n)] = own[torch.arange(n), torch.arange(n) + n] = True
    reference = neighbour_ratios(real, bank, cfg.neighbours, own)
    flagged = int((ratio < cfg.ratio).sum())
    fraction = flagged / len(synthetic)
    return {
        "format": FORMAT, "method": MINIMAL, "passed": fraction <= cfg.max_flagged,
        "n_synthetic": len(synthetic), "n_real": n, "flagged": flagged, "flagged_fraction": fraction,
        "criterion": f"flagged when d(nearest real) < {cfg.ratio:.3g} x mean d(next {cfg.neighbours} nearest); "
                     f"passes when the flagged fraction <= {cfg.max_flagged}",
        "ratio_quantiles": _quantiles(ratio), "real_reference_ratio_quantiles": _quantiles(reference),
    }


def quality_audit() -> Any | None:
    """The quality package's memorisation audit, when it is installed (None otherwise)."""
    try:
        from synthfm.consortium import quality_adapter
    except ImportError:
        return None
    return quality_adapter.audit


def audit_generator(generator: ConditionalGenerator, card: str | Path, split: str | None, summary: dict[str, Any],
                    schema: CardSchema, cfg: AuditConfig | None = None) -> dict[str, Any]:
    """Sample the generator on conditions from the summary and audit the samples against the site's images."""
    cfg = cfg or AuditConfig()
    conditions = draw_conditions(summary, schema, cfg.n_samples, cfg.seed)
    images = generator.sample(conditions, audit_seeds(cfg.seed, cfg.n_samples))
    backend = quality_audit() if cfg.backend in ("auto", "quality") else None
    if cfg.backend == "quality" and backend is None:
        raise SynthfmError("audit.backend 'quality' needs synthfm.quality's memorisation audit, not installed here",
                           "use backend: auto or minimal")
    if backend is not None:
        return backend(images, card, split, cfg)
    synthetic = torch.stack([features(im, cfg.size) for im in images])
    return nearest_neighbour_audit(synthetic, real_features(card, split, cfg), cfg)
