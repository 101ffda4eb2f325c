"""The state store: what the controller has applied, per spec object, in SQLite or PostgreSQL.

Why a database and not files next to the specs: status must never be written into the user's
YAML (git stays the desired state only), several kiln processes may write at once (``kiln apply``
while a long training step records progress), and a crash must leave the previous consistent
state. SQLAlchemy Core (not the ORM: it costs import time and buys nothing here) gives one code
path for SQLite (the default, ``<repo>/.kiln/state.db``) and any server SQLAlchemy can reach,
PostgreSQL tested (``postgresql+psycopg2://user@host/db``).

Persisted schema (version :data:`SCHEMA_VERSION`; tables are prefixed ``kiln_`` so a shared
PostgreSQL database stays tidy; JSON columns are ``TEXT`` holding JSON, the same on every
backend)::

    kiln_meta      name PK, value                 -- ("schema_version", "1")
    kiln_objects   key PK ("Kind/workspace/name"), kind, workspace, name, spec_hash,
                   spec JSON, generation, observed_generation, conditions JSON, health, sync,
                   inventory JSON, source, created_at, updated_at, last_change, extra JSON
                   index (kind, workspace)
    kiln_attempts  id PK autoincrement, key, generation, spec_hash, started_at, finished_at,
                   result, message, actions JSON, action, changes JSON, commit, author
                   index (key, id), index (started_at)    -- action..author: version 2
    kiln_steps     (key, spec_hash, step) PK, state, retries, started_at, stopped_at,
                   message, output JSON
    kiln_kv        (namespace, key) PK, value JSON, updated_at

Contract (every backend; ``tests/state/test_store_contract.py`` runs it against each):

* Every write is one transaction; a process killed mid-write leaves the previous state.
  ``with store.transaction():`` groups several writes (record + attempt + step) atomically;
  nested ``transaction()`` blocks are savepoints.
* Every dict written (spec, inventory, extra, conditions, step output, kv values, attempt
  messages) goes through :func:`kiln._util.redact.redact` first: secrets never reach the database.
  ``spec_hash`` is the caller's, computed on the real spec, so redaction never hides a change.
* ``delete(key)`` removes the object and its step progress. Its attempts are kept (still trimmed
  to the newest ``max_attempts``): the history of a deleted object, including the delete
  itself, stays visible, and continues if an object with the same key comes back.
* Steps and attempts do not require an object row (the first apply records progress before it
  has anything to put), hence no foreign keys between the tables.
* Thread safety: one ``StateStore`` may be shared by threads; ``transaction()`` is per thread.
  Across processes, SQLite serialises writers (WAL, ``BEGIN IMMEDIATE``, busy timeout) and
  PostgreSQL uses row locks; per-object work is serialised by :class:`kiln.state.lock.ObjectLock`.

A database written by a newer kiln (higher ``schema_version``) is refused with a
:class:`~kiln.errors.StateError` asking to upgrade kiln; older versions are migrated by the
functions in :data:`MIGRATIONS`.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from kiln._util.fs import private_dir
from kiln._util.redact import redact, redact_text
from kiln.errors import ConfigError, StateError
from kiln.state.records import Attempt, ObjectRecord, StepProgress, record_from_row, utcnow
from kiln.state.snapshot import sqlite_path

__all__ = ["SCHEMA_VERSION", "MIGRATIONS", "SUPPORTED_BACKENDS", "StateStore", "open_store",
           "default_url"]

SCHEMA_VERSION = 2
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
_PG_SCHEMA_LOCK = 0x6B696C6E  # "kiln": advisory lock so concurrent first opens don't race DDL

_md = sa.MetaData()
_meta = sa.Table(
    "kiln_meta", _md,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
_objects = sa.Table(
    "kiln_objects", _md,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("workspace", sa.String(253), nullable=False),
    sa.Column("name", sa.String(253), nullable=False),
    sa.Column("spec_hash", sa.String(128), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("observed_generation", sa.Integer, nullable=False),
    sa.Column("conditions", sa.Text, nullable=False),
    sa.Column("health", sa.String(16), nullable=False),
    sa.Column("sync", sa.String(16), nullable=False),
    sa.Column("inventory", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Column("last_change", sa.String(32), nullable=False),
    sa.Column("extra", sa.Text, nullable=False),
    sa.Index("ix_kiln_objects_kind_ws", "kind", "workspace"),
)
_attempts = sa.Table(
    "kiln_attempts", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(512), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("spec_hash", sa.String(128), nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("finished_at", sa.String(32), nullable=False),
    sa.Column("result", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("actions", sa.Text, nullable=False),
    # version 2: what the attempt was for and where it came from (`kiln events`)
    sa.Column("action", sa.String(16), nullable=False, server_default=""),
    sa.Column("changes", sa.Text, nullable=False, server_default="[]"),
    sa.Column("commit", sa.String(64), nullable=False, server_default=""),
    sa.Column("author", sa.Text, nullable=False, server_default=""),
    sa.Index("ix_kiln_attempts_key_id", "key", "id"),
    sa.Index("ix_kiln_attempts_started", "started_at"),
)
_steps = sa.Table(
    "kiln_steps", _md,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("spec_hash", sa.String(128), primary_key=True),
    sa.Column("step", sa.String(128), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("retries", sa.Integer, nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("stopped_at", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("output", sa.Text, nullable=False),
)
_kv = sa.Table(
    "kiln_kv", _md,
    sa.Column("namespace", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
)



def _v1_to_v2(conn: sa.Connection) -> None:
    """Version 2 adds the attempts' action, changes, commit and author (empty for the attempts
    recorded before), and an index for reading the history of every object by time."""
    q = conn.dialect.identifier_preparer.quote  # "commit" is an SQL keyword
    for col in ("action", "changes", "commit", "author"):
        c = _attempts.c[col]
        kind = c.type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {q(_attempts.name)} ADD COLUMN {q(col)} {kind} NOT NULL "
                             f"DEFAULT '{c.server_default.arg}'"))  # type: ignore[union-attr]
    conn.execute(sa.text(f"CREATE INDEX {q('ix_kiln_attempts_started')} ON {q(_attempts.name)} (started_at)"))


# from_version -> function(connection) that brings the schema to from_version + 1, run inside the
# schema transaction.
MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {1: _v1_to_v2}

_OBJ_COLS = [c.name for c in _objects.columns]
_STEP_COLS = [c.name for c in _steps.columns]
_ATTEMPT_COLS = [c.name for c in _attempts.columns if c.name != "id"]


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(redact(value), separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise StateError(f"{what} cannot be stored: {e}",
                         hint="state values must be JSON data (dict, list, str, int, float, bool, None)") from None


def default_url(repo: Path) -> str:
    """``sqlite:///<repo>/.kiln/state.db`` (the directory is created by :func:`open_store`)."""
    return f"sqlite:///{Path(repo).resolve() / '.kiln' / 'state.db'}"


_NO_SCHEMA_HINT = ("restore it from a backup; if nothing was ever applied here, delete the file and apply "
                   "again (kiln never takes it as an empty store: every object would be made again)")


def open_store(url: str | None, repo: Path, *, max_attempts: int = 20,
               busy_timeout: float = 10.0, read_only: bool = False) -> StateStore:
    """Open (creating or migrating the schema if needed) the state store of ``repo``.

    ``url`` None means the default SQLite file in ``<repo>/.kiln/``. A relative SQLite path
    (``sqlite:///state/kiln.db``) is taken relative to ``repo``, not to the current directory, so
    kiln behaves the same from anywhere. Raises ConfigError for a URL kiln cannot use and
    StateError for a database it cannot open.

    ``read_only`` is for the verbs that only look (``kiln status``, ``get``, ``describe``): where
    the SQLite file does not exist yet, nothing has been applied, and they get an empty store in
    memory instead of a new ``.kiln/state.db`` in whatever folder they were run from.
    """
    repo = Path(repo)
    path = sqlite_path(url, repo)
    if read_only and path is not None and not path.exists():
        return StateStore("sqlite://", max_attempts=max_attempts, busy_timeout=busy_timeout)
    # A SQLite file that exists was made by kiln with its schema in one transaction: one without
    # the schema (0 bytes, or another program's database) is damaged, never a new empty store,
    # else every object would be planned as new and applied again.
    existing = path is not None and path.exists()
    if existing and path is not None and path.is_file() and path.stat().st_size == 0:
        raise StateError(f"state database {path} is empty (0 bytes)", hint=_NO_SCHEMA_HINT)
    if url is None:
        private_dir(repo / ".kiln")
        return StateStore(default_url(repo), max_attempts=max_attempts, busy_timeout=busy_timeout,
                          create=not existing)
    try:
        parsed = sa.engine.make_url(url)
    except sa_exc.ArgumentError:
        raise ConfigError(f"state URL {redact_text(url)!r} is not a database URL",
                          hint="use sqlite:///path/to/state.db or "
                               "postgresql+psycopg2://user@host/dbname") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not parsed.database.startswith("file:"):
        db = Path(parsed.database)
        if not db.is_absolute():
            db = repo.resolve() / db
        if not db.parent.is_dir():
            raise StateError(f"directory {db.parent} for the state database does not exist",
                             hint="create it, or fix the state URL")
        url = parsed.set(database=str(db)).render_as_string(hide_password=False)
    return StateStore(url, max_attempts=max_attempts, busy_timeout=busy_timeout, create=not existing)


class StateStore:
    """Per-object status, attempt history, step progress and a small key-value table.

    See the module docstring for the contract (transactions, redaction, thread safety).
    Create with :func:`open_store`; ``StateStore(url)`` takes any SQLAlchemy URL as is.
    """

    def __init__(self, url: str, *, max_attempts: int = 20, busy_timeout: float = 10.0,
                 create: bool = True) -> None:
        """``create``: make the schema in a database that has none (False: that is an error)."""
        self._create = create
        if max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {max_attempts}")
        self.max_attempts = max_attempts
        self._local = threading.local()
        try:
            parsed = sa.engine.make_url(url)
        except sa_exc.ArgumentError:
            raise ConfigError(f"state URL {redact_text(url)!r} is not a database URL") from None
        self.url = parsed.render_as_string(hide_password=True)
        self.backend = parsed.get_backend_name()
        self._engine = self._create_engine(parsed, busy_timeout)
        try:
            self._ensure_schema()
        except sa_exc.DBAPIError as e:
            self._engine.dispose()
            raise self._db_error(e, "open") from None
        except BaseException:
            self._engine.dispose()
            raise

    # -- engine and schema -----------------------------------------------------------------

    def _create_engine(self, url: sa.URL, busy_timeout: float) -> sa.Engine:
        kw: dict[str, Any] = {}
        if self.backend == "sqlite":
            kw["connect_args"] = {"timeout": busy_timeout}
            if url.database in (None, "", ":memory:"):
                kw["poolclass"] = sa.pool.StaticPool  # one shared connection or every op sees a new DB
        try:
            engine = sa.create_engine(url, **kw)
        except sa_exc.NoSuchModuleError:
            raise ConfigError(
                f"state URL {self.url!r}: no SQLAlchemy dialect {url.drivername!r}",
                hint=f"supported and tested: {', '.join(SUPPORTED_BACKENDS)} "
                     "(e.g. sqlite:///state.db, postgresql+psycopg2://user@host/db)") from None
        except ImportError as e:
            raise ConfigError(f"state URL {self.url!r} needs a database driver that is not installed ({e})",
                              hint="for PostgreSQL: pip install 'kiln[postgres]'") from None
        if self.backend == "sqlite":
            ms = int(busy_timeout * 1000)

            @sa.event.listens_for(engine, "connect")
            def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
                # Let SQLAlchemy (below) issue BEGIN instead of pysqlite's own guesswork, so
                # transactions really are transactions.
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout = {ms}")
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = NORMAL")  # durable against process crashes in WAL
                cur.execute("PRAGMA foreign_keys = ON")
                cur.close()

            @sa.event.listens_for(engine, "begin")
            def _sqlite_begin(conn: sa.Connection) -> None:
                # Writers take the write lock up front: a deferred transaction that reads and then
                # writes fails with SQLITE_BUSY at once (no busy wait) when another writer won.
                write = conn.get_execution_options().get("kiln_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
        return engine

    def _read_version(self) -> int | None:
        with self._reading() as conn:
            if not sa.inspect(conn).has_table(_meta.name):
                return None
            raw = conn.execute(sa.select(_meta.c.value).where(_meta.c.name == "schema_version")).scalar()
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise StateError(f"state database {self.url}: schema_version {raw!r} is not a number",
                             hint="the database is damaged; restore it or start a new one") from None

    def _ensure_schema(self) -> None:
        version = self._read_version()
        if version == SCHEMA_VERSION:
            return
        self._check_version(version)
        with self._writing() as conn:
            if self.backend == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
            # Re-read under the lock: another process may have created or migrated it meanwhile.
            has = sa.inspect(conn).has_table(_meta.name)
            raw = conn.execute(sa.select(_meta.c.value).where(_meta.c.name == "schema_version")).scalar() \
                if has else None
            version = int(raw) if raw is not None else None
            self._check_version(version)
            if version is None and not self._create:
                raise StateError(f"state database {self.url} has no kiln tables (damaged, or not kiln's)",
                                 hint=_NO_SCHEMA_HINT)
            if version is None:
                _md.create_all(conn, checkfirst=True)
                conn.execute(sa.insert(_meta).values(name="schema_version", value=str(SCHEMA_VERSION)))
                return
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
            conn.execute(sa.update(_meta).where(_meta.c.name == "schema_version")
                         .values(value=str(SCHEMA_VERSION)))

    def _check_version(self, version: int | None) -> None:
        if version is None:
            return
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state database {self.url} has schema version {version}, written by a newer kiln; "
                f"this kiln understands up to version {SCHEMA_VERSION}",
                hint="upgrade kiln (pip install -U kiln), or point this kiln at another state database")
        missing = [v for v in range(version, SCHEMA_VERSION) if v not in MIGRATIONS]
        if missing:
            raise StateError(f"state database {self.url} has schema version {version}, which this kiln "
                             f"cannot migrate (no migration from version {missing[0]})",
                             hint="migrate with the kiln release that introduced the next version")

    def _db_error(self, e: sa_exc.DBAPIError, doing: str) -> StateError:
        text = str(getattr(e, "orig", None) or e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        hint = None
        if "locked" in first or "busy" in first:
            hint = "another kiln process is writing; retry, or raise the busy timeout"
        elif "not a database" in first:
            hint = "the file is not a kiln state database (or it is damaged); move it away and run again"
        elif self.backend != "sqlite":
            hint = "check that the database server is running and the state URL is right"
        return StateError(f"state database {self.url}: cannot {doing}: {redact_text(first)}", hint=hint)

    # -- connections -------------------------------------------------------------------------

    @contextmanager
    def _connection(self, write: bool) -> Iterator[sa.Connection]:
        """The connection of this thread's open ``transaction()`` when there is one (its writes
        commit with it), else a new one; a new writing one commits at the end of the block."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._engine.connect() as conn:
            if not write:
                yield conn
                return
            conn.execution_options(kiln_write=True)
            with conn.begin():
                yield conn

    def _reading(self) -> AbstractContextManager[sa.Connection]:
        return self._connection(write=False)

    def _writing(self) -> AbstractContextManager[sa.Connection]:
        return self._connection(write=True)

    @contextmanager
    def transaction(self) -> Iterator[StateStore]:
        """Group writes: all of them are committed at the end of the block, or none if it raises.

        Reads inside the block see the block's own writes. Nested blocks are savepoints: an
        exception that leaves an inner block undoes only that block.
        """
        outer = getattr(self._local, "conn", None)
        if outer is not None:
            with outer.begin_nested():
                yield self
            return
        try:
            with self._engine.connect() as conn:
                conn.execution_options(kiln_write=True)
                with conn.begin():
                    self._local.conn = conn
                    try:
                        yield self
                    finally:
                        self._local.conn = None
        except sa_exc.OperationalError as e:
            raise self._db_error(e, "write") from None

    def close(self) -> None:
        """Release all connections. The store cannot be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateStore({self.url!r})"

    # -- objects -----------------------------------------------------------------------------

    @staticmethod
    def _to_record(row: Any) -> ObjectRecord:
        return record_from_row(row._mapping)

    def get(self, key: str) -> ObjectRecord | None:
        """The record for ``key``, or None if kiln never stored one."""
        with self._guard("read"), self._reading() as conn:
            row = conn.execute(sa.select(_objects).where(_objects.c.key == key)).first()
        return self._to_record(row) if row is not None else None

    def all_objects(self, kind: str | None = None, workspace: str | None = None) -> list[ObjectRecord]:
        """All records (optionally of one kind and/or workspace), sorted by key, in one query."""
        q = sa.select(_objects).order_by(_objects.c.key)
        if kind is not None:
            q = q.where(_objects.c.kind == kind)
        if workspace is not None:
            q = q.where(_objects.c.workspace == workspace)
        with self._guard("read"), self._reading() as conn:
            rows = conn.execute(q).all()
        return [self._to_record(r) for r in rows]

    def put(self, record: ObjectRecord) -> ObjectRecord:
        """Insert or replace ``record``; returns it as stored (redacted, with timestamps).

        The store owns ``created_at`` (kept from the first put) and ``updated_at`` (now);
        ``last_change`` defaults to now when empty.
        """
        now = utcnow()
        k = record.key
        values = {
            "key": k, "kind": record.kind, "workspace": record.workspace, "name": record.name,
            "spec_hash": record.spec_hash, "spec": _dumps(record.spec, f"{k}: spec"),
            "generation": record.generation, "observed_generation": record.observed_generation,
            "conditions": _dumps([c.to_dict() for c in record.conditions], f"{k}: conditions"),
            "health": record.health, "sync": record.sync,
            "inventory": _dumps(record.inventory, f"{k}: inventory"),
            "source": record.source, "updated_at": now,
            "last_change": record.last_change or now, "extra": _dumps(record.extra, f"{k}: extra"),
        }
        with self._guard("write"), self._writing() as conn:
            existing = conn.execute(sa.select(_objects.c.created_at).where(_objects.c.key == k)).scalar()
            values["created_at"] = existing or record.created_at or now
            self._upsert(conn, _objects, ("key",), values)
        return self._to_record(_Row(values))

    def delete(self, key: str) -> bool:
        """Forget ``key`` and its step progress (attempts are kept). True if it existed."""
        with self._guard("write"), self._writing() as conn:
            n = conn.execute(sa.delete(_objects).where(_objects.c.key == key)).rowcount
            conn.execute(sa.delete(_steps).where(_steps.c.key == key))
        return bool(n)

    # -- attempts ----------------------------------------------------------------------------

    def record_attempt(self, attempt: Attempt) -> None:
        """Append ``attempt`` and trim the object's history to the newest ``max_attempts``."""
        values = attempt.to_dict()
        values["message"] = redact_text(values["message"])
        values["actions"] = _dumps(values["actions"], f"{attempt.key}: attempt actions")
        values["changes"] = _dumps(values["changes"], f"{attempt.key}: attempt changes")
        values["author"] = redact_text(values["author"])
        with self._guard("write"), self._writing() as conn:
            conn.execute(sa.insert(_attempts).values(**values))
            # The id of the oldest attempt to keep; everything older goes (portable, no LIMIT in IN).
            keep_from = conn.execute(
                sa.select(_attempts.c.id).where(_attempts.c.key == attempt.key)
                .order_by(_attempts.c.id.desc()).offset(self.max_attempts - 1).limit(1)).scalar()
            if keep_from is not None:
                conn.execute(sa.delete(_attempts).where(_attempts.c.key == attempt.key,
                                                        _attempts.c.id < keep_from))

    def attempts(self, key: str, limit: int | None = None) -> list[Attempt]:
        """The object's attempts, newest first."""
        q = sa.select(*(_attempts.c[c] for c in _ATTEMPT_COLS)).where(_attempts.c.key == key) \
            .order_by(_attempts.c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        with self._guard("read"), self._reading() as conn:
            rows = conn.execute(q).all()
        return [self._to_attempt(r) for r in rows]

    def history(self, since: str | None = None, limit: int | None = None) -> list[Attempt]:
        """The attempts of every object, deleted ones' included, newest first; ``since``: only
        those started at or after it (ISO 8601 UTC text, as the store writes times). Each
        object keeps its newest ``max_attempts``, so this is the recent history, not all of it."""
        q = sa.select(*(_attempts.c[c] for c in _ATTEMPT_COLS)) \
            .order_by(_attempts.c.started_at.desc(), _attempts.c.id.desc())
        if since is not None:
            q = q.where(_attempts.c.started_at >= since)
        if limit is not None:
            q = q.limit(limit)
        with self._guard("read"), self._reading() as conn:
            rows = conn.execute(q).all()
        return [self._to_attempt(r) for r in rows]

    @staticmethod
    def _to_attempt(row: Any) -> Attempt:
        d = dict(row._mapping)
        d["actions"] = json.loads(d["actions"])
        d["changes"] = json.loads(d["changes"])
        return Attempt(**d)

    # -- step progress -----------------------------------------------------------------------

    @staticmethod
    def _to_step(row: Any) -> StepProgress:
        d = dict(row._mapping)
        d["output"] = json.loads(d["output"])
        return StepProgress(**d)

    def step(self, key: str, spec_hash: str, step: str) -> StepProgress | None:
        """Progress of one step for one spec hash; the controller skips it when ``succeeded``."""
        with self._guard("read"), self._reading() as conn:
            row = conn.execute(sa.select(_steps).where(
                _steps.c.key == key, _steps.c.spec_hash == spec_hash, _steps.c.step == step)).first()
        return self._to_step(row) if row is not None else None

    def steps(self, key: str, spec_hash: str | None = None) -> list[StepProgress]:
        """All step progress of ``key`` (of one spec hash if given), in the order they started."""
        q = sa.select(_steps).where(_steps.c.key == key) \
            .order_by(_steps.c.started_at, _steps.c.spec_hash, _steps.c.step)
        if spec_hash is not None:
            q = q.where(_steps.c.spec_hash == spec_hash)
        with self._guard("read"), self._reading() as conn:
            rows = conn.execute(q).all()
        return [self._to_step(r) for r in rows]

    def start_step(self, key: str, spec_hash: str, step: str, *, again: bool = False) -> StepProgress:
        """Mark a step started (again: ``retries`` + 1). Refuses a step that already succeeded,
        unless ``again`` (a handler's ``always`` step, which observes rather than creates)."""
        with self._guard("write"), self._writing() as conn:
            old = conn.execute(sa.select(_steps).where(
                _steps.c.key == key, _steps.c.spec_hash == spec_hash, _steps.c.step == step)).first()
            if old is not None and old.state == "succeeded" and not again:
                raise StateError(f"{key}: step {step!r} already succeeded for spec {spec_hash[:12]}; "
                                 "it must not run again",
                                 hint="the controller should check store.step(...) first (bug)")
            sp = StepProgress(key=key, spec_hash=spec_hash, step=step, state="started",
                              retries=old.retries + 1 if old is not None and old.state != "succeeded" else 0,
                              started_at=utcnow())
            self._upsert(conn, _steps, ("key", "spec_hash", "step"), self._step_values(sp))
        return sp

    def finish_step(self, key: str, spec_hash: str, step: str, state: str, message: str = "",
                    output: dict[str, Any] | None = None) -> StepProgress:
        """Record how a started step ended (``succeeded`` or ``failed``) and what it produced."""
        if state not in ("succeeded", "failed"):
            raise StateError(f"{key}: step {step!r} can finish as succeeded or failed, not {state!r}")
        with self._guard("write"), self._writing() as conn:
            old = conn.execute(sa.select(_steps).where(
                _steps.c.key == key, _steps.c.spec_hash == spec_hash, _steps.c.step == step)).first()
            if old is None or old.state != "started":
                now_state = "never started" if old is None else old.state
                raise StateError(f"{key}: step {step!r} for spec {spec_hash[:12]} is {now_state}; "
                                 "only a started step can finish",
                                 hint="call start_step first (bug in the caller)")
            sp = replace(self._to_step(old), state=state, stopped_at=utcnow(),
                         message=redact_text(message), output=redact(output or {}))
            self._upsert(conn, _steps, ("key", "spec_hash", "step"), self._step_values(sp))
        return sp

    def forget_steps(self, key: str, spec_hashes: list[str]) -> int:
        """Forget the step progress of ``key`` for these spec hashes (run keys), so applying that
        spec again runs its steps again: ``kiln gc`` removed what they produced. Returns rows."""
        if not spec_hashes:
            return 0
        with self._guard("write"), self._writing() as conn:
            return int(conn.execute(sa.delete(_steps).where(
                _steps.c.key == key, _steps.c.spec_hash.in_(spec_hashes))).rowcount)

    @staticmethod
    def _step_values(sp: StepProgress) -> dict[str, Any]:
        d = sp.to_dict()
        d["message"] = redact_text(d["message"])
        d["output"] = _dumps(d["output"], f"{sp.key}: step {sp.step!r} output")
        return d

    # -- key-value ---------------------------------------------------------------------------

    def get_kv(self, namespace: str, key: str, default: Any = None) -> Any:
        """A small JSON value stored under (namespace, key), or ``default``."""
        with self._guard("read"), self._reading() as conn:
            raw = conn.execute(sa.select(_kv.c.value).where(
                _kv.c.namespace == namespace, _kv.c.key == key)).scalar()
        return json.loads(raw) if raw is not None else default

    def put_kv(self, namespace: str, key: str, value: Any) -> None:
        """Store a JSON value (redacted) under (namespace, key), replacing any previous one."""
        values = {"namespace": namespace, "key": key,
                  "value": _dumps(value, f"value {namespace}/{key}"), "updated_at": utcnow()}
        with self._guard("write"), self._writing() as conn:
            self._upsert(conn, _kv, ("namespace", "key"), values)

    def delete_kv(self, namespace: str, key: str) -> bool:
        with self._guard("write"), self._writing() as conn:
            return bool(conn.execute(sa.delete(_kv).where(
                _kv.c.namespace == namespace, _kv.c.key == key)).rowcount)

    def kv_items(self, namespace: str) -> dict[str, Any]:
        """Every key and value of one namespace."""
        with self._guard("read"), self._reading() as conn:
            rows = conn.execute(sa.select(_kv.c.key, _kv.c.value).where(_kv.c.namespace == namespace)
                                .order_by(_kv.c.key)).all()
        return {k: json.loads(v) for k, v in rows}

    # -- helpers -----------------------------------------------------------------------------

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Turn driver errors (locked, server gone) into a StateError the CLI can print."""
        try:
            yield
        except sa_exc.OperationalError as e:
            raise self._db_error(e, doing) from None

    def _upsert(self, conn: sa.Connection, table: sa.Table, pk: tuple[str, ...],
                values: dict[str, Any]) -> None:
        update_cols = {c: v for c, v in values.items() if c not in pk}
        if self.backend in SUPPORTED_BACKENDS:
            conn.execute(_upsert_statement(self.backend, table, pk, tuple(values)), values)
            return
        # Other SQLAlchemy backends: update-then-insert inside the caller's transaction.
        where = [table.c[c] == values[c] for c in pk]
        if conn.execute(sa.update(table).where(*where).values(**update_cols)).rowcount == 0:
            conn.execute(sa.insert(table).values(**values))


@functools.lru_cache(maxsize=64)
def _upsert_statement(backend: str, table: sa.Table, pk: tuple[str, ...], columns: tuple[str, ...]) -> Any:
    """"insert ... on conflict do update" of ``columns``, values bound at execution. Built once per
    table and column set: building it (the ``excluded`` alias's column proxies) cost more than
    running it, a third of a bookkeeping object's apply (#16)."""
    from sqlalchemy.dialects import postgresql, sqlite

    # both dialects spell "insert … on conflict do update" the same way
    dialect: Any = sqlite if backend == "sqlite" else postgresql
    stmt = dialect.insert(table)
    return stmt.on_conflict_do_update(index_elements=list(pk),
                                      set_={c: stmt.excluded[c] for c in columns if c not in pk})


class _Row:
    """Lets ``put`` build its return value with the same code that reads rows."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._mapping = values
