"""open_store: default location, SQLite settings, and clear errors for URLs kiln cannot use."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kiln.errors import ConfigError, StateError
from kiln.state import ObjectRecord, open_store


def test_default_is_sqlite_in_dot_kiln_with_wal_busy_timeout_fks(tmp_path: Path) -> None:
    with open_store(None, tmp_path, busy_timeout=7.5) as store:
        assert store.backend == "sqlite"
        store.put(ObjectRecord("Dataset/ws/d"))
        with store._engine.connect() as c:  # the pragmas every pooled connection got
            pragmas = {p: c.exec_driver_sql(f"PRAGMA {p}").scalar()
                       for p in ("journal_mode", "busy_timeout", "foreign_keys")}
    assert pragmas == {"journal_mode": "wal", "busy_timeout": 7500, "foreign_keys": 1}
    db = tmp_path / ".kiln" / "state.db"
    assert db.is_file()
    assert sqlite3.connect(db).execute("SELECT count(*) FROM kiln_objects").fetchone() == (1,)


def test_relative_sqlite_path_is_relative_to_the_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo" / "state").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///state/kiln.db", tmp_path / "repo") as store:
        store.put(ObjectRecord("Dataset/ws/d"))
    assert (tmp_path / "repo" / "state" / "kiln.db").is_file()
    assert not (tmp_path / "state").exists()


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/nowhere/state.db", tmp_path)


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "state.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError) as e:
        open_store(f"sqlite:///{bad}", tmp_path)
    assert "not a database" in e.value.message and "move it away" in e.value.hint


def test_bad_urls_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a database URL"):
        open_store("not a url", tmp_path)
    with pytest.raises(ConfigError, match="no SQLAlchemy dialect") as e:
        open_store("nosuchdb://x/y", tmp_path)
    assert "sqlite" in e.value.hint and "postgresql" in e.value.hint


def test_unreachable_server_hides_the_password(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StateError) as e:
        open_store(f"postgresql+psycopg2://kiln:hunter2@127.0.0.1:{port}/db", tmp_path)
    assert "hunter2" not in str(e.value)
    assert "cannot open" in e.value.message and "server is running" in e.value.hint


def test_records_validate_their_vocabulary() -> None:
    with pytest.raises(StateError, match="Kind/workspace/name"):
        ObjectRecord("just-a-name")
    with pytest.raises(StateError, match="health 'Fine' is not one of Healthy"):
        ObjectRecord("Dataset/ws/d", health="Fine")
    with pytest.raises(StateError, match="does not match the key"):
        ObjectRecord("Dataset/ws/d", kind="Experiment")


def test_importing_kiln_state_does_not_load_sqlalchemy() -> None:
    # `kiln validate` and lock-only commands import kiln.state; SQLAlchemy waits for open_store.
    import subprocess
    import sys

    code = ("import sys, kiln.state; assert 'sqlalchemy' not in sys.modules, 'eager'; "
            "kiln.state.open_store; assert 'sqlalchemy' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
