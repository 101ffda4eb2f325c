"""Crash-safe file writes shared by every layer.

Each writer goes through a temporary file in the target's folder and ``os.replace``: a reader (or
a process that resumes after ``kill -9``) sees the old file or the new one, never half of one. The
temporary name comes from ``tempfile.mkstemp``, so threads and processes that write the same path
at once never share a temporary file; a failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = False, mkdir: bool = True) -> None:
    """Replace ``path`` with ``data`` in one step. ``fsync`` also survives a power cut (the
    registry's metadata), at the cost of a disk flush."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str, *, fsync: bool = False, mkdir: bool = True) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync, mkdir=mkdir)


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 1, sort_keys: bool = True,
                      ensure_ascii: bool = True, default: Callable[[Any], Any] | None = None,
                      fsync: bool = False, mkdir: bool = True) -> None:
    """``json.dumps`` with these options, written with :func:`write_bytes_atomic`. The options
    stay explicit because some files are hashed (DVC-tracked metadata): the bytes must not
    change when a caller moves to this helper."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=default)
    write_text_atomic(path, text, fsync=fsync, mkdir=mkdir)


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON document at ``path``, or ``default`` when it is missing or not valid JSON (a
    file that another process has not written yet)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default
