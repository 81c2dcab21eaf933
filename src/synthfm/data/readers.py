"""One torch dataset interface over image folders, `.npz` arrays and WebDataset shards.

Every reader yields the same sample: `{"image": Tensor CxHxW, "labels": {task: Tensor}, "index": int}`
where `index` is the manifest row (so metadata can be joined back), and images pass through a
transform chosen by the card's modality preset.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from synthfm.data.images import load_image
from synthfm.data.manifest import SPLIT, CardData
from synthfm.data.shards import iter_shards, sample_refs, shard_urls
from synthfm.data.transforms import Transform, build_transform, to_tensor
from synthfm.errors import SynthfmError


def _labels(data: CardData, i: int) -> dict[str, torch.Tensor]:
    """Row i's encoded labels as tensors."""
    return {k: torch.as_tensor(v[i]) for k, v in data.labels.items()}


class CardDataset(Dataset):
    """Map-style dataset over a folder or `.npz` card, restricted to one split or all rows."""

    def __init__(self, data: CardData, split: str | None = None, transform: Transform | None = None) -> None:
        self.data = data
        self.rows = data.indices(split)
        self.transform = transform or to_tensor
        if len(self.rows) == 0:
            raise SynthfmError(f"card '{data.card.name}' has no rows in split {split!r}",
                               "choose another split, or split the card with 'synthfm data split'")

    def __len__(self) -> int:
        return len(self.rows)

    def raw(self, pos: int) -> np.ndarray:
        """The uint8 image array of the pos-th row of this split."""
        i = int(self.rows[pos])
        return load_image(self.data.image_path(i), self.data.channels, where=f"manifest row {i + 1}")

    def __getitem__(self, pos: int) -> dict[str, Any]:
        i = int(self.rows[pos])
        return {"image": self.transform(self.raw(pos)), "labels": _labels(self.data, i), "index": i}


class NpzDataset(CardDataset):
    """Map-style dataset over MedMNIST-style arrays (`{split}_images`), loaded once per process."""

    @cached_property
    def _arrays(self) -> dict[str, np.ndarray]:
        """The image arrays of the splits this dataset touches (np.load with allow_pickle=False)."""
        card = self.data.card
        raw_split = self.data.df[card.split.column].astype(str)
        needed = sorted(set(raw_split.iloc[self.rows]))
        try:
            with np.load(self.data.source_root, allow_pickle=False) as npz:
                return {s: npz[card.source.npz_key.format(split=s)] for s in needed}
        except KeyError as err:
            raise SynthfmError(f"{self.data.source_root} has no array {err}",
                               "fix source.npz_key in the card") from None
        except (OSError, ValueError) as err:
            raise SynthfmError(f"cannot read {self.data.source_root}: {err}", "re-export the .npz") from None

    def raw(self, pos: int) -> np.ndarray:
        """The uint8 image array of the pos-th row of this split."""
        i = int(self.rows[pos])
        card = self.data.card
        split = str(self.data.df[card.split.column].iat[i])
        arr = self._arrays[split][int(self.data.df[card.source.index_column].iat[i])]
        if self.data.channels == 1 and arr.ndim == 3:
            arr = arr.mean(axis=2).astype(np.uint8)
        elif self.data.channels == 3 and arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return arr


class DicomDataset(CardDataset):
    """Map-style dataset over a DICOM card: modality and VOI LUTs applied, MONOCHROME1 inverted, 8 bits."""

    def raw(self, pos: int) -> np.ndarray:
        """The uint8 image array of the pos-th row of this split."""
        from synthfm.data.dicom import read_dicom
        from synthfm.data.images import from_pixels

        i = int(self.rows[pos])
        return from_pixels(read_dicom(self.data.image_path(i), where=f"manifest row {i + 1}")[0], self.data.channels)


class VolumeDataset(CardDataset):
    """Map-style dataset over a NIfTI card: uint8 (D, H, W) volumes (percentile-windowed unless stored as uint8)."""

    def __init__(self, data: CardData, split: str | None = None, transform: Transform | None = None) -> None:
        from synthfm.data.nifti import volume_to_tensor

        super().__init__(data, split, transform or volume_to_tensor)

    def raw(self, pos: int) -> np.ndarray:
        """The uint8 volume of the pos-th row of this split."""
        from synthfm.data.nifti import load_volume

        i = int(self.rows[pos])
        return load_volume(self.data.image_path(i), where=f"manifest row {i + 1}")


class ShardDataset(IterableDataset):
    """Streaming dataset over a card's WebDataset shards (split across DDP ranks and workers)."""

    def __init__(self, data: CardData, split: str | None = None, transform: Transform | None = None,
                 shuffle: int = 0, seed: int = 0) -> None:
        self.data = data
        self.urls = shard_urls(data.source_root, split)
        self.transform = transform or to_tensor
        self.shuffle, self.seed = shuffle, seed
        self.length = len(data.indices(split)) if split else len(data)

    def __len__(self) -> int:
        return self.length

    @cached_property
    def _positions(self) -> dict[tuple[str, str], int] | None:
        """(shard file name, sample key) -> manifest row, from the manifest's `shards/<file>#<key>` paths."""
        col = self.data.card.source.path_column
        refs = sample_refs(self.data.df[col].astype(str).tolist()) if col in self.data.df.columns else None
        return None if refs is None else {ref: i for i, ref in enumerate(refs)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        seed = self.seed + (info.id if info else 0)
        positions = self._positions
        for s in iter_shards(self.urls, self.data.channels, self.shuffle, seed):
            meta = s["meta"]
            if positions is None:
                index = int(meta.get("row", -1))
                labels = {k: torch.as_tensor(np.asarray(v)) for k, v in meta.get("labels", {}).items()}
            else:  # a filtered or merged card lists a subset of the shards' samples: stream only those
                index = positions.get((Path(s["url"]).name, s["key"]), -1)
                if index < 0:
                    continue
                labels = _labels(self.data, index)
            yield {"image": self.transform(s["image"]), "labels": labels, "index": index}


def open_dataset(data: CardData, split: str | None = None, transform: Transform | None = None,
                 size: int | None = None, train: bool = False, **stream: Any) -> Dataset | IterableDataset:
    """The right reader for the card's source format; `size` builds the modality's transform."""
    fmt = data.card.source.format
    if fmt == "nifti":
        from synthfm.data.nifti import volume_transform

        if transform is None and size is not None:
            transform = volume_transform(data.card.modality, size, train)
        return VolumeDataset(data, split, transform)
    if transform is None and size is not None:
        transform = build_transform(data.card.modality, size, train=train)
    if fmt == "shards":
        return ShardDataset(data, split, transform, **stream)
    return {"npz": NpzDataset, "dicom": DicomDataset}.get(fmt, CardDataset)(data, split, transform)


def split_counts(data: CardData) -> dict[str, int]:
    """Number of rows per split ('' for rows without one)."""
    return {str(k): int(v) for k, v in data.df[SPLIT].value_counts().sort_index().items()}
