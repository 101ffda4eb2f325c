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
