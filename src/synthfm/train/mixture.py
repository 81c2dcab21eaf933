"""The seeded mixture of sources every pretraining stage draws from, and its batched augmentation.

Sample k of a stage is a pure function of (seed, k): a plan of blocks that hold each source in proportion to its
weight, each source visited in a seeded permutation per round. Each sample carries its own seed, so masks and
augmentations are the same whichever process, batch or resume draws it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from synthfm.errors import SynthfmError
from synthfm.train.rng import counter_uniform, hash_seeds, seed_of

Key = tuple[int, int, int]  # (source, index within source, round = how often this source was exhausted before)
ITEM_KEYS = ("mask", "cond")  # per-sample tensors a source may add (structure masks, generator conditions)
VIEW_KEYS = ("global_crops", "local_crops", "ibot_masks")  # keys a `views` transform may add, stacked B x V x ...
BLOCK = 1024  # positions per mixing block: each block holds every source in proportion to its weight


def crop_params(u: torch.Tensor, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop + h-flip parameters for each row of uniforms u (B, 4 * attempts + 1), in
    continuous pixels: (B, 5) = (x0, y0, w, h, flip). The first attempt that fits wins, else the whole image
    clipped to the ratio range."""
    b = u.shape[0]
    a = u[:, : 4 * attempts].reshape(b, attempts, 4)
    area = height * width * (scale[0] + a[..., 0] * (scale[1] - scale[0]))
    log_r = math.log(ratio[0]) + a[..., 1] * (math.log(ratio[1]) - math.log(ratio[0]))
    w, h = (area * torch.exp(log_r)).sqrt(), (area / torch.exp(log_r)).sqrt()
    fits = (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((b,), -1))
    in_ratio = width / height
    fw = width if ratio[0] <= in_ratio <= ratio[1] else (width if in_ratio < ratio[0] else height * ratio[1])
    fh = height if ratio[0] <= in_ratio <= ratio[1] else (width / ratio[0] if in_ratio < ratio[0] else height)
    idx = first.clamp(min=0)[:, None]
    w = torch.where(first >= 0, w.gather(1, idx)[:, 0], torch.full((b,), float(fw), dtype=w.dtype))
    h = torch.where(first >= 0, h.gather(1, idx)[:, 0], torch.full((b,), float(fh), dtype=h.dtype))
    x0 = torch.where(first >= 0, a[..., 2].gather(1, idx)[:, 0] * (width - w), (width - w) / 2)
    y0 = torch.where(first >= 0, a[..., 3].gather(1, idx)[:, 0] * (height - h), (height - h) / 2)
    return torch.stack([x0, y0, w, h, (u[:, 4 * attempts] < 0.5).to(w.dtype)], dim=1)


def batch_crop(x: torch.Tensor, params: torch.Tensor, mode: str = "bicubic") -> torch.Tensor:
    """Crop each image of x (B, C, H, W) to its box and resize it back to (H, W), flipped where params say so."""
    _, _, hgt, wid = x.shape
    x0, y0, w, h, flip = params.float().unbind(1)
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0] = w / wid * (1 - 2 * flip)
    theta[:, 1, 1] = h / hgt
    theta[:, 0, 2] = (x0 + w / 2) / wid * 2 - 1
    theta[:, 1, 2] = (y0 + h / 2) / hgt * 2 - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode=mode, padding_mode="border", align_corners=False)


def sample_seed(seed: int, key: Key) -> int:
    """The seed of a sample's in-model random choices (e.g. MAE masks): the same on whichever rank draws it."""
    return int(sample_seeds(seed, [key])[0])


def sample_seeds(seed: int, keys: list[Key], salt: int = 7) -> np.ndarray:
    """`sample_seed` of many keys at once (salt 7: in-model choices; 11: batched augmentation)."""
    k = np.asarray(keys, dtype=np.int64).reshape(-1, 3)
    return hash_seeds(seed, k[:, 0], k[:, 1], k[:, 2], salt)


class MixtureDataset(Dataset):
    """Several sources behind one index: key (source, index, round) -> {'image', 'source', 'seed'[, 'mask']}.

    Sources marked `augment_in_batch` give un-augmented images; a batch of keys (`__getitems__`) gets its random
    resized crops (`scale`) and flips in one call, each from uniforms of its own key. Other sources augment
    per sample under a torch seed of (seed, key). 'seed' seeds the model's own random choices for the sample, so
    a sample is treated identically whichever process, batch size or resume draws it.
    """

    def __init__(self, sources: list[Dataset], seed: int,
                 views: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None,
                 scale: tuple[float, float] | None = None) -> None:
        self.sources, self.seed, self.views = sources, seed, views  # views: extra keys from the image (multi-crop)
        self.scale = scale

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[Key]) -> list[dict[str, Any]]:
        """The items of a batch of keys (the DataLoader calls this once per batch)."""
        seeds = sample_seeds(self.seed, keys)
        items = [self._fetch(key) for key in keys]
        batched = [i for i, key in enumerate(keys) if getattr(self.sources[key[0]], "augment_in_batch", False)]
        if batched and self.scale is not None:
            self._augment([items[i] for i in batched], sample_seeds(self.seed, [keys[i] for i in batched], 11))
        out = []
        for key, seed, item in zip(keys, seeds.tolist(), items, strict=True):
            extra = {}
            if self.views is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed_of(self.seed, *key, 3))
                    extra = self.views(item["image"])
            out.append({"image": item["image"], "source": key[0], "seed": seed,
                        **{k: item[k] for k in ITEM_KEYS if k in item}, **extra})
        return out

    def _fetch(self, key: Key) -> dict[str, Any]:
        """One source item; sources that augment per sample do so under the sample's torch seed."""
        s, i, rnd = key
        if getattr(self.sources[s], "augment_in_batch", False):
            return dict(self.sources[s][i])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_of(self.seed, s, i, rnd))
            return dict(self.sources[s][i])

    def _augment(self, items: list[dict[str, Any]], seeds: np.ndarray) -> None:
        """Random resized crop + h-flip of the items' images (and masks, nearest) in one batched call, in place."""
        images = torch.stack([x["image"] for x in items])
        params = crop_params(counter_uniform(seeds, 41), images.shape[-2], images.shape[-1], self.scale)
        for x, img in zip(items, batch_crop(images, params).to(images.dtype), strict=True):
            x["image"] = img
        if all("mask" in x for x in items):
            masks = torch.stack([x["mask"] for x in items])
            flat = masks.reshape(masks.shape[0], -1, *masks.shape[-2:]).float()
            for x, m in zip(items, batch_crop(flat, params, "nearest").to(masks.dtype).reshape(masks.shape),
                            strict=True):
                x["mask"] = m


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
        order = np.random.default_rng(seed_of(self.seed, 1, b)).permutation(np.repeat(np.arange(len(self.quota)),
                                                                                      self.quota))
        rank = np.zeros(BLOCK, dtype=np.int64)
        for s in range(len(self.quota)):
            rank[order == s] = np.arange(self.quota[s])
        return order, rank

    @lru_cache(maxsize=16)  # noqa: B019
    def _perm(self, s: int, rnd: int) -> np.ndarray:
        """The visiting order of source s in its round rnd."""
        return np.random.default_rng(seed_of(self.seed, 2, s, rnd)).permutation(self.lengths[s])

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
