"""Did-you-mean for names a user typed: one helper so every error suggests the same way."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: object, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice closest to ``name`` (difflib's ratio >= ``cutoff``), or None."""
    found = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(name: object, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """``"did you mean 'x'?"`` for the closest choice, or None when nothing is close."""
    best = closest(name, choices, cutoff)
    return f"did you mean {best!r}?" if best else None
