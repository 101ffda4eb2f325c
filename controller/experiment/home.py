"""Where an experiment's files live, and the small tools every step uses on them: the run folder,
file locks, the task log, the results file's path. Pure paths and bookkeeping: no training, no
Optuna, no ML library is imported here (the handler and ``kiln report`` import this module)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln._util.fs import write_json_atomic
from kiln.controller.steps import StepContext, workspace_dir
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.config import KilnConfig


STUDY = "hpo"


TERMINAL = ("COMPLETE", "PRUNED", "FAIL")


class TrialFailed(KilnError):
    """One trial failed (its training raised or its command exited non-zero)."""


def experiment_home(config: KilnConfig, workspace: str, name: str) -> Path:
    return workspace_dir(config, workspace) / "experiments" / name


def run_dir(config: KilnConfig, workspace: str, name: str, spec_hash: str) -> Path:
    return experiment_home(config, workspace, name) / "runs" / spec_hash


def run_folder(ctx: StepContext) -> Path:
    """The step's run folder (made if missing)."""
    d = run_dir(ctx.config, ctx.workspace, ctx.name, ctx.spec_hash)
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_json(path: Path, data: Any, *, indent: int | None = 1) -> None:
    """A run folder's JSON file, atomically; ``default=str`` as these files were always written
    (paths and timestamps in records), so their bytes stay the same."""
    write_json_atomic(path, data, indent=indent, default=str)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel when the process dies, also on kill -9
        yield
    finally:
        os.close(fd)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


RESULTS_ROOT = "metrics"


def results_rel(workspace: str, name: str) -> str:
    """Where an experiment's results file lives, relative to the repository root."""
    return f"{RESULTS_ROOT}/{workspace}/{name}.json"
