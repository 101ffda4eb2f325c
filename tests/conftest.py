"""Shared fixtures. ``pg_server``: a PostgreSQL server for the whole session (see tests/_pg.py)."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests._pg import PgUnavailable, postgres_server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL database; skips (with the reason) when there is none."""
    try:
        cm = postgres_server()
        url = cm.__enter__()
    except PgUnavailable as e:
        pytest.skip(str(e))
    try:
        yield url
    finally:
        cm.__exit__(None, None, None)
