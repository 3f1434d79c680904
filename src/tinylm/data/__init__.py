"""Text sources and the dataset catalog, preparation into memory-mapped token files, and batch loaders."""

from __future__ import annotations

from typing import Any

from tinylm.data.prepare import META_FILE, load_split, prepared_dir_for, read_meta, resolve_data_dir
from tinylm.data.sources import Source
from tinylm.data.spec import read_source

# `prepare()` itself is imported from tinylm.data.prepare (re-exporting it here would hide the module)
__all__ = ["META_FILE", "PermutationWindows", "RandomWindows", "Source", "load_split",
           "make_loader", "prepared_dir_for", "read_meta", "read_source", "resolve_data_dir"]

_LOADER = ("PermutationWindows", "RandomWindows", "make_loader")


def __getattr__(name: str) -> Any:
    # the loaders need torch; preparation (and its worker processes) does not
    if name in _LOADER:
        from tinylm.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'tinylm.data' has no attribute {name!r}")
