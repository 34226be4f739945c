"""A progress bar for long CLI work, quiet when asked or when output isn't a terminal log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = ["ProgressCallback", "progress_bar"]

ProgressCallback = Callable[[int, int, str], None]


@contextmanager
def progress_bar(title: str, *, quiet: bool = False, console: Console | None = None) -> Iterator[ProgressCallback]:
    """Yields `update(done, total, status)`; renders a bar unless `quiet`."""
    if quiet:
        yield lambda done, total, status: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(title, total=None, status="")

        def update(done: int, total: int, status: str) -> None:
            progress.update(task, completed=done, total=total, status=status)

        yield update
