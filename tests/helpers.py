"""Small helpers shared by tests: run the real `kiln` CLI in a subprocess, make spec repos."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KILN = [sys.executable, "-m", "kiln.cli"]


def kiln(*args: str, cwd: Path, env: dict | None = None, check: bool = False,
         timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("KILN_DEBUG", None)
    p = subprocess.run([*KILN, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"kiln {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip())
    return root


def example_repo(tmp: Path) -> Path:
    """A copy of the example GitOps repo (specs/) in a fresh folder."""
    shutil.copytree(ROOT / "specs", tmp / "specs")
    return tmp


def deployment_server_pids(root: Path) -> list[int]:
    """Processes whose environment marks them as a deployment server of the repository ``root``."""
    import contextlib

    from kiln.controller.deployment_steps import HOME_MARKER

    out = []
    marker = f"{HOME_MARKER}={root.resolve()}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(e.startswith(marker) for e in (d / "environ").read_bytes().split(b"\0")):
                out.append(int(d.name))
    return out


def kill_deployment_servers(root: Path) -> None:
    import contextlib
    import signal

    for pid in deployment_server_pids(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
