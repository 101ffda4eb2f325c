"""Run a deployment as a managed ``bentoml serve`` process on a loopback port.

Each server gets its own ``BENTOML_HOME`` (``bentoml serve`` wipes
``$BENTOML_HOME/prometheus_multiproc_dir`` at start, so two servers sharing a home break each
other's ``/metrics``); its ``models`` is a symlink to the repository's store, so nothing is
copied. Layout, per deployment::

    <repo>/.kiln/serving/<deployment>/
        config.json        the ServeConfig the service reads (KILN_SERVE_CONFIG)
        server.json        {"pid", "port", "model", "version", "serverId", "started", "url"}  (atomic)
        server.log         the server's stdout+stderr (access log, errors with request ids)
        home/              BENTOML_HOME of the process (models -> the repository's store)
    <repo>/.kiln/serving/tokens.json   hashed API tokens (kiln.bento.auth)

Health, as a Deployment status reports it: ``Healthy`` (``/readyz`` is 200), ``Progressing``
(started, not ready yet, within the start timeout), ``Degraded`` (exited, or not ready after the
start timeout, or ready before and failing now). A new model version starts a second server,
waits until it is ready and only then stops the old one (the port changes unless fixed).

``build_bento`` runs ``bentoml build`` offline (``uv`` must be installed, ``lock_packages:
false``); ``containerize`` needs a Docker engine and raises a clear error when there is none.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from kiln._util.clock import utcnow
from kiln._util.fs import write_json_atomic
from kiln._util.proc import pids_with_env
from kiln.bento.config import ServeConfig
from kiln.bento.registry import Registry, default_home
from kiln.errors import ConfigError, KilnError

__all__ = ["ManagedServer", "HEALTH", "free_port", "build_bento", "containerize", "ServerError", "SERVER_ID_ENV",
           "server_processes", "kill_server_processes"]

HEALTH = ("Healthy", "Progressing", "Degraded")


class ServerError(KilnError):
    """A deployment's server did not start or stopped unexpectedly."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every server start gets a fresh id in its environment. Why: BentoML's arbiter (circus) starts
# each worker in a session of its own, so a signal to the arbiter's process group never reaches
# the workers; when the arbiter dies (SIGKILL, OOM) they run on as orphans, still listening on the
# old port. The id finds exactly that start's processes, and never those of a newer server of the
# same deployment and version.
SERVER_ID_ENV = "KILN_SERVER_ID"


def server_processes(server_id: str | None) -> list[int]:
    """Pids of the running processes of one server start (see ``SERVER_ID_ENV``)."""
    return pids_with_env(SERVER_ID_ENV, server_id) if server_id else []


def kill_server_processes(server_id: str | None) -> list[int]:
    """SIGKILL the processes of one server start (see ``SERVER_ID_ENV``). Returns their pids."""
    killed = []
    for pid in server_processes(server_id):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def _bentoml_bin() -> list[str]:
    # this interpreter, not the ``bentoml`` script beside it: a copied or moved venv keeps scripts
    # whose shebang names the old interpreter, which would serve another checkout's kiln code
    return [sys.executable, "-m", "bentoml"]


class ManagedServer:
    """One deployment's server process. ``start`` / ``wait_ready`` / ``health`` / ``stop`` /
    ``update`` (new model version)."""

    def __init__(self, cfg: ServeConfig, repo: str | os.PathLike[str] | None = None, *,
                 port: int | None = None, start_timeout: float = 120.0) -> None:
        self.cfg = cfg
        self.repo = Path(repo or os.getcwd()).resolve()
        self.dir = self.repo / ".kiln" / "serving" / cfg.deployment
        self.fixed_port = port
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.started_at = 0.0
        self.was_ready = False
        self.server_id: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.dir / "server.log"

    def _prepare(self, tag: str) -> tuple[Path, dict[str, str]]:
        self.dir.mkdir(parents=True, exist_ok=True)
        store = default_home(self.repo) / "models"
        reg = Registry(default_home(self.repo))
        # lazy: kiln.bento.runtime imports numpy, which `kiln step deployment.*` must not load
        from kiln.bento.runtime import ServingConfig

        ServingConfig.load(reg.path(self.cfg.model, self.cfg.version))  # clear errors here, not in the server log
        home = self.dir / f"home-{tag}"
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        (home / "models").symlink_to(store, target_is_directory=True)
        cfg = self.cfg
        if not cfg.token_file:
            cfg = cfg.model_copy(update={"token_file": str(self.repo / ".kiln" / "serving" / "tokens.json")})
        if cfg.capture and not cfg.capture.dir:
            capture = cfg.capture.model_copy(update={"dir": str(self.repo / ".kiln" / "capture" / cfg.deployment)})
            cfg = cfg.model_copy(update={"capture": capture})
        conf = self.dir / f"config-{tag}.json"
        # the serving process validates it back with ServeConfig (from_env)
        write_json_atomic(conf, cfg.model_dump(mode="json"), mode=0o600)  # private, as before the shared writer
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BENTOML_", "PROMETHEUS_"))}
        env.update(BENTOML_HOME=str(home), KILN_SERVE_CONFIG=str(conf), BENTOML_DO_NOT_TRACK="True",
                   PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(self.cfg.threads))
        return home, env

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise ServerError(f"deployment {self.cfg.deployment}: already running on {self.url}")
        tag = f"v{self.cfg.version}"
        home, env = self._prepare(tag)
        self.port = self.fixed_port or free_port()
        cmd = _bentoml_bin() + ["serve", "kiln.bento.service:svc", "--host", "127.0.0.1", "--port", str(self.port)]
        kill_server_processes(self.server_id)  # workers of this object's earlier start, if its arbiter died
        self.server_id = uuid.uuid4().hex
        env[SERVER_ID_ENV] = self.server_id
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        log = open(self.log_file, "ab")
        try:
            self.proc = subprocess.Popen(cmd, env=env, cwd=str(self.dir), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        self.started_at = time.monotonic()
        self.was_ready = False
        write_json_atomic(self.dir / "server.json", {
            "pid": self.proc.pid, "port": self.port, "url": self.url, "model": self.cfg.model,
            "version": self.cfg.version, "serverId": self.server_id,
            "started": utcnow()}, mode=0o600)

    def _ready(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, TimeoutError):
            return False

    def wait_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ServerError(f"deployment {self.cfg.deployment}: server exited (code "
                                  f"{self.proc.returncode if self.proc else '?'}) before it was ready",
                                  hint=f"see {self.log_file}:\n{self.tail()}")
            if self._ready():
                self.was_ready = True
                return
            failure = self._startup_failure()
            if failure:  # BentoML's arbiter would restart the worker forever
                self.stop()
                raise ServerError(f"deployment {self.cfg.deployment}: the service failed to start: {failure}",
                                  hint=f"see {self.log_file}")
            time.sleep(0.2)
        raise ServerError(f"deployment {self.cfg.deployment}: not ready after {timeout or self.start_timeout:.0f}s",
                          hint=f"see {self.log_file}")

    def _startup_failure(self) -> str | None:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(getattr(self, "_log_offset", 0))
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        if "Application startup failed" not in text:
            return None
        # the exception line: the first unindented line after the last traceback's frames
        lines = text.splitlines()
        starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
        if starts:
            for ln in lines[starts[-1] + 1:]:
                if ln and not ln[0].isspace():
                    return ln.strip()[:500]
        return "Application startup failed"

    def health(self) -> str:
        if self.proc is None or self.proc.poll() is not None:
            return "Degraded"
        if self._ready():
            self.was_ready = True
            return "Healthy"
        if not self.was_ready and time.monotonic() - self.started_at < self.start_timeout:
            return "Progressing"
        return "Degraded"

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            # the server runs in its own session (we started it): signal that group only
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        # what outlived the arbiter: its group, and the workers in their own sessions
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        kill_server_processes(self.server_id)
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "server.json").unlink()

    def update(self, version: int) -> bool:
        """Serve ``version``: start it beside the running one, switch when ready, stop the old.
        Returns False when already serving it."""
        if version == self.cfg.version and self.proc is not None and self.proc.poll() is None:
            return False
        old = None
        if self.proc is not None and self.proc.poll() is None:
            if self.fixed_port:
                self.stop()
            else:
                old = ManagedServer(self.cfg, self.repo)
                old.proc, old.port, old.server_id = self.proc, self.port, self.server_id
                self.proc, self.server_id = None, None
        self.cfg = self.cfg.model_copy(update={"version": version})
        self.start()
        try:
            self.wait_ready()
        except ServerError:
            if old is not None:  # keep the old version serving
                self.stop()
                self.cfg = old.cfg
                self.proc, self.port, self.server_id = old.proc, old.port, old.server_id
            raise
        if old is not None:
            old.stop()
            write_json_atomic(self.dir / "server.json", {
                "pid": self.proc.pid if self.proc else None, "port": self.port, "url": self.url,
                "model": self.cfg.model, "version": version, "serverId": self.server_id,
                "started": utcnow()}, mode=0o600)
        return True

    def __enter__(self) -> ManagedServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def build_bento(cfg: ServeConfig, repo: str | os.PathLike[str] | None = None, *, timeout: float = 300,
                server: ManagedServer | None = None) -> str:
    """``bentoml build`` of the deployment's service, offline; returns the Bento tag.

    The Bento holds the kiln source (``kiln``'s folders), the model version and a python section
    with ``lock_packages: false`` (locking needs the network). Built into the deployment's
    BENTOML_HOME (its ``models`` is the repository store)."""
    if shutil.which("uv") is None and not Path(sys.executable).with_name("uv").exists():
        raise ConfigError("bentoml build needs 'uv' installed", hint="pip install uv")
    repo = Path(repo or os.getcwd()).resolve()
    server = server or ManagedServer(cfg, repo)
    home, env = server._prepare(f"build-v{cfg.version}")
    src = Path(__file__).resolve().parent.parent  # the kiln source tree (editable install)
    bentofile = server.dir / "bentofile.yaml"
    bentofile.write_text(json.dumps({
        "service": "kiln.bento.service:svc",
        "include": ["kiln/**/*.py", "bento/**/*.py", "setup.py", "pyproject.toml"],
        "exclude": ["**/__pycache__", "tests", ".venv", ".kiln"],
        "python": {"lock_packages": False,
                   "packages": ["bentoml==1.4.39", "onnxruntime", "numpy", "pillow", "orjson", "scikit-learn", "pandas"]},
        "labels": {"deployment": cfg.deployment, "model": cfg.model, "version": str(cfg.version)},
    }))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = _bentoml_bin() + ["build", str(src), "-f", str(bentofile), "--output", "tag"]
    r = subprocess.run(cmd, env=env, cwd=str(src), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise ServerError(f"bentoml build of deployment {cfg.deployment} failed (exit {r.returncode})",
                          hint=(r.stderr or r.stdout).strip()[-2000:])
    out = r.stdout.strip().splitlines()
    tag = out[-1].removeprefix("__tag__:") if out else ""
    return tag


def containerize(tag: str) -> None:
    """Container images need a Docker (or compatible) engine; fail clearly when there is none."""
    engines = [e for e in ("docker", "podman", "nerdctl", "buildctl") if shutil.which(e)]
    if not engines:
        raise ConfigError(f"cannot containerize {tag}: no container engine (docker, podman, nerdctl, buildctl) on this machine",
                          hint="install Docker, or serve the Bento with 'bentoml serve' / the local runtime")
    r = subprocess.run(["bentoml", "containerize", tag, "--backend", engines[0]], capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith("  ")]
        raise ServerError(f"bentoml containerize {tag} failed (no working {engines[0]} engine?)",
                          hint="\n".join(lines[-5:]))
