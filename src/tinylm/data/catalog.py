"""The datasets `tinylm prepare NAME` knows: where they come from, their licence and layout.

    NAME ─► local copy (--source-dir DIR / $TINYLM_DATA_DIR: DIR/NAME/<file> or DIR/<file>)
         └► else, files in a Hub repository (tinystories, fineweb-edu), pinned to a commit:
              huggingface_hub.hf_hub_download ─► the Hub cache (HF_HOME), shared with every HF tool
              fineweb-edu: HfFileSystem ─► pyarrow reads remote Parquet row groups until --max-tokens
         └► else, a plain URL (tinyshakespeare from GitHub, WikiText-103's zip): remote.download
              ─► $TINYLM_CACHE/downloads/NAME/ (resumable, size- and sha256-checked)
         ─► readers of sources.py (text with <|endoftext|>, WikiText articles, Parquet rows) ─► Source

Hub files go through `huggingface_hub`, so HF_HOME, HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE work
as in any Hugging Face tool (offline, files already in the Hub cache are read from it); a file is
checked against its pinned sha256 or the checksum the Hub publishes (the cache names each blob by
it: the sha256 of an LFS file, the git object id of a small one). WikiText-103's raw files and
tinyshakespeare's `input.txt` are not files of a Hub repository (the Hub's `Salesforce/wikitext`
holds Parquet conversions with the blank lines' whitespace dropped, not the raw files that
published perplexities are measured on), so they keep their original URLs. Any other Hub dataset
is `hf:OWNER/NAME` (hub.py).
"""

from __future__ import annotations

import hashlib
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
from tinylm.data.hub import cached_sha256, translated
from tinylm.data.sources import (
    DocumentSplitter,
    FileVersion,
    Piece,
    Source,
    Stream,
    cache_key,
    chain,
    changed_error,
    read_blocks,
    read_parquet,
    read_text,
    snapshot,
)
from tinylm.errors import DataError, DownloadError

HF = "https://huggingface.co/datasets"


@dataclass(frozen=True)
class DataFile:
    name: str  # its name in a local copy (and in the download cache, for URL files)
    path: str = ""  # its path in the dataset's Hub repository (Dataset.repo), for Hub files
    url: str = ""  # a plain download URL, for files not on the Hub ("" for a member of the dataset's archive)
    size: int | None = None  # bytes, where known
    sha256: str | None = None  # pinned checksum, where known (the Hub publishes one per LFS file)
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
    repo: str = ""  # the Hub dataset repository of its files (DataFile.path)
    revision: str = ""  # the commit of `repo` the files are pinned to
    notes: str = field(default="", compare=False)


def _fineweb_files() -> tuple[DataFile, ...]:
    return tuple(DataFile(f"{i:03d}_00000.parquet", path=f"sample/10BT/{i:03d}_00000.parquet") for i in range(14))


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("tinyshakespeare", "Tiny Shakespeare (char-rnn)", "https://github.com/karpathy/char-rnn",
            "public domain", "1.1 MB", "one document; the last 10% is the usual validation split", "text",
            {"all": (DataFile("input.txt", url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                              "tinyshakespeare/input.txt", size=1_115_394,
                              sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),)}),
    Dataset("tinystories", "TinyStories V2 (GPT-4 stories)", f"{HF}/roneneldan/TinyStories",
            "CDLA-Sharing-1.0", "2.2 GB + 22 MB", "<|endoftext|> lines between stories", "text",
            {"train": (DataFile("TinyStoriesV2-GPT4-train.txt", path="TinyStoriesV2-GPT4-train.txt"),),
             "val": (DataFile("TinyStoriesV2-GPT4-valid.txt", path="TinyStoriesV2-GPT4-valid.txt"),)},
            repo="roneneldan/TinyStories", revision="f54c09fd23315a6f9c86f9dc80f725de7d8f9c64"),
    Dataset("wikitext103", "WikiText-103 (raw)", "https://blog.salesforceairesearch.com/the-wikitext-long-term-"
            "dependency-language-modeling-dataset/", "CC BY-SA 3.0", "192 MB zip",
            "articles start at ' = Title = ' lines", "wikitext",
            {"train": (DataFile("wiki.train.raw", member="wikitext-103-raw/wiki.train.raw"),),
             "val": (DataFile("wiki.valid.raw", member="wikitext-103-raw/wiki.valid.raw"),),
             "test": (DataFile("wiki.test.raw", member="wikitext-103-raw/wiki.test.raw"),)},
            archive=DataFile("wikitext-103-raw-v1.zip", url="https://wikitext.smerity.com/wikitext-103-raw-v1.zip",
                             size=191_984_949)),
    Dataset("fineweb-edu", "FineWeb-Edu, sample-10BT", f"{HF}/HuggingFaceFW/fineweb-edu", "ODC-By 1.0",
            "14 x 2.2 GB Parquet (10B tokens)", "one document per row (`text` column)",
            "parquet", {"all": _fineweb_files()}, streamed=True, max_tokens=100_000_000,
            repo="HuggingFaceFW/fineweb-edu", revision="87f09149ef4734204d70ed1d046ddc9ca3f2b8f9",
            notes="streamed: only the row groups needed for --max-tokens (default 100M) are fetched"),
)}


# --------------------------------------------------------------------------- readers


_TITLE_CHARS = 1024  # a line this long may be an article's title: never cut by a block end
_ARTICLE = re.compile(r"^(?= = [^=][^\n]* = [ \t]*\r?\n)", re.MULTILINE)  # " = Title = ", not " = = Section = = "


def read_wikitext(path: Path, errors: str = "strict", version: FileVersion | None = None) -> Iterator[Piece]:
    """WikiText's raw files as one document per article, text kept verbatim."""
    doc = DocumentSplitter()
    at_line_start, held = True, ""  # the block starts a line; the start of a short line cut by a block end
    for block in read_blocks(path, errors, version):
        block, held = held + block, ""
        line_end = block.rfind("\n") + 1
        if len(block) - line_end < _TITLE_CHARS:  # (a block ends mid-line only inside a line longer than it)
            block, held = block[:line_end], block[line_end:]
        start = 0
        for title in _ARTICLE.finditer(block):
            if title.start() or at_line_start:  # an article starts: the one before ends
                yield from doc.add(block[start:title.start()])
                yield from doc.end()
                start = title.start()
        yield from doc.add(block[start:])
        if block:
            at_line_start = block.endswith("\n")
    yield from doc.add(held)
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


def _hub_label(ds: Dataset) -> str:
    return f"{ds.name} ({ds.repo}@{ds.revision[:10]})"


def _download(ds: Dataset, f: DataFile) -> Path:
    """A plain-URL file into the download cache, with the no-network advice of the catalog."""
    try:
        return remote.download(f.url, _download_dir(ds) / f.name, sha256=f.sha256, size=f.size,
                               description=f"{ds.name}/{f.name}")
    except DownloadError as e:
        if not str(e).startswith("cannot reach"):
            raise
        raise DownloadError(f"{e}; with no network, point --source-dir (or TINYLM_DATA_DIR) at a local copy "
                            f"of the raw files (`tinylm datasets {ds.name}` lists them)") from None


def _fetch(ds: Dataset, f: DataFile) -> Path:
    """The file on disk: from the Hub cache (downloading it there if needed), or from the download
    cache (downloading it, or the dataset's archive and extracting it, if needed)."""
    dest = _download_dir(ds) / f.name
    if dest.is_file():  # a URL file, or a Hub file an earlier tinylm downloaded here
        return dest
    if f.path:
        from huggingface_hub import hf_hub_download

        with translated(_hub_label(ds), f"{ds.repo} --revision {ds.revision}"):
            return Path(hf_hub_download(ds.repo, f.path, repo_type="dataset", revision=ds.revision))
    if ds.archive is None:
        return _download(ds, f)
    archive = _download(ds, ds.archive)
    try:
        with zipfile.ZipFile(archive) as z, z.open(f.member) as src, fileio.atomic_write(dest) as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{archive} is not the expected archive ({e}); delete it and run the command again") from None
    return dest


def _git_blob_id(path: Path) -> str:
    """git's object id of a file (sha1 of "blob SIZE\0" + content): the Hub's ETag of a non-LFS file."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _describe(ds: Dataset, f: DataFile, path: Path, fetched: bool) -> FileVersion:
    """The version of a file read (size and sha256). A fetched file must match its pinned sha256, or
    the checksum the Hub published for it: the Hub cache names each blob by its ETag, the sha256 of
    an LFS file or the git object id of a small one."""
    version = snapshot(path)
    digest = version.sha256
    expected = f.sha256 or (cached_sha256(path) if fetched and f.path else None)
    blob = os.path.basename(os.path.realpath(path))
    damaged = expected and digest != expected
    if fetched and f.path and not expected and re.fullmatch(r"[0-9a-f]{40}", blob):
        damaged = _git_blob_id(path) != blob
    if fetched and damaged:
        raise DataError(f"{path} does not match its published checksum (sha256 {digest}); delete it and run the "
                        "command again to download it afresh")
    return version


def _remote_parquet(ds: Dataset, f: DataFile, text_field: str, files: dict[str, dict]) -> Iterator[Piece]:
    """A Parquet file of the Hub read in place: its footer, then row groups as they are consumed."""
    from huggingface_hub import HfFileSystem, try_to_load_from_cache

    cached = try_to_load_from_cache(ds.repo, f.path, revision=ds.revision, repo_type="dataset")
    if isinstance(cached, str):  # already in the Hub cache (e.g. `hf download`): no network needed
        files[f.name] = {"bytes": Path(cached).stat().st_size, "sha256": cached_sha256(Path(cached))}
        yield from read_parquet(Path(cached), text_field)
        return
    fs = HfFileSystem()
    url = f"datasets/{ds.repo}@{ds.revision}/{f.path}"
    with translated(_hub_label(ds), f"{ds.repo} --revision {ds.revision}"):
        info = fs.info(url)
        files[f.name] = {"bytes": info["size"], "sha256": (info.get("lfs") or {}).get("sha256")}
        with fs.open(url, "rb", block_size=1 << 16) as remote_file:  # small blocks: fetch little beyond need
            yield from read_parquet(remote_file, text_field, name=f"hf://{url}")


def _reader(ds: Dataset, path: Path, text_field: str, errors: str, version: FileVersion) -> Iterator[Piece]:
    if ds.reader == "wikitext":
        return read_wikitext(path, errors, version)
    if ds.reader == "parquet":
        return read_parquet(path, text_field, version=version)
    return read_text(path, errors, version)


def open_dataset(name: str, source_dir: str = "", errors: str = "strict", text_field: str = "text") -> Source:
    """A catalog dataset as a Source, from a local copy, the Hub (through its cache) or a URL."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    ds = DATASETS[name]
    root = _local_dir(source_dir)
    files: dict[str, dict] = {}
    versions: dict[str, FileVersion] = {}  # each file as first read: later reads must find the same bytes
    seen: dict[Path, tuple[int, int]] = {}  # (size, mtime) of the local copy's files, in the cache key

    def stream(f: DataFile, local: Path | None) -> Stream:
        def pieces() -> Iterator[Piece]:
            if local is None and ds.streamed:
                yield from _remote_parquet(ds, f, text_field, files)
                return
            path = local or _fetch(ds, f)
            if str(path) not in versions:
                version = _describe(ds, f, path, fetched=local is None)
                if local is not None and (version.size, version.stamp[3]) != seen[local]:
                    raise changed_error(local, "since tinylm listed the dataset's files")
                versions[str(path)], files[f.name] = version, {"bytes": version.size, "sha256": version.sha256}
            yield from _reader(ds, path, text_field, errors, versions[str(path)])
        return pieces

    streams: dict[str, Stream] = {}
    identity: list[object] = [name, text_field if ds.reader == "parquet" else None]
    sizes: list[int | None] = []
    for split, split_files in ds.splits.items():
        if root is None:
            streams[split] = chain(*(stream(f, None) for f in split_files))
            identity.append((split, "network", ds.revision, [f.name for f in split_files]))
            sizes += [f.size for f in split_files]
            continue
        found = {f.name: _find_local(ds, f, root) for f in split_files}
        present = [f for f in split_files if found[f.name]]
        if not present or (not ds.streamed and len(present) < len(split_files)):
            missing = next(f.name for f in split_files if not found[f.name])
            raise DataError(f"dataset {name}: {missing} is not in {root / name} or {root}; put the raw files "
                            "there, or unset TINYLM_DATA_DIR / --source-dir to download them")
        streams[split] = chain(*(stream(f, found[f.name]) for f in present))
        for f in present:
            st = found[f.name].stat()
            seen[found[f.name]] = (st.st_size, st.st_mtime_ns)
        stats = [(f.name, *seen[found[f.name]]) for f in present]
        identity.append((split, "local", stats))
        sizes += [size for _, size, _ in stats]
    if root is None and ds.repo and not ds.streamed:
        console.print(f"{name}: files come from the Hugging Face Hub, {ds.repo} at {ds.revision[:10]}, through the "
                      "Hub cache (HF_HOME; set TINYLM_DATA_DIR to use a local copy)")
    elif root is None and not ds.streamed:
        console.print(f"{name}: raw files go to {_download_dir(ds)} (set TINYLM_DATA_DIR to use a local copy)")
    size = None if None in sizes else sum(s for s in sizes if s is not None)
    return Source(name, streams, cache_key(*identity), size, files, ds.max_tokens, revision=ds.revision,
                  versions=versions)


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
    if name == "shakespeare":  # the bundled corpus: in every listing, so here too
        row = describe()[0]
        return (f"shakespeare: {row['title']}\n  source     {row['source']}\n  licence    {row['licence']}\n"
                f"  size       {row['size']} (bundled with tinylm: no download)\n  documents  one per work\n"
                "  split      the tail 10% of the text is the validation split")
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: shakespeare, {', '.join(DATASETS)}")
    ds = DATASETS[name]
    lines = [f"{ds.name}: {ds.title}", f"  homepage   {ds.homepage}", f"  licence    {ds.licence}",
             f"  size       {ds.size}", f"  documents  {ds.documents}"]
    if ds.repo:
        lines.append(f"  Hub        {ds.repo} at {ds.revision} (through the Hub cache, HF_HOME)")
    if ds.archive:
        lines.append(f"  archive    {ds.archive.url}")
    for split, files in ds.splits.items():
        label = "(no split: tail or shuffle)" if split == "all" else split
        lines.append(f"  {label}")
        for f in files:
            where = f.url or (f"{ds.repo}/{f.path}" if f.path else f"in the archive: {f.member}")
            lines.append(f"    {f.name}  {where}" + (f"  sha256 {f.sha256}" if f.sha256 else ""))
    if ds.notes:
        lines.append(f"  note       {ds.notes}")
    lines.append(f"  local copy $TINYLM_DATA_DIR/{ds.name}/<file> (or --source-dir)")
    return "\n".join(lines)
