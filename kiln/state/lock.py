"""Process locks for a kiln repository: one for the repo's bookkeeping, one per object.

``RepoLock`` guards ``<repo>/.kiln/lock`` while a command reads specs, plans and writes state;
``ObjectLock`` guards ``<repo>/.kiln/locks/<quoted key>.lock`` and is the only lock held during
long work on one object (training), so ``kiln apply`` of other objects is not blocked by it.

Why ``fcntl.flock``: the kernel drops the lock the moment the holder dies, however it dies
(SIGKILL, OOM, power cut of a container), so there is no stale-lock clean-up to get wrong. The
lock file is never deleted (deleting a flock'ed file lets two processes "hold" different inodes),
and never replaced atomically for the same reason; its content is only informational. Once held,
the holder writes, in place::

    {"pid": 1234, "host": "build-7", "user": "alice", "command": "kiln apply",
     "started_at": "2026-05-20T12:00:00.000Z"}

and truncates it on release. A holder killed with SIGKILL leaves its JSON behind; the next
holder overwrites it, and :func:`current_holder` only reports a holder while the flock is held.

Both locks are re-entrant within one thread of one process (nested ``with`` blocks are fine, the
outermost releases); another thread of the same process is refused like another process. Lock
file descriptors are close-on-exec, so subprocesses (workflow steps) never inherit the lock.
flock is local to one machine: on NFS several hosts may not see each other's locks.
"""

from __future__ import annotations

import errno
import fcntl
import getpass
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kiln._util.fs import private_dir
from kiln.errors import LockHeld, StateError
from kiln.state.records import utcnow

__all__ = ["RepoLock", "ObjectLock", "current_holder", "lock_path", "object_lock_path"]

_POLL_S = 0.05


def lock_path(repo: Path) -> Path:
    return Path(repo) / ".kiln" / "lock"


def object_lock_path(repo: Path, key: str) -> Path:
    # quote() keeps names readable ("Dataset%2Fws%2Fimages.lock") and safe for any key.
    return Path(repo) / ".kiln" / "locks" / f"{quote(key, safe='')}.lock"


@dataclass
class _Held:
    fd: int
    count: int
    thread: int
    pid: int


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def _read_info(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 64 * 1024, 0)
        info = json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())


def current_holder(path: Path) -> dict[str, Any] | None:
    """Who holds the lock at ``path`` right now (its JSON), or None when nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(fd) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class _FileLock:
    """A re-entrant, exclusive flock on one file that records who holds it."""

    def __init__(self, path: Path, subject: str, command: str, wait: float = 0.0) -> None:
        self.path = Path(path)
        # the repository's .kiln/ (locks live in it or in its locks/ folder)
        self.private_root = next((p for p in self.path.parents if p.name == ".kiln"), None)
        self.subject = subject
        self.command = command if command.startswith("kiln") else f"kiln {command}"
        self.wait = max(0.0, float(wait))
        self._entered = 0

    # -- public ---------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lock, waiting up to ``wait`` seconds; raises LockHeld naming the holder."""
        deadline = time.monotonic() + self.wait
        while True:
            holder = self._try_acquire()
            if holder is None:
                self._entered += 1
                return
            if time.monotonic() >= deadline:
                raise self._held_error(holder)
            time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    def release(self) -> None:
        if self._entered == 0:
            raise StateError(f"lock on {self.subject} released without being held (bug)")
        self._entered -= 1
        key = str(self.path)
        with _held_guard:
            h = _held[key]
            h.count -= 1
            if h.count:
                return
            del _held[key]
        try:
            os.ftruncate(h.fd, 0)
        finally:
            fcntl.flock(h.fd, fcntl.LOCK_UN)
            os.close(h.fd)

    @property
    def held(self) -> bool:
        return self._entered > 0

    def __enter__(self) -> _FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- internals ------------------------------------------------------------------------

    def _try_acquire(self) -> dict[str, Any] | None:
        """None when acquired; otherwise the holder's info ({} when unknown)."""
        key = str(self.path)
        me = os.getpid()
        with _held_guard:
            h = _held.get(key)
            if h is not None and h.pid != me:  # inherited across fork(): not ours
                del _held[key]
                h = None
            if h is not None:
                if h.thread == threading.get_ident():
                    h.count += 1
                    return None
                return _read_info(h.fd) or {}
            try:
                if self.private_root is not None:
                    private_dir(self.private_root)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise StateError(f"cannot create lock file {self.path}: {e.strerror}",
                                 hint="check that the repository is writable") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                info = _read_info(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return info or {}
                raise StateError(f"cannot lock {self.path}: {e.strerror}") from None
            info = {"pid": me, "host": socket.gethostname(), "user": _user(),
                    "command": self.command, "started_at": utcnow()}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
            except OSError:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise
            _held[key] = _Held(fd=fd, count=1, thread=threading.get_ident(), pid=me)
            return None

    def _held_error(self, holder: dict[str, Any]) -> LockHeld:
        waited = f" (waited {self.wait:g}s)" if self.wait else ""
        if holder.get("pid"):
            who = (f"{holder.get('command', 'kiln')} (pid {holder['pid']} on {holder.get('host', '?')}, "
                   f"since {holder.get('started_at', '?')})")
            hint = (f"it runs as user {holder.get('user', '?')}; stop it with `kill {holder['pid']}` on "
                    f"{holder.get('host', '?')}; a killed holder releases the lock at once")
        else:
            who = "another kiln process (it has not recorded its details yet)"
            hint = f"see who has {self.path} open (`fuser {self.path}`)"
        return LockHeld(f"{who} holds the lock on {self.subject}{waited}; wait for it or stop it",
                        hint=hint)


class RepoLock(_FileLock):
    """The repository lock, held by a command while it plans and writes state.

    ``command`` is what the user ran ("kiln apply"; a bare "apply" gets the prefix). ``wait``
    is how many seconds to keep trying before raising LockHeld (0: fail at once).
    """

    def __init__(self, repo: Path, command: str, wait: float = 0.0) -> None:
        super().__init__(lock_path(repo), str(Path(repo)), command, wait)


class ObjectLock(_FileLock):
    """The lock of one object (``key`` "Kind/workspace/name") for long work on it."""

    def __init__(self, repo: Path, key: str, command: str = "kiln", wait: float = 0.0) -> None:
        super().__init__(object_lock_path(repo, key), key, command, wait)
        self.key = key
