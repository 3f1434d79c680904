"""`tinylm`: the command line. parser.py builds the parser (every flag a config field), commands.py holds
the verbs (they parse and call the library; the rules live there), presets.py the presets table.

    argv ─► parser.build_parser().parse_args ─► commands.cmd_<verb>(args) ─► library ─► exit status
    errors: a TinylmError is `error: <message>` on one line, exit 1 (130 on Ctrl-C); --debug shows the traceback
"""

from __future__ import annotations

import os
import sys
import warnings

from rich.markup import escape

from tinylm import fileio
from tinylm.cli.parser import build_parser
from tinylm.console import TinylmWarning, console
from tinylm.errors import TinylmError

__all__ = ["build_parser", "main"]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, TinylmWarning):
        console.print(f"[yellow]warning:[/] {escape(str(message))}")
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except TinylmError as e:
        if args.debug:
            raise
        console.print(f"[red]error:[/] {escape(str(e))}")  # messages quote [brackets]: extras, lists
        return 1
    except BrokenPipeError:  # `tinylm ... | head`: the reader went away; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # permissions, full disk, ... on paths the user chose: the file, the cause, a fix
        if args.debug:
            raise
        console.print(f"[red]error:[/] {escape(fileio.describe(e))}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130
    finally:
        warnings.showwarning = _default_showwarning
