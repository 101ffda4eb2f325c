"""A PostgreSQL server for tests: the one in $KILN_TEST_POSTGRES_URL, or a throwaway cluster.

Reusable by any test that needs PostgreSQL (``tests/conftest.py`` wraps it in the session
fixture ``pg_server``). Order of preference:

1. ``KILN_TEST_POSTGRES_URL`` (e.g. ``postgresql+psycopg2://kiln@127.0.0.1:5432/kiln_test``):
   used as is; the user needs CREATE on the database (tests make one schema each).
2. Server binaries at ``/usr/lib/postgresql/*/bin`` (Debian: ``apt-get install -y postgresql``):
   ``initdb`` a cluster in a temp dir, start it on a free loopback port with its unix socket in
   the same dir, create database ``kiln_test``, and stop and delete it all at the end. initdb
   refuses to run as root, so as root the server runs as the ``postgres`` user (or ``nobody``)
   via ``runuser``. fsync is off: tests kill clients, never the machine.
3. Neither: :class:`PgUnavailable` with the reason, which fixtures turn into a skip.

If the binaries exist but the server does not start, that is an error (with the server log),
not a skip: a silent skip would hide a broken CI set-up.

Each test gets a fresh schema (:func:`fresh_schema`) through ``search_path`` in the URL, so
tests never see each other's tables and need no database-level privileges.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "KILN_TEST_POSTGRES_URL"
INSTALL_HINT = "apt-get update && apt-get install -y postgresql"


class PgUnavailable(Exception):
    """No PostgreSQL server can be used here; the message says why and what to do."""


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has initdb, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = max(found, key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    return Path(newest).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as_prefix() -> tuple[list[str], str | None]:
    """Command prefix to run server binaries as a non-root user, and that user's name."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PgUnavailable("running as root and `runuser` is missing: initdb refuses root")
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return [runuser, "-u", name, "--"], name
    raise PgUnavailable("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a database the tests may use freely."""
    url = os.environ.get(ENV)
    if url:
        yield url
        return
    bindir = find_bindir()
    if bindir is None:
        raise PgUnavailable(f"no PostgreSQL: set {ENV} or install the server ({INSTALL_HINT})")
    prefix, user = _run_as_prefix()
    tmp = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    data, log = tmp / "data", tmp / "server.log"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], cwd=tmp, capture_output=True, text=True, timeout=120)

    started = False
    try:
        r = run(str(bindir / "initdb"), "-D", str(data), "-U", "kiln", "-A", "trust", "-E", "UTF8",
                "--no-sync", "--no-instructions")
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{r.stdout}\n{r.stderr}")
        for _ in range(3):  # the free port can be taken between probe and bind
            port = _free_port()
            opts = (f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c full_page_writes=off -c synchronous_commit=off")
            r = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")
            if r.returncode == 0:
                started = True
                break
        if not started:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start:\n{r.stdout}\n{r.stderr}\n{tail}")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="kiln", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE kiln_test")
        conn.close()
        yield f"postgresql+psycopg2://kiln@127.0.0.1:{port}/kiln_test"
    finally:
        if started:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def fresh_schema(server_url: str) -> Iterator[str]:
    """A URL whose connections use a new, empty schema; dropped afterwards."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, poolclass=sa.pool.NullPool)
    try:
        with admin.begin() as c:
            c.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        url = sa.engine.make_url(server_url).update_query_dict({"options": f"-csearch_path={name}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()
