"""Timestamps as kiln writes them: UTC, ISO 8601 with a ``Z``.

Two precisions, both in use on disk and in the state store, so both stay:

* :func:`utcnow` has microseconds: step progress and audit entries are ordered by it, and steps
  start within a millisecond of each other;
* :func:`utcnow_seconds` has whole seconds, the way Argo writes ``startedAt``/``finishedAt``.
"""

from __future__ import annotations

import datetime as _dt
import time


def utcnow() -> str:
    now = _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}Z"


_SECONDS_CACHE: tuple[int, str] = (-1, "")


def utcnow_seconds() -> str:
    """Whole seconds. Formatted at most once a second: the local runner stamps every node with
    it, hundreds of times a second in a wide DAG."""
    global _SECONDS_CACHE
    sec = int(time.time())
    cached = _SECONDS_CACHE
    if cached[0] != sec:
        cached = _SECONDS_CACHE = (sec, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec)))
    return cached[1]


def parse_utc(text: str | None) -> float | None:
    """A timestamp as kiln or Argo writes it (either precision, ``Z`` or an offset) -> seconds since
    the epoch; None for an empty or unreadable one (a record written by hand, a missing field)."""
    if not text:
        return None
    try:
        when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=_dt.UTC)).timestamp()


def duration(secs: float | None) -> str:
    """``4.2s``, ``2m10s``, ``1h05m``: how long something took or is left, for people."""
    if secs is None:
        return "-"
    if secs < 60:
        return f"{secs:.1f}s"
    m, s = divmod(int(round(secs)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"
