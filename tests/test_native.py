"""Native code in child processes (tinylm.interop.native): a crash, an abort, an exit or a hang in the
child is an error in the parent that names what happened, and the parent (a test session) goes on."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from native_crashers import live_children
from tinylm.interop.native import ChildError, ChildProcess, NativeCrash

TESTS = str(Path(__file__).resolve().parent)


def _child(**kw: object) -> ChildProcess:
    return ChildProcess("native_crashers:Crasher", name="crasher", path=[TESTS], **kw)


def test_calls_return_values_and_arrays_and_python_errors_keep_the_child() -> None:
    with _child() as child:
        assert child.call("echo", {"a": [1, 2.5, "x", None]}) == {"a": [1, 2.5, "x", None]}
        array = child.call("array", 4)
        assert array.dtype == np.float32 and array.shape == (4, 3) and array[3, 2] == 11
        with pytest.raises(ChildError, match="ValueError: a Python error in the child"):
            child.call("raise_error")
        assert child.call("echo", 7) == 7  # still serving


def test_a_reply_json_cannot_encode_is_a_child_error_naming_the_method_and_the_type() -> None:
    with _child(hint="the known bug X") as child:
        with pytest.raises(ChildError) as info:
            child.call("unencodable")
        message = str(info.value)
        assert "unencodable() returned a dict" in message and "Object of type set" in message, message
        assert "likely cause" not in message and "\n" not in message
        assert child.call("echo", 1) == 1  # still serving: not a crash


def test_a_failed_start_leaves_no_child_process() -> None:
    before = set(live_children())
    errors = []  # kept, as a test session keeps failed tests' tracebacks
    for target in ("native_crashers:NoSuchClass", "no_such_module:Crasher"):
        try:
            ChildProcess(target, name="crasher", path=[TESTS])
        except ChildError as e:
            errors.append(e)
    assert len(errors) == 2 and "NoSuchClass" in str(errors[0])
    assert set(live_children()) == before


@pytest.mark.parametrize("method,args,needle,code", [
    ("segfault", (), "died with SIGSEGV (signal 11) during segfault()", -11),
    ("abort", (), "died with SIGABRT (signal 6) during abort()", -6),
    ("exit", (3,), "exited with status 3 during exit()", 3),
])
def test_a_dead_child_is_an_error_naming_the_signal_and_the_likely_cause(method: str, args: tuple, needle: str,
                                                                         code: int) -> None:
    child = _child(hint="the known bug X; work around it with Y")
    with pytest.raises(NativeCrash) as info:
        child.call(method, *args)
    message = str(info.value)
    assert needle in message and "likely cause: the known bug X; work around it with Y" in message
    assert info.value.returncode == code and "\n" not in message
    if code < 0:
        assert "Fatal Python error" in message  # the child's faulthandler output, from its stderr
    with pytest.raises(NativeCrash):  # the process is gone: later calls say so again
        child.call("echo", 1)
    child.close()


def test_a_hung_child_is_killed_after_the_timeout() -> None:
    child = _child(timeout=1.0)
    with pytest.raises(NativeCrash, match="stopped answering for 1 s and was killed during hang"):
        child.call("hang", 60)
    assert child._proc.poll() is not None
    child.close()


def test_what_native_code_prints_on_stdout_cannot_break_the_protocol() -> None:
    with _child() as child:  # the child's fd 1 is its stderr: what is printed there lands in stderr
        assert child.call("write_stdout", "\x00\x01 not a frame\n" * 100) == "written"
        assert child.call("echo", "ok") == "ok"
        assert "not a frame" in child.stderr_tail()


def test_a_segfault_in_a_child_fails_one_test_and_the_session_goes_on(tmp_path: Path) -> None:
    """The isolation the suite relies on: a pytest session whose first test's child segfaults on
    purpose reports that test as failed, with the signal, runs the next test and prints its summary."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(f"""
        from tinylm.interop.native import ChildProcess

        def test_native_code_that_crashes():
            with ChildProcess("native_crashers:Crasher", name="native code", path=[{TESTS!r}]) as child:
                child.call("segfault")

        def test_after_the_crash():
            assert 1 + 1 == 2
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "1 failed, 1 passed" in out, out
    assert "NativeCrash: native code (child process" in out and "died with SIGSEGV (signal 11)" in out, out
