"""Atomic file writes: write a temporary file beside the target, then rename over it.

The finished file gets the mode a plain `open(path, "w")` would give it (0666 less the process umask), not
`mkstemp`'s private 0600, so a file written in a container by one uid stays readable where the umask allows;
pass `mode` for a file that must stay private (a signing key).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def current_umask() -> int:
    """The process umask (read from /proc where it can be, so no thread sees a changed umask)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(kind: str = "file") -> int:
    """The mode a new file (0666) or folder (0777) gets under the current umask."""
    return (0o777 if kind == "dir" else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "", mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    The temporary file is created with `mode` (default: the umask's file mode) before anything is written.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    perms = umask_mode() if mode is None else mode
    os.fchmod(fd, perms)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, perms)  # a writer may have replaced the file (safetensors writes a fresh 0600 one)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(target: str | Path, mode: str = "w", perms: int | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces `target` when closed without error."""
    with atomic_path(target, mode=perms) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write text to `target` atomically."""
    with atomic_open(target, "w") as fh:
        fh.write(text)


def atomic_write_bytes(target: str | Path, data: bytes, perms: int | None = None) -> None:
    """Write bytes to `target` atomically (file mode `perms`, default from the umask)."""
    with atomic_open(target, "wb", perms) as fh:
        fh.write(data)


def atomic_write_json(target: str | Path, obj: Any) -> None:
    """Write JSON to `target` atomically."""
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (the one file hash: input digests, bundles, generators)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def folder_files(folder: str | Path) -> list[Path]:
    """The files of a folder, sorted, without hidden ones at any depth (an interrupted atomic write's `.x.tmp`)."""
    root = Path(folder)
    return [p for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]


def write_table(df: pd.DataFrame, path: str | Path) -> str:
    """One table written atomically, as Parquet or CSV by the file's suffix; return the file's name."""
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"write_table writes .parquet or .csv, not {path.name}")
    with atomic_path(path, path.suffix) as tmp:
        df.to_parquet(tmp, index=False) if path.suffix == ".parquet" else df.to_csv(tmp, index=False)
    return path.name


def write_table_pair(df: pd.DataFrame, stem: str | Path) -> None:
    """One table as `stem.parquet` (typed, for code) and `stem.csv` (for people), each atomically."""
    for suffix in (".parquet", ".csv"):
        write_table(df, Path(f"{stem}{suffix}"))
