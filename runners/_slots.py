"""A machine-wide cap on running pods, shared by every kiln process on this machine.

Why lock files and ``flock``: the kernel drops a process's flocks when it dies, ``kill -9``
included, so a crashed runner never leaks a slot; there is no daemon to run and no stale pid file
to clean up. Each slot is one empty file::

    <slots dir>/gate                        held only while looking for a free slot
    <slots dir>/slot-0 ... slot-<N-1>

A pod holds an exclusive ``flock`` on one of them from just before its process starts until that
process has exited. A runner whose limit is N uses only ``slot-0 .. slot-<N-1>``, so no process
ever runs more than its own N pods and all processes together never run more than the largest N
among them. The slots dir is ``$KILN_SLOTS_DIR``, else ``~/.cache/kiln/slots``.

Why the gate: without it a busy process starves the others, because it re-takes the slot it just
released before a waiter in another process next looks. Whoever waits for a slot held by another
process holds the gate, so a slot that frees goes to that waiter; the others wait for the gate.
A thread waits for room among its own process's slots (a release there) before it takes the gate.

Cost: with no contention a pod pays four ``flock`` syscalls (gate, slot, gate, and the slot's
release; the fds stay open for the life of the process). Waiting is polled (0.5 ms doubling to
10 ms), not a blocking ``flock``: one blocking call cannot watch several slots, and it could not
give up on a stop request. Releases within this process wake its waiters at once.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kiln.errors import WorkflowError


def default_slots_dir() -> Path:
    env = os.environ.get("KILN_SLOTS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kiln" / "slots"


class SlotPool:
    """The slot files of one directory, as seen by this process (one pool per directory)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkflowError(f"cannot create the concurrency slots folder {self.dir}: {exc.strerror}",
                                hint="set KILN_SLOTS_DIR to a writable folder shared by kiln processes") from exc
        self.fds: list[int] = []
        self.held: set[int] = set()  # slots this process holds: flock would let it lock one twice
        self.cv = threading.Condition(threading.Lock())
        self.gate_fd = self._open(self.dir / "gate")
        # the gate's flock belongs to this process's fd, so threads queue on a lock of their own
        self.gate_lock = threading.Lock()

    def _open(self, path: Path) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise WorkflowError(f"cannot open concurrency slot file {path}: {exc.strerror}",
                                hint="set KILN_SLOTS_DIR to a writable folder shared by kiln processes") from exc

    def _fd(self, i: int) -> int:
        while len(self.fds) <= i:
            self.fds.append(self._open(self.dir / f"slot-{len(self.fds)}"))
        return self.fds[i]

    def acquire(self, n: int, check: Callable[[], None] | None = None) -> int:
        """Index of a slot among the first ``n``, now held; waits for one. ``check`` runs between
        waits and may raise to give up (a stop request)."""
        while not self.gate_lock.acquire(timeout=0.2):
            if check is not None:
                check()
        try:
            # wait for room among this process's own slots before taking the gate: a gate held
            # while only a release in this process can help would starve the other processes
            with self.cv:
                while sum(1 for i in self.held if i < n) >= n:
                    if check is not None:
                        check()
                    self.cv.wait(0.2)
            delay = 0.0005
            while not _try_flock(self.gate_fd):
                if check is not None:
                    check()
                time.sleep(delay)
                delay = min(delay * 2, 0.01)
            try:
                return self._take(n, check)
            finally:
                fcntl.flock(self.gate_fd, fcntl.LOCK_UN)
        finally:
            self.gate_lock.release()

    def _take(self, n: int, check: Callable[[], None] | None) -> int:
        delay = 0.0005
        with self.cv:
            while True:
                mine_full = True
                for i in range(n):
                    if i in self.held:
                        continue
                    mine_full = False
                    if _try_flock(self._fd(i)):
                        self.held.add(i)
                        return i
                if check is not None:
                    check()
                if mine_full:  # not after the wait in acquire(); kept so a bug cannot spin
                    self.cv.wait(0.2)
                else:
                    self.cv.wait(delay)
                    delay = min(delay * 2, 0.01)

    def release(self, i: int) -> None:
        with self.cv:
            fcntl.flock(self.fds[i], fcntl.LOCK_UN)
            self.held.discard(i)
            self.cv.notify_all()


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False  # another process holds it
        raise
    return True


_POOLS: dict[str, SlotPool] = {}
_POOLS_LOCK = threading.Lock()


def pool_for(directory: Path) -> SlotPool:
    """The process-wide pool of ``directory`` (created on first use)."""
    key = os.path.abspath(directory)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = SlotPool(Path(key))
        return pool


def _forget_in_child() -> None:
    global _POOLS_LOCK
    _POOLS_LOCK = threading.Lock()  # a thread of the parent may have held it at fork time
    # a forked child shares the parent's open files and with them its flocks: drop our copies
    # (closing a copy releases nothing while the parent keeps its own) and start clean
    for pool in _POOLS.values():
        for fd in [*pool.fds, pool.gate_fd]:
            try:
                os.close(fd)
            except OSError:
                pass
    _POOLS.clear()


os.register_at_fork(after_in_child=_forget_in_child)

__all__ = ["SlotPool", "pool_for", "default_slots_dir"]
