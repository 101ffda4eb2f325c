"""Process helpers shared by the runners, the controller's steps and the managed servers."""

from __future__ import annotations

import os
import time


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


def started_at(pid: int | None = None) -> float | None:
    """When a process started (epoch seconds; this one by default), from /proc; None where there
    is no /proc. A step that counts its own interpreter start-up and imports (an AutoML time
    budget) needs the process's start, not the moment its code first ran."""
    try:
        with open(f"/proc/{pid or os.getpid()}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, after comm
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
        return time.time() - up + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
