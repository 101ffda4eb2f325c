"""The runner contract: what every workflow runner (local, argo) provides.

A runner takes an Argo ``Workflow`` manifest (a plain dict, already validated against Argo's
schema) and executes it. Runners own the state of their runs (the local runner under
``<repo>/.kiln/runs/<workflow-name>/``, the Argo runner in the cluster); the controller reads it
through this interface and copies the phase and node statuses into kiln's state store.

Contract:
- ``submit`` is idempotent per workflow name: submitting a manifest whose run already Succeeded
  with the same ``kiln.dev/spec-hash`` label returns that run; a run left Running by a dead
  process is resumed without re-running its Succeeded nodes.
- The returned dict is the workflow manifest with an Argo-shaped ``status``
  (``phase``, ``startedAt``, ``finishedAt``, ``message``, ``nodes``: id -> node status).
- Errors a user can act on raise ``kiln.errors.WorkflowError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Workflow = dict[str, Any]


class Runner(ABC):
    name: str = ""

    @abstractmethod
    def submit(
        self,
        manifest: Workflow,
        *,
        parameters: dict[str, str] | None = None,
        wait: bool = True,
        on_update: Callable[[Workflow], None] | None = None,
    ) -> Workflow:
        """Run (or resume) ``manifest``; with ``wait`` block until it finishes."""

    @abstractmethod
    def get(self, name: str) -> Workflow | None:
        """The workflow with its current status, or None if this runner has no such run."""

    @abstractmethod
    def logs(self, name: str, node: str | None = None) -> Iterator[str]:
        """Log lines of a run (one node's, or all nodes' in start order)."""

    @abstractmethod
    def stop(self, name: str, message: str = "stopped by user") -> None:
        """Cancel a running workflow: children killed, phase Failed with ``message``."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Forget a run and what it stored (used by prune)."""


def runner_workdir(repo: Path) -> Path:
    return Path(repo) / ".kiln" / "runs"
