"""A read-only view of the SQLite state for the hot read path (``kiln plan``), without SQLAlchemy.

``kiln plan`` over a thousand specs reads every record once. Importing SQLAlchemy costs more
than the whole read, so for the default SQLite store the records are read with the standard
library's ``sqlite3`` (the same table and the same ``record_from_row`` as ``StateStore``; the
contract tests check both readers agree). Anything unusual (another backend, a schema version
this reader does not know) returns None and the caller opens the full ``StateStore``, which
reports or migrates properly. Nothing here writes, so a plan never creates a database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kiln.state.records import ObjectRecord, record_from_row

READS_SCHEMA = 2  # must match kiln.state.store.SCHEMA_VERSION (a test checks)


def sqlite_path(url: str | None, repo: Path) -> Path | None:
    if url is None:
        return Path(repo).resolve() / ".kiln" / "state.db"
    if not url.startswith("sqlite:///") or "?" in url:
        return None
    db = url[len("sqlite:///"):]
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    p = Path(db)
    return p if p.is_absolute() else Path(repo).resolve() / p


def read_objects(url: str | None, repo: Path) -> list[ObjectRecord] | None:
    """All object records, or None when the full store must be used instead."""
    path = sqlite_path(url, repo)
    if path is None:
        return None
    if not path.exists():
        return []  # nothing applied yet
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return None
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT value FROM kiln_meta WHERE name = 'schema_version'").fetchone()
        if row is None or row[0] != str(READS_SCHEMA):
            return None
        return [record_from_row(r) for r in conn.execute("SELECT * FROM kiln_objects ORDER BY key")]
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def recorded_objects(url: str | None, repo: Path) -> list[ObjectRecord]:
    """Every recorded object, read-only: straight from the SQLite file where it can be read
    (``read_objects``), else from the store opened read-only; never creates a database."""
    records = read_objects(url, repo)
    if records is not None:
        return records
    from kiln.state.store import open_store  # SQLAlchemy (~150 ms): only where the file cannot be read

    store = open_store(url, repo, read_only=True)
    try:
        return store.all_objects()
    finally:
        store.close()
