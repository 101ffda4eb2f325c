"""RepoLock / ObjectLock with real processes: held, refused, waited for, and freed by SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kiln.errors import LockHeld
from kiln.state import ObjectLock, RepoLock, current_holder
from kiln.state.lock import lock_path, object_lock_path
from tests.state.helpers import expect_line, spawn


def _holder(repo: Path, *args: str) -> subprocess.Popen[str]:
    proc = spawn(*args)
    expect_line(proc, "HELD")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_holder_info_written_and_cleared(tmp_path: Path) -> None:
    with RepoLock(tmp_path, "apply") as lock:
        assert lock.held
        info = json.loads(lock_path(tmp_path).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["command"] == "kiln apply" and info["user"] and info["started_at"].endswith("Z")
        assert current_holder(lock_path(tmp_path)) == info
    assert lock_path(tmp_path).read_text() == ""  # released: no stale holder info
    assert current_holder(lock_path(tmp_path)) is None
    assert lock_path(tmp_path).exists()  # never deleted (see module docstring)


def test_held_by_other_process_names_the_holder(tmp_path: Path) -> None:
    proc = _holder(tmp_path, "hold-lock", str(tmp_path), "kiln apply", "60")
    try:
        with pytest.raises(LockHeld) as e:
            with RepoLock(tmp_path, "kiln plan"):
                pass
        msg = e.value.message
        assert msg.startswith(f"kiln apply (pid {proc.pid} on {socket.gethostname()}, since ")
        assert msg.endswith(f"holds the lock on {tmp_path}; wait for it or stop it")
        assert f"kill {proc.pid}" in e.value.hint
        assert e.value.exit_code == 3
        assert current_holder(lock_path(tmp_path))["pid"] == proc.pid
    finally:
        _stop(proc)


def test_sigkilled_holder_releases_the_lock(tmp_path: Path) -> None:
    proc = _holder(tmp_path, "hold-lock", str(tmp_path), "kiln apply", "60")
    with pytest.raises(LockHeld):
        RepoLock(tmp_path, "kiln apply").acquire()
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    # its JSON is still in the file, but nobody holds the flock: not reported, and taken at once
    assert json.loads(lock_path(tmp_path).read_text())["pid"] == proc.pid
    assert current_holder(lock_path(tmp_path)) is None
    with RepoLock(tmp_path, "kiln apply"):
        assert json.loads(lock_path(tmp_path).read_text())["pid"] == os.getpid()


def test_wait_for_holder_to_finish(tmp_path: Path) -> None:
    proc = _holder(tmp_path, "hold-lock", str(tmp_path), "kiln apply", "0.5")
    try:
        t0 = time.monotonic()
        with RepoLock(tmp_path, "kiln apply", wait=20):
            assert time.monotonic() - t0 < 15
    finally:
        _stop(proc)


def test_wait_gives_up_after_timeout(tmp_path: Path) -> None:
    proc = _holder(tmp_path, "hold-lock", str(tmp_path), "kiln apply", "60")
    try:
        t0 = time.monotonic()
        with pytest.raises(LockHeld, match=r"\(waited 0.3s\)"):
            RepoLock(tmp_path, "kiln apply", wait=0.3).acquire()
        assert 0.3 <= time.monotonic() - t0 < 5
    finally:
        _stop(proc)


def test_reentrant_in_one_thread_refused_in_another(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with RepoLock(tmp_path, "kiln apply"):
        with RepoLock(tmp_path, "kiln apply"):  # nested: fine
            pass
        assert current_holder(lock_path(tmp_path))["pid"] == os.getpid()  # inner exit kept it

        def other() -> None:
            try:
                RepoLock(tmp_path, "kiln apply").acquire()
            except BaseException as e:  # collected for the main thread
                errors.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], LockHeld)
    assert current_holder(lock_path(tmp_path)) is None


def test_subprocesses_do_not_inherit_the_lock(tmp_path: Path) -> None:
    with RepoLock(tmp_path, "kiln apply"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with RepoLock(tmp_path, "kiln apply"):  # the child still runs, the lock is free
            assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_object_locks_are_per_object(tmp_path: Path) -> None:
    key = "Experiment/vision/resnet"
    proc = _holder(tmp_path, "hold-object-lock", str(tmp_path), key, "60")
    try:
        path = object_lock_path(tmp_path, key)
        assert path.parent == tmp_path / ".kiln" / "locks" and "/" not in path.name
        with pytest.raises(LockHeld) as e:
            ObjectLock(tmp_path, key, "kiln apply").acquire()
        assert e.value.message.startswith(f"kiln train (pid {proc.pid}")
        assert f"holds the lock on {key};" in e.value.message
        with ObjectLock(tmp_path, "Experiment/vision/other"), RepoLock(tmp_path, "kiln apply"):
            pass  # other objects and the repo lock are independent
    finally:
        _stop(proc)
    with ObjectLock(tmp_path, key, "kiln apply"):
        pass
