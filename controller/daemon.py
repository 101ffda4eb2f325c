"""``kiln controller``: the reconciling daemon (Argo CD / Flux style).

Every interval it fetches the branch of the GitOps repository and reconciles:

- a **new commit** is validated first, in a separate checkout, exactly as ``kiln validate`` does.
  Invalid: it is reported (log, webhook, the controller line of ``kiln status``) and *nothing* is
  applied; the clone stays at the last good commit, whose objects keep being reconciled. With a
  ``policy`` section in kiln.yaml, the range from the applied commit is checked too
  (``kiln.controller.policy``): a refused commit is reported the same way (``refused-commit``,
  lastError kind ``policy``) and the clone moves only up to the commit before it. Valid: the
  clone moves to it and ``kiln.controller.project.apply`` (the function behind ``kiln apply``)
  plans and applies exactly what the plan says.
- **without a new commit** it plans again: ``Handler.observe`` reports drift (a Label Studio
  project deleted by hand, a dead deployment server), which is logged as ``drift`` with the reason,
  marked OutOfSync on the object, and healed by the same apply. Unfinished applies are retried.

Why one process that calls apply (and not ``kiln apply`` in a subprocess): apply is already
resumable per step (state store) and serialised per object by the object locks (the repository
lock only while planning; an object another process is applying is reported busy and retried on
the next interval, while the others are reconciled), so a daemon killed
mid-apply and restarted resumes where the dead one stopped; SIGTERM/SIGINT interrupt it the
same way Ctrl-C interrupts ``kiln apply`` (the attempt is recorded as interrupted), then it exits.

Work dir layout (``--workdir``)::

    <workdir>/repo     clone of the branch; specs are applied from here (cwd of the daemon).
                       Its .kiln/ holds the state store, as for ``kiln apply``. Local commits that
                       kiln makes there (dataset versions) are rebased onto each new commit.
    <workdir>/check    detached worktree of the same clone where new commits are validated
    <workdir>/.kiln/lock   one daemon per work dir (flock, see kiln.state.lock)

Durable record, in the state store's key-value table (namespace ``controller``, key = branch),
written in one transaction after every step that changes it and shown by ``kiln status``::

    {"repo": "https://git.example.com/ml.git", "branch": "main", "pid": 4242,
     "sync": "Synced",                       # OutOfSync: the branch head is not what is applied
     "lastSeen": {"commit": "9f1c...", "at": "2026-05-20T12:00:00.000000Z"},
     "lastApplied": {"commit": "9f1c...", "at": "...", "result": "ok"},   # result: ok | failed
     "lastError": {"commit": "77ab...", "kind": "invalid", "message": "...", "at": "..."} | null,
     "lastReconcile": "...", "reconciles": 12}

Logs: one JSON object per line on stderr, ``{"ts", "level", "event", "commit", "object",
"message", ...}``; messages go through ``redact_text`` (URL passwords) and the environment is never
logged. HTTP (``--port``, a thread): ``/healthz`` answers 200 while the loop makes progress, 503
when it made none for ``--stuck-after`` (default 10 intervals); ``/metrics`` is Prometheus text.
"""

from __future__ import annotations

import hmac
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from kiln._util.redact import redact_text
from kiln.config import load_config
from kiln.controller.apply import ApplyResult
from kiln.controller.events import ApplyEvent, render
from kiln.controller.project import apply, load_valid, open_state
from kiln.errors import ConfigError, KilnError, LockHeld, SpecErrors
from kiln.state import RepoLock, utcnow

KV_NAMESPACE = "controller"
NOTIFY_KINDS = ("Experiment", "LabelingJob", "Deployment")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


# -- small pieces ---------------------------------------------------------------------------------

def parse_interval(text: str | float) -> float:
    """``"60s"``, ``"5m"``, ``"1h"``, ``"500ms"`` or plain seconds (``"30"``, ``2.5``) -> seconds."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
        if m is None:
            raise ConfigError(f"cannot read interval {text!r}",
                              hint="write seconds (60), or a number with a unit: 500ms, 60s, 5m, 1h")
        value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise ConfigError(f"interval {text!r} must be more than 0")
    return value


def _now() -> str:
    return utcnow()


class JsonLog:
    """Structured log lines on a stream; thread-safe, never raises."""

    LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

    def __init__(self, stream: Any = None, level: str = "info") -> None:
        self.stream = stream or sys.stderr
        self.min = self.LEVELS[level]
        self._lock = threading.Lock()

    def __call__(self, event: str, message: str = "", *, level: str = "info", commit: str | None = None,
                 object: str | None = None, **fields: Any) -> None:
        if self.LEVELS[level] < self.min:
            return
        line: dict[str, Any] = {"ts": _now(), "level": level, "event": event}
        if commit:
            line["commit"] = commit
        if object:
            line["object"] = object
        line["message"] = redact_text(message)
        line.update({k: redact_text(v) if isinstance(v, str) else v for k, v in fields.items()})
        with self._lock:
            try:
                self.stream.write(json.dumps(line, default=str) + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass


def _public_url(url: str) -> str:
    """A URL fit for logs and the record: no user info (tokens in https clone URLs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme and parts.netloc and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


class Git:
    """The few git commands the daemon needs, run in one folder; failures raise KilnError."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        p = subprocess.run(["git", *args], cwd=self.cwd, env=env, capture_output=True, text=True)
        if check and p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise KilnError(f"git {args[0]} failed in {self.cwd}: {redact_text(last)}")
        return p

    def out(self, *args: str) -> str:
        return self(*args).stdout.strip()


# -- metrics and HTTP ------------------------------------------------------------------------------

class Metrics:
    """Prometheus metrics of one daemon, in their own registry (tests run several in-process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter("kiln_controller_reconciles", "Reconcile loops run, by result",
                                  ["result"], registry=r)
        self.duration = Histogram("kiln_controller_reconcile_duration_seconds", "Duration of one reconcile loop",
                                  buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
                                  registry=r)
        self.errors = Counter("kiln_controller_errors", "Errors, by kind (invalid, policy, git, apply, lock, notify)",
                              ["kind"], registry=r)
        self.drift = Counter("kiln_controller_drift", "Objects found drifted from their applied spec", registry=r)
        self.objects = Gauge("kiln_controller_objects", "Recorded objects by kind and health",
                             ["kind", "health"], registry=r)
        self.commit_ts = Gauge("kiln_controller_last_applied_commit_timestamp_seconds",
                               "Commit time of the last applied commit", registry=r)
        self.applied_ts = Gauge("kiln_controller_last_apply_timestamp_seconds",
                                "When the last applied commit was applied", registry=r)
        self.in_sync = Gauge("kiln_controller_in_sync", "1 when the branch head is applied, else 0", registry=r)

    def set_objects(self, records: list[Any]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for rec in records:
            counts[(rec.kind, rec.health)] = counts.get((rec.kind, rec.health), 0) + 1
        self.objects.clear()
        for (kind, health), n in counts.items():
            self.objects.labels(kind=kind, health=health).set(n)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Heartbeat:
    """When the loop last made progress, and whether its git source answers; /healthz reports
    both (``stuck_after`` without progress, or a clone/fetch that fails, is unhealthy)."""

    def __init__(self, stuck_after: float) -> None:
        self.stuck_after = stuck_after
        self.last = time.monotonic()
        self.failure: str | None = None   # why the last git clone/fetch failed, until one works

    def beat(self) -> None:
        self.last = time.monotonic()

    def healthy(self) -> tuple[bool, float]:
        idle = time.monotonic() - self.last
        return idle <= self.stuck_after and self.failure is None, idle

    def status(self, live: bool = False) -> tuple[int, dict[str, Any]]:
        """/healthz (``live=False``): stuck or git failing is 503. /livez: only stuck is, since a
        restart cures a stuck loop but not a git server that is down."""
        ok, idle = self.healthy()
        if live:
            ok = idle <= self.stuck_after
        word = "ok" if ok else ("stuck" if idle > self.stuck_after else "git-failing")
        body: dict[str, Any] = {"status": word, "sinceProgressSeconds": round(idle, 3),
                                "stuckAfterSeconds": self.stuck_after}
        if self.failure is not None:
            body["error"] = self.failure
        return (200 if ok else 503), body


LOOPBACK = ("127.0.0.1", "::1", "localhost")
METRICS_TOKEN_ENV = "KILN_METRICS_TOKEN"


def serve_http(port: int, metrics: Metrics, heartbeat: Heartbeat, host: str = "127.0.0.1",
               metrics_token: str | None = None, metrics_public: bool = False,
               console: Callable[[], Any] | None = None) -> http.server.ThreadingHTTPServer:
    """Start /healthz and /metrics on a daemon thread; ``server.server_address`` has the port.

    /metrics names the repository, its objects and their errors: with ``metrics_token`` it needs
    ``Authorization: Bearer <token>``; without one it is served only on a loopback address or
    when ``metrics_public`` says the network in front of it decides who may scrape (a cluster
    scraping by pod annotation, which cannot send a token). /healthz is always open: probes
    must reach it and it says nothing about the repository.

    /ui is the read-only console (``kiln.controller.console``) over the repository the daemon
    applies (``console()`` gives its config, None before the first clone). It shows what /metrics
    shows and more, so the same rule decides who sees it; any method but GET and HEAD is 405."""
    open_metrics = metrics_token is None and (metrics_public or host in LOOPBACK)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path in ("/healthz", "/livez"):
                code, body = heartbeat.status(live=path == "/livez")
                self._send(code, json.dumps(body).encode(), "application/json")
            elif console is not None and (path == "/ui" or path.startswith("/ui/")):
                self._console(path)
            elif path == "/metrics":
                if not (open_metrics or self._authorized()):
                    self._send(401, b'{"error": "/metrics needs Authorization: Bearer <$KILN_METRICS_TOKEN>"}',
                               "application/json")
                    return
                from prometheus_client import CONTENT_TYPE_LATEST

                self._send(200, metrics.text(), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b'{"error": "not found; try /healthz, /livez or /metrics"}', "application/json")

        def _console(self, path: str) -> None:
            if not (open_metrics or self._authorized()):
                self._send(401, b'{"error": "/ui needs Authorization: Bearer <$KILN_METRICS_TOKEN>"}',
                           "application/json")
                return
            config = console() if console is not None else None
            if config is None:
                self._send(503, b'{"error": "the repository is not cloned yet"}', "application/json")
                return
            from urllib.parse import parse_qsl, urlsplit

            from kiln.controller.console.pages import dispatch

            parts = urlsplit(self.path)
            reply = dispatch(config, path[len("/ui"):] or "/", dict(parse_qsl(parts.query)), "/ui")
            self._send(reply.status, reply.body, reply.ctype)

        def _refuse(self) -> None:  # the console and the probes are read-only
            self._send(405, b'{"error": "read-only: change the specs in git"}', "application/json")

        do_POST = do_PUT = do_PATCH = do_DELETE = _refuse  # noqa: N815 (http.server's naming)

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            return metrics_token is not None and hmac.compare_digest(
                given.encode(), f"Bearer {metrics_token}".encode())

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # scrapes every few seconds: not worth a log line
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="kiln-controller-http", daemon=True).start()
    return server


# -- notifications ---------------------------------------------------------------------------------

def notify(url: str | None, event: dict[str, Any], log: JsonLog, metrics: Metrics | None = None,
           timeout: float = 5.0) -> bool:
    """POST ``event`` as JSON to ``url``. A failure is logged (without the URL's path, which often
    is the secret) and counted, never raised: notifications must not stop reconciling."""
    if not url:
        return False
    from urllib.parse import urlsplit

    where = urlsplit(url).netloc.rsplit("@", 1)[-1]
    req = urllib.request.Request(url, data=json.dumps(event, default=str).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "kiln-controller"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
        log("notified", f"{event.get('event')} sent to {where}", level="debug", object=event.get("object"))
        return True
    except Exception as exc:  # any failure (DNS, refused, 500, timeout) is only logged
        log("notify-failed", f"webhook at {where}: {type(exc).__name__}: {exc}", level="warning",
            object=event.get("object"))
        if metrics is not None:
            metrics.errors.labels(kind="notify").inc()
        return False


def _signature(rec: Any) -> tuple[Any, ...]:
    ready, stalled = rec.condition("Ready"), rec.condition("Stalled")
    return (rec.spec_hash, rec.observed_generation, rec.health, ready.status if ready else "",
            ready.last_transition if ready else "", stalled.status if stalled else "",
            stalled.message if stalled else "")


def outcome_events(before: dict[str, Any], after: list[Any]) -> list[tuple[str, Any]]:
    """("ready" | "failed", record) for each Experiment/LabelingJob/Deployment that, since
    ``before`` (key -> record), finished (Ready and Healthy) or failed (Stalled)."""
    events = []
    for rec in after:
        if rec.kind not in NOTIFY_KINDS:
            continue
        old = before.get(rec.key)
        if old is not None and _signature(old) == _signature(rec):
            continue
        ready, stalled = rec.condition("Ready"), rec.condition("Stalled")
        if stalled is not None and stalled.status == "True":
            if old is None or old.condition("Stalled") is None or _signature(old)[5:] != _signature(rec)[5:]:
                events.append(("failed", rec))
        elif ready is not None and ready.status == "True" and rec.health == "Healthy":
            was = old is not None and old.health == "Healthy" and (old.condition("Ready") or ready).status == "True"
            if old is None or not was or old.spec_hash != rec.spec_hash or old.observed_generation != rec.observed_generation:
                events.append(("ready", rec))
    return events


# -- the daemon ------------------------------------------------------------------------------------

@dataclass
class Options:
    source: str
    branch: str = "main"
    interval: float = 60.0
    workdir: Path = Path(".kiln-controller")
    port: int | None = 8080
    once: bool = False
    prune: bool = False
    stuck_after: float | None = None
    host: str = "127.0.0.1"
    metrics_public: bool = False


class Controller:
    def __init__(self, opts: Options, log: JsonLog | None = None) -> None:
        self.opts = opts
        self.log = log or JsonLog()
        self.metrics = Metrics()
        self.heartbeat = Heartbeat(opts.stuck_after or 10 * opts.interval)
        self.workdir = Path(opts.workdir).resolve()
        self.clone = self.workdir / "repo"
        self.check = self.workdir / "check"
        self.git = Git(self.clone)
        self.stop = threading.Event()
        self.applying = False
        self._done: tuple[str, str, str, bool, bool] | None = None
        self.server: http.server.ThreadingHTTPServer | None = None
        self.repo_public = _public_url(opts.source)

    # -- lifecycle --------------------------------------------------------------------------------

    def run(self) -> int:
        """Loop until SIGTERM/SIGINT (or one pass with ``--once``); the exit code."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with RepoLock(self.workdir, "kiln controller"):  # one daemon per work dir
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                if self.opts.port is not None:
                    # taken out of the environment: the apply's steps and user code never see it
                    token = os.environ.pop(METRICS_TOKEN_ENV, None) or None
                    self.server = serve_http(self.opts.port, self.metrics, self.heartbeat, self.opts.host,
                                             token, self.opts.metrics_public, console=self._console_config)
                    self.log("listening", f"http on port {self.server.server_address[1]}",
                             port=self.server.server_address[1])
                self.log("started", f"{self.repo_public} branch {self.opts.branch} every {self.opts.interval:g}s",
                         pid=os.getpid(), workdir=str(self.workdir))
                ok = True
                while not self.stop.is_set():
                    started = time.monotonic()
                    try:
                        ok = self.tick()
                    except KeyboardInterrupt:
                        self.log("interrupted", "stopped in the middle of an apply; a restart resumes it",
                                 level="warning")
                        break
                    if self.opts.once:
                        break
                    self.stop.wait(max(0.0, self.opts.interval - (time.monotonic() - started)))
                self.log("stopped", "bye")
                return 0 if ok or not self.opts.once else 1
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
                if self.server is not None:
                    self.server.shutdown()
                    self.server.server_close()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.log("stopping", f"received {signal.Signals(signum).name}")
        self.stop.set()
        if self.applying:  # like Ctrl-C on `kiln apply`: recorded as interrupted, resumable
            raise KeyboardInterrupt

    # -- one pass ---------------------------------------------------------------------------------

    def tick(self) -> bool:
        """Fetch, validate a new commit, apply; True when the branch head is applied cleanly."""
        t0 = time.monotonic()
        self.heartbeat.beat()
        result = "ok"
        try:
            head = self._fetch()
        except KilnError as exc:
            self.metrics.errors.labels(kind="git").inc()
            self.log("git-error", exc.message, level="error")
            self.heartbeat.failure = f"git: {exc.message}"
            self._finish(t0, "error")
            return False
        self.heartbeat.failure = None
        try:
            record = self._record()
            if record.get("lastSeen", {}).get("commit") != head:
                self.log("new-commit", f"{self.opts.branch} is at {head[:12]}", commit=head)
                record["lastSeen"] = {"commit": head, "at": _now()}
            applied = record.get("lastApplied", {}).get("commit")
            target = None
            err = record.get("lastError") or {}
            if head != applied and not (err.get("kind") in ("invalid", "policy") and err.get("commit") == head):
                problem = self._validate(head)
                if problem:
                    result = "invalid"
                    self._invalid(record, head, problem)
                else:
                    goal = self._allowed(record, applied, head)  # head, or the last allowed commit
                    if goal != head:
                        result = "refused"
                        if goal != applied and self._validate(goal):
                            goal = applied  # the allowed part alone is invalid: stay until a fix
                    try:
                        if goal != applied:
                            self._sync_to(goal)
                    except KilnError as exc:
                        self.metrics.errors.labels(kind="git").inc()
                        self.log("sync-failed", exc.message, level="error", commit=goal)
                        record["lastError"] = {"commit": goal, "kind": "sync", "message": exc.message, "at": _now()}
                        self.heartbeat.failure = f"git: {exc.message}"
                        result = "error"
                    else:
                        target = goal if goal != applied else None
            elif head != applied:
                # reported before; keep reconciling the last good (allowed) commit
                result = "refused" if err.get("kind") == "policy" else "invalid"
            if target is None and not applied:
                self._save(record, sync=False, count=True)
                self._finish(t0, result)
                return False  # nothing good was ever applied: nothing to reconcile
            commit = target or applied
            new_commit = target is not None
            ok = self._reconcile(record, commit, new=new_commit)
            if result == "ok" and not ok:
                result = "failed"
            self._save(record, sync=(record.get("lastApplied", {}).get("commit") == head), count=True)
            if self._done is not None:
                event, summary, commit, ok, quiet = self._done
                # a poll that changed nothing (labelling in progress) is only worth a debug line
                self.log(event, summary, commit=commit, level="debug" if quiet and not new_commit else
                         "info" if ok else "error")
        except LockHeld as exc:
            self.metrics.errors.labels(kind="lock").inc()
            self.log("lock-held", exc.message, level="warning")
            result = "error"
        except KilnError as exc:
            self.metrics.errors.labels(kind="apply").inc()
            self.log("error", exc.message + (f" ({exc.hint})" if getattr(exc, "hint", None) else ""), level="error")
            result = "error"
        self._finish(t0, result)
        return result == "ok"

    def _finish(self, t0: float, result: str) -> None:
        took = time.monotonic() - t0
        self.metrics.reconciles.labels(result=result).inc()
        self.metrics.duration.observe(took)
        self.log("reconciled", f"pass done: {result}", level="debug", seconds=round(took, 3))
        self.heartbeat.beat()

    # -- git ----------------------------------------------------------------------------------------

    def _fetch(self) -> str:
        """Clone or fetch; the commit the branch points at upstream."""
        b = self.opts.branch
        if not (self.clone / ".git").exists():
            self.log("clone", f"{self.repo_public} -> {self.clone}")
            Git(self.workdir)("clone", "--quiet", "--branch", b, "--single-branch", self.opts.source, str(self.clone))
            for key, value in (("user.name", "kiln controller"), ("user.email", "kiln-controller@localhost")):
                if self.git("config", "--get", key, check=False).returncode != 0:
                    self.git("config", key, value)  # dataset versions are committed locally
        else:
            self.git("fetch", "--quiet", "origin", f"+refs/heads/{b}:refs/remotes/origin/{b}")
        os.chdir(self.clone)  # paths in the state are relative to the repository, as for `kiln apply`
        return self.git.out("rev-parse", f"refs/remotes/origin/{b}")

    def _validate(self, commit: str) -> str:
        """"" when ``commit`` is valid, else the problems, as ``kiln validate`` prints them."""
        if not (self.check / ".git").exists():
            self.git("worktree", "prune")
            self.git("worktree", "add", "--quiet", "--detach", str(self.check), commit)
        else:
            Git(self.check)("checkout", "--quiet", "--detach", "--force", commit)
        kiln_dir = self.check / ".kiln"
        if not kiln_dir.exists():  # the registry and parse cache, as the clone sees them
            (self.clone / ".kiln").mkdir(exist_ok=True)
            kiln_dir.symlink_to(self.clone / ".kiln")
        try:
            load_valid(load_config(self.check))
        except SpecErrors as exc:
            return str(exc).replace(str(self.check) + os.sep, "")
        except KilnError as exc:
            return exc.message.replace(str(self.check) + os.sep, "")
        return ""

    def _allowed(self, record: dict[str, Any], applied: str | None, head: str) -> str:
        """The newest commit of ``applied..head`` up to which every commit is allowed by the policy
        (``kiln.controller.policy``), when kiln.yaml at ``applied`` has a ``policy`` section: ``head``
        when all are, else the one before the first refused commit (``applied``: none). The first
        apply (nothing applied yet) is the operator's bootstrap and is not checked."""
        from kiln.controller.policy import check_range, config_at

        if not applied:
            return head
        policy = config_at(self.clone, applied)
        if policy is None:
            return head
        config = load_config(self.clone)
        report = check_range(config, f"{applied}..{head}", policy=policy)
        if not report.ok:
            self._refused(record, head, report.text())
        while not report.ok:
            goal = report.allowed_until()
            if goal == applied:
                return applied
            report = check_range(config, f"{applied}..{goal}", policy=policy)
        return report.head

    def _refused(self, record: dict[str, Any], head: str, problem: str) -> None:
        """Like ``_invalid``, for a range the policy refuses (kind ``policy``)."""
        self.metrics.errors.labels(kind="policy").inc()
        self.log("refused-commit", f"not applied: {problem}", level="error", commit=head)
        record["lastError"] = {"commit": head, "kind": "policy", "message": problem, "at": _now()}
        self._save(record, sync=False)
        self._notify({"event": "refused-commit", "commit": head, "message": problem})

    def _sync_to(self, commit: str) -> None:
        """Move the clone to ``commit``, keeping kiln's own local commits and changes on top."""
        p = self.git("-c", "rebase.autoStash=true", "rebase", "--quiet", commit, check=False)
        if p.returncode != 0:
            self.git("rebase", "--abort", check=False)
            last = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise KilnError(f"cannot move {self.clone} to {commit[:12]}: {redact_text(last)}",
                            hint="local changes kiln made conflict with the new commit; resolve them in the clone")

    def _commit_time(self, commit: str) -> float:
        try:
            return float(self.git.out("show", "-s", "--format=%ct", commit))
        except (KilnError, ValueError):
            return 0.0

    # -- reporting ---------------------------------------------------------------------------------

    def _invalid(self, record: dict[str, Any], head: str, problem: str) -> None:
        self.metrics.errors.labels(kind="invalid").inc()
        self.log("invalid-commit", f"not applied: {problem}", level="error", commit=head)
        record["lastError"] = {"commit": head, "kind": "invalid", "message": problem, "at": _now()}
        self._save(record, sync=False)
        self._notify({"event": "invalid-commit", "commit": head, "message": problem})

    def _notify(self, event: dict[str, Any]) -> None:
        try:
            url = load_config(self.clone).notifications.url()
        except KilnError as exc:
            self.log("notify-failed", exc.message, level="warning")
            return
        notify(url, {"repo": self.repo_public, "branch": self.opts.branch, "ts": _now(), **event},
               self.log, self.metrics)

    # -- reconcile ---------------------------------------------------------------------------------

    def _reconcile(self, record: dict[str, Any], commit: str, new: bool) -> bool:
        """Plan and apply what the plan says (``kiln apply``'s function); True when all is applied."""
        config = load_config(self.clone)
        before = {r.key: r for r in self._objects(config)}

        def on_event(event: ApplyEvent) -> None:
            self.heartbeat.beat()
            # what apply does is news; skipping and polling notes are not
            self.log("apply", render(event).strip(), level="info" if event.news else "debug", commit=commit,
                     object=event.key)

        self._done = None
        self.applying = True
        try:
            if self.stop.is_set():
                raise KeyboardInterrupt
            done = apply(config, prune=self.opts.prune, on_event=on_event, wait_lock=0,
                         command="kiln controller", review=lambda plan, st: self._review(plan, st, commit))
        finally:
            self.applying = False
        res = done.result
        ok = res.ok
        # logged by tick() once the record says so: a reader of the log may rely on it
        quiet = ok and not res.actions and not any(r.outcome != "unchanged" for r in res.results)
        self._done = ("applied" if ok else "apply-failed", res.summary(), commit, ok, quiet) if res.results else None
        self._note_result(record, commit, new, res)
        self.metrics.commit_ts.set(self._commit_time(commit))
        after = self._objects(config)
        self.metrics.set_objects(after)
        for word, rec in outcome_events(before, after):
            ready, stalled = rec.condition("Ready"), rec.condition("Stalled")
            msg = (stalled.message if word == "failed" and stalled else ready.message if ready else "")
            self.log("object-" + word, msg, commit=commit, object=rec.key, health=rec.health,
                     level="error" if word == "failed" else "info")
            self._notify({"event": word, "object": rec.key, "kind": rec.kind, "name": rec.name,
                          "workspace": rec.workspace, "health": rec.health, "message": msg, "commit": commit})
        return ok

    def _review(self, plan: Any, st: Any, commit: str) -> bool:
        """Between plan and apply, under the lock: log each change (drift as such), mark what is
        about to change OutOfSync, and say whether there is anything to do."""
        self.heartbeat.beat()
        work = False
        for c in plan.changes:
            if c.pending:
                work = True
                drift = c.action == "update" and not c.fields and c.note and not c.note.startswith("retry")
                if drift:
                    self.metrics.drift.inc()
                self.log("drift" if drift else c.action, c.note or f"{c.action} {c.ref}", commit=commit,
                         object=c.key, level="warning" if drift else "info")
                if c.record is not None and c.record.sync != "OutOfSync":
                    c.record = replace(c.record, sync="OutOfSync")  # until apply says otherwise
                    st.put(c.record)
            elif c.poll:
                work = True
                self.log("poll", c.note, level="debug", commit=commit, object=c.key)
        if not work:
            self.log("in-sync", plan.summary(), level="debug", commit=commit)
        return work

    def _note_result(self, record: dict[str, Any], commit: str, new: bool, res: ApplyResult) -> None:
        """``lastError``/``lastApplied`` of the durable record after an apply of ``commit``."""
        ok = res.ok
        if not ok:
            self.metrics.errors.labels(kind="apply").inc()
            failed = [f"{r.ref}: {r.message}" for r in res.results if r.message]
            record["lastError"] = {"commit": commit, "kind": "apply", "message": "; ".join(failed) or res.summary(),
                                   "at": _now()}
        elif (record.get("lastError") or {}).get("kind") in ("apply", "sync"):
            record["lastError"] = None
        if new or record.get("lastApplied", {}).get("commit") != commit:
            record["lastApplied"] = {"commit": commit, "at": _now(), "result": "ok" if ok else "failed"}
            self.metrics.applied_ts.set(time.time())
            err = record.get("lastError") or {}
            if err.get("kind") == "invalid" or (err.get("kind") == "policy" and
                                                commit == record.get("lastSeen", {}).get("commit")):
                record["lastError"] = None  # a good commit replaced the invalid (or refused) one
        elif res.results and (record["lastApplied"].get("result") == "ok") != ok:
            record["lastApplied"] = {**record["lastApplied"], "result": "ok" if ok else "failed"}

    @staticmethod
    def _objects(config: Any) -> list[Any]:
        store = open_state(config)
        try:
            return store.all_objects()
        finally:
            store.close()

    def _console_config(self) -> Any:
        """The config of the clone the console under /ui shows (None until it is cloned)."""
        return load_config(self.clone) if (self.clone / ".git").exists() else None

    # -- the durable record ------------------------------------------------------------------------

    def _store(self) -> Any:
        return open_state(load_config(self.clone))

    def _record(self) -> dict[str, Any]:
        store = self._store()
        try:
            return dict(store.get_kv(KV_NAMESPACE, self.opts.branch) or {})
        finally:
            store.close()

    def _save(self, record: dict[str, Any], *, sync: bool, count: bool = False) -> None:
        record.update(repo=self.repo_public, branch=self.opts.branch, pid=os.getpid(),
                      sync="Synced" if sync else "OutOfSync")
        if count:  # once per pass
            record.update(lastReconcile=_now(), reconciles=int(record.get("reconciles", 0)) + 1)
        self.metrics.in_sync.set(1 if sync else 0)
        store = self._store()
        try:
            store.put_kv(KV_NAMESPACE, self.opts.branch, record)
        finally:
            store.close()


# -- CLI --------------------------------------------------------------------------------------------

class _Interval(click.ParamType):
    name = "interval"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            return parse_interval(value)
        except ConfigError as exc:
            self.fail(f"{exc.message} ({exc.hint})" if exc.hint else exc.message, param, ctx)


@click.command()
@click.option("--repo", "source", required=True, help="Git URL or local path of the GitOps repository.")
@click.option("--branch", default="main", show_default=True)
@click.option("--interval", type=_Interval(), default="60s", show_default=True,
              help="How often to fetch and re-plan (60s, 5m, or plain seconds).")
@click.option("--workdir", type=click.Path(file_okay=False), default=".kiln-controller", show_default=True,
              help="Where the clone and its state live.")
@click.option("--port", type=int, default=8080, show_default=True,
              help="HTTP port of /healthz and /metrics (0: any free port, -1: none).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the HTTP server listens on (0.0.0.0 in a pod, for probes and scraping).")
@click.option("--metrics-public", is_flag=True,
              help="Serve /metrics without a token on a non-loopback --host (the network decides who "
                   f"scrapes). Otherwise set ${METRICS_TOKEN_ENV} and scrape with that bearer token.")
@click.option("--stuck-after", type=_Interval(), default=None,
              help="/healthz answers 503 after this long without progress (default: 10 intervals).")
@click.option("--prune", is_flag=True, help="Delete what removed specs created (as `kiln apply --prune`).")
@click.option("--once", is_flag=True, help="One pass, then exit (1 when the head is not applied cleanly).")
@click.option("--log-level", type=click.Choice(list(JsonLog.LEVELS)), default="info", show_default=True)
def controller(source: str, branch: str, interval: float, workdir: str, port: int, host: str,
               metrics_public: bool, stuck_after: float | None, prune: bool, once: bool, log_level: str) -> int:
    """Reconcile a branch continuously: on each new commit validate, then apply; between commits
    re-plan to heal drift. JSON logs on stderr; /healthz and /metrics over HTTP."""
    if "://" not in source and not re.match(r"^[\w.-]+@[\w.-]+:", source):
        path = Path(source).expanduser()
        if not path.exists():
            raise KilnError(f"--repo {source}: no such path", hint="give a git URL or a local repository path")
        source = str(path.resolve())  # the daemon chdirs into its clone
    opts = Options(source=source, branch=branch, interval=interval, workdir=Path(workdir).resolve(),
                   port=None if port < 0 else port, once=once, prune=prune, stuck_after=stuck_after, host=host,
                   metrics_public=metrics_public)
    return Controller(opts, JsonLog(level=log_level)).run()
