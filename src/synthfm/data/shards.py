"""WebDataset tar shards: atomic writing, resumable at the first missing shard, and stream reading.

Each sample is `<key>.<enc>` (the image: `raw` uint8 bytes whose shape is in the JSON — the
fastest to read —, `npy`, lossless `png`, or `jpg`) plus `<key>.json` holding the manifest row id,
its row number and its encoded labels. Tar members carry a fixed mtime, so the same images give
byte-identical shards. Shards are named
`<prefix>-000000.tar`, `<prefix>-000001.tar`, … and each is written to a temporary file that is
renamed into place only when complete, so a reader never sees half a shard and a writer that was
killed resumes at the first shard that is missing.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import webdataset as wds
from PIL import Image

from synthfm.data.images import encode_png, load_image
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path
from synthfm.progress import progress_bar
from synthfm.runs import RunDir

Encoding = Literal["raw", "npy", "png", "jpg"]
ENCODINGS: tuple[str, ...] = ("raw", "npy", "png", "jpg")


@dataclass
class ShardRecord:
    """One image with the JSON record that travels beside it in a shard."""

    key: str
    image: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def shard_name(prefix: str, k: int) -> str:
    """The file name of shard k."""
    return f"{prefix}-{k:06d}.tar"


def encode_image(arr: np.ndarray, encoding: Encoding) -> bytes:
    """Encode an image array for a shard (npy never pickles; raw needs the shape stored beside it)."""
    if encoding == "raw":
        return np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    if encoding == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        return buf.getvalue()
    if encoding == "png":
        return encode_png(arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def decode_image(data: bytes, encoding: str, channels: int, where: str,
                 shape: list[int] | None = None) -> np.ndarray:
    """Decode a shard's image bytes (npy with allow_pickle=False; raw with the recorded shape)."""
    if encoding == "raw":
        if not shape or int(np.prod(shape)) != len(data):
            raise SynthfmError(f"raw image in shard sample {where} does not match its shape {shape}",
                               "rewrite the shard")
        return np.frombuffer(data, np.uint8).reshape(shape).copy()
    if encoding == "npy":
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as err:
            raise SynthfmError(f"corrupt npy image in shard sample {where}: {err}", "rewrite the shard") from None
    return load_image(data, channels, where)


def write_shard(path: Path, records: Iterable[ShardRecord], encoding: Encoding) -> int:
    """Write one shard atomically (temp file, then rename); return the number of samples."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        sink = wds.TarWriter(fh, encoder=False, mtime=0)
        try:
            for rec in records:
                if "." in rec.key:
                    raise ValueError(f"shard keys may not contain '.': {rec.key!r}")
                meta = {**rec.meta, "shape": list(rec.image.shape)} if encoding == "raw" else rec.meta
                sink.write({"__key__": rec.key, encoding: encode_image(rec.image, encoding),
                            "json": json.dumps(meta, default=_jsonable).encode()})
                n += 1
        finally:
            sink.close()
    return n


def _jsonable(obj: Any) -> Any:
    """JSON fallback for numpy scalars and arrays."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def shard_urls(folder: Path, prefix: str | None = None) -> list[str]:
    """The complete shards in a folder (optionally only one prefix), sorted."""
    pattern = f"{prefix}-*.tar" if prefix else "*.tar"
    urls = sorted(str(p) for p in folder.glob(pattern) if not p.name.startswith("."))
    if not urls:
        raise SynthfmError(f"no shards matching {pattern} in {folder}",
                           "write shards with 'synthfm data prepare --format shards' or fix source.root")
    return urls


def sample_refs(paths: list[str]) -> list[tuple[str, str]] | None:
    """(shard file name, sample key) per manifest path `shards/<file>#<key>`; None unless every path has one.

    Only the file name is kept: a reference is looked up among the tars of the card's own shard folder.
    """
    if not paths or not all("#" in p for p in paths):
        return None
    out = []
    for p in paths:
        file, _, key = p.rpartition("#")
        out.append((Path(file).name, key))
    return out


def iter_shards(urls: list[str], channels: int, shuffle: int = 0, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Stream decoded samples `{image, meta, key}` from shards, split across nodes and workers."""
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node,
                        workersplitter=wds.split_by_worker, empty_check=False, seed=seed)
    if shuffle:
        ds = ds.shuffle(shuffle, seed=seed)
    for sample in ds:
        yield _decode_sample(sample, channels)


def _decode_sample(sample: dict[str, Any], channels: int) -> dict[str, Any]:
    """Turn a raw shard sample into arrays and a record."""
    key = sample["__key__"]
    enc = next((e for e in ENCODINGS if e in sample), None)
    if enc is None:
        raise SynthfmError(f"shard sample {key} in {sample.get('__url__')} has no image ({'/'.join(ENCODINGS)})",
                           "rewrite the shard with synthfm")
    meta = json.loads(sample["json"]) if "json" in sample else {}
    where = f"{sample.get('__url__')}:{key}"
    return {"key": key, "image": decode_image(sample[enc], enc, channels, where, meta.get("shape")), "meta": meta,
            "url": str(sample.get("__url__", ""))}


def plan_shards(splits: list[str], size: int) -> list[tuple[str, list[int]]]:
    """(shard file name, rows) per shard: rows grouped by split in order, `size` per shard."""
    plan = []
    for split in sorted(set(splits)):
        rows = [i for i, s in enumerate(splits) if s == split]
        plan += [(shard_name(split or "all", k // size), rows[k:k + size]) for k in range(0, len(rows), size)]
    return plan


MakeRecord = Callable[[int, str], tuple[ShardRecord, dict[str, Any]]]


def _collect(rows: list[int], name: str, make: MakeRecord, recs: list[dict[str, Any]]) -> Iterator[ShardRecord]:
    """Yield each row's shard record, keeping its progress row in `recs`."""
    for i in rows:
        rec, row = make(i, name)
        recs.append(row)
        yield rec


def write_shards_resumable(run: RunDir, plan: list[tuple[str, list[int]]], make: MakeRecord,
                           encoding: Encoding, progress_file: str, label: str) -> None:
    """Write planned shards into run/shards atomically, skipping those an earlier attempt finished."""
    done = run.done_rows(progress_file)
    todo = [(n, r) for n, r in plan if not (all(i in done for i in r) and (run.path / "shards" / n).is_file())]
    for name, rows in progress_bar(todo, label, total=len(todo)):
        recs: list[dict[str, Any]] = []
        write_shard(run.path / "shards" / name, _collect(rows, name, make, recs), encoding)
        run.append(progress_file, recs)
