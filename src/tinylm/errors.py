"""Errors a user can act on.

Library code raises these with a message that names the problem and the fix; the CLI prints
the message on one line and exits non-zero (a traceback only with `--debug`).
"""

from __future__ import annotations


class TinylmError(Exception):
    """Base class: anything wrong with the user's input, files or configuration."""


class ConfigError(TinylmError):
    """An unknown key, a wrongly typed value or an inconsistent configuration."""


class DataError(TinylmError):
    """A missing, empty or unreadable corpus, or a data directory that does not fit the run."""


class TokenizerError(TinylmError):
    """An unknown tokenizer, or a tokenizer file that cannot be read."""


class CheckpointError(TinylmError):
    """A run directory or checkpoint file that is missing, truncated or inconsistent."""


class DownloadError(DataError):
    """A download that failed, was interrupted or did not match its checksum."""


class ExportError(TinylmError):
    """A model that the requested export format cannot express, or an export that failed."""


class WriteError(TinylmError, OSError):
    """A file that could not be written (a full disk, a file-size limit, no permission, a read-only
    filesystem): "PATH: problem; fix, then next step" (`tinylm.fileio.write_failure` diagnoses the
    OSError). It is an OSError too, so code that tolerates a failed write of an optional file (a
    cache) still does."""

    path: str = ""
    problem: str = ""
    fix: str = ""

    @classmethod
    def of(cls, path: object, problem: str, fix: str, then: str = "run the command again",
           errno: int | None = None) -> WriteError:
        error = cls(f"{path}: {problem}; {fix}, then {then}")
        error.path, error.problem, error.fix, error.errno = str(path), problem, fix, errno
        return error

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def then(self, next_step: str) -> WriteError:
        """The same failure with another last step than "run the command again" (e.g. a resume)."""
        return WriteError.of(self.path, self.problem, self.fix, next_step, self.errno)


class EmptyInputError(DataError):
    """A user text that encodes to no tokens where tokens are needed."""
