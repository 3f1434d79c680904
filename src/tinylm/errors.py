"""Errors a user can act on.

Library code raises these with a message that names the problem and the fix; the CLI prints
the message on one line and exits non-zero (a traceback only with `--debug`).
"""


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
