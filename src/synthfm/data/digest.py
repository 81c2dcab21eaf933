"""Content digests of the files a job reads, cheap to repeat on large image folders.

A job's key (and `data prepare`'s run config) must change when the bytes behind a path it was given change,
not only when the path does: a card's `dataset.yaml`, its manifest, its images, masks, shards or `.npz`; an
encoder or generator folder; a config file. Hashing every image on every plan would be slow, so each file's
SHA-256 is cached against its size, modification time and inode (`SYNTHFM_CACHE`, default
`~/.cache/synthfm/digests.sqlite`); a file whose fingerprint is unchanged is not read again, and one whose
fingerprint changed is hashed in full (a touched but identical file keeps its digest).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from synthfm.data.card import read_card, resolve_path
from synthfm.data.manifest import read_table
from synthfm.errors import SynthfmError
from synthfm.io import file_sha256, folder_files


def cache_path() -> Path:
    """Where file digests are cached."""
    env = os.environ.get("SYNTHFM_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "synthfm"
    return base / "digests.sqlite"


@contextlib.contextmanager
def _cache() -> Iterator[sqlite3.Connection | None]:
    """The digest cache, or None when it cannot be opened (digests are then computed without it)."""
    try:
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path, timeout=30)
        con.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER, mtime INTEGER, "
                    "inode INTEGER, sha TEXT)")
    except (OSError, sqlite3.Error):
        yield None
        return
    try:
        with con:
            yield con
    except sqlite3.Error:
        pass
    finally:
        con.close()


def file_digests(paths: Iterable[Path]) -> dict[str, str]:
    """SHA-256 per file (resolved path -> hex; 'absent' for a missing file), reusing unchanged cached ones."""
    out: dict[str, str] = {}
    with _cache() as con:
        for p in paths:
            key = str(Path(p).resolve())
            if key in out:
                continue
            try:
                st = os.stat(key)
            except OSError:
                out[key] = "absent"
                continue
            row = con.execute("SELECT size, mtime, inode, sha FROM digests WHERE path = ?", (key,)).fetchone() \
                if con is not None else None
            if row and tuple(row[:3]) == (st.st_size, st.st_mtime_ns, st.st_ino):
                out[key] = row[3]
                continue
            out[key] = file_sha256(key)
            if con is not None:
                con.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?)",
                            (key, st.st_size, st.st_mtime_ns, st.st_ino, out[key]))
    return out


def combine(digests: dict[str, str]) -> str:
    """One digest (16 hex digits) over named digests."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}\0{digests[name]}\n".encode())
    return h.hexdigest()[:16]


def card_files(path: Path, images: bool = True) -> list[Path]:
    """Every file a card reads: its YAML, manifest, and (with `images`) the images, masks, shards or arrays."""
    card, card_dir = read_card(path)
    yaml_file = path / "dataset.yaml" if path.is_dir() else path
    manifest = resolve_path(card_dir, card.manifest)
    files = [yaml_file, manifest]
    if not manifest.is_file() or not images:
        return files
    root = resolve_path(card_dir, card.source.root)
    df = read_table(manifest)
    columns = [*card.masks.values()]
    if card.source.format == "npz" or root.is_file():
        files.append(root)
    elif card.source.format == "shards":
        files += folder_files(root) if root.is_dir() else []
    else:
        columns.append(card.source.path_column)
    for col in columns:
        if col in df.columns:
            files += [root / str(v) for v in df[col].dropna()]
    return files


def input_files(path: str | Path, images: bool = True) -> list[Path]:
    """The files behind a path a job was given: a card's files, a folder's files, or the file itself."""
    p = Path(path)
    card = p / "dataset.yaml" if p.is_dir() else p
    if card.name == "dataset.yaml" and card.is_file():
        try:
            return card_files(p, images)
        except SynthfmError:
            return [card]  # a broken card: the job itself reports what is wrong
    if p.is_dir():
        return folder_files(p)
    return [p]


def path_digest(path: str | Path, images: bool = True) -> str:
    """One digest over the bytes of every file behind `path` (see `input_files`)."""
    files = input_files(path, images)
    base = Path(path).resolve()
    digests = file_digests(files)
    named = {}
    for f, d in digests.items():
        fp = Path(f)
        named[str(fp.relative_to(base)) if fp.is_relative_to(base) else f] = d
    return combine(named)
