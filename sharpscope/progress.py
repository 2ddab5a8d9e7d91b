"""One look for every progress bar over a test set or a training run (rich, on stderr, transient)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def progress_bar(enabled: bool = True, status: bool = False) -> Progress:
    """A bar showing the task description, count and ETA (and ``task.fields["status"]`` with ``status``)."""
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    if status:
        cols.append(TextColumn("{task.fields[status]}"))
    return Progress(*cols, console=Console(stderr=True), disable=not enabled, transient=True)
