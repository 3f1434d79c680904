"""Any dataset on the Hugging Face Hub by name, `hf:OWNER/NAME[:CONFIG][@REVISION]`, read through `datasets`.

    hf:OWNER/NAME:CONFIG ─► commit sha: HfApi.dataset_info (offline: the Hub cache's snapshot)
        ─► datasets.load_dataset_builder(OWNER/NAME, CONFIG, revision=sha): its configs, splits, data files
        ─► tinylm splits: --hf-split (default train) ─► "train", or "all" when there is no validation split
                          validation | valid | val | dev ─► "val",  test ─► "test"
        ─► builder.as_streaming_dataset(split): one data file (shard) after another, Arrow record batches
        ─► the `text_field` column ─► (text, ends document) pieces of a Source

Nothing is downloaded whole: `datasets` streams Parquet row groups and JSONL/text blocks over
HTTP range requests (`HfFileSystem`), so preparing with `--max-tokens` stops fetching soon after
the cap and memory stays bounded. The commit sha is part of the Source's cache key and goes into
meta.json (`source.revision`), so a re-run at the same commit reuses the prepared data; the data
files read are recorded with their size and, for LFS files, the sha256 the Hub publishes.

Everything goes through `huggingface_hub` and `datasets`, so their environment variables work as
in any Hugging Face tool: HF_HOME (caches), HF_TOKEN (gated and private datasets), HF_ENDPOINT
(a mirror), HF_HUB_OFFLINE=1 (read a snapshot already in the Hub cache, put there once by
`hf download --repo-type dataset OWNER/NAME`; with it, nothing touches the network). Their
exceptions become one-line `DataError`s naming the fix.

`iter_records(spec, split)` yields a split's records themselves (dicts), for readers of
structured data (instruction and chat records for fine-tuning); `split_names(spec)` lists them.

`datasets` is an optional dependency (extra `hf`, named by the error when it is missing);
`huggingface_hub` is a core one (the catalog downloads through it).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tinylm.data.sources import Piece, Source, Stream, cache_key, column_documents
from tinylm.errors import DataError

SCHEME = "hf:"
VAL_SPLITS = ("validation", "valid", "val", "dev")  # the first present becomes tinylm's "val"
TEST_SPLITS = ("test",)
BATCH_ROWS = 256  # records per Arrow batch read from the stream
_SPEC = re.compile(r"hf:(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<config>[^:@\s]+))?(?:@(?P<revision>\S+))?")
_PATHS_PER_REQUEST = 100


@dataclass(frozen=True)
class HubSpec:
    """`hf:OWNER/NAME[:CONFIG][@REVISION]`, parsed."""

    repo: str
    config: str | None = None
    revision: str | None = None  # a branch, tag or commit sha; None = the default branch

    @property
    def download(self) -> str:
        """The arguments of `hf download` that fetch it."""
        return self.repo + (f" --revision {self.revision}" if self.revision else "")

    def __str__(self) -> str:
        return SCHEME + self.repo + (f":{self.config}" if self.config else "") + (
            f"@{self.revision}" if self.revision else "")


def is_hub_spec(spec: str | Path) -> bool:
    """Whether a SOURCE names a Hub dataset (`hf:...`); paths never do."""
    return isinstance(spec, str) and spec.startswith(SCHEME)


def parse_spec(spec: str) -> HubSpec:
    match = _SPEC.fullmatch(spec.strip())
    if not match:
        raise DataError(f"{spec!r} is not a Hub dataset; write hf:OWNER/NAME, hf:OWNER/NAME:CONFIG or "
                        "hf:OWNER/NAME:CONFIG@REVISION (e.g. hf:roneneldan/TinyStories)")
    return HubSpec(match["repo"], match["config"], match["revision"])


# --------------------------------------------------------------------------- errors


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__  # type: ignore[assignment]


def _is_network_error(e: BaseException) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled

    transport = tuple(getattr(module, "TransportError")
                      for module in (_optional("httpx2"), _optional("httpx")) if module is not None)
    return isinstance(e, (OfflineModeIsEnabled, ConnectionError, TimeoutError, *transport))


def _optional(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        return None


_LOCAL_COPY = "prepare a local copy instead (a file or folder; --source-dir DIR for catalog names)"


def no_network_message(what: str) -> str:
    """The one-line advice when the Hub cannot be reached (shared with the catalog)."""
    return (f"cannot reach the Hugging Face Hub at {_endpoint()} for {what}; with no network, {_LOCAL_COPY}, or set "
            "HF_HUB_OFFLINE=1 to read what an earlier download left in the Hub cache (HF_HOME)")


def not_cached_message(what: str, download: str) -> str:
    """The one-line advice when HF_HUB_OFFLINE=1 and the Hub cache lacks something; `download`
    is what `hf download` needs to fetch it (repository, options)."""
    return (f"{what} is not in the Hub cache ({_hub_cache()}) and HF_HUB_OFFLINE=1 forbids downloading it; download "
            f"it once with network (`hf download --repo-type dataset {download}`), {_LOCAL_COPY}, or unset "
            "HF_HUB_OFFLINE")


def unreachable(e: BaseException) -> str | None:
    """Why the Hub could not serve a request, when `e` (or its cause) says so: "offline" (HF_HUB_OFFLINE=1
    and the cache lacks it) or "network" (no connection); None for other exceptions."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    chain = list(_chain(e))
    if any(_is_network_error(c) or isinstance(c, LocalEntryNotFoundError) for c in chain):
        return "offline" if _offline() else "network"
    return None


def hub_error(e: BaseException, what: str, download: str = "OWNER/NAME") -> DataError | None:
    """A one-line DataError for a huggingface_hub/datasets exception about `what`, or None for an
    exception that is not about the Hub; `download` is what `hf download` needs to fetch it."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    chain = list(_chain(e))
    if any(isinstance(c, GatedRepoError) for c in chain) or "is a gated dataset" in str(e):
        return DataError(f"{what} is gated on the Hub: accept its terms on its Hub page, then set HF_TOKEN to a "
                         "token of an account with access (or run `hf auth login`)")
    if any(isinstance(c, RevisionNotFoundError) for c in chain):
        return DataError(f"{what}: no such revision on the Hub; give a branch, tag or commit sha after @")
    if any(_is_network_error(c) for c in chain) or any(isinstance(c, LocalEntryNotFoundError) for c in chain):
        return DataError(not_cached_message(what, download) if _offline() else no_network_message(what))
    if any(isinstance(c, RepositoryNotFoundError) for c in chain) or type(e).__name__ == "DatasetNotFoundError":
        return DataError(f"{what}: no such dataset on the Hub ({_endpoint()}); check OWNER/NAME, or set HF_TOKEN "
                         "if it is private")
    http = next((c for c in chain if isinstance(c, HfHubHTTPError)), None)
    if http is not None:
        status = http.response.status_code if http.response is not None else "?"
        return DataError(f"{what}: the Hub answered HTTP {status} ({str(http).splitlines()[0]})")
    return None


@contextlib.contextmanager
def translated(what: str, download: str = "OWNER/NAME") -> Iterator[None]:
    """Turn Hub exceptions raised inside the block into one-line DataErrors (see hub_error)."""
    try:
        yield
    except DataError:
        raise
    except Exception as e:  # the libraries raise many kinds; unknown ones keep their traceback
        error = hub_error(e, what, download)
        if error is None:
            raise
        raise error from None


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("hf: sources need the Hugging Face `datasets` library: pip install 'tinylm[hf]'") from None
    return datasets


# --------------------------------------------------------------------------- resolving a dataset


@dataclass
class HubDataset:
    """A Hub dataset resolved to one commit, with its builder (configuration, splits, data files)."""

    spec: HubSpec
    sha: str  # the commit read
    builder: Any  # datasets.DatasetBuilder
    snapshot: Path | None = None  # offline: the snapshot folder in the Hub cache
    file_info: dict[str, dict] = field(default_factory=dict)  # path in the repo -> {"bytes", "sha256"}

    @property
    def config(self) -> str:
        return self.builder.config.name

    @property
    def splits(self) -> list[str]:
        return list(self.builder.config.data_files or {})

    def data_files(self, split: str) -> list[str]:
        return [str(f) for f in self.builder.config.data_files[split]]

    def repo_path(self, file: str) -> str:
        """A data file's path inside the repository (it is a hf:// URL online, a local path offline)."""
        if self.snapshot is not None:
            return Path(file).relative_to(self.snapshot).as_posix()
        return file.split(f"@{self.sha}/", 1)[-1]

    def stream(self, split: str) -> Any:
        """The split as a datasets.IterableDataset."""
        if split not in self.splits:
            raise DataError(f"{self.spec}: no split {split!r} (its splits: {', '.join(self.splits)}); "
                            "choose one with --hf-split")
        with translated(str(self.spec), self.spec.download):
            return self.builder.as_streaming_dataset(split=split)


def _snapshot(spec: HubSpec) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.repo, repo_type="dataset", revision=spec.revision,
                                      local_files_only=True))
    except Exception:
        raise DataError(not_cached_message(str(spec), spec.download)) from None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _builder(datasets: Any, path: str, spec: HubSpec, sha: str | None) -> Any:
    try:
        return datasets.load_dataset_builder(path, spec.config, revision=sha)
    except ValueError as e:
        message = str(e)
        if "BuilderConfig" not in message and "Config name is missing" not in message:
            raise
        configs = datasets.get_dataset_config_names(path, revision=sha)
        if spec.config:
            raise DataError(f"{spec}: no config {spec.config!r} (its configs: {', '.join(configs)}); "
                            f"write hf:{spec.repo}:CONFIG") from None
        raise DataError(f"hf:{spec.repo} has several configs; name one, as hf:{spec.repo}:CONFIG "
                        f"(its configs: {', '.join(configs)})") from None


def open_hub(spec: str | HubSpec) -> HubDataset:
    """Resolve `spec` to a commit and build its datasets builder (a few metadata requests; no data)."""
    s = spec if isinstance(spec, HubSpec) else parse_spec(spec)
    datasets = _datasets()
    with translated(str(s), s.download):
        if _offline():
            snapshot = _snapshot(s)
            builder = _builder(datasets, str(snapshot), s, None)
            return HubDataset(s, snapshot.name, builder, snapshot)
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(s.repo, revision=s.revision).sha
        return HubDataset(s, sha, _builder(datasets, s.repo, s, sha))


def cached_sha256(path: Path) -> str | None:
    """The sha256 the Hub published for a file in the Hub cache, or None: the cache names each blob
    by the file's ETag, which is the sha256 for LFS files (a git object id for small ones)."""
    blob = os.path.basename(os.path.realpath(path))
    return blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None


def _describe_files(hd: HubDataset, files: list[str]) -> None:
    """Size and published sha256 (LFS files) of each data file, into hd.file_info."""
    wanted = [hd.repo_path(f) for f in files if hd.repo_path(f) not in hd.file_info]
    if hd.snapshot is not None:
        for path in wanted:
            hd.file_info[path] = {"bytes": (hd.snapshot / path).stat().st_size,
                                  "sha256": cached_sha256(hd.snapshot / path)}
        return
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    with translated(str(hd.spec), hd.spec.download):
        for start in range(0, len(wanted), _PATHS_PER_REQUEST):
            for entry in api.get_paths_info(hd.spec.repo, wanted[start:start + _PATHS_PER_REQUEST],
                                            revision=hd.sha, repo_type="dataset"):
                if isinstance(entry, RepoFile):
                    hd.file_info[entry.path] = {"bytes": entry.size, "sha256": entry.lfs.sha256 if entry.lfs else None}


# --------------------------------------------------------------------------- records and text


def _shards(hd: HubDataset, split: str) -> Iterator[tuple[list[str], Any]]:
    """(data files, IterableDataset over them), one data file at a time where the builder has one
    shard per file (Parquet, JSON, text), else the whole split at once."""
    stream, files = hd.stream(split), hd.data_files(split)
    if stream.num_shards == len(files) > 1:
        for i, file in enumerate(files):
            yield [file], stream.shard(num_shards=len(files), index=i, contiguous=True)
    else:
        yield files, stream


def iter_records(spec: str | HubSpec, split: str = "train", hub: HubDataset | None = None) -> Iterator[dict]:
    """The records (dicts of column -> value) of one split of a Hub dataset, streamed in order.

    For readers of structured records (`{"instruction", "input", "output"}`, `{"messages": [...]}`).
    `split` is the dataset's own split name (`split_names` lists them). Raises DataError, with the
    available configs or splits, for an unknown dataset, config or split, a gated dataset without
    HF_TOKEN, or no network.
    """
    hd = hub or open_hub(spec)
    stream = hd.stream(split)
    with translated(str(hd.spec), hd.spec.download):
        yield from stream


def split_names(spec: str | HubSpec) -> list[str]:
    """The dataset's own split names, in the order its card (or file layout) gives them."""
    return open_hub(spec).splits


def _texts(hd: HubDataset, split: str, text_field: str, files_read: dict[str, dict]) -> Iterator[Piece]:
    for files, shard in _shards(hd, split):
        _describe_files(hd, files)
        for f in files:
            path = hd.repo_path(f)
            files_read[path] = hd.file_info.get(path, {"bytes": None, "sha256": None})
        with translated(str(hd.spec), hd.spec.download):
            for table in shard.with_format("arrow").iter(batch_size=BATCH_ROWS):
                if text_field not in table.column_names:
                    raise DataError(f"{hd.spec} ({split}) has no field {text_field!r} (its fields: "
                                    f"{', '.join(table.column_names)}); name the text field with --text-field")
                yield from column_documents(table.column(text_field), text_field, f"{hd.spec} ({split})")


def tinylm_splits(splits: list[str], train: str) -> dict[str, str]:
    """tinylm split -> the dataset's split: {"train", "val"[, "test"]} when it has a validation
    split besides `train`, else {"all": train} (preparation then holds validation out of it)."""
    val = next((s for s in VAL_SPLITS if s in splits and s != train), None)
    if val is None:
        return {"all": train}
    test = next((s for s in TEST_SPLITS if s in splits and s not in (train, val)), None)
    return {"train": train, "val": val, **({"test": test} if test else {})}


def hub_source(spec: str, text_field: str = "text", split: str = "train") -> Source:
    """A Hub dataset as a Source: its `split` (default train) as training data, its validation and
    test splits as tinylm's val and test when it has them (see the module docstring)."""
    hd = open_hub(spec)
    if split not in hd.splits:
        raise DataError(f"{hd.spec} has no split {split!r} (its splits: {', '.join(hd.splits)}); "
                        "choose the training split with --hf-split")
    mapping = tinylm_splits(hd.splits, split)
    files: dict[str, dict] = {}

    def stream(hub_split: str) -> Stream:
        return lambda: _texts(hd, hub_split, text_field, files)

    _describe_files(hd, [f for s in mapping.values() for f in hd.data_files(s)])
    sizes = [hd.file_info.get(hd.repo_path(f), {}).get("bytes") for s in mapping.values() for f in hd.data_files(s)]
    key = cache_key("hf", hd.spec.repo, hd.config, hd.sha, mapping, text_field)
    return Source(str(hd.spec), {ours: stream(theirs) for ours, theirs in mapping.items()}, key,
                  None if None in sizes else sum(sizes), files, revision=hd.sha)

