"""What kiln remembers about each spec object: purely data, no I/O here.

Status never lives in the user's YAML; the controller keeps it in the state store as these frozen
records. State transitions return new records (``record.applied(...)``,
``record.with_condition(...)``) rather than mutating, so a failed reconcile cannot leave a
half-updated record in memory that later gets written.

Every record has ``to_dict()`` (JSON-serialisable, the shape ``kiln status -o json`` prints) and
``from_dict()``. Timestamps are ISO 8601 in UTC with a ``Z`` suffix, millisecond precision
(``2026-05-20T12:00:00.123Z``): they sort as text, which the store relies on.

``frozen`` here means the attributes cannot be re-bound; the dicts and lists inside are plain
containers, copy before changing them (``dataclasses.replace(rec, extra={**rec.extra, ...})``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Self

# utcnow: the store's timestamps (microseconds: steps start within a millisecond and are ordered
# by start time); re-exported because callers import it from here
from kiln._util.clock import utcnow
from kiln.errors import StateError

__all__ = [
    "CONDITION_TYPES", "CONDITION_STATUSES", "HEALTH", "SYNC", "ATTEMPT_RESULTS", "STEP_STATES",
    "Condition", "ObjectRecord", "Attempt", "StepProgress", "utcnow", "split_key",
]

CONDITION_TYPES = ("Ready", "Reconciling", "Stalled")
CONDITION_STATUSES = ("True", "False", "Unknown")
# Ordered best to worst (argo-cd's order): when several parts of an object report, the worst wins.
HEALTH = ("Healthy", "Suspended", "Progressing", "Missing", "Degraded", "Unknown")
SYNC = ("Synced", "OutOfSync")
ATTEMPT_RESULTS = ("succeeded", "failed", "interrupted", "skipped")
STEP_STATES = ("started", "succeeded", "failed")


def _check(value: str, allowed: tuple[str, ...], what: str, owner: str) -> None:
    if value not in allowed:
        raise StateError(f"{owner}: {what} {value!r} is not one of {', '.join(allowed)}")


def split_key(key: str) -> tuple[str, str, str]:
    """``"Kind/workspace/name"`` -> ``(kind, workspace, name)``; the workspace may be empty for
    objects that are not inside one (a Workspace itself)."""
    parts = key.split("/")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise StateError(f"state key {key!r} is not of the form Kind/workspace/name",
                         hint="keys are built by the controller; this is a bug in the caller")
    return parts[0], parts[1], parts[2]


class _Record:
    """What every record dataclass below shares: the store keeps it as the dict of its fields
    (``to_dict``), and ``from_dict`` builds it back (``__post_init__`` checks the values)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        return cls(**d)


@dataclass(frozen=True)
class Condition(_Record):
    """One Kubernetes-style condition. ``last_transition`` changes only when ``status`` does."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition: str = ""

    def __post_init__(self) -> None:
        _check(self.type, CONDITION_TYPES, "condition type", "Condition")
        _check(self.status, CONDITION_STATUSES, f"{self.type} status", "Condition")


@dataclass(frozen=True)
class ObjectRecord(_Record):
    """The controller's memory of one spec object.

    ``spec``/``spec_hash`` are the last *successfully applied* document; a spec being worked on
    is identified by its hash in :class:`StepProgress` until it succeeds. ``generation`` counts
    successful applies of a new spec hash (0 = never applied); ``observed_generation`` is the
    generation the status fields describe. ``kind``/``workspace``/``name`` are derived from
    ``key`` when left empty. ``created_at``/``updated_at`` are set by the store on ``put``.
    """

    key: str
    spec_hash: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    kind: str = ""
    workspace: str = ""
    name: str = ""
    generation: int = 0
    observed_generation: int = 0
    conditions: list[Condition] = field(default_factory=list)
    health: str = "Unknown"
    sync: str = "OutOfSync"
    inventory: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    created_at: str = ""
    updated_at: str = ""
    last_change: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind, ws, name = split_key(self.key)
        for attr, derived in (("kind", kind), ("workspace", ws), ("name", name)):
            given = getattr(self, attr)
            if not given:
                object.__setattr__(self, attr, derived)
            elif given != derived:
                raise StateError(f"{self.key}: {attr} {given!r} does not match the key")
        _check(self.health, HEALTH, "health", self.key)
        _check(self.sync, SYNC, "sync", self.key)
        if self.generation < 0 or self.observed_generation < 0:
            raise StateError(f"{self.key}: generations cannot be negative")
        # Accept condition dicts (e.g. straight from JSON) so callers need not convert.
        if any(isinstance(c, dict) for c in self.conditions):
            object.__setattr__(self, "conditions", [
                Condition.from_dict(c) if isinstance(c, dict) else c for c in self.conditions])

    # -- transitions (return new records) --------------------------------------------------

    def applied(self, spec: dict[str, Any], spec_hash: str, *, now: str | None = None) -> ObjectRecord:
        """The record after ``spec`` was applied successfully: a new hash bumps ``generation``
        and ``last_change``; either way the status now describes this generation and is in sync."""
        now = now or utcnow()
        if spec_hash != self.spec_hash or self.generation == 0:
            return replace(self, spec=spec, spec_hash=spec_hash, generation=self.generation + 1,
                           observed_generation=self.generation + 1, sync="Synced", last_change=now)
        return replace(self, spec=spec, observed_generation=self.generation, sync="Synced")

    def condition(self, type: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type), None)

    def with_condition(self, type: str, status: str, reason: str = "", message: str = "",
                       *, now: str | None = None) -> ObjectRecord:
        """Set one condition; keeps ``last_transition`` when the status did not change."""
        old = self.condition(type)
        when = old.last_transition if old is not None and old.status == status else (now or utcnow())
        new = Condition(type, status, reason, message, when)
        rest = [c for c in self.conditions if c.type != type]
        order = {t: i for i, t in enumerate(CONDITION_TYPES)}
        return replace(self, conditions=sorted([*rest, new], key=lambda c: order[c.type]))

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["conditions"] = [c.to_dict() for c in self.conditions]
        return d


@dataclass(frozen=True)
class Attempt(_Record):
    """One reconcile attempt of one object (bounded history, newest kept): what ``kiln events``
    lists. ``action`` is what the plan decided (create, update, delete; poll: an unchanged object
    that was observed, e.g. labelling in progress), ``changes`` the spec fields it saw changed (or
    why it was planned without one, e.g. a followed dataset's new version),
    ``commit``/``author`` the git HEAD the specs were applied from (``-dirty`` when the specs
    differed from it) and its author; all empty in attempts recorded before schema version 2."""

    key: str
    generation: int
    spec_hash: str
    started_at: str
    finished_at: str = ""
    result: str = "succeeded"
    message: str = ""
    actions: list[str] = field(default_factory=list)
    action: str = ""
    changes: list[str] = field(default_factory=list)
    commit: str = ""
    author: str = ""

    def __post_init__(self) -> None:
        split_key(self.key)
        _check(self.result, ATTEMPT_RESULTS, "attempt result", self.key)


@dataclass(frozen=True)
class StepProgress(_Record):
    """kopf-style persisted progress of one step of reconciling one spec hash of one object.

    ``retries`` counts starts after the first (a step found ``started`` after a crash and
    started again counts too). A ``succeeded`` step is never started again for the same
    ``(key, spec_hash, step)``.
    """

    key: str
    spec_hash: str
    step: str
    state: str = "started"
    retries: int = 0
    started_at: str = ""
    stopped_at: str = ""
    message: str = ""
    output: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        split_key(self.key)
        _check(self.state, STEP_STATES, f"step {self.step!r} state", self.key)

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"


def record_from_row(m: Any) -> ObjectRecord:
    """An ObjectRecord from a ``kiln_objects`` row (any mapping of column -> value)."""
    return ObjectRecord(
        key=m["key"], kind=m["kind"], workspace=m["workspace"], name=m["name"],
        spec_hash=m["spec_hash"], spec=json.loads(m["spec"]), generation=m["generation"],
        observed_generation=m["observed_generation"],
        conditions=[Condition(**c) for c in json.loads(m["conditions"])],
        health=m["health"], sync=m["sync"], inventory=json.loads(m["inventory"]),
        source=m["source"], created_at=m["created_at"], updated_at=m["updated_at"],
        last_change=m["last_change"], extra=json.loads(m["extra"]),
    )
