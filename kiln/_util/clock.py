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
