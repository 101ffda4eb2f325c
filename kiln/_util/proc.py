"""Process helpers shared by the runners, the controller's steps and the managed servers."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def has_env(pid: int, name: str, value: str) -> bool:
    """Whether ``pid`` runs (not a zombie) with ``name=value`` in its environment: how kiln tells
    its own processes from others that reused a pid (Linux ``/proc``; elsewhere False)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{name}={value}".encode() in f.read().split(b"\0")
    except (OSError, IndexError):  # gone, or not ours to read
        return False


def pids_with_env(name: str, value: str) -> list[int]:
    """Every other process for which ``has_env`` holds."""
    if not os.path.isdir("/proc"):
        return []
    me = os.getpid()
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me and has_env(int(e), name, value)]
