"""Deployment steps (``kiln step deployment.<name>``): resolve-model -> build -> rollout -> smoke-test.

Why here and not in the serving layer: these decide *when* to start, restart or stop a server
(kiln.bento.server runs one); they are the controller side of a Deployment.

The local runtime is a daemonized ``bentoml serve`` per deployment that outlives ``kiln apply``
(its own session, reparented to init when the step exits). Everything about it lives in::

    <repo>/.kiln/deployments/<ws>/<name>/
        resolved.json   {"specHash", "model", "version", "tag", "serving": {...}}   (resolve-model)
        build.json      {"key": sha256(model, version, serve config), "bento": "<tag>"} (build memo)
        server.json     {"pid", "port", "url", "model", "version", "serverId", "fingerprint", "started"}  (atomic;
                        the pid file: a later apply finds the server here and checks it)
        server.log      the server's output (access log with token *ids* only)
        config-v<N>.json, home-v<N>/   the ServeConfig and BENTOML_HOME of the process
        capture/        captured inputs (kiln.bento.capture layout); kept on prune: it is data
        router.json, router.log, backend-v<N>/, shadow.jsonl
                        with ``spec.rollout``: the router's routing, its log, one server per version
                        behind it, a shadow's recorded outputs (kiln.controller.deployment_rollout)

A restart (new model version or serving config) starts the new server beside the old one, waits
for its ``/readyz`` and only then stops the old one, so no request is dropped; with a fixed
``spec.port`` the old one must go first (one port, one listener). ``enabled: false`` and prune stop
the server. Tokens are the serving layer's (``kiln deployments token create NAME``); tokens named
by ``auth.tokens[].env`` are hashed by the handler at apply (kiln.controller.handlers.deployment)
and never written anywhere in clear.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln._util.clock import utcnow
from kiln._util.fs import read_json, share_identical, write_json_atomic
from kiln._util.proc import has_env
from kiln.api.deployment import Deployment, DeploymentSpec
from kiln.api.experiment import from_experiment
from kiln.bento.auth import TokenStore, default_token_file
from kiln.bento.capture import NO_CAPTURE_HEADER
from kiln.bento.config import ServeCapture, ServeConfig, ServeLimits
from kiln.bento.registry import Registry, default_home
from kiln.bento.server import ManagedServer, build_bento, kill_server_processes
from kiln.controller.handlers.base import TemporaryError
from kiln.errors import ConfigError, KilnError, NotFound

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.controller.steps import StepContext

# the server's environment carries this: a pid from server.json is ours only if it has it
HOME_MARKER = "KILN_DEPLOYMENT_HOME"
START_TIMEOUT = 180.0


class ModelNotReady(KilnError):
    """The deployment's model has no registered version (yet)."""


def deployment_home(config: KilnConfig, workspace: str, name: str) -> Path:
    return config.kiln_dir() / "deployments" / workspace / name


def capture_dir(config: KilnConfig, workspace: str, name: str) -> Path:
    return deployment_home(config, workspace, name) / "capture"


# kiln.controller.deployment_cli reads server.json through this name
_read_json = read_json


def _home(ctx: StepContext) -> Path:
    ws, name = ctx.workspace, ctx.name
    home = deployment_home(ctx.config, ws, name)
    home.mkdir(parents=True, exist_ok=True)
    return home
# -- model resolution ----------------------------------------------------------------------------

def resolve_model(repo: Path, model: Any, workspace: str = "default") -> tuple[str, int]:
    """(name, version) of a ModelRef: a version, an alias, the latest, or the latest version
    registered with the label ``experiment=<name>``."""

    reg = Registry(default_home(repo))
    try:
        names = reg.names()
    except FileNotFoundError:
        names = []
    if model.experiment:
        found = []
        for n in names:
            for v in reg.versions(n):
                if from_experiment(reg.describe(n, v)["labels"], workspace, model.experiment):
                    found.append((reg.describe(n, v)["created"], n, v))
        if not found:
            raise ModelNotReady(f"the model of experiment {model.experiment} has no version yet: apply the "
                                "experiment that registers it",
                                hint=f"registered models: {', '.join(names) or 'none'}")
        _, n, v = max(found)
        return n, v
    if model.name not in names:
        raise ModelNotReady(f"model {model.name} has no version yet: apply the experiment that registers it",
                            hint=f"registered models: {', '.join(names) or 'none'} (kiln models list)")
    return model.name, reg.resolve(model.name, model.version, model.alias)


def deployment_resolve_model(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Deployment).spec
    name, version = resolve_model(ctx.config.repo, spec.model, ctx.workspace)
    serving = Registry(default_home(ctx.config.repo)).describe(name, version)["serving"]
    if spec.runtime == "onnx" and serving.get("framework") != "onnx":
        raise ConfigError(f"model {name} v{version} is {serving.get('framework')!r}; runtime: onnx needs an "
                          "ONNX model", hint="register the ONNX export (experiment export-onnx) or use runtime: native")
    out = {"model": name, "version": version, "tag": f"{name}:v{version}",
           "task": serving.get("task"), "input": serving.get("input")}
    write_json_atomic(_home(ctx) / "resolved.json", {**out, "specHash": ctx.spec_hash, "serving": serving}, mkdir=False)
    return out


def _resolved(ctx: StepContext) -> dict[str, Any]:
    r = read_json(_home(ctx) / "resolved.json")
    if r is None or r.get("specHash") != ctx.spec_hash:  # run alone (kiln step): resolve again
        deployment_resolve_model(ctx)
        r = read_json(_home(ctx) / "resolved.json")
    assert r is not None
    return r


# -- serving config ------------------------------------------------------------------------------

def serve_config(ctx: StepContext, spec: DeploymentSpec, model: str, version: int) -> ServeConfig:
    ws, name = ctx.workspace, ctx.name
    capture = None
    if spec.capture is not None:
        capture = ServeCapture(dir=str(capture_dir(ctx.config, ws, name)), sampleRate=spec.capture.sampleRate,
                               maxPerDay=spec.capture.maxPerDay)
    # tokens are per workspace and deployment (`kiln deployments token create WS/NAME`)
    return ServeConfig(deployment=name, workspace=ws, model=model, version=version, workers=spec.workers,
                       gpu=spec.resources.gpu or 0,
                       public=spec.auth.public, token_file=str(default_token_file(ctx.config.repo)),
                       batching=spec.batching, limits=ServeLimits.model_validate(spec.limits.model_dump()),
                       capture=capture)


def fingerprint(cfg: ServeConfig, port: int | None) -> str:
    return hashlib.sha256(json.dumps([cfg.model_dump(mode="json"), port], sort_keys=True).encode()).hexdigest()[:16]


# -- build ---------------------------------------------------------------------------------------

def deployment_build(ctx: StepContext) -> dict[str, Any]:
    """``bentoml build`` of the service with this model version (offline), memoized on the model
    version and serving config: an unchanged pair reuses the Bento."""

    spec = ctx.model(Deployment).spec
    r = _resolved(ctx)
    cfg = serve_config(ctx, spec, r["model"], r["version"])
    key = fingerprint(cfg, None)
    home = _home(ctx)
    memo = read_json(home / "build.json")
    bento_store = home / f"home-build-v{r['version']}" / "bentos"
    if memo and memo.get("key") == key and _bento_exists(bento_store, memo.get("bento", "")):
        return {"bento": memo["bento"], "reused": True}
    t0 = time.monotonic()
    srv = _server(ctx, cfg)
    tag = build_bento(cfg, ctx.config.repo, server=srv)
    # `bentoml build` copies the model into the Bento: share its files with the registry's copy
    # (hard links; neither is written again), so a deployment does not store the model twice
    bento = bento_store / tag.replace(":", "/")
    if bento.is_dir():
        share_identical(sorted(bento.rglob("*")), Registry(default_home(ctx.config.repo)).path(r["model"], r["version"]))
    write_json_atomic(home / "build.json", {"key": key, "bento": tag, "model": r["model"], "version": r["version"]}, mkdir=False)
    return {"bento": tag, "reused": False, "seconds": round(time.monotonic() - t0, 1)}


def _bento_exists(store: Path, tag: str) -> bool:
    name, _, version = tag.partition(":")
    return bool(name and version) and (store / name / version / "bento.yaml").is_file()


# -- the server process --------------------------------------------------------------------------

def _server(ctx: StepContext, cfg: ServeConfig, port: int | None = None):
    home = _home(ctx)

    class DeploymentServer(ManagedServer):
        """A ManagedServer living in the deployment's folder, fit to outlive its parent."""

        def _prepare(self, tag: str) -> tuple[Path, dict[str, str]]:
            bhome, env = super()._prepare(tag)
            for k in [k for k in env if k.startswith("KILN_LOCAL_RUN")]:
                env.pop(k)  # not a pod of the runner: its reaper must never take the server
            tmp = bhome / "tmp"
            tmp.mkdir(exist_ok=True)
            env["TMPDIR"] = str(tmp)  # the task's TMPDIR is removed when the task ends
            env[HOME_MARKER] = str(home.resolve())
            return bhome, env

    srv = DeploymentServer(cfg, ctx.config.repo, port=port, start_timeout=START_TIMEOUT)
    srv.dir = home
    return srv


def _alive(pid: int, home: Path) -> bool:
    """``pid`` runs and is this deployment's server (pids get reused)."""
    return has_env(pid, HOME_MARKER, str(home.resolve()))


def ready(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def stop_pid(pid: int | None, home: Path, timeout: float = 20.0, server_id: str | None = None) -> bool:
    """Stop a server started by an earlier process: the arbiter's process group, then, by the
    start's ``server_id`` (server.json ``serverId``), workers that run on in sessions of their
    own, also when the arbiter is already dead. True if anything was stopped."""

    alive = pid is not None and _alive(pid, home)
    if alive and pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid, home):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # what outlived the arbiter in its group
    return bool(kill_server_processes(server_id)) or alive


def live_health(home: Path, enabled: bool = True) -> tuple[str, dict[str, Any] | None]:
    """(health, server.json) of a deployment's server, from its pid and ``/readyz``."""
    info = read_json(home / "server.json")
    if not enabled:
        return "Suspended", info
    if info is None:
        return "Missing", None
    if not _alive(int(info.get("pid") or 0), home):
        return "Degraded", info
    if ready(info["url"]):
        return "Healthy", info
    started = _dt.datetime.fromisoformat(info["started"])
    young = (_dt.datetime.now(_dt.UTC) - started).total_seconds() < START_TIMEOUT
    return ("Progressing" if young else "Degraded"), info


def deployment_rollout(ctx: StepContext) -> dict[str, Any]:
    """Make the running server match the spec: keep a healthy one with the same fingerprint,
    otherwise start the new one, wait until ready, then stop the old one. With ``spec.rollout``
    (or a router still in front from one), a canary or shadow rollout instead
    (kiln.controller.deployment_rollout)."""
    from kiln.controller.deployment_rollout import routed_rollout, stop_all
    spec = ctx.model(Deployment).spec
    home = _home(ctx)
    fd = _lock(home / "rollout.lock")
    try:
        old = read_json(home / "server.json")
        old_pid = int(old["pid"]) if old and old.get("pid") and _alive(int(old["pid"]), home) else None
        old_sid = old.get("serverId") if old else None
        if old and not old_pid and old_sid:
            stop_pid(None, home, server_id=old_sid)  # its arbiter died: its workers may still hold the port
        if not spec.enabled:
            stopped = stop_all(home, old)  # also the versions behind a router that died
            with contextlib.suppress(FileNotFoundError):
                (home / "server.json").unlink()
            return {"enabled": False, "stopped": old_pid if stopped else None}
        r = _resolved(ctx)
        cfg = serve_config(ctx, spec, r["model"], r["version"])
        if spec.rollout is not None or (old and old.get("router")):
            # a router in front of one server per version (kiln.controller.deployment_rollout)
            return routed_rollout(ctx, spec, home, old, cfg, fingerprint(cfg, None))
        fp = fingerprint(cfg, spec.port)
        if old_pid and old.get("fingerprint") == fp and ready(old["url"]):
            return {**_public(old), "restarted": False}
        if old_pid and spec.port is not None and old.get("port") == spec.port:
            stop_pid(old_pid, home, server_id=old_sid)  # one port, one listener: the old one must go first
            old_pid = None
        srv = _server(ctx, cfg, port=spec.port)
        srv.start()
        try:
            srv.wait_ready()
        except BaseException:
            srv.stop()
            if old is not None and old_pid:
                write_json_atomic(home / "server.json", old, mkdir=False)  # the old one keeps serving
            raise
        assert srv.proc is not None
        info = {"pid": srv.proc.pid, "port": srv.port, "url": srv.url, "model": cfg.model, "version": cfg.version,
                "serverId": srv.server_id, "fingerprint": fp, "device": serving_device(srv.url),
                "started": utcnow()}
        write_json_atomic(home / "server.json", info, mkdir=False)
        srv.proc = None  # daemon: this process must neither wait for it nor stop it
        if old_pid:
            stop_all(home, old)
        return {**_public(info), "restarted": bool(old_pid), "replaced": old_pid}
    finally:
        os.close(fd)


def _public(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in ("url", "port", "pid", "model", "version", "device") if k in info}


_DEVICE_METRIC = re.compile(r'^kiln_model_device\{device="([a-z]+)"\} 1(\.0)?$', re.M)


def serving_device(url: str) -> str | None:
    """Where a ready server runs its model ("cuda" or "cpu"), from its ``/metrics`` (the server
    alone knows: a GPU asked for may be absent). None when it does not say."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            m = _DEVICE_METRIC.search(r.read().decode(errors="replace"))
    except OSError:
        return None
    return m.group(1) if m else None


def _lock(path: Path) -> int:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # released when the process dies, also on kill -9
    return fd


# -- smoke test ----------------------------------------------------------------------------------

def sample_instance(serving: dict[str, Any]) -> Any:
    """One EasyMaker instance built from the model's serving metadata."""
    if serving.get("input") == "image":
        import base64
        import io

        from PIL import Image

        img = serving.get("image") or {}
        h, w = (img.get("size") or [32, 32])[:2]
        buf = io.BytesIO()
        Image.new(img.get("mode", "RGB"), (int(w), int(h))).save(buf, format="PNG")
        return {"data": base64.b64encode(buf.getvalue()).decode()}
    types = serving.get("feature_types") or {}
    cols = (serving.get("schema") or {}).get("columns") or {}

    def value(f: str) -> Any:
        if types.get(f) != "string":
            return 0.0
        cats = (cols.get(f) or {}).get("categories") or [""]  # a category seen in training
        return cats[0]

    return {f: value(f) for f in serving.get("features") or []}


def post(url: str, body: Any, token: str | None = None, timeout: float = 30.0,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/predict", data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None


def deployment_smoke_test(ctx: StepContext) -> dict[str, Any]:
    """A real request in the EasyMaker format; a non-public deployment gets a token made for it
    and dropped again (never printed)."""

    spec = ctx.model(Deployment).spec
    if not spec.enabled:
        return {"skipped": "enabled: false"}
    home = _home(ctx)
    info = read_json(home / "server.json")
    if info is None:
        raise TemporaryError(f"deployment {ctx.name}: no server to test (rollout did not run)")
    r = _resolved(ctx)
    token, tid = None, None
    store = TokenStore(default_token_file(ctx.config.repo))
    if not spec.auth.public:
        token = store.create(f"{ctx.workspace}/{ctx.name}", "kiln smoke-test")
        tid = token.split("_")[1]
    try:
        t0 = time.monotonic()
        # marked so that capture skips it: a blank image is no user input to label and retrain on
        status, body = post(info["url"], {"instances": [sample_instance(r["serving"])]}, token,
                            headers={NO_CAPTURE_HEADER: "1"})
        ms = (time.monotonic() - t0) * 1000
    finally:
        if tid:
            store.forget(f"{ctx.workspace}/{ctx.name}", tid)
    if status != 200:
        raise TemporaryError(f"deployment {ctx.name}: smoke test got HTTP {status}: {json.dumps(body)[:300]}")
    # every task answers {"predictions": [one entry per instance]} (kiln.bento.fastpath)
    preds = body.get("predictions") if isinstance(body, dict) else None
    pred = preds[0] if isinstance(preds, list) and len(preds) == 1 else None
    if pred is None:
        raise KilnError(f"deployment {ctx.name}: smoke test answer is not in the EasyMaker format: "
                        f"{json.dumps(body)[:300]}")
    return {"status": status, "latencyMs": round(ms, 1), "prediction": pred}


__all__ = ["deployment_home", "capture_dir", "resolve_model", "live_health", "stop_pid", "ready", "post",
           "sample_instance", "serve_config", "fingerprint", "ModelNotReady", "NotFound"]
