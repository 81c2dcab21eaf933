"""`synthfm analyze latent`: encoder features of up to N images per card, t-SNE and UMAP maps.

The encoder is any that the classifier trainer can load: an exported synthfm encoder folder, a registry
backbone (`random:<name>` or just `<name>`: random weights), or a RETFound/DINOv2 checkpoint file with its
backbone name. Up to `n` rows are drawn per card (seeded; 5,000 as in Zhou et al.), passed through the
modality's evaluation transform at the encoder's image size, and their pooled features kept.

Run directory: `latent_features.safetensors` (features, computed once), `latent_points.csv` (one row per
image: card, source real/synthetic, id, row, labels, metadata, tsne_x/y, umap_x/y), and one PNG per map and
colouring: `tsne_<column>.png`, `umap_<column>.png` for `source`, `card`, every task and metadata field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader, Subset

from synthfm.analyze.plots import scatter_by
from synthfm.config import StrictModel
from synthfm.data.manifest import ID, load_card
from synthfm.data.shard_index import open_random_access
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path
from synthfm.models.backbones import BACKBONES, image_size
from synthfm.models.checkpoint import load_state, save_state
from synthfm.models.encoders import RANDOM_PREFIX, resolve_encoder
from synthfm.models.pooling import pool_features, resolve_pool
from synthfm.progress import progress_bar
from synthfm.runs import RunDir

STAGE = "analyze.latent"
FEATURES = "latent_features.safetensors"
POINTS = "latent_points.csv"
SKIP_FIELDS = ("patient_id",)


class LatentConfig(StrictModel):
    """Cards, encoder, how many images and which maps."""

    cards: list[str] = Field(min_length=1)
    encoder: str = Field(description="exported encoder folder, 'random:<backbone>', a backbone name, or a file")
    backbone: str | None = Field(None, description="registry backbone of a checkpoint file")
    backbone_overrides: dict[str, Any] = Field(default_factory=dict)
    n: int = Field(5000, ge=2, description="images per card at most")
    seed: int = 0
    batch_size: int = Field(64, ge=1)
    image_size: int | None = Field(None, ge=8, description="default: the encoder's image size")
    methods: list[Literal["tsne", "umap"]] = Field(default_factory=lambda: ["tsne", "umap"])
    perplexity: float = Field(30.0, gt=1)
    neighbours: int = Field(15, ge=2, description="UMAP n_neighbors")
    threads: int | None = Field(None, ge=1, description="BLAS/OpenMP threads for the maps (None: leave as set)")
    pool: Literal["cls", "mean", "cls+mean"] | None = Field(None, description="models/pooling.py; default: the "
                                                                              "encoder's own pooling")
    omit_when_default: ClassVar[tuple[str, ...]] = ("pool",)


def encoder_from(cfg: LatentConfig, in_chans: int) -> torch.nn.Module:
    """The encoder the config names (a bare registry name means random weights)."""
    spec = f"{RANDOM_PREFIX}{cfg.encoder}" if cfg.encoder in BACKBONES else cfg.encoder
    return resolve_encoder(spec, in_chans, cfg.backbone, cfg.backbone_overrides).eval()


def sample_rows(n_rows: int, n: int, seed: int) -> np.ndarray:
    """Up to n row positions, drawn without replacement (all rows when there are fewer), sorted."""
    if n_rows <= n:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n, replace=False))


def _collate(samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and manifest rows."""
    return torch.stack([s["image"] for s in samples]), torch.tensor([s["index"] for s in samples])


@torch.no_grad()
def card_features(cfg: LatentConfig, card: str, k: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Features (N, D) of the sampled rows of one card, and their descriptive table."""
    data = load_card(card)
    encoder = encoder_from(cfg, data.channels)
    wants = int(encoder.patch_embed.proj.in_channels)
    if wants != data.channels:
        raise SynthfmError(f"encoder {cfg.encoder} takes {wants}-channel images but card '{data.card.name}' "
                           f"({data.card.modality}) has {data.channels}",
                           "map each modality with an encoder of its own channel count (one latent job per "
                           "modality)")
    size = image_size(encoder, cfg.image_size)
    ds = open_random_access(data, size=size)
    rows = sample_rows(len(data), cfg.n, cfg.seed + k)
    loader = DataLoader(Subset(ds, rows.tolist()), batch_size=cfg.batch_size, collate_fn=_collate)
    feats, index = [], []
    pool = None if cfg.pool is None else resolve_pool(encoder, cfg.pool, cfg.encoder)
    for x, i in progress_bar(loader, f"features {data.card.name}", total=len(loader)):
        feats.append(pool_features(encoder, x, pool).float().numpy())
        index.append(i.numpy())
    idx = np.concatenate(index)
    table = pd.DataFrame({"card": data.card.name, "source": data.card.provenance.kind, "row": idx,
                          "id": data.df[ID].to_numpy()[idx]})
    for task, labels in data.labels.items():
        if labels.ndim == 1:
            table[f"label_{task}"] = np.asarray(data.card.task(task).classes, dtype=object)[labels[idx]]
    for field, col in data.card.metadata.columns().items():
        if field not in SKIP_FIELDS:
            table[field] = data.df[col].to_numpy()[idx]
    return np.concatenate(feats), table


def embed(features: np.ndarray, method: str, cfg: LatentConfig) -> np.ndarray:
    """2-D t-SNE (scikit-learn) or UMAP (umap-learn) coordinates."""
    with threadpool_limits(cfg.threads):
        return _embed(features, method, cfg)


def _embed(features: np.ndarray, method: str, cfg: LatentConfig) -> np.ndarray:
    """The map itself (see `embed`)."""
    x = (features - features.mean(0)) / (features.std(0) + 1e-6)
    n = len(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(cfg.perplexity, max(2.0, (n - 1) / 3))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=cfg.seed).fit_transform(x)
    import umap

    reducer = umap.UMAP(n_neighbors=min(cfg.neighbours, n - 1), random_state=cfg.seed, n_jobs=1)
    return reducer.fit_transform(x)


def colour_columns(table: pd.DataFrame) -> list[str]:
    """Columns the maps are coloured by: source, card, then every label and metadata column."""
    return [c for c in table.columns if c not in ("row", "id") and table[c].notna().any()]


def load_features(run_path: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Features and the point table of a finished (or feature-complete) latent run."""
    return load_state(run_path / FEATURES)["features"].numpy(), pd.read_csv(run_path / POINTS)


def run_latent(cfg: LatentConfig, out: str | Path) -> Path:
    """Features, t-SNE/UMAP coordinates and coloured maps in the run directory; return the points CSV."""
    run = RunDir(out, STAGE, cfg)
    if run.open() == "done":
        return run.path / POINTS
    feats_path = run.path / FEATURES
    parts = [card_features(cfg, c, k) for k, c in enumerate(cfg.cards)] if not feats_path.is_file() else None
    if parts is not None:
        table = pd.concat([p[1] for p in parts], ignore_index=True)
        with atomic_path(run.path / "latent_rows.csv", ".csv") as tmp:
            table.to_csv(tmp, index=False)
        save_state({"features": torch.from_numpy(np.concatenate([p[0] for p in parts]))}, feats_path)
    features = load_state(feats_path)["features"].numpy()
    table = pd.read_csv(run.path / "latent_rows.csv")
    plots = []
    for method in cfg.methods:
        xy = embed(features, method, cfg)
        table[f"{method}_x"], table[f"{method}_y"] = xy[:, 0], xy[:, 1]
        for col in colour_columns(table.drop(columns=[c for c in table if c.endswith(("_x", "_y"))])):
            name = f"{method}_{col}.png"
            scatter_by(xy, table[col], f"{method.upper()} of {len(table)} images by {col}", run.path / name)
            plots.append(name)
    with atomic_path(run.path / POINTS, ".csv") as tmp:
        table.to_csv(tmp, index=False)
    run.complete(images=len(table), dim=int(features.shape[1]), plots=plots)
    return run.path / POINTS
