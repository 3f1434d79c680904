"""Terminal output: status and progress go to stderr (rich), results to stdout.

Library code reports recoverable problems with `warn()` (a `TinylmWarning`), which the CLI
prints as one `warning:` line; progress bars come from `progress()`.
"""

from __future__ import annotations

import warnings

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True, highlight=False, soft_wrap=True)  # never break paths in logs


class TinylmWarning(UserWarning):
    """Something the user should know that does not stop the work."""


def warn(message: str) -> None:
    warnings.warn(message, TinylmWarning, stacklevel=2)


def progress(*extra_columns, counts: bool = True, elapsed: bool = True, bar_width: int = 28) -> Progress:
    """A progress bar on stderr: description, bar, [n/total], extra columns, [elapsed], ETA."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=bar_width)]
    if counts:
        columns.append(MofNCompleteColumn())
    columns += list(extra_columns)
    if elapsed:
        columns.append(TimeElapsedColumn())
    columns += [TextColumn("ETA"), TimeRemainingColumn()]
    # Off when stderr is not a terminal (CI logs, pipes): callers print plain lines there.
    return Progress(*columns, console=console, transient=False, disable=not console.is_terminal)
