"""The rollout router (kiln.bento.router) as a process, in front of two small real HTTP servers
on loopback that stand in for two model versions: the canary's exact share, the shadow's copy and
record, headers passed through but never recorded, the payload limit, per-version metrics.
(The same router in front of real BentoML servers: tests/test_canary.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kiln.bento.router import STATS_PATH, VERSION_HEADER, agree
from kiln.bento.server import free_port

TOKEN = "router-test-token-9d1e"


def backend(label: str, status: int, seen: list[dict]) -> ThreadingHTTPServer:
    """A server answering every POST like a kiln deployment, with ``label``; it records the
    headers it got (the token must reach it)."""

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append({"auth": self.headers.get("authorization"), "body": body})
            out = json.dumps({"predictions": [{"label": label, "score": 0.9}]} if status == 200 else {"error": "boom"}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[dict]:
    seen: dict[str, list[dict]] = {"1": [], "2": [], "3": []}
    servers = {
        "1": backend("setosa", 200, seen["1"]),
        "2": backend("virginica", 200, seen["2"]),
        "3": backend("-", 500, seen["3"]),
    }
    port = free_port()
    conf = tmp_path / "router.json"

    def route(mode: str, canary: str | None, weight: int = 0) -> None:
        doc = {
            "port": port,
            "mode": mode,
            "weight": weight,
            "maxPayloadBytes": 4096,
            "stable": {"version": 1, "url": f"http://127.0.0.1:{servers['1'].server_port}"},
            "canary": {"version": int(canary), "url": f"http://127.0.0.1:{servers[canary].server_port}"} if canary else None,
            "shadowLog": str(tmp_path / "shadow.jsonl"),
        }
        tmp = conf.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(conf)
        time.sleep(0.25)  # the router looks at the file at most every 0.1 s

    route("single", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.bento.router", str(conf)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + STATS_PATH, timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield {"url": url, "route": route, "seen": seen, "dir": tmp_path}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for s in servers.values():
            s.shutdown()


def post(url: str, body: bytes = b'{"instances": [{"x": 1}]}') -> tuple[int, str]:
    req = urllib.request.Request(
        f"{url}/predict", data=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers[VERSION_HEADER]
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get(VERSION_HEADER, "")


def test_canary_share_shadow_record_limits_and_metrics(routed: dict) -> None:
    url, route, seen = routed["url"], routed["route"], routed["seen"]
    # canary at 10%: exactly every tenth request, the token passed through to the version
    route("canary", "2", 10)
    answers = [post(url) for _ in range(50)]
    assert [v for _, v in answers].count("2") == 5 and all(code == 200 for code, _ in answers)
    assert len(seen["2"]) == 5 and {s["auth"] for s in seen["2"]} == {f"Bearer {TOKEN}"}
    # a failing canary at 20%: its failures are its share, counted as its errors
    route("canary", "3", 20)
    answers = [post(url) for _ in range(20)]
    assert sorted(answers) == sorted([(200, "1")] * 16 + [(500, "3")] * 4)
    stats = json.loads(urllib.request.urlopen(url + STATS_PATH + "?since=0", timeout=5).read())
    assert stats["versions"]["3"]["total"] == {"requests": 4, "errors": 4}
    assert stats["versions"]["2"]["window"]["requests"] == 5 and stats["versions"]["2"]["window"]["p99Ms"] > 0
    # a body over the limit is refused by the router, not read and forwarded
    before = len(seen["1"])
    assert post(url, b'{"instances": ["' + b"x" * 5000 + b'"]}')[0] == 413
    assert len(seen["1"]) == before
    # shadow: version 1 answers all; version 2 gets a copy; both outputs recorded, no request or token
    route("shadow", "2")
    answers = [post(url) for _ in range(6)]
    assert answers == [(200, "1")] * 6
    deadline = time.monotonic() + 10
    log = routed["dir"] / "shadow.jsonl"
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 6):
        time.sleep(0.05)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 6 and len(seen["2"]) == 11
    assert {(x["stable"]["predictions"][0]["label"], x["shadow"]["predictions"][0]["label"]) for x in lines} == {
        ("setosa", "virginica")
    }
    assert not any(x["agree"] for x in lines)
    assert TOKEN not in log.read_text() and "instances" not in log.read_text()
    metrics = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    assert 'kiln_router_errors_total{version="3"} 4' in metrics
    assert 'kiln_router_requests_total{version="2"} 11' in metrics  # 5 answered + 6 shadowed
    assert "kiln_router_shadow_compared_total 6" in metrics and "kiln_router_shadow_agreed_total 0" in metrics
    assert "Bearer" not in metrics


def test_answers_agree_by_label_else_by_equality() -> None:
    assert agree([{"label": "a", "score": 0.9}], [{"label": "a", "score": 0.6}])
    assert not agree([{"label": "a"}], [{"label": "b"}])
    assert agree([[1, 2]], [[1, 2]]) and not agree([[1, 2]], [[1, 3]])
