"""Helpers for `kiln controller` tests: a bare git remote with a working copy that pushes to it,
the daemon as a real subprocess whose JSON log lines are polled, and a webhook receiver."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


class Remote:
    """A bare repository (what the daemon follows) and a working copy that commits and pushes."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "remote.git"
        self.work = root / "author"
        git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        self.work.mkdir(parents=True)
        git(self.work, "init", "-q", "-b", "main")
        git(self.work, "config", "user.email", "author@example.com")
        git(self.work, "config", "user.name", "author")
        git(self.work, "remote", "add", "origin", str(self.bare))

    def push(self, files: dict[str, str | None], message: str) -> str:
        """Write (None: delete) files, commit, push; the new commit's sha."""
        for rel, text in files.items():
            p = self.work / rel
            if text is None:
                p.unlink()
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(textwrap.dedent(text).lstrip())
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")


class Daemon:
    """``kiln controller`` as a subprocess in its own process group; stderr goes to a file."""

    def __init__(self, remote: Path, workdir: Path, *, interval: str = "1s", env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.cmd = [sys.executable, "-m", "kiln.cli", "controller", "--repo", str(remote), "--branch", "main",
                    "--interval", interval, "--workdir", str(workdir), "--port", "0", *args]
        self.env = {**os.environ, **(env or {})}
        self.env.pop("KILN_DEBUG", None)
        self.workdir = workdir
        self.log_path = workdir.parent / f"{workdir.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        self.workdir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as err:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=err, env=self.env,
                                         start_new_session=True)
        return self

    def events(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "non-json", "message": line})
        return out

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 120.0,
                 after: int = 0) -> dict[str, Any]:
        """The first log event (from index ``after``) matching ``pred``; fails with the log tail."""
        deadline = time.time() + timeout
        while True:
            evs = self.events()
            for e in evs[after:]:
                if pred(e):
                    return e
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.tail()}")
            if time.time() > deadline:
                raise AssertionError(f"timed out after {timeout}s:\n{self.tail()}")
            time.sleep(0.1)

    def applied(self, commit: str, timeout: float = 180.0) -> dict[str, Any]:
        return self.wait_for(lambda e: e.get("event") in ("applied", "apply-failed") and e.get("commit") == commit,
                             timeout)

    def tail(self, n: int = 60) -> str:
        return "\n".join(json.dumps(e) for e in self.events()[-n:])

    @property
    def port(self) -> int:
        return int(self.wait_for(lambda e: e.get("event") == "listening", 30)["port"])

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a dying container would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class Webhook:
    """A local HTTP server that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for e in list(self.received):
                if pred(e):
                    return e
            time.sleep(0.1)
        raise AssertionError(f"no matching notification in {self.received}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def state(clone: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(records by key as dicts, the controller's kv record) of the daemon's clone."""
    from kiln.config import load_config
    from kiln.controller.project import open_state

    store = open_state(load_config(clone))
    try:
        return ({r.key: r for r in store.all_objects()}, store.get_kv("controller", "main") or {})
    finally:
        store.close()
