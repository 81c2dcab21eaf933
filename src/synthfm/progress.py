"""Rich progress bars for long work (quiet when not attached to a terminal or when disabled)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def _enabled() -> bool:
    """Progress is shown on a terminal unless SYNTHFM_PROGRESS=0."""
    flag = os.environ.get("SYNTHFM_PROGRESS")
    return flag != "0" and (flag == "1" or sys.stderr.isatty())


def progress_bar(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over `items` with a rich progress bar on stderr."""
    if not _enabled():
        yield from items
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
