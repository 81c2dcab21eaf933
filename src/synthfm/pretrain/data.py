"""Pretraining data: sources as random-access datasets, and a seeded, resumable plan of which sample comes when.

A stage mixes its sources by weight. `MixturePlan` maps a global sample position k (0, 1, 2, ...) to
(source, index, round) with pure arithmetic on seeded permutations, so batch b is the same whichever process
computes it and whenever: a resumed run starts its sampler at the first batch not yet consumed, and DDP ranks
take disjoint slices of each global batch. Augmentation is seeded per (seed, source, index, round) too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from synthfm.data.manifest import load_card
from synthfm.data.readers import open_dataset
from synthfm.data.shard_index import IndexedShardDataset
from synthfm.data.transforms import build_transform
from synthfm.errors import SynthfmError
from synthfm.pretrain.config import SourceConfig
from synthfm.synth.rasd import RaSDConfig, RaSDStream
from synthfm.synth.writer import PhantomConfig, render_phantom

Key = tuple[int, int, int]  # (source, index within source, round = how often this source was exhausted before)
ITEM_KEYS = ("mask", "cond")  # per-sample tensors a source may add (structure masks, generator conditions)
VIEW_KEYS = ("global_crops", "local_crops", "ibot_masks")  # keys a `views` transform may add, stacked B x V x ...
BLOCK = 1024  # positions per mixing block: each block holds every source in proportion to its weight


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (independent streams via SeedSequence)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class RaSDSource(Dataset):
    """Random access to an RaSD stream: sample i rendered from (seed, i), normalised to mean 0.5, std 0.25.

    With `scale`, image and structure mask go through the same random resized crop + h-flip (bilinear for
    the image, nearest for the mask); the draw uses the torch RNG, which MixtureDataset seeds per sample.
    """

    def __init__(self, size: int, channels: int, n: int, seed: int, scale: tuple[float, float] | None = None) -> None:
        self.stream = RaSDStream(RaSDConfig(size=size, channels=channels), seed=seed, length=n)
        self.geo = None if scale is None else T.Compose([T.RandomResizedCrop(size, scale=scale, antialias=True),
                                                        T.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.stream.sample(i)
        image, mask = tv_tensors.Image(s["image"]), tv_tensors.Mask(s["mask"])
        if self.geo is not None:
            image, mask = self.geo(image, mask)
        return {"image": (image.as_subclass(torch.Tensor) - 0.5) / 0.25, "mask": mask.as_subclass(torch.Tensor)}


def open_card_source(path: str | Path, split: str | None, size: int, channels: int,
                     scale: tuple[float, float]) -> Dataset:
    """A card's images with MAE augmentation (random resized crop + h-flip) at `size` (shards indexed by offset)."""
    data = load_card(path)
    if data.channels != channels:
        raise SynthfmError(f"card {path} has {data.channels}-channel images but the backbone takes {channels}",
                           "set in_chans in the pretraining config to match the card's modality")
    transform = build_transform(data.card.modality, size, train=True, scale=scale)
    if data.card.source.format == "shards":
        return IndexedShardDataset(data, split, transform)
    return open_dataset(data, split, transform=transform)


def open_source(src: SourceConfig, size: int, channels: int, scale: tuple[float, float], cache: Path) -> Dataset:
    """The random-access dataset behind one source (a phantom is rendered into `cache` on first use)."""
    if src.source == "rasd":
        return RaSDSource(size, channels, src.n, src.seed, scale)
    if src.source == "phantom":
        generator = "fundus_phantom" if channels == 3 else "cxr_phantom"
        card = render_phantom(cache / f"{generator}_n{src.n}_s{size}_seed{src.seed}",
                              PhantomConfig(generator=generator, n=src.n, size=max(size, 16), seed=src.seed))
        return open_card_source(card, src.split, size, channels, scale)
    return open_card_source(src.source, src.split, size, channels, scale)


def sample_seed(seed: int, key: Key) -> int:
    """The seed of a sample's in-model random choices (e.g. MAE masks): the same on whichever rank draws it."""
    return _seed(seed, *key, 7)


class MixtureDataset(Dataset):
    """Several sources behind one index: key (source, index, round) -> {'image', 'source', 'seed'[, 'mask']}.

    Augmentation runs under a torch seed of (seed, key), and 'seed' seeds the model's own random choices for
    the sample, so a sample is treated identically whichever process, batch size or resume draws it.
    """

    def __init__(self, sources: list[Dataset], seed: int,
                 views: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None) -> None:
        self.sources, self.seed, self.views = sources, seed, views  # views: extra keys from the image (multi-crop)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        s, i, rnd = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(self.seed, s, i, rnd))
            item = self.sources[s][i]
            extra = self.views(item["image"]) if self.views is not None else {}
        return {"image": item["image"], "source": s, "seed": sample_seed(self.seed, key),
                **{k: item[k] for k in ITEM_KEYS if k in item}, **extra}


class MixturePlan:
    """Global sample position -> (source, index, round), deterministic in (seed, position)."""

    def __init__(self, lengths: list[int], weights: list[float], seed: int) -> None:
        self.lengths, self.seed = lengths, seed
        w = np.asarray(weights, dtype=float) / sum(weights)
        quota = np.floor(w * BLOCK).astype(int)
        quota[np.argsort(-(w * BLOCK - quota))[: BLOCK - quota.sum()]] += 1  # largest remainders
        if len(lengths) > 1 and (quota == 0).any():
            raise SynthfmError(f"mixing weights {weights} give a source no samples per {BLOCK}",
                               "raise the smallest weight")
        self.quota = quota

    @lru_cache(maxsize=8)  # noqa: B019 - a plan lives as long as its stage
    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Sources of the positions of block b, and each position's rank among its source's draws in the block."""
        order = np.random.default_rng(_seed(self.seed, 1, b)).permutation(np.repeat(np.arange(len(self.quota)),
                                                                                      self.quota))
        rank = np.zeros(BLOCK, dtype=np.int64)
        for s in range(len(self.quota)):
            rank[order == s] = np.arange(self.quota[s])
        return order, rank

    @lru_cache(maxsize=16)  # noqa: B019
    def _perm(self, s: int, rnd: int) -> np.ndarray:
        """The visiting order of source s in its round rnd."""
        return np.random.default_rng(_seed(self.seed, 2, s, rnd)).permutation(self.lengths[s])

    def at(self, k: int) -> Key:
        """The sample at global position k."""
        b, off = divmod(k, BLOCK)
        order, rank = self._block(b)
        s = int(order[off])
        draw = b * int(self.quota[s]) + int(rank[off])  # how many draws from source s came before
        rnd, j = divmod(draw, self.lengths[s])
        return s, int(self._perm(s, rnd)[j]), rnd


class PlanBatchSampler(Sampler[list[Key]]):
    """Micro-batches start, start+1, ... of a plan; this rank takes its slice of each global micro-batch."""

    def __init__(self, plan: MixturePlan, batch: int, start: int, count: int, rank: int = 0, world: int = 1) -> None:
        self.plan, self.batch, self.start, self.count = plan, batch, start, count
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[Key]]:
        for m in range(self.start, self.start + self.count):
            first = (m * self.world + self.rank) * self.batch
            yield [self.plan.at(k) for k in range(first, first + self.batch)]


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack images and source ids, and sample seeds and structure masks when every item has one."""
    out = {"image": torch.stack([x["image"] for x in items]),
           "source": torch.tensor([x["source"] for x in items], dtype=torch.long)}
    if all("seed" in x for x in items):
        out["seed"] = torch.tensor([x["seed"] for x in items], dtype=torch.long)
    for key in ITEM_KEYS:
        if all(key in x for x in items):
            out[key] = torch.stack([x[key] for x in items])
    for key in VIEW_KEYS:
        if key in items[0]:
            out[key] = torch.stack([x[key] for x in items])
    return out
