"""Pretraining data: sources as random-access datasets, and a seeded, resumable plan of which sample comes when.

A stage mixes its sources by weight. `MixturePlan` maps a global sample position k (0, 1, 2, ...) to
(source, index, round) with pure arithmetic on seeded permutations, so batch b is the same whichever process
computes it and whenever: a resumed run starts its sampler at the first batch not yet consumed, and DDP ranks
take disjoint slices of each global batch. Augmentation is seeded per (seed, source, index, round) too.

Seeds and random numbers are counter-based: a sample's seed is a hash (splitmix64) of (seed, source, index,
round), and its k-th uniform is a hash of (sample seed, k), drawn for a whole batch at once with numpy; nothing
reseeds a global RNG. Card sources are decoded and resized to the training size once and kept as raw shards in
the cache directory; the random resized crop and flip then run on the whole batch (one `grid_sample`), each
sample with its own parameters. Sources of other kinds (an objective's own, or DINOv2's multi-crop `views`)
keep the per-sample path: a torch seed of (seed, key) around the sample's transform.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from synthfm.data.manifest import ID, load_card
from synthfm.data.modality import preset
from synthfm.data.readers import open_dataset
from synthfm.data.shard_index import IndexedShardDataset
from synthfm.data.shards import ShardRecord, decode_image, shard_name, shard_urls, write_shard
from synthfm.data.transforms import build_transform, to_tensor
from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_text
from synthfm.pretrain.config import SourceConfig
from synthfm.synth.rasd import RaSDConfig, RaSDStream
from synthfm.synth.registry import phantom_for_channels
from synthfm.synth.writer import PhantomConfig, render_phantom

CACHE_SHARD = 1024  # images per raw shard of a card's training-size cache


class RaSDSource(Dataset):
    """Random access to an RaSD stream: sample i rendered from (seed, i), normalised to mean 0.5, std 0.25.

    With `scale`, image and structure mask go through the same random resized crop + h-flip (bilinear for
    the image, nearest for the mask); the draw uses the torch RNG, which MixtureDataset seeds per sample.
    """

    def __init__(self, size: int, channels: int, n: int, seed: int, scale: tuple[float, float] | None = None) -> None:
        self.stream = RaSDStream(RaSDConfig(size=size, channels=channels), seed=seed, length=n)
        self.augment_in_batch = scale is None  # without a scale, MixtureDataset crops image and mask per batch
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
    data = _card(path, channels)
    transform = build_transform(data.card.modality, size, train=True, scale=scale)
    if data.card.source.format == "shards":
        return IndexedShardDataset(data, split, transform)
    return open_dataset(data, split, transform=transform)


def _card(path: str | Path, channels: int) -> Any:
    """A card whose modality has `channels` channels."""
    data = load_card(path)
    if data.channels != channels:
        raise SynthfmError(f"card {path} has {data.channels}-channel images but the backbone takes {channels}",
                           "set in_chans in the pretraining config to match the card's modality")
    return data


def read_raw_shards(urls: list[str], channels: int) -> Iterator[np.ndarray]:
    """Every image of raw-encoded shards in order (read here, not through WebDataset, which splits by rank)."""
    for url in urls:
        with tarfile.open(url) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(n for n in members if n.endswith(".raw")):
                key = name[: -len(".raw")]
                shape = json.loads(tar.extractfile(members[f"{key}.json"]).read())["shape"]
                yield decode_image(tar.extractfile(members[name]).read(), "raw", channels, f"{url}:{key}", shape)


class CachedCardSource(Dataset):
    """A card's images decoded and resized (bicubic, antialiased) to the training size once, kept as raw shards
    in the cache directory and in memory; items are normalised, un-augmented (MixtureDataset crops batches)."""

    augment_in_batch = True

    def __init__(self, path: str | Path, split: str | None, size: int, channels: int, cache: Path) -> None:
        data = _card(path, channels)
        reader = IndexedShardDataset(data, split) if data.card.source.format == "shards" else open_dataset(data, split)
        p = preset(data.card.modality)
        self.mean = torch.tensor(p.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(p.std, dtype=torch.float32).view(-1, 1, 1)
        ids = "\n".join(map(str, data.df[ID].iloc[reader.rows]))
        key = hashlib.sha256(f"{Path(data.card_dir).resolve()}|{data.card.name}|{split}|{size}|{channels}|{ids}"
                             .encode()).hexdigest()[:16]
        self.folder = cache / f"card_{data.card.name}_{split or 'all'}_s{size}_{key}"
        if not (self.folder / "COMPLETE").is_file():
            self._write(reader, size)
        self.images = torch.from_numpy(np.stack(list(read_raw_shards(shard_urls(self.folder), channels))))

    def _write(self, reader: Any, size: int) -> None:
        """Decode and resize every image of the split; write raw shards, then the marker."""
        resize = T.Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        for k in range(0, len(reader), CACHE_SHARD):
            records = (ShardRecord(f"{pos:08d}", resize(to_tensor(reader.raw(pos))).numpy())
                       for pos in range(k, min(k + CACHE_SHARD, len(reader))))
            write_shard(self.folder / shard_name("cache", k // CACHE_SHARD), records, "raw")
        atomic_write_text(self.folder / "COMPLETE", f"{len(reader)}\n")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": (self.images[i].float() / 255 - self.mean) / self.std}


def open_source(src: SourceConfig, size: int, channels: int, scale: tuple[float, float] | None,
                cache: Path) -> Dataset:
    """The random-access dataset behind one source (a phantom is rendered into `cache` on first use).

    With `scale` None the images come un-augmented at `size` (card images from a training-size cache) and
    MixtureDataset crops whole batches; with a scale, each sample is augmented on its own as before.
    """
    if src.source == "rasd":
        return RaSDSource(size, channels, src.n, src.seed, scale)
    card: str | Path = src.source
    if src.source == "phantom":
        generator = phantom_for_channels(channels)
        card = render_phantom(cache / f"{generator}_n{src.n}_s{size}_seed{src.seed}",
                              PhantomConfig(generator=generator, n=src.n, size=max(size, 16), seed=src.seed))
    if scale is None:
        return CachedCardSource(card, src.split, size, channels, cache)
    return open_card_source(card, src.split, size, channels, scale)


