"""The datasets `tinylm prepare NAME` knows: where they come from, their licence and layout.

A dataset's raw files are found, in order: in a local copy (`--source-dir DIR` or
`$TINYLM_DATA_DIR`, as `DIR/<dataset>/<file>` or `DIR/<file>`); in the download cache
(`$TINYLM_CACHE/downloads`); else they are downloaded there (resumable, checksummed where the
publisher gives a checksum; see remote.py). FineWeb-Edu is never downloaded whole: its Parquet
files are read remotely a row group at a time until `--max-tokens` training tokens are reached.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tinylm import fileio
from tinylm.console import console
from tinylm.data import remote
from tinylm.data.sources import (Piece, Source, Stream, _blocks, _Document, cache_key, chain, read_parquet,
                                 read_text)
from tinylm.errors import DataError

HF = "https://huggingface.co/datasets"


@dataclass(frozen=True)
class DataFile:
    name: str  # its name in a local copy and in the cache
    url: str = ""  # where to download it ("" for a member of the dataset's archive)
    size: int | None = None  # bytes, where known
    sha256: str | None = None  # pinned checksum, where known (Hugging Face also publishes one per file)
    member: str = ""  # path inside the dataset's archive


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    homepage: str
    licence: str
    size: str  # for people: what a full download weighs
    documents: str  # how documents are separated in the raw files
    reader: str  # text | wikitext | parquet
    splits: dict[str, tuple[DataFile, ...]]  # {"all": ...} when the dataset has no validation split
    archive: DataFile | None = None  # the split files are members of this zip
    streamed: bool = False  # read remotely, a row group at a time, never downloaded whole
    max_tokens: int = 0  # default cap on training tokens
    notes: str = field(default="", compare=False)


def _fineweb_files() -> tuple[DataFile, ...]:
    base = f"{HF}/HuggingFaceFW/fineweb-edu/resolve/main/sample/10BT"
    return tuple(DataFile(f"{i:03d}_00000.parquet", f"{base}/{i:03d}_00000.parquet") for i in range(14))


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("tinyshakespeare", "Tiny Shakespeare (char-rnn)", "https://github.com/karpathy/char-rnn",
            "public domain", "1.1 MB", "one document; the last 10% is the usual validation split", "text",
            {"all": (DataFile("input.txt", "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                              "tinyshakespeare/input.txt", 1_115_394,
                              "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),)}),
    Dataset("tinystories", "TinyStories V2 (GPT-4 stories)", f"{HF}/roneneldan/TinyStories",
            "CDLA-Sharing-1.0", "2.2 GB + 22 MB", "<|endoftext|> lines between stories", "text",
            {"train": (DataFile("TinyStoriesV2-GPT4-train.txt",
                                f"{HF}/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt"),),
             "val": (DataFile("TinyStoriesV2-GPT4-valid.txt",
                              f"{HF}/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt"),)}),
    Dataset("wikitext103", "WikiText-103 (raw)", "https://blog.salesforceairesearch.com/the-wikitext-long-term-"
            "dependency-language-modeling-dataset/", "CC BY-SA 3.0", "192 MB zip",
            "articles start at ' = Title = ' lines", "wikitext",
            {"train": (DataFile("wiki.train.raw", member="wikitext-103-raw/wiki.train.raw"),),
             "val": (DataFile("wiki.valid.raw", member="wikitext-103-raw/wiki.valid.raw"),),
             "test": (DataFile("wiki.test.raw", member="wikitext-103-raw/wiki.test.raw"),)},
            archive=DataFile("wikitext-103-raw-v1.zip", "https://wikitext.smerity.com/wikitext-103-raw-v1.zip",
                             191_984_949)),
    Dataset("fineweb-edu", "FineWeb-Edu, sample-10BT", f"{HF}/HuggingFaceFW/fineweb-edu", "ODC-By 1.0",
            "14 x 2.2 GB Parquet (10B tokens)", "one document per row (`text` column)",
            "parquet", {"all": _fineweb_files()}, streamed=True, max_tokens=100_000_000,
            notes="streamed: only the row groups needed for --max-tokens (default 100M) are fetched"),
)}


# --------------------------------------------------------------------------- readers


_ARTICLE = re.compile(r"^(?= = [^=][^\n]* = [ \t]*\r?\n)", re.MULTILINE)  # " = Title = ", not " = = Section = = "


def read_wikitext(path: Path, errors: str = "strict") -> Iterator[Piece]:
    """WikiText's raw files as one document per article, text kept verbatim."""
    doc = _Document()
    for block in _blocks(path, errors):
        for i, part in enumerate(_ARTICLE.split(block)):
            if i:
                yield from doc.end()
            if part:
                yield from doc.add(part)
    yield from doc.end()


def _local_dir(source_dir: str) -> Path | None:
    chosen = source_dir or os.environ.get("TINYLM_DATA_DIR", "")
    return Path(chosen).expanduser() if chosen else None


def _find_local(ds: Dataset, f: DataFile, root: Path) -> Path | None:
    for candidate in (root / ds.name / f.name, root / f.name):
        if candidate.is_file():
            return candidate
    return None


def _download_dir(ds: Dataset) -> Path:
    return fileio.cache_root() / "downloads" / ds.name


def _fetch(ds: Dataset, f: DataFile) -> Path:
    """The cached file, downloading it (or the dataset's archive, then extracting it) if needed."""
    dest = _download_dir(ds) / f.name
    if dest.is_file():
        return dest
    if ds.archive is None:
        return remote.download(f.url, dest, sha256=f.sha256, size=f.size, description=f"{ds.name}/{f.name}")
    archive = remote.download(ds.archive.url, _download_dir(ds) / ds.archive.name, sha256=ds.archive.sha256,
                              size=ds.archive.size, description=f"{ds.name}/{ds.archive.name}")
    try:
        with zipfile.ZipFile(archive) as z, z.open(f.member) as src, fileio.atomic_write(dest) as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{archive} is not the expected archive ({e}); delete it and run the command again") from None
    return dest


def _reader(ds: Dataset, path: Path, text_field: str, errors: str) -> Iterator[Piece]:
    if ds.reader == "wikitext":
        return read_wikitext(path, errors)
    if ds.reader == "parquet":
        return read_parquet(path, text_field)
    return read_text(path, errors)


def open_dataset(name: str, source_dir: str = "", errors: str = "strict", text_field: str = "text") -> Source:
    """A catalog dataset as a Source, from a local copy, the download cache or the network."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    ds = DATASETS[name]
    root = _local_dir(source_dir)
    files: dict[str, dict] = {}

    def stream(f: DataFile, local: Path | None) -> Stream:
        def pieces() -> Iterator[Piece]:
            if local is None and ds.streamed:
                info = remote.get_transport().info(f.url)
                files[f.name] = {"bytes": info.size, "sha256": info.sha256}
                yield from read_parquet(remote.open_remote(f.url, buffer_size=1 << 16), text_field, name=f.url)
                return
            path = local or _fetch(ds, f)
            if f.name not in files:
                files[f.name] = {"bytes": path.stat().st_size, "sha256": fileio.sha256_file(path)}
            yield from _reader(ds, path, text_field, errors)
        return pieces

    streams: dict[str, Stream] = {}
    identity: list[object] = [name, text_field if ds.reader == "parquet" else None]
    sizes: list[int | None] = []
    for split, split_files in ds.splits.items():
        if root is None:
            streams[split] = chain(*(stream(f, None) for f in split_files))
            identity.append((split, "network", [f.name for f in split_files]))
            sizes += [f.size for f in split_files]
            continue
        found = {f.name: _find_local(ds, f, root) for f in split_files}
        present = [f for f in split_files if found[f.name]]
        if not present or (not ds.streamed and len(present) < len(split_files)):
            missing = next(f.name for f in split_files if not found[f.name])
            raise DataError(f"dataset {name}: {missing} is not in {root / name} or {root}; put the raw files "
                            "there, or unset TINYLM_DATA_DIR / --source-dir to download them")
        streams[split] = chain(*(stream(f, found[f.name]) for f in present))
        stats = [(f.name, found[f.name].stat().st_size, found[f.name].stat().st_mtime_ns) for f in present]
        identity.append((split, "local", stats))
        sizes += [size for _, size, _ in stats]
    if root is None and not ds.streamed:
        console.print(f"{name}: raw files go to {_download_dir(ds)} (set TINYLM_DATA_DIR to use a local copy)")
    size = None if None in sizes else sum(s for s in sizes if s is not None)
    return Source(name, streams, cache_key(*identity), size, files, ds.max_tokens)


def describe() -> list[dict[str, str]]:
    """One row per dataset, for `tinylm datasets`."""
    rows = [{"name": "shakespeare", "title": "Shakespeare's complete works (bundled, offline)",
             "size": "5.4 MB", "licence": "public domain", "splits": "tail 10%", "source": "Project Gutenberg"}]
    for ds in DATASETS.values():
        splits = "tail 10%" if "all" in ds.splits else "/".join(ds.splits)
        rows.append({"name": ds.name, "title": ds.title, "size": ds.size, "licence": ds.licence,
                     "splits": splits, "source": ds.homepage})
    return rows


def details(name: str) -> str:
    """Everything the catalog knows about one dataset, for `tinylm datasets NAME`."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    ds = DATASETS[name]
    lines = [f"{ds.name}: {ds.title}", f"  homepage   {ds.homepage}", f"  licence    {ds.licence}",
             f"  size       {ds.size}", f"  documents  {ds.documents}"]
    if ds.archive:
        lines.append(f"  archive    {ds.archive.url}")
    for split, files in ds.splits.items():
        label = "(no split: tail or shuffle)" if split == "all" else split
        lines.append(f"  {label}")
        for f in files:
            where = f.url or f"in the archive: {f.member}"
            lines.append(f"    {f.name}  {where}" + (f"  sha256 {f.sha256}" if f.sha256 else ""))
    if ds.notes:
        lines.append(f"  note       {ds.notes}")
    lines.append(f"  local copy $TINYLM_DATA_DIR/{ds.name}/<file> (or --source-dir)")
    return "\n".join(lines)
