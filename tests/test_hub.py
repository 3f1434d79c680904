"""Hugging Face Hub datasets (`hf:OWNER/NAME`) and the catalog's Hub files, against a local fake of the Hub.

The repositories are laid out as on the Hub (Parquet shards, JSONL, a README.md whose YAML names the
configs and splits) and served by tests/hub_fake.py through HF_ENDPOINT, or read from a Hub cache with
HF_HUB_OFFLINE=1. `huggingface_hub` and `datasets` read their environment variables when they are
imported, so every Hub client runs in a fresh Python subprocess (mostly the real `tinylm` command) with its
own HF_HOME; a sitecustomize module in those subprocesses refuses any connection that does not stay on this
machine, so no test can reach the internet.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from dataset_files import same_data_dirs, stories
from hub_fake import GUARD, FakeHub
from tinylm.data import catalog, load_split, read_meta
from tinylm.data.prepare import prepare
from tinylm.data.sources import Source, chain, read_parquet
from tinylm.tokenizers import load_tokenizer

pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

TOKEN = "hf_test_token"
README = """\
---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: validation
    path: data/validation-*
  - split: test
    path: data/test-*
- config_name: small
  data_files:
  - split: train
    path: data/train-00000-of-00008.parquet
---
# Stories for tinylm's tests
"""
RECORDS_README = """\
---
configs:
- config_name: chat
  data_files:
  - split: train
    path: chat/train.jsonl
  - split: validation
    path: chat/validation.jsonl
- config_name: instruct
  data_files:
  - split: train
    path: instruct/*.jsonl
---
"""


def _parquet(path: Path, texts: list[str], row_group: int = 25) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # uncompressed, no dictionary: the file's bytes are about the text's, so byte counts mean something
    pq.write_table(pa.table({"id": [f"doc-{i}" for i in range(len(texts))], "text": texts}), path,
                   row_group_size=row_group, compression="none", use_dictionary=False)


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


class Repos:
    """The repositories the fake Hub serves, and the texts written into them."""

    def __init__(self, root: Path, corpus_text: str) -> None:
        self.root = root
        self.train = [stories(corpus_text, 100, offset=100 * k) for k in range(8)]  # 8 shards of ~60 KB
        self.val, self.test = stories(corpus_text, 20, offset=900), stories(corpus_text, 20, offset=950)
        self.stories = root / "stories"
        for k, texts in enumerate(self.train):
            _parquet(self.stories / f"data/train-{k:05d}-of-00008.parquet", texts)
        _parquet(self.stories / "data/validation-00000-of-00001.parquet", self.val)
        _parquet(self.stories / "data/test-00000-of-00001.parquet", self.test)
        (self.stories / "README.md").write_text(README)

        self.chat = [{"messages": [{"role": "user", "content": f"question {i}?"},
                                   {"role": "assistant", "content": f"answer {i}."}]} for i in range(30)]
        self.instruct = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(12)]
        self.records = root / "records"
        _jsonl(self.records / "chat/train.jsonl", self.chat[:25])
        _jsonl(self.records / "chat/validation.jsonl", self.chat[25:])
        _jsonl(self.records / "instruct/part-0.jsonl", self.instruct[:6])
        _jsonl(self.records / "instruct/part-1.jsonl", self.instruct[6:])
        (self.records / "README.md").write_text(RECORDS_README)

        self.gated = root / "gated"
        _parquet(self.gated / "data/train-00000-of-00001.parquet", self.val)
        (self.gated / "README.md").write_text("---\nlicense: other\n---\n")

        # the catalog's repositories, at the commits it pins
        self.tinystories = root / "TinyStories"
        self.tinystories.mkdir()
        for split, texts in (("train", self.train[0]), ("valid", self.val)):
            raw = "".join(f"{s}\n<|endoftext|>\n" for s in texts)
            (self.tinystories / f"TinyStoriesV2-GPT4-{split}.txt").write_text(raw, encoding="utf-8")
        self.fineweb = root / "fineweb-edu"
        pages = stories(corpus_text, 3000)
        _parquet(self.fineweb / "sample/10BT/000_00000.parquet", pages[:1500], row_group=50)
        _parquet(self.fineweb / "sample/10BT/001_00000.parquet", pages[1500:], row_group=50)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Repos:
    return Repos(tmp_path_factory.mktemp("repos"), corpus_text)


@pytest.fixture(scope="module")
def hub(repos: Repos) -> Iterator[FakeHub]:
    with FakeHub() as server:
        server.add("tinylm/stories", repos.stories)
        server.add("tinylm/records", repos.records)
        server.add("tinylm/gated", repos.gated, gated=True)
        server.add("roneneldan/TinyStories", repos.tinystories, sha=catalog.DATASETS["tinystories"].revision)
        server.add("HuggingFaceFW/fineweb-edu", repos.fineweb, sha=catalog.DATASETS["fineweb-edu"].revision)
        yield server


@pytest.fixture
def run(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """run(*tinylm_args | code=..., env=...) -> CompletedProcess, in a subprocess pointed at the fake Hub
    with a fresh HF_HOME for the test."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    monkeypatch.delenv("TINYLM_DATA_DIR", raising=False)
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    # USE_TORCH=0: datasets would import torch (seconds) only to share an epoch counter with DataLoader workers
    base.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", USE_TORCH="0",
                PYTHONPATH=os.pathsep.join([str(guard), *filter(None, [os.environ.get("PYTHONPATH")])]))

    def _run(*args: str, code: str = "", env: dict[str, str] | None = None, ok: bool = True):
        argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "tinylm", *args]
        result = subprocess.run(argv, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120)
        if ok and result.returncode:
            pytest.fail(f"{' '.join(args) or 'code'} failed:\n{result.stderr[-3000:]}")
        return result

    return _run


def _tokens(out: Path, split: str) -> list[int]:
    return load_split(out, split).tolist()


def _data_files(fetched: set[str]) -> set[str]:
    return {f for f in fetched if f.endswith((".parquet", ".jsonl", ".txt"))}


CLI_LOOP = """
import contextlib, io, json
from tinylm.cli import main
out = []
for argv in ARGVS:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        out.append([main(argv), err.getvalue().strip().splitlines()[-1]])
print(json.dumps(out))
"""


def _cli_lines(run, argvs: list[list[str]], env: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """Several `tinylm` commands in one subprocess (one import of the libraries): (exit status, last line
    of stderr) of each."""
    return [tuple(r) for r in json.loads(run(code=CLI_LOOP.replace("ARGVS", repr(argvs)), env=env).stdout)]


# --------------------------------------------------------------------------- hf: sources


def test_hf_source_streams_its_splits_and_equals_the_same_files_given_locally(run, hub, repos, tmp_path):
    sha = hub.repos["tinylm/stories"].sha
    commands = [["prepare", "hf:tinylm/stories:small", "--tokenizer", "gpt2", "--out", str(tmp_path / "hub")],
                ["prepare", "hf:tinylm/stories", "--tokenizer", "gpt2", "--out", str(tmp_path / "splits")]]
    assert [rc for rc, _ in _cli_lines(run, commands)] == [0, 0]
    # a config whose only split is train: the usual tail split applies, exactly as for the local file
    local = prepare(str(repos.stories / "data/train-00000-of-00008.parquet"), "gpt2", tmp_path / "local")
    for name in ("train.bin", "val.bin", "tokenizer.tinylm.json"):
        assert (tmp_path / "hub" / name).read_bytes() == (local / name).read_bytes()
    meta = read_meta(tmp_path / "hub")
    assert meta["source"]["name"] == "hf:tinylm/stories:small" and meta["source"]["revision"] == sha
    local_file = read_meta(local)["source"]["files"]["train-00000-of-00008.parquet"]
    assert meta["source"]["files"] == {"data/train-00000-of-00008.parquet": local_file}  # the Hub's sha256 = ours

    # the default config has validation and test splits: they become tinylm's val and test
    meta, tok = read_meta(tmp_path / "splits"), load_tokenizer(tmp_path / "splits")
    assert meta["split"] == {"method": "source"} and list(meta["splits"]) == ["train", "val", "test"]
    assert meta["splits"]["train"]["documents"] == 800 and meta["source"]["revision"] == sha
    assert len(meta["source"]["files"]) == 10
    for split, texts in (("val", repos.val), ("test", repos.test)):
        assert _tokens(tmp_path / "splits", split) == [i for t in texts for i in tok.encode(t) + [tok.eot_id]]
    data = repos.stories / "data"
    files = {"train": sorted(data.glob("train-*")), "val": [*data.glob("valid*")], "test": [*data.glob("test-*")]}
    same_files = Source("local", {split: chain(*(lambda p=p: read_parquet(p, "text") for p in paths))
                                  for split, paths in files.items()}, "local")
    local = prepare(same_files, tok, tmp_path / "local-splits", workers=1)
    for split in ("train", "val", "test"):
        assert (local / f"{split}.bin").read_bytes() == (tmp_path / "splits" / f"{split}.bin").read_bytes()


def test_max_tokens_stops_reading_early_and_the_same_revision_reuses_the_cache(run, hub, repos):
    hub.reset_log()
    out = Path(run("prepare", "hf:tinylm/stories", "--tokenizer", "gpt2", "--max-tokens", "2000").stdout.strip())
    meta = read_meta(out)
    assert meta["splits"]["train"]["tokens"] == 2000 and meta["max_tokens"] == 2000
    train_files = {f"data/train-{k:05d}-of-00008.parquet" for k in range(8)}
    fetched = _data_files(hub.log.files_fetched(hub))
    assert fetched & train_files == {"data/train-00000-of-00008.parquet"}  # the first shard holds 2,000 tokens
    total = sum(p.stat().st_size for p in repos.stories.rglob("*.parquet"))
    assert hub.log.bytes_sent < total / 2, (hub.log.bytes_sent, total)
    assert list(meta["source"]["files"]) == ["data/train-00000-of-00008.parquet", "data/validation-00000-of-00001"
                                             ".parquet", "data/test-00000-of-00001.parquet"]  # the files read

    hub.reset_log()
    again = run("prepare", "hf:tinylm/stories", "--tokenizer", "gpt2", "--max-tokens", "2000")
    assert "already prepared" in again.stderr and Path(again.stdout.strip()) == out
    assert not _data_files(hub.log.files_fetched(hub))  # metadata only: the commit is the same


def test_records_of_a_split_for_readers_of_structured_data(run, repos):
    code = textwrap.dedent("""
        import json
        from tinylm.data.hub import iter_records, split_names
        print(json.dumps({"chat": list(iter_records("hf:tinylm/records:chat", "train")),
                          "chat_val": list(iter_records("hf:tinylm/records:chat", "validation")),
                          "instruct": list(iter_records("hf:tinylm/records:instruct")),
                          "splits": split_names("hf:tinylm/records:chat"),
                          "stories": list(iter_records("hf:tinylm/stories", "test"))[:2]}))
    """)
    got = json.loads(run(code=code).stdout)
    assert got["chat"] == repos.chat[:25] and got["chat_val"] == repos.chat[25:]
    assert got["instruct"] == repos.instruct and got["splits"] == ["train", "validation"]
    assert got["stories"] == [{"id": "doc-0", "text": repos.test[0]}, {"id": "doc-1", "text": repos.test[1]}]


def test_bad_hub_input_gives_one_line_errors(run, tmp_path):
    cases = {
        "hf:nobody/nothing": r"error: hf:nobody/nothing: no such dataset on the Hub .*set HF_TOKEN if it is private",
        "hf:tinylm/stories:nope": r"error: hf:tinylm/stories:nope: no config 'nope' \(its configs: default, small\)",
        "hf:tinylm/stories --hf-split dev": r"no split 'dev' \(its splits: train, validation, test\); .*--hf-split",
        "hf:tinylm/stories --text-field body": r"has no field 'body' \(its fields: id, text\); .*--text-field",
        "hf:tinylm/records:chat --text-field messages": r"field 'messages' holds list, not text",
        "hf:tinylm/gated": r"error: hf:tinylm/gated is gated on the Hub: .*set HF_TOKEN to a token",
        "hf:tinylm/stories@v9": r"error: hf:tinylm/stories@v9: no such revision on the Hub",
        "tinylm/stories": r"error: tinylm/stories: no such file or folder \(a Hugging Face dataset is written "
                          r"hf:tinylm/stories\)",
    }
    argvs = [["prepare", *spec.split(), "--out", str(tmp_path / str(i))] for i, spec in enumerate(cases)]
    for (rc, line), pattern in zip(_cli_lines(run, argvs), cases.values(), strict=True):
        assert rc == 1 and re.search(pattern, line), (line, pattern)

    gated = run("prepare", "hf:tinylm/gated", "--out", str(tmp_path / "gated"), env={"HF_TOKEN": TOKEN})
    assert "prepared hf:tinylm/gated" in gated.stderr

    missing = run("prepare", "hf:tinylm/stories", env={"HIDE_DATASETS": "1"}, ok=False)
    assert missing.returncode == 1 and missing.stderr.strip() == (
        "error: hf: sources need the Hugging Face `datasets` library: pip install 'tinylm[hf]'")

    # (TinyStories' hf_hub_download retries for ~20 s before it gives up: the same message, not tested here)
    argvs = [["prepare", spec, "--out", str(tmp_path / spec)] for spec in ("hf:tinylm/stories", "fineweb-edu")]
    for (rc, line), what in zip(_cli_lines(run, argvs, env={"HF_ENDPOINT": "http://127.0.0.1:9"}),
                                ("hf:tinylm/stories", "fineweb-edu (HuggingFaceFW/fineweb-edu@")):
        assert rc == 1 and line.startswith(f"error: cannot reach the Hugging Face Hub at http://127.0.0.1:9 for {what}")
        assert "--source-dir" in line and "HF_HUB_OFFLINE=1" in line


# --------------------------------------------------------------------------- offline


def test_offline_reads_the_hub_cache_and_nothing_else(run, hub, tmp_path):
    """HF_HUB_OFFLINE=1 (and an endpoint that does not answer): hf: sources and fineweb-edu come from
    snapshots an earlier `snapshot_download` (what `hf download` runs) left in HF_HOME."""
    fineweb = catalog.DATASETS["fineweb-edu"]
    run(code=f"""if True:
        from huggingface_hub import snapshot_download
        snapshot_download("tinylm/stories", repo_type="dataset")
        snapshot_download("{fineweb.repo}", repo_type="dataset", revision="{fineweb.revision}",
                          allow_patterns=["sample/10BT/000_00000.parquet"])
    """)
    online = [["prepare", "hf:tinylm/stories:small", "--out", str(tmp_path / "online")],
              ["prepare", "fineweb-edu", "--max-tokens", "3000", "--out", str(tmp_path / "fw-online")]]
    assert [rc for rc, _ in _cli_lines(run, online)] == [0, 0]
    hub.reset_log()
    offline = [["prepare", "hf:tinylm/stories:small", "--out", str(tmp_path / "offline")],
               ["prepare", "fineweb-edu", "--max-tokens", "3000", "--out", str(tmp_path / "fw-offline")],
               ["prepare", "hf:tinylm/records:chat", "--text-field", "messages", "--out", str(tmp_path / "x")]]
    results = _cli_lines(run, offline, env={"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert [rc for rc, _ in results] == [0, 0, 1] and not hub.log.requests
    assert results[2][1].startswith("error: hf:tinylm/records:chat is not in the Hub cache (") and \
        "HF_HUB_OFFLINE=1 forbids downloading it; download it once with network (`hf download --repo-type dataset " \
        "tinylm/records`)" in results[2][1]
    same_data_dirs(tmp_path / "online", tmp_path / "offline")
    same_data_dirs(tmp_path / "fw-online", tmp_path / "fw-offline")


# --------------------------------------------------------------------------- the catalog's Hub files


def test_catalog_tinystories_and_fineweb_edu_through_huggingface_hub(run, hub, repos, tmp_path, monkeypatch):
    """The same data directories from a local copy (--source-dir) and through huggingface_hub: TinyStories'
    files downloaded into the Hub cache at the pinned commit, FineWeb-Edu's Parquet read in place, only
    the row groups the token cap needs."""
    copy = tmp_path / "copy"
    for name, folder in (("tinystories", repos.tinystories), ("fineweb-edu", repos.fineweb)):
        (copy / name).mkdir(parents=True)
        for f in folder.rglob("*.*"):
            (copy / name / f.name).write_bytes(f.read_bytes())
    hub.reset_log()
    commands = [["prepare", "tinystories", "--tokenizer", "gpt2", "--out", str(tmp_path / "ts-hub")],
                ["prepare", "fineweb-edu", "--tokenizer", "gpt2", "--max-tokens", "3000", "--out",
                 str(tmp_path / "fw-hub")]]
    assert [rc for rc, _ in _cli_lines(run, commands)] == [0, 0]
    local = prepare("tinystories", "gpt2", tmp_path / "ts-local", source_dir=str(copy), workers=1)
    meta = same_data_dirs(local, tmp_path / "ts-hub")
    assert meta["split"] == {"method": "source"} and meta["source"]["revision"] == catalog.DATASETS[
        "tinystories"].revision
    assert meta["splits"]["train"]["documents"] == 100 and meta["splits"]["val"]["documents"] == 20
    tok = load_tokenizer(local)
    assert _tokens(local, "val") == [i for s in repos.val for i in tok.encode(s) + [tok.eot_id]]  # stories whole
    pinned = catalog.DATASETS["tinystories"].revision
    snapshot = tmp_path / "hf-home" / "hub" / "datasets--roneneldan--TinyStories" / "snapshots" / pinned
    assert sorted(p.name for p in snapshot.iterdir()) == ["TinyStoriesV2-GPT4-train.txt",
                                                          "TinyStoriesV2-GPT4-valid.txt"]

    fw_local = prepare("fineweb-edu", "gpt2", tmp_path / "fw-local", max_tokens=3000, source_dir=str(copy))
    meta = same_data_dirs(fw_local, tmp_path / "fw-hub")
    assert meta["splits"]["train"]["tokens"] == 3000 and list(meta["source"]["files"]) == ["000_00000.parquet"]
    first = "sample/10BT/000_00000.parquet"
    fineweb_read = {f: n for f, n in hub.log.bytes_by_file.items() if f.startswith("sample/")}
    assert list(fineweb_read) == [first] and fineweb_read[first] < (repos.fineweb / first).stat().st_size / 2

    # a damaged file in the Hub cache is caught by the sha256 the Hub published for it (its blob's name)
    blob = (snapshot / "TinyStoriesV2-GPT4-valid.txt").resolve()
    blob.write_bytes(blob.read_bytes().replace(b"story", b"stori"))
    [(rc, line)] = _cli_lines(run, [["prepare", "tinystories", "--out", str(tmp_path / "ts-again")]])
    assert rc == 1 and re.fullmatch(r"error: .*TinyStoriesV2-GPT4-valid.txt does not match its published checksum "
                                    r"\(sha256 [0-9a-f]{64}\); delete it and run the command again .*", line)
