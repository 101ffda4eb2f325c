"""Field-level differences between two spec documents, for `kiln plan`'s update lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln._util.yamlpos import format_path

_MISSING = object()


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any
    new: Any

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
        return d

    def format(self) -> str:
        if self.op == "+":
            return f"+ {self.path}: {_short(self.new)}"
        if self.op == "-":
            return f"- {self.path}: {_short(self.old)}"
        return f"~ {self.path}: {_short(self.old)} -> {_short(self.new)}"


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
