"""Terminal output: status and progress go to stderr (rich), results to stdout.

Library code reports recoverable problems with `warn()` (a `TinylmWarning`), which the CLI
prints as one `warning:` line; progress bars come from `progress()`.
"""

from __future__ import annotations

import warnings

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True, highlight=False)


class TinylmWarning(UserWarning):
    """Something the user should know that does not stop the work."""


def warn(message: str) -> None:
    warnings.warn(message, TinylmWarning, stacklevel=2)


def progress(*extra_columns, counts: bool = True) -> Progress:
    """A progress bar on stderr: description, bar, n/total, extra columns, elapsed, ETA."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=28)]
    if counts:
        columns.append(MofNCompleteColumn())
    columns += [*extra_columns, TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    # Off when stderr is not a terminal (CI logs, pipes): callers print plain lines there.
    return Progress(*columns, console=console, transient=False, disable=not console.is_terminal)
