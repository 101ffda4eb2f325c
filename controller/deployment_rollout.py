"""Canary and shadow rollouts on the local runtime (``spec.rollout``): the controller side of
kiln.bento.router. It decides; the router only routes and counts.

A deployment with ``rollout`` is served by a router on the deployment's URL and one ``bentoml
serve`` per version behind it, on loopback ports of their own (``<home>/backend-v<N>/``).
``server.json`` then describes the router (its pid and url: health, describe and drift read it as
they read a plain server) and carries the rest::

    {"pid": <router>, "url": ..., "model": "iris", "version": 1, "router": true,
     "backends": {"stable": {"pid", "url", "version", "serverId", "fingerprint", ...},
                  "canary": {...}},                      # while a rollout runs or shadows
     "rollout": {"phase": "Progressing" | "Promoted" | "RolledBack" | "Shadowing",
                 "strategy", "from", "to", "steps": [{"weight", "requests", "errors", "p99Ms"}],
                 "reason"}}

A new version: its server starts beside the old one; once ready the router sends it
``steps[i]``% of ``/predict`` (canary) or a copy of every request (shadow). After each
``interval`` the new version's error rate and p99 *over that interval* are checked against
``maxErrorRate`` and ``maxLatencyP99``: within bounds, the next step; outside them, a rollback
(every request to the old version, the new server stopped, the step fails with the reason, which
``status``, ``describe`` and ``kiln events`` show). A canary at its last step (100%) stops the old
server. A shadow that passes its checks keeps shadowing (the old version keeps answering) until
the spec changes: a shadow is a comparison, promotion is a canary's.

Why the apply waits through the steps: the decision needs the controller's view (the spec, the
state, stopping servers) and a rollout that outlives its apply would race the next one; the lock
that guards a rollout (``rollout.lock``) holds for the whole of it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln._util.clock import utcnow
from kiln._util.fs import read_json, write_json_atomic
from kiln.bento.router import STATS_PATH
from kiln.bento.server import free_port
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.api.deployment import DeploymentSpec, Rollout
    from kiln.bento.config import ServeConfig
    from kiln.controller.steps import StepContext

ROUTER_START_TIMEOUT = 60.0
MAX_WAITS = 10  # intervals a step waits for minRequests before it judges on what it has


class RolledBack(KilnError):
    """The new version broke the rollout's bounds: the old one serves again."""


def router_stats(url: str, since: float = 0.0, timeout: float = 5.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}{STATS_PATH}?since={since}", timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def stop_all(home: Path, info: dict[str, Any] | None) -> bool:
    """Stop a deployment's server, or its router and every version behind it."""
    from kiln.controller.deployment_steps import stop_pid

    if not info:
        return False
    stopped = False
    for b in (info.get("backends") or {}).values():
        stopped = stop_pid(b.get("pid"), home, server_id=b.get("serverId")) or stopped
    return stop_pid(info.get("pid"), home, server_id=info.get("serverId")) or stopped


def _backend_view(b: dict[str, Any]) -> dict[str, Any]:
    return {"version": b["version"], "url": b["url"]}


def _write_routing(
    home: Path,
    port: int,
    mode: str,
    stable: dict[str, Any],
    canary: dict[str, Any] | None,
    weight: int = 0,
    *,
    max_payload: int,
) -> None:
    write_json_atomic(
        home / "router.json",
        {
            "port": port,
            "mode": mode if canary else "single",
            "weight": weight,
            "stable": _backend_view(stable),
            "canary": _backend_view(canary) if canary else None,
            "shadowLog": str(home / "shadow.jsonl"),
            # the router reads a body before a server could refuse it: the same limit, first
            "maxPayloadBytes": max_payload,
        },
        mkdir=False,
    )


def _start_router(home: Path, port: int) -> dict[str, Any]:
    from kiln.controller.deployment_steps import HOME_MARKER, ready

    env = {**os.environ, HOME_MARKER: str(home.resolve()), "PYTHONUNBUFFERED": "1"}
    for k in [k for k in env if k.startswith("KILN_LOCAL_RUN")]:
        env.pop(k)  # not a pod of the runner: its reaper must never take the router
    with open(home / "router.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiln.bento.router", str(home / "router.json")],
            env=env,
            cwd=str(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ROUTER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise KilnError(
                f"the rollout router exited (code {proc.returncode}) before it was ready", hint=f"see {home / 'router.log'}"
            )
        if router_stats(url, timeout=1.0) is not None:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        raise KilnError(
            f"the rollout router did not answer on {url} within {ROUTER_START_TIMEOUT:.0f}s", hint=f"see {home / 'router.log'}"
        )
    if not ready(url):  # the stable version answers /readyz through it
        raise KilnError(f"the rollout router on {url} does not reach the served version")
    return {"pid": proc.pid, "port": port, "url": url, "started": utcnow()}


def _start_backend(ctx: StepContext, cfg: ServeConfig, fp: str) -> dict[str, Any]:
    from kiln.controller.deployment_steps import _server

    srv = _server(ctx, cfg)
    srv.dir = srv.dir / f"backend-v{cfg.version}"  # its own server.json, log and BENTOML_HOME
    srv.start()
    try:
        srv.wait_ready()
    except BaseException:
        srv.stop()
        raise
    assert srv.proc is not None
    info = {
        "pid": srv.proc.pid,
        "port": srv.port,
        "url": srv.url,
        "model": cfg.model,
        "version": cfg.version,
        "serverId": srv.server_id,
        "fingerprint": fp,
        "started": utcnow(),
    }
    srv.proc = None  # daemon: outlives this process
    return info


def _judge(r: Rollout, st: dict[str, Any]) -> str | None:
    """Why a step's window breaks the bounds, or None."""
    n, errors, lat = st.get("requests", 0), st.get("errors", 0), st.get("p99Ms")
    if n and errors / n > r.maxErrorRate:
        return f"error rate {errors}/{n} = {errors / n:.1%} > maxErrorRate {r.maxErrorRate:.1%}"
    if r.maxLatencyP99 is not None and lat is not None and lat > r.maxLatencyP99:
        return f"p99 latency {lat:.0f} ms > maxLatencyP99 {r.maxLatencyP99:g} ms"
    return None


def routed_rollout(
    ctx: StepContext, spec: DeploymentSpec, home: Path, old: dict[str, Any] | None, cfg: ServeConfig, fp: str
) -> dict[str, Any]:
    """``deployment_rollout`` for a deployment with ``rollout`` (module doc). Runs under the
    deployment's rollout lock."""
    from kiln.controller.deployment_steps import _alive, _public, ready, stop_pid

    router = old if old and old.get("router") and _alive(int(old.get("pid") or 0), home) else None
    if router and spec.port and router.get("port") != spec.port:  # spec.port moved: a router on the new one
        stop_pid(router.get("pid"), home)
        router = None
    # a router that died leaves its versions running: they are still this deployment's
    backends = dict(old.get("backends") or {}) if old and old.get("router") else {}
    stable = backends.get("stable")
    if router is None and old and not old.get("router") and _alive(int(old.get("pid") or 0), home):
        stable = {**old}  # a plain server from before `rollout` was set: it is the stable version now
    if stable and not (_alive(int(stable.get("pid") or 0), home) and ready(stable["url"])):
        stop_pid(stable.get("pid"), home, server_id=stable.get("serverId"))
        stable = None
    leftover = backends.get("canary")
    rollout = (old.get("rollout") if old and old.get("router") else None) or {}
    shadowing = rollout.get("phase") == "Shadowing" and spec.rollout is not None and spec.rollout.strategy == "shadow"
    if leftover and leftover.get("fingerprint") == fp and shadowing and stable and router:
        return {**_public(router or {}), "restarted": False, "rollout": rollout}  # shadowing this very version
    if (
        rollout.get("phase") == "RolledBack"
        and rollout.get("fingerprint") == fp
        and stable
        and rollout.get("specHash") == ctx.spec_hash
    ):
        # the same version under the same spec failed already: sending it traffic again would fail
        # the same share of requests again (the controller retries failed objects)
        raise RolledBack(
            f"Deployment {ctx.name}: {rollout.get('message', 'rolled back')} (not tried again)",
            hint="register a new version, pin the model reference, or change spec.rollout to try again",
        )
    # the version a shadow ran, now to be a canary (say): its server is reused, not started again
    reuse = (
        leftover
        if (
            leftover
            and leftover.get("fingerprint") == fp
            and stable
            and _alive(int(leftover.get("pid") or 0), home)
            and ready(leftover["url"])
        )
        else None
    )
    if leftover and not reuse:  # a rollout that crashed or one of another version: start over
        stop_pid(leftover.get("pid"), home, server_id=leftover.get("serverId"))
    # the same URL for clients: the router's port, also for a router started again
    port = spec.port or (old.get("port") if old and old.get("router") else None) or free_port()
    route = functools.partial(_write_routing, home, port, max_payload=spec.limits.maxPayloadBytes)
    if router is None and stable and stable.get("port") == port:  # one port, one listener
        stop_pid(stable.get("pid"), home, server_id=stable.get("serverId"))
        stable = None

    def front(stable: dict[str, Any], canary: dict[str, Any] | None, rollout: dict[str, Any] | None) -> dict[str, Any]:
        nonlocal router
        if router is None:
            route("single", stable, None)
            router = _start_router(home, port)
        info = {
            **{k: router[k] for k in ("pid", "port", "url", "started")},
            "router": True,
            "model": stable["model"],
            "version": stable["version"],
            "fingerprint": stable["fingerprint"],
            "backends": {"stable": stable, **({"canary": canary} if canary else {})},
            **({"rollout": rollout} if rollout else {}),
        }
        write_json_atomic(home / "server.json", info, mkdir=False)
        return info

    if stable and stable.get("fingerprint") == fp:
        info = front(stable, None, None)
        route("single", stable, None)
        if reuse:
            stop_pid(reuse.get("pid"), home, server_id=reuse.get("serverId"))
        return {**_public(info), "restarted": False}
    new = reuse or _start_backend(ctx, cfg, fp)
    if stable is None:  # nothing to compare with: the new version serves
        route("single", new, None)
        info = front(new, None, None)
        return {**_public(info), "restarted": True}

    r = spec.rollout
    if r is None or stable["version"] == new["version"]:
        # no rollout left in the spec, or only how the same version runs changed: replace at once
        route("single", new, None)
        info = front(new, None, None)
        stop_pid(stable.get("pid"), home, server_id=stable.get("serverId"))
        return {**_public(info), "restarted": True, "replaced": stable["version"]}

    state: dict[str, Any] = {
        "phase": "Progressing",
        "strategy": r.strategy,
        "from": stable["version"],
        "to": new["version"],
        "started": utcnow(),
        "steps": [],
        "fingerprint": fp,
        "specHash": ctx.spec_hash,
    }
    info = front(stable, new, state)
    for weight in r.steps:
        route(r.strategy, stable, new, weight)
        state["weight"] = weight if r.strategy == "canary" else 0
        write_json_atomic(home / "server.json", info, mkdir=False)
        since = time.time()
        for _ in range(MAX_WAITS):
            time.sleep(r.interval)
            st = ((router_stats(info["url"], since) or {}).get("versions") or {}).get(str(new["version"]), {})
            window = st.get("window") or {"requests": 0, "errors": 0, "p99Ms": None}
            if window["requests"] >= r.minRequests:
                break
        # too little traffic to judge: recorded as such, and the step passes (nothing failed)
        few = {"inconclusive": True} if window["requests"] < r.minRequests else {}
        state["steps"].append({"weight": state["weight"], **window, **few})
        why = _judge(r, window)
        if why:
            route("single", stable, None)
            stop_pid(new.get("pid"), home, server_id=new.get("serverId"))
            where = f"at {weight}%" if r.strategy == "canary" else "while shadowing"
            message = (
                f"the {r.strategy} of {new['model']} v{new['version']} rolled back {where}: {why}; "
                f"v{stable['version']} serves every request again"
            )
            state.update(phase="RolledBack", reason=why, message=message, finished=utcnow())
            info = front(stable, None, state)
            raise RolledBack(
                f"Deployment {ctx.name}: {message}",
                hint=f"see {new['model']} v{new['version']}'s log in {home / ('backend-v' + str(new['version']))}; "
                "fix the model, or pin the model reference to the old version",
            )
    if r.strategy == "shadow":
        state.update(phase="Shadowing", checked=utcnow())
        info = front(stable, new, state)
        return {**_public(info), "restarted": False, "rollout": state}
    route("single", new, None)
    state.update(phase="Promoted", finished=utcnow())
    info = front(new, None, state)
    stop_pid(stable.get("pid"), home, server_id=stable.get("serverId"))
    return {**_public(info), "restarted": True, "replaced": stable["version"], "rollout": state}


def describe_rollout(home: Path, info: dict[str, Any] | None) -> dict[str, Any] | None:
    """What ``describe`` shows of a routed deployment: the rollout, per-version counts and, for a
    shadow, how often the two versions agreed."""
    if not info or not info.get("router"):
        return None
    out: dict[str, Any] = {"backends": {k: f"v{b['version']} at {b['url']}" for k, b in (info.get("backends") or {}).items()}}
    if info.get("rollout"):
        out["rollout"] = info["rollout"]
    stats = router_stats(info["url"], time.time() - 60, timeout=2.0)
    if stats:
        out["requests"] = {f"v{v}": s["total"] for v, s in stats["versions"].items()}
        sh = stats.get("shadow") or {}
        if sh.get("compared"):
            out["shadow"] = {**sh, "agreementRate": round(sh["agreed"] / sh["compared"], 4), "log": str(home / "shadow.jsonl")}
    return out


__all__ = ["routed_rollout", "stop_all", "describe_rollout", "router_stats", "RolledBack", "read_json"]
