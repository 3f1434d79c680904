"""What a SOURCE names: `read_source(spec)` turns the string a user gives `tinylm prepare` or
`tinylm train --text` into a Source.

    an existing file or folder      ─► sources.local_source
    shakespeare (bundled)           ─► sources.builtin_source
    tinystories, fineweb-edu, ...   ─► catalog.open_dataset (local copy | Hub cache | download)
    hf:OWNER/NAME[:CONFIG][@REV]    ─► hub.hub_source (streamed through `datasets`)

It sits above sources.py, catalog.py and hub.py, so none of them imports another's dispatcher.
"""

from __future__ import annotations

from pathlib import Path

from tinylm.data import catalog, hub
from tinylm.data.sources import BUILTIN, SUFFIXES, Source, builtin_source, local_source
from tinylm.errors import DataError


def known_names() -> list[str]:
    return [*BUILTIN, *catalog.DATASETS]


def read_source(spec: str, errors: str = "strict", text_field: str = "text", source_dir: str = "",
                hf_split: str = "train") -> Source:
    """A local file or folder, a corpus bundled with tinylm, a dataset of the catalog by name, or
    a Hugging Face Hub dataset (`hf:OWNER/NAME[:CONFIG][@REVISION]`, `hf_split` its training split).
    `errors="replace"` turns invalid UTF-8 in local files into U+FFFD instead of stopping."""
    if hub.is_hub_spec(spec):
        return hub.hub_source(spec, text_field, hf_split)
    spec = str(spec)
    if Path(spec).expanduser().exists():
        return local_source(spec, text_field, errors)
    if spec in BUILTIN:
        return builtin_source(spec)
    if spec in catalog.DATASETS:
        return catalog.open_dataset(spec, source_dir, errors, text_field)
    if any(c in spec for c in "/\\.") or spec.endswith(SUFFIXES):
        raise DataError(f"{spec}: no such file or folder (a Hugging Face dataset is written hf:{spec})"
                        if spec.count("/") == 1 and not Path(spec).suffix else f"{spec}: no such file or folder")
    raise DataError(f"{spec}: not a file, folder or known dataset; known datasets: {', '.join(known_names())} "
                    "(see `tinylm datasets`), or any Hugging Face dataset as hf:OWNER/NAME")
