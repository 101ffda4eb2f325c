"""Running the child processes of tests/state/_worker.py."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path

WORKER = Path(__file__).with_name("_worker.py")


def spawn(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE if stdin else None, text=True)


def expect_line(proc: subprocess.Popen[str], expected: str, timeout: float = 30.0) -> None:
    """Wait until the child prints ``expected``; fail with its stderr if it dies or times out."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if line.strip() == expected:
            return
        if line == "":  # EOF: the child exited
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"worker exited ({proc.wait()}) before {expected!r}:\n{err}")
    proc.kill()
    raise AssertionError(f"worker did not print {expected!r} within {timeout}s")
