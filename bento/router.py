"""The router in front of a deployment's servers during a canary or shadow rollout: one small
process (aiohttp) on the deployment's URL, so clients keep one address while
versions change behind it. ``python -m kiln.bento.router <router.json>``.

Why a process of its own and not a BentoML feature: each version is a separate ``bentoml serve``
(its own model, BENTOML_HOME and port, kiln.bento.server); only something in front of both can
split traffic between them, and it must outlive ``kiln apply`` like the servers do.

The router decides nothing: the controller (kiln.controller.deployment_rollout) writes the
routing in ``router.json`` (atomically; re-read when its mtime changes) and reads the counts
back from ``/-/router/stats``::

    {"port": 40123, "mode": "single" | "canary" | "shadow", "weight": 10,
     "stable": {"version": 1, "url": "http://127.0.0.1:40200"},
     "canary": {"version": 2, "url": "http://127.0.0.1:40201"} | null,
     "shadowLog": "<home>/shadow.jsonl"}

- ``canary``: ``weight``% of ``POST /predict`` goes to the canary, spread evenly (a running sum,
  not a coin: 10% is every tenth request, so a short interval sees its share);
- ``shadow``: every request is answered by the stable version and sent again to the canary in the
  background; both outputs (status, predictions, latency; never the request, its headers or a
  token) go to ``shadowLog`` as one JSON line, with whether they agree;
- every other path (``/readyz``, ``/livez``, ``/ui``, ...) goes to the stable version.

Tokens are checked by the servers as without a router: the ``Authorization``/``X-API-Key``
headers pass through untouched and are never stored. A version's request counts only what it
answered: an error is a 5xx or no answer at all (a 4xx is the client's: a bad token, a malformed
body). ``/metrics`` (Prometheus text) and ``/-/router/stats`` (JSON) count per version.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

STATS_PATH = "/-/router/stats"
VERSION_HEADER = "x-kiln-model-version"
# hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets again itself
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
WINDOW = 100_000  # latency samples kept per version: enough for any interval's p99


def is_error(status: int) -> bool:
    return status >= 500


def p99(samples: list[float]) -> float | None:
    if not samples:
        return None
    s = sorted(samples)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


class VersionStats:
    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.seconds = 0.0
        self.samples: collections.deque[tuple[float, float, bool]] = collections.deque(maxlen=WINDOW)

    def add(self, dt: float, error: bool) -> None:
        self.requests += 1
        self.errors += error
        self.seconds += dt
        self.samples.append((time.time(), dt, error))

    def window(self, since: float) -> dict[str, Any]:
        got = [(dt, err) for t, dt, err in self.samples if t >= since]
        lat = p99([dt for dt, _ in got])
        return {"requests": len(got), "errors": sum(e for _, e in got), "p99Ms": None if lat is None else round(lat * 1000, 2)}


class Router:
    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self.cfg: dict[str, Any] = {}
        self.mtime = 0.0
        self.checked = 0.0
        self.acc = 0  # running sum of the canary weight (module doc)
        self.stats: dict[int, VersionStats] = collections.defaultdict(VersionStats)
        self.shadow = {"compared": 0, "agreed": 0}
        self.client: Any = None
        self.tasks: set[asyncio.Task] = set()
        self.reload(force=True)

    def reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.checked < 0.1:
            return
        self.checked = now
        with contextlib.suppress(OSError, ValueError):
            m = self.config_file.stat().st_mtime
            if force or m != self.mtime:
                self.cfg, self.mtime = json.loads(self.config_file.read_text()), m

    def pick(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(backend that answers, backend that gets a mirrored copy or None)."""
        cfg, stable, canary = self.cfg, self.cfg["stable"], self.cfg.get("canary")
        if canary and cfg.get("mode") == "shadow":
            return stable, canary
        if canary and cfg.get("mode") == "canary":
            self.acc += int(cfg.get("weight", 0))
            if self.acc >= 100:
                self.acc -= 100
                return canary, None
        return stable, None

    async def forward(
        self, backend: dict[str, Any], method: str, path: str, query: bytes, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, float]:
        url = backend["url"] + path + (f"?{query.decode()}" if query else "")
        t0 = time.perf_counter()
        try:
            async with self.client.request(method, url, headers=headers, data=body) as r:
                content = await r.read()
                status, out_h = r.status, [(k, v) for k, v in r.headers.items() if k.lower() not in _HOP]
        except Exception as e:  # noqa: BLE001 - the version did not answer: the client gets a 502
            status, out_h = 502, [("content-type", "application/json")]
            content = json.dumps({"error": f"version {backend['version']} did not answer: {type(e).__name__}"}).encode()
        dt = time.perf_counter() - t0
        if method == "POST" and path == "/predict":
            self.stats[int(backend["version"])].add(dt, is_error(status))
        return status, out_h, content, dt

    def metrics(self) -> str:
        lines = [
            "# HELP kiln_router_requests_total predict requests answered per model version",
            "# TYPE kiln_router_requests_total counter",
        ]
        lines += [f'kiln_router_requests_total{{version="{v}"}} {s.requests}' for v, s in sorted(self.stats.items())]
        lines += [
            "# HELP kiln_router_errors_total predict requests per version that got a 5xx or no answer",
            "# TYPE kiln_router_errors_total counter",
        ]
        lines += [f'kiln_router_errors_total{{version="{v}"}} {s.errors}' for v, s in sorted(self.stats.items())]
        lines += [
            "# HELP kiln_router_request_seconds_sum seconds spent answering per version",
            "# TYPE kiln_router_request_seconds_sum counter",
        ]
        lines += [f'kiln_router_request_seconds_sum{{version="{v}"}} {s.seconds:.6f}' for v, s in sorted(self.stats.items())]
        lines += [
            "# HELP kiln_router_latency_p99_seconds p99 latency over the last minute per version",
            "# TYPE kiln_router_latency_p99_seconds gauge",
        ]
        for v, s in sorted(self.stats.items()):
            lat = p99([dt for t, dt, _ in s.samples if t >= time.time() - 60])
            if lat is not None:
                lines.append(f'kiln_router_latency_p99_seconds{{version="{v}"}} {lat:.6f}')
        lines += [
            "# HELP kiln_router_shadow_compared_total shadow requests whose two answers were compared",
            "# TYPE kiln_router_shadow_compared_total counter",
            f"kiln_router_shadow_compared_total {self.shadow['compared']}",
            "# TYPE kiln_router_shadow_agreed_total counter",
            f"kiln_router_shadow_agreed_total {self.shadow['agreed']}",
        ]
        return "\n".join(lines) + "\n"

    def stats_json(self, since: float) -> dict[str, Any]:
        return {
            "mode": self.cfg.get("mode"),
            "weight": self.cfg.get("weight"),
            "versions": {
                str(v): {"total": {"requests": s.requests, "errors": s.errors}, "window": s.window(since)}
                for v, s in sorted(self.stats.items())
            },
            "shadow": dict(self.shadow),
        }


def _predictions(content: bytes) -> Any:
    with contextlib.suppress(ValueError, AttributeError):
        return json.loads(content).get("predictions")
    return None


def agree(a: Any, b: Any) -> bool:
    """Two answers agree when their predicted labels do (classification), else when they are equal."""
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        if all(isinstance(x, dict) and "label" in x for x in a + b):
            return [x["label"] for x in a] == [x["label"] for x in b]
    return bool(a == b)


def make_app(router: Router) -> Any:
    # aiohttp both ways: its C HTTP parser; uvicorn here would parse with h11 (no httptools or
    # uvloop installed), which halved a deployment's throughput through the router
    from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

    async def shadow(
        backend: dict[str, Any],
        headers: list[tuple[str, str]],
        body: bytes,
        status: int,
        content: bytes,
        dt: float,
        stable_version: int,
    ) -> None:
        s2, _, c2, dt2 = await router.forward(backend, "POST", "/predict", b"", headers, body)
        a, b = _predictions(content), _predictions(c2)
        same = status == s2 == 200 and agree(a, b)
        router.shadow["compared"] += 1
        router.shadow["agreed"] += same
        log = router.cfg.get("shadowLog")
        if log:
            line = {
                "time": time.time(),
                "agree": same,
                "stable": {"version": stable_version, "status": status, "predictions": a, "ms": round(dt * 1000, 2)},
                "shadow": {"version": backend["version"], "status": s2, "predictions": b, "ms": round(dt2 * 1000, 2)},
            }
            with contextlib.suppress(OSError), open(log, "a") as f:
                f.write(json.dumps(line) + "\n")

    async def proxy(request: web.Request) -> web.Response:
        router.reload()
        path = request.path
        if path == "/metrics":
            return web.Response(text=router.metrics(), content_type="text/plain")
        if path == STATS_PATH:
            return web.json_response(router.stats_json(float(request.query.get("since", 0))))
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        limit = int(router.cfg.get("maxPayloadBytes") or 10 * 2**20)

        def too_big() -> web.Response:
            return web.json_response({"error": f"payload is over the limit of {limit} bytes"}, status=413)

        if request.content_length is not None and request.content_length > limit:
            return too_big()  # refused before reading, as the servers do
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                return too_big()
            chunks.append(chunk)
        body = b"".join(chunks)
        predict = request.method == "POST" and path == "/predict"
        target, mirror_to = router.pick() if predict else (router.cfg["stable"], None)
        status, out_h, content, dt = await router.forward(
            target, request.method, path, request.query_string.encode(), headers, body
        )
        if mirror_to is not None:
            t = asyncio.create_task(shadow(mirror_to, headers, body, status, content, dt, int(target["version"])))
            router.tasks.add(t)  # keep a reference: a task nobody holds may be collected mid-flight
            t.add_done_callback(router.tasks.discard)
        # which version answered (a client or test can tell the two apart; nothing secret)
        return web.Response(body=content, status=status, headers={**dict(out_h), VERSION_HEADER: str(target["version"])})

    async def client(app: web.Application) -> AsyncIterator[None]:
        # no proxy from the environment (loopback only); bodies passed on as they are (no decoding)
        async with ClientSession(
            timeout=ClientTimeout(total=60), connector=TCPConnector(limit=256), trust_env=False, auto_decompress=False
        ) as session:
            router.client = session
            yield

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", proxy)
    app.cleanup_ctx.append(client)
    return app


def main(argv: list[str] | None = None) -> None:
    from aiohttp import web

    args = sys.argv[1:] if argv is None else argv
    router = Router(Path(args[0]))
    web.run_app(make_app(router), host="127.0.0.1", port=int(router.cfg["port"]), access_log=None, print=None)


if __name__ == "__main__":  # pragma: no cover - run as a process
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
