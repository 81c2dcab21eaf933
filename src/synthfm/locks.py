"""Output-folder locks: one writer per run folder at a time.

A writer holds an `fcntl.flock` on `FOLDER/.synthfm.lock`, a small JSON file naming its pid, host, command
and start time. A second writer (another process, here or on a host sharing the folder) gets a clear error
naming the holder. The kernel drops a flock when its process dies, so a lock left by `kill -9` is taken over
by the next writer, which says so. The same process may take the same lock again (a pipeline calling a stage
that opens its own run folder); it is released when the last holder lets go.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synthfm.errors import SynthfmError

LOCK_FILE = ".synthfm.lock"
_held: dict[Path, list[int]] = {}  # lock path -> [fd, depth]


def _read(path: Path) -> dict[str, Any]:
    """The holder a lock file names ({} when empty or unreadable)."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    """'pid 123 on host h (synthfm pretrain run, since ...)'."""
    if not holder:
        return "another process (the lock file names no holder)"
    extra = ", ".join(str(holder[k]) for k in ("command", "started") if holder.get(k))
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}" + (f" ({extra})" if extra else "")


def _alive(pid: Any) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _note(message: str) -> None:
    """A one-line note on stderr (a taken-over lock is worth knowing about, not an error)."""
    print(f"note: {message}", file=sys.stderr)


def acquire(folder: str | Path, name: str = LOCK_FILE) -> Path:
    """Lock `folder` for this process (creating it); raise SynthfmError naming the holder if it is taken."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / name).resolve()
    if path in _held:
        _held[path][1] += 1
        return path
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read(path)
            raise SynthfmError(f"output folder {folder} is in use by {_describe(holder)}: lock file {path}",
                               "wait for that command to finish, or write to another folder; if no such process "
                               "runs any more (another host), delete the lock file") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock: try again
    old = _read(path)
    if old and old.get("pid") != os.getpid():
        gone = "its process is gone" if old.get("host") == socket.gethostname() and not _alive(old.get("pid")) \
            else "it held no lock any more"
        _note(f"taking over the lock of {folder} left by {_describe(old)}; {gone}")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["synthfm", *sys.argv[1:]])[:200],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _held[path] = [fd, 1]
    return path


def release(path: Path) -> None:
    """Let go of a lock taken by `acquire` (the file is removed when the last holder here lets go)."""
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[path]
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(entry[0])


@contextlib.contextmanager
def folder_lock(folder: str | Path, name: str = LOCK_FILE) -> Iterator[Path]:
    """Hold the lock of `folder` for the block."""
    path = acquire(folder, name)
    try:
        yield path
    finally:
        release(path)


def is_secondary_rank() -> bool:
    """Whether this is a non-main process of a distributed launch (the main process holds the lock)."""
    return os.environ.get("RANK", "0") != "0" or os.environ.get("LOCAL_RANK", "0") != "0"
