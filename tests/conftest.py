"""Shared fixtures. ``pg_server``: a PostgreSQL server for the whole session (see tests/_pg.py)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from tests._pg import PgUnavailable, postgres_server

# Triton (installed with torch) must load before TensorFlow in one process, or torch's first
# optimizer segfaults on an LLVM symbol clash; tests import keras directly (importorskip), so the
# product's own guard (kiln.algorithms.keras_vision._before_tensorflow) does not cover them.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401


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


@pytest.fixture(scope="session", autouse=True)
def _private_kiln_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The local runner's machine-wide pod slots, private to this test session: other kiln
    processes on the machine (another checkout's tests) must not throttle these tests."""
    old = {k: os.environ.get(k) for k in ("KILN_SLOTS_DIR", "KILN_SPEC_CACHE_DIR")}
    os.environ["KILN_SLOTS_DIR"] = str(tmp_path_factory.mktemp("kiln-slots"))
    # spec parse caches of the test repos stay out of the user's cache folder
    os.environ["KILN_SPEC_CACHE_DIR"] = str(tmp_path_factory.mktemp("kiln-spec-cache"))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
