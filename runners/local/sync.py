"""``synchronization``: Argo's mutexes and semaphores, held in this process.

A workflow's (``spec.synchronization``) or a template's (``templates[].synchronization``)
mutexes and semaphores are counting semaphores of the runner, by name: a mutex holds one, a
semaphore as many as its ConfigMap key says (from the runner's objects folder, as Argo reads it
from the cluster). Every run of one :class:`~kiln.runners.local.LocalRunner` shares them; other
processes do not see them (Argo's controller is one process too).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from kiln.errors import WorkflowError

if TYPE_CHECKING:
    from kiln.runners.local.wftemplates import TemplateStore


class Locks:
    """Named counting semaphores, created on first use with their limit."""

    def __init__(self) -> None:
        self.sems: dict[str, threading.Semaphore] = {}
        self.lock = threading.Lock()

    def sem(self, key: str, limit: int) -> threading.Semaphore:
        with self.lock:
            s = self.sems.get(key)
            if s is None:
                s = self.sems[key] = threading.Semaphore(limit)
            return s


def requirements(sync: dict | None, store: TemplateStore, where: str) -> list[tuple[str, int]]:
    """(key, limit) of every mutex and semaphore ``sync`` names, in a fixed order (no deadlock
    between two holders of the same pair)."""
    if not sync:
        return []
    out: list[tuple[str, int]] = []
    mutexes = list(sync.get("mutexes") or []) + ([sync["mutex"]] if sync.get("mutex") else [])
    for m in mutexes:
        out.append((f"mutex/{m.get('namespace', '')}/{m.get('name')}", 1))
    sems = list(sync.get("semaphores") or []) + ([sync["semaphore"]] if sync.get("semaphore") else [])
    for s in sems:
        ref = s.get("configMapKeyRef") or {}
        if not ref:
            raise WorkflowError(f"{where}: a semaphore needs configMapKeyRef (database semaphores need Argo's controller)")
        raw = store.config_value(ref, f"{where} semaphore")
        try:
            limit = int(raw)
        except ValueError as exc:
            raise WorkflowError(
                f"{where}: semaphore ConfigMap {ref.get('name')!r} key {ref.get('key')!r} is {raw!r}, not a number"
            ) from exc
        out.append((f"semaphore/{ref.get('name')}/{ref.get('key')}", max(limit, 0)))
    return sorted(set(out))


@contextlib.contextmanager
def held(locks: Locks, reqs: list[tuple[str, int]], check: Callable[[], None]) -> Iterator[None]:
    """Hold every requirement while the body runs; ``check`` runs every 0.2 s while waiting
    (a stop request raises there)."""
    taken: list[threading.Semaphore] = []
    try:
        for key, limit in reqs:
            s = locks.sem(key, limit)
            while not s.acquire(timeout=0.2):
                check()
            taken.append(s)
        yield
    finally:
        for s in reversed(taken):
            s.release()
