"""Text sources, preparation into memory-mapped token files, and batch loaders."""

from tinylm.data.loader import RandomWindows, eval_windows
from tinylm.data.prepare import META_FILE, load_split, prepared_dir_for, read_meta, resolve_data_dir
from tinylm.data.sources import Source, read_source

# `prepare()` itself is imported from tinylm.data.prepare (re-exporting it here would hide the module)
__all__ = ["META_FILE", "RandomWindows", "Source", "eval_windows", "load_split", "prepared_dir_for",
           "read_meta", "read_source", "resolve_data_dir"]
