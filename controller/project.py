"""The verbs behind the CLI, callable (and tested) directly: validate, plan, apply, status.

``kiln/cli.py`` parses arguments and prints; the work is here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config import KilnConfig
from kiln.errors import SpecErrors
from kiln.loader import SpecSet, load_specs
from kiln.validate import validate


def load_valid(config: KilnConfig, path: str | os.PathLike[str] | None = None) -> SpecSet:
    """Load and validate; raise ``SpecErrors`` listing every problem."""
    specs = load_specs(Path(path) if path else config.specs_dir(), config.templates_dir(),
                       cache_dir=config.kiln_dir() / "cache" if config.kiln_dir().is_dir() else None)
    issues = validate(specs)
    if issues:
        raise SpecErrors(issues=issues)
    return specs


def _scope(config: KilnConfig, path: str | os.PathLike[str] | None) -> str:
    target = Path(path).resolve() if path else config.specs_dir().resolve()
    try:
        rel = target.relative_to(Path.cwd())
    except ValueError:
        rel = target
    return "" if str(rel) == "." else str(rel)


def open_state(config: KilnConfig):  # -> StateStore
    from kiln.state import open_store

    return open_store(config.state_url(), config.repo, max_attempts=config.historyLimit)


def plan(config: KilnConfig, path: str | os.PathLike[str] | None = None, *, prune: bool = False):
    from kiln.controller.plan import make_plan

    specs = load_valid(config, path)
    return make_plan(specs, read_records(config), scope=_scope(config, path), prune=prune, config=config)


def read_records(config: KilnConfig) -> list:
    """Every recorded object, read-only (never creates a state database)."""
    from kiln.state.snapshot import read_objects

    records = read_objects(config.state_url(), config.repo)
    if records is not None:
        return records
    store = open_state(config)
    try:
        return store.all_objects()
    finally:
        store.close()


@dataclass
class Applied:
    plan: object
    result: object


def apply(config: KilnConfig, path: str | os.PathLike[str] | None = None, *, prune: bool = False,
          echo: Callable[[str], None] = print, wait_lock: float = 0.0, command: str = "kiln apply",
          review: Callable[[Any, Any], bool] | None = None) -> Applied:
    """``review(plan, store)``, called under the lock between planning and applying, may look at
    (and mark) what is about to change; returning False applies nothing (``kiln controller`` uses
    it to log drift and skip quiet intervals)."""
    from kiln.controller.apply import ApplyResult, apply_plan
    from kiln.controller.plan import make_plan
    from kiln.state import RepoLock

    specs = load_valid(config, path)  # nothing is touched when the specs are invalid
    with RepoLock(config.repo, command, wait=wait_lock):
        store = open_state(config)
        try:
            p = make_plan(specs, store.all_objects(), scope=_scope(config, path), prune=prune, config=config)
            if review is not None and not review(p, store):
                return Applied(p, ApplyResult())
            return Applied(p, apply_plan(p, config, store, echo))
        finally:
            store.close()
