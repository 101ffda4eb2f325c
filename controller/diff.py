"""Field-level differences between two spec documents, for `kiln plan`'s update lines, and
what each difference costs: its update class, declared with its kind (``kiln.api.kinds``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kiln._util.yamlpos import format_path
from kiln.api.kinds import ALL as API_KINDS
from kiln.api.kinds import UPDATE_CLASSES, UpdateClass

_MISSING = object()


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any
    new: Any
    update: UpdateClass = "re-run"   # what apply does about it (``classify``)

    @property
    def op(self) -> str:
        if self.old is _MISSING:
            return "+"
        if self.new is _MISSING:
            return "-"
        return "~"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "op": self.op}
        if self.old is not _MISSING:
            d["old"] = self.old
        if self.new is not _MISSING:
            d["new"] = self.new
        d["update"] = self.update
        return d

    def format(self, kind: str = "") -> str:
        if self.op == "+":
            text = f"+ {self.path}: {_short(self.new)}"
        elif self.op == "-":
            text = f"- {self.path}: {_short(self.old)}"
        else:
            text = f"~ {self.path}: {_short(self.old)} -> {_short(self.new)}"
        return f"{text}  ({update_word(self.update, kind)})" if kind else text


# What plan calls each class's work; a re-run of an Experiment is a retraining.
_WORDS: dict[str, str] = {"metadata": "in place", "re-register": "re-register, no training",
                          "re-select": "re-select a finished trial, no training",
                          "restart": "restart only", "re-run": "re-run"}
_RERUN_WORDS: dict[str, str] = {"Experiment": "retrain"}


def update_word(update: str, kind: str) -> str:
    if update == "re-run":
        return _RERUN_WORDS.get(kind, "re-run")
    return _WORDS[update]


def announce(kind: str, changes: list[FieldChange]) -> str:
    """Plan's one line per class: ``in place: register.tags; retrain: algorithm.hyperparameters.lr``
    (paths without ``spec.``; apply does the costliest, which covers the others)."""
    by: dict[str, list[str]] = {}
    for c in changes:
        by.setdefault(c.update, []).append(c.path.removeprefix("spec."))
    order = sorted(by, key=UPDATE_CLASSES.index, reverse=True)
    return "; ".join(f"{update_word(u, kind).split(',')[0]}: {', '.join(by[u])}" for u in order)


def classify(kind: str, changes: list[FieldChange]) -> tuple[UpdateClass, list[FieldChange]]:
    """Each change with its kind's update class (``kiln.api.kinds``), and the class of them all:
    the costliest. No changes (only the hash moved, e.g. a template) re-run: nothing says cheaper."""
    info = next((k for k in API_KINDS if k.name == kind), None)
    out = [replace(c, update=info.update_class(c.path) if info is not None else "re-run") for c in changes]
    worst = max((UPDATE_CLASSES.index(c.update) for c in out), default=len(UPDATE_CLASSES) - 1)
    return UPDATE_CLASSES[worst], out


def _short(v: Any, limit: int = 60) -> str:
    import json

    s = json.dumps(v, default=str, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def diff(old: Any, new: Any, path: tuple = ()) -> list[FieldChange]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[FieldChange] = []
        for k in sorted(set(old) | set(new), key=str):
            out += diff(old.get(k, _MISSING), new.get(k, _MISSING), path + (k,))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += diff(a, b, path + (i,))
        return out
    if old is _MISSING and new is _MISSING:
        return []
    if old is not _MISSING and new is not _MISSING and old == new and type(old) is type(new):
        return []
    return [FieldChange(format_path(path), old, new)]
