"""Random access to a card's WebDataset shards: an index of (tar, offset, size) per manifest row, read by offset.

Building the index reads every tar header once (and the small JSON members); images are then read with one
seek + read of their bytes and decoded with `decode_image`, so a shard card can back a map-style dataset with a
deterministic, resumable sample plan (pretraining, prepare, latent maps, label verification).

A manifest row finds its sample through its path column, `shards/<file>#<key>` (what every synthfm shard
writer records), so a card whose manifest is a subset (a filtered card) or a union with renamed shards (a merged
card) still reads the right image. Only the file name is used, looked up among the tars in the card's own shard
folder, so a manifest cannot point outside it. Manifests without such paths fall back to the `row` in each
sample's JSON.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthfm.data.manifest import CardData
from synthfm.data.readers import CardDataset, open_dataset
from synthfm.data.shards import ENCODINGS, decode_image, sample_refs, shard_urls
from synthfm.data.transforms import Transform, build_transform
from synthfm.errors import SynthfmError


@dataclass(frozen=True)
class ShardEntry:
    """Where one sample's image bytes lie: tar path, data offset, size, encoding, and the raw shape."""

    path: str
    offset: int
    size: int
    encoding: str
    shape: tuple[int, ...] | None


def _split_name(name: str) -> tuple[str, str]:
    """A tar member name -> (sample key, extension), WebDataset style (the key ends at the first '.')."""
    key, _, ext = Path(name).name.partition(".")
    return str(Path(name).parent / key), ext


def scan_shard(path: str) -> dict[str, tuple[ShardEntry, dict]]:
    """Sample key -> (image location, JSON record) for every sample of one shard."""
    images: dict[str, tuple[int, int, str]] = {}
    metas: dict[str, dict] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            key, ext = _split_name(member.name)
            if ext in ENCODINGS:
                images[key] = (member.offset_data, member.size, ext)
            elif ext == "json":
                metas[key] = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    out = {}
    for key, (offset, size, enc) in images.items():
        meta = metas.get(key, {})
        shape = tuple(meta["shape"]) if "shape" in meta else None
        out[Path(key).name] = (ShardEntry(path, offset, size, enc, shape), meta)
    return out


def index_shard(path: str) -> dict[int, ShardEntry]:
    """JSON `row` -> image location for every sample of one shard."""
    out = {}
    for key, (entry, meta) in scan_shard(path).items():
        if "row" not in meta:
            raise SynthfmError(f"shard sample {path}:{key} has no 'row' in its JSON", "rewrite the shard with synthfm")
        out[int(meta["row"])] = entry
    return out


def index_shards(urls: list[str]) -> dict[int, ShardEntry]:
    """Manifest row -> image location over several shards."""
    index: dict[int, ShardEntry] = {}
    for url in urls:
        index.update(index_shard(url))
    return index


def locate_rows(data: CardData, urls: list[str]) -> dict[int, ShardEntry]:
    """Manifest row position -> image location, by the row's path reference (else the samples' JSON rows)."""
    col = data.card.source.path_column
    refs = sample_refs(data.df[col].astype(str).tolist()) if col in data.df.columns else None
    if refs is None:
        return index_shards(urls)
    wanted: dict[str, dict[str, int]] = {}
    for i, (fname, key) in enumerate(refs):
        wanted.setdefault(fname, {})[key] = i
    out: dict[int, ShardEntry] = {}
    for url in urls:
        rows = wanted.get(Path(url).name)
        if rows:
            out.update({rows[k]: e for k, (e, _) in scan_shard(url).items() if k in rows})
    return out


class IndexedShardDataset(CardDataset):
    """Map-style dataset over a shard card: the same rows, order and samples as a folder card of the same data."""

    def __init__(self, data: CardData, split: str | None = None, transform: Transform | None = None) -> None:
        super().__init__(data, split, transform)
        self.index = locate_rows(data, shard_urls(data.source_root))
        missing = [int(i) for i in self.rows if int(i) not in self.index]
        if missing:
            raise SynthfmError(f"{len(missing)} manifest rows of card '{data.card.name}' are in no shard "
                               f"(first: row {missing[0]})", "re-run the shard writer to finish the card")

    def raw(self, pos: int) -> np.ndarray:
        """The decoded uint8 image of the pos-th row of this split, read by offset from its shard."""
        e = self.index[int(self.rows[pos])]
        with open(e.path, "rb") as fh:
            fh.seek(e.offset)
            data = fh.read(e.size)
        return decode_image(data, e.encoding, self.data.channels, f"{e.path}@{e.offset}",
                            list(e.shape) if e.shape else None)


def open_random_access(data: CardData, split: str | None = None, transform: Transform | None = None,
                       size: int | None = None) -> CardDataset:
    """A map-style dataset over any card (folder, npz or shards): what row sampling and subsets need."""
    if transform is None and size is not None:
        transform = build_transform(data.card.modality, size)
    if data.card.source.format == "shards":
        return IndexedShardDataset(data, split, transform)
    dataset = open_dataset(data, split, transform)
    assert isinstance(dataset, CardDataset)
    return dataset
