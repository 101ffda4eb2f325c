"""Reading a dataset's versions log (``data/<ws>/<name>.versions.json``) strictly.

The log is committed to git and read by plan (followed datasets), apply, ``kiln data`` and the
steps. A log that exists but does not parse (truncated by a partial copy, a merge with conflict
markers) is an error that names the file and the fix: taken as empty, plan would say
"unchanged" and apply would write a new log over the history it lost. Kept free of heavy imports:
plan reads it on every run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kiln.errors import StateError


def read_versions_log(path: Path) -> dict[str, Any] | None:
    """The log at ``path``; None when there is no such file (no version yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"cannot be read ({exc})") from None
    try:
        log = json.loads(text)
    except ValueError as exc:
        what = "is empty" if not text.strip() else f"is not valid JSON ({exc.args[0] if exc.args else exc})"
        raise _damaged(path, what) from None
    if not isinstance(log, dict) or not isinstance(log.get("versions"), list) \
            or not (log.get("current") is None or isinstance(log.get("current"), str)):
        raise _damaged(path, 'is not a versions log (expected {"current": ..., "versions": [...]})')
    return log


def _damaged(path: Path, what: str) -> StateError:
    shown = os.path.relpath(path) if path.is_absolute() else str(path)
    if shown.startswith(".."):
        shown = str(path)
    return StateError(f"dataset versions log {shown} {what}",
                      hint=f"restore it from git (git checkout -- {shown}) or from a backup; kiln never "
                           "writes it partially")
