"""A write that fails (a full disk, a file-size limit, a read-only or forbidden folder) is one line
naming the file, what went wrong and a fix, and following the fix works (issue 27, item 5).

The failures are real: a small tmpfs fills up (ENOSPC; where this process may mount one, as root),
and a file-size limit (`RLIMIT_FSIZE`, `ulimit -f`) stops writes past it (EFBIG, or numpy's short
write without an errno) while the CLI's `main` runs. Each test then does what the message says
(frees space, raises the limit, writes elsewhere, resumes) and checks that the command now succeeds."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tinylm import fileio
from tinylm.cli import main
from tinylm.errors import TinylmError, WriteError

LINE = "then run the command again"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def file_size_limit(limit: int | None):
    """This process's file-size limit (`ulimit -f`) lowered to `limit` bytes for a while (Python ignores
    SIGXFSZ, so a write past it fails with EFBIG, or short)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.fixture
def tinylm(capsys):
    """Run the tinylm CLI (in this process: the same `main` as the command), optionally under a file-size limit."""
    def run(*args: str, limit: int | None = None) -> Result:
        capsys.readouterr()
        with file_size_limit(limit):
            code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def error_line(result: Result) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (a disk that really fills up), or a skip where this process may not mount one."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (the file-size-limit tests cover the same code without it)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def read_only_disk(small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    return small_disk


def fill(disk: Path, leave: int) -> Path:
    """A filler file taking all but `leave` bytes of `disk` (deleting it is "free some space there")."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(shutil.disk_usage(disk).free - leave, 0))
    return filler


@pytest.fixture(scope="module")
def big_text(tmp_path_factory, corpus_text) -> Path:
    path = tmp_path_factory.mktemp("text") / "big.txt"
    path.write_text(corpus_text * 5, encoding="utf-8")  # 300 KB of real text
    return path


# --------------------------------------------------------------------------- the messages


def test_write_failures_name_the_file_the_cause_and_the_fix(tmp_path):
    target = tmp_path / "out" / "x.bin"
    with pytest.raises(WriteError) as e, fileio.writing(target), open("/dev/full", "wb") as f:
        f.write(b"x" * 100_000)  # the kernel's own ENOSPC
    message = str(e.value)
    assert message.startswith(f"{target}: no space left on its device (") and message.endswith(
        f"free some space there, or write to another disk, {LINE}")
    assert isinstance(e.value, TinylmError) and isinstance(e.value, OSError)  # caches that tolerate OSError still do
    cases = {errno.EACCES: "permission denied", errno.EROFS: "read-only", errno.EFBIG: "file would grow past",
             errno.ENOENT: "folder does not exist", errno.EISDIR: "is a folder", errno.EIO: "input/output error"}
    for code, words in cases.items():
        text = str(fileio.write_failure(OSError(code, os.strerror(code)), target))
        assert text.startswith(f"{target}: ") and words in text and text.endswith(LINE), text
    cached = fileio.cache_root() / "prepared" / "x" / "train.bin"
    assert "TINYLM_CACHE=DIR" in str(fileio.write_failure(OSError(errno.ENOSPC, "full"), cached))
    # an OSError about another file (a source being read) passes through as it is
    with pytest.raises(FileNotFoundError), fileio.writing(target):
        open(tmp_path / "missing.txt")


def test_the_cli_names_the_file_of_any_other_os_error(tmp_path, tinylm):
    (tmp_path / "a-file").write_text("x")
    err = error_line(tinylm("prepare", "shakespeare", "--out", str(tmp_path / "a-file" / "d")))
    assert str(tmp_path / "a-file") in err and ("not a folder" in err or "exists" in err), err


def test_a_read_only_disk_says_so_and_writing_elsewhere_works(read_only_disk, tmp_path, tinylm):
    err = error_line(tinylm("prepare", "shakespeare", "--out", str(read_only_disk / "d")))
    assert err == f"error: {read_only_disk / 'd'}: its filesystem is read-only; write to a writable disk, {LINE}"
    assert tinylm("prepare", "shakespeare", "--out", str(tmp_path / "d")).returncode == 0


def _without_permission_override() -> None:
    """In a child of root (CI runs as root, who may write anywhere): drop the capabilities that let root
    ignore permission bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from the bounding set, so the command
    it then runs meets a folder's permissions as any user does. prctl(PR_CAPBSET_DROP, cap)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_a_folder_without_write_permission_says_so_and_changing_it_works(tmp_path, tinylm):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    if os.geteuid() != 0:
        err = error_line(tinylm("prepare", "shakespeare", "--out", str(folder / "d")))
        assert err.startswith(f"error: {folder / 'd'}: permission denied; ") and "change its permissions" in err, err
        folder.chmod(0o755)
        assert tinylm("prepare", "shakespeare", "--out", str(folder / "d")).returncode == 0
        return
    # as root: the same command in a child that cannot override permissions
    command = [sys.executable, "-m", "tinylm", "prepare", "shakespeare", "--out", str(folder / "d")]
    result = subprocess.run(command, preexec_fn=_without_permission_override, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith(f"error: {folder / 'd'}: permission denied; ") and "change its permissions" in err, err
    folder.chmod(0o755)  # the fix the message names
    again = subprocess.run(command, preexec_fn=_without_permission_override, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (folder / "d" / "meta.json").is_file()


# --------------------------------------------------------------------------- the report: prepare on a full disk


@pytest.mark.slow
def test_prepare_on_a_full_disk_names_the_file_and_both_fixes_work(small_disk, tmp_path, big_text, tinylm):
    filler = fill(small_disk, leave=100_000)
    out = small_disk / "d"
    err = error_line(tinylm("prepare", str(big_text), "--out", str(out)))
    assert err.startswith(f"error: {out / 'train.bin'}: no space left on its device (") and err.endswith(
        f"free some space there, or write to another disk, {LINE}"), err
    assert no_temporary_files(small_disk)  # nothing half-written is left taking the space
    # "write to another disk"
    elsewhere = tmp_path / "d"
    assert tinylm("prepare", str(big_text), "--out", str(elsewhere)).returncode == 0
    # "free some space there", then the same command again
    filler.unlink()
    again = tinylm("prepare", str(big_text), "--out", str(out))
    assert again.returncode == 0, again.stderr
    for name in ("train.bin", "val.bin"):
        assert (out / name).read_bytes() == (elsewhere / name).read_bytes()


@pytest.mark.slow
def test_prepare_past_the_file_size_limit_names_the_limit_and_raising_it_works(tmp_path, big_text, tinylm):
    out = tmp_path / "d"
    err = error_line(tinylm("prepare", str(big_text), "--out", str(out), limit=100_000))
    assert err.startswith(f"error: {out / 'train.bin'}: the file would grow past this process's file-size limit, "
                          "ulimit -f, of 97.7 KB; raise the limit (ulimit -f unlimited), " + LINE), err
    assert no_temporary_files(out)
    assert tinylm("prepare", str(big_text), "--out", str(out)).returncode == 0  # the limit raised


# --------------------------------------------------------------------------- exports


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, corpus_file) -> Path:
    from conftest import tiny_config

    from tinylm.training import train

    cfg = tiny_config(tmp_path_factory.mktemp("bpe") / "run", corpus_file, max_steps=2, eval_interval=2)
    cfg.data.tokenizer = "bpe:600"
    return train(cfg).run_dir


@pytest.mark.slow
def test_gguf_export_past_the_limit_is_one_line_and_the_same_command_then_works(tmp_path, bpe_run, tinylm):
    pytest.importorskip("gguf")
    out = tmp_path / "m.gguf"
    # numpy's short write ("16384 requested and 11960 written") reaches the user as the file and the limit
    err = error_line(tinylm("export", str(bpe_run), "--format", "gguf", "--out", str(out), limit=60_000))
    assert err.startswith(f"error: {out}: the file would grow past this process's file-size limit") and \
        err.endswith(LINE) and "requested" not in err, err
    assert not out.exists() and no_temporary_files(tmp_path)
    done = tinylm("export", str(bpe_run), "--format", "gguf", "--out", str(out))  # no --overwrite needed
    assert done.returncode == 0 and out.stat().st_size > 60_000, done.stderr


@pytest.mark.slow
def test_gguf_export_on_a_full_disk(small_disk, tmp_path, bpe_run, tinylm):
    pytest.importorskip("gguf")
    filler = fill(small_disk, leave=40_000)
    out = small_disk / "m.gguf"
    err = error_line(tinylm("export", str(bpe_run), "--format", "gguf", "--out", str(out)))
    assert err.startswith(f"error: {out}: no space left on its device") and err.endswith(LINE), err
    filler.unlink()
    assert tinylm("export", str(bpe_run), "--format", "gguf", "--out", str(out)).returncode == 0


@pytest.mark.slow
def test_hf_export_that_fails_leaves_no_folder_that_refuses_the_next_one(tmp_path, trained_run, tinylm):
    out = tmp_path / "hf"
    err = error_line(tinylm("export", str(trained_run), "--out", str(out), limit=60_000))
    assert err.startswith(f"error: {out / 'model.safetensors'}: the file would grow past") and err.endswith(LINE)
    assert not out.exists()
    done = tinylm("export", str(trained_run), "--out", str(out))
    assert done.returncode == 0 and (out / "config.json").is_file(), done.stderr


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_a_run_without_room_for_its_first_checkpoint_says_run_it_again_and_that_works(tmp_path, corpus_file, tinylm):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny-test", "--text", str(corpus_file), "--out", str(out), "--max-steps", "4"]
    err = error_line(tinylm(*args, limit=80_000))  # the data (54 KB) fits, the weights (116 KB) do not
    assert err.startswith(f"error: {out}/") and "file-size limit" in err and err.endswith(
        "then run the same command again (the run had no checkpoint yet; nothing was kept)"), err
    assert not out.exists()
    done = tinylm(*args)
    assert done.returncode == 0 and (out / "train_state.pt").is_file(), done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("limit", [80_000, 160_000], ids=["weights", "train-state"])
def test_a_run_that_cannot_write_a_later_checkpoint_names_the_resume_that_works(tmp_path, corpus_file, tinylm,
                                                                                 limit):
    """80 KB: the weights (116 KB) do not fit; 160 KB: they do, train_state.pt (about 240 KB) does not, and
    torch.save reported the short write as `RuntimeError: [enforce fail at inline_container.cc]` (a
    traceback, and the new weights' temporary file left behind)."""
    out = tmp_path / "run"
    assert tinylm("train", "--preset", "tiny-test", "--text", str(corpus_file), "--out", str(out),
                  "--max-steps", "4").returncode == 0
    assert (out / "model.safetensors").stat().st_size < 160_000 < (out / "train_state.pt").stat().st_size
    err = error_line(tinylm("train", "--resume", str(out), "--max-steps", "8", limit=limit))
    resume = f"tinylm train --resume {out}"
    assert "file-size limit" in err and err.endswith(f"then continue from the checkpoint of step 4: {resume}"), err
    assert no_temporary_files(out)
    done = tinylm(*resume.split()[1:], "--max-steps", "8")  # the command named (the limit raised)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 8


# --------------------------------------------------------------------------- evaluation keeps its result


@pytest.mark.slow
def test_an_evaluation_whose_record_cannot_be_written_still_reports_its_result(tmp_path, trained_run, tinylm):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "evals.jsonl").write_text(json.dumps({"note": "x" * 20_000}) + "\n")
    result = tinylm("eval", str(run), "--json", limit=10_000)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["loss"] > 0  # the work is not lost
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and f"{run / 'evals.jsonl'}: the file would grow past" in warning[0]
