"""kiln's memory: the state store (what was applied, per object) and the repository locks.

``import kiln.state`` is cheap: the records and locks load at once, while the store (and with it
SQLAlchemy, ~150 ms of imports) loads on first use of ``open_store``/``StateStore``, so commands
that never open the store (``kiln validate``) never pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiln._util.redact import redact
from kiln.state.lock import ObjectLock, RepoLock, current_holder
from kiln.state.records import (
    ATTEMPT_RESULTS,
    CONDITION_STATUSES,
    CONDITION_TYPES,
    HEALTH,
    STEP_STATES,
    SYNC,
    Attempt,
    Condition,
    ObjectRecord,
    StepProgress,
    split_key,
    utcnow,
)

if TYPE_CHECKING:
    from kiln.state.store import SCHEMA_VERSION, StateStore, default_url, open_store

__all__ = [
    "ATTEMPT_RESULTS", "CONDITION_STATUSES", "CONDITION_TYPES", "HEALTH", "STEP_STATES", "SYNC",
    "Attempt", "Condition", "ObjectRecord", "StepProgress", "split_key", "utcnow",
    "ObjectLock", "RepoLock", "current_holder", "redact",
    "SCHEMA_VERSION", "StateStore", "default_url", "open_store",
]

# the store's names load kiln.state.store (sqlalchemy) on first use: records and locks stay light
_LAZY = {"SCHEMA_VERSION", "StateStore", "default_url", "open_store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from kiln.state import store

        return getattr(store, name)
    raise AttributeError(f"module 'kiln.state' has no attribute {name!r}")
