"""A bounded load generator for a deployment (loopback only): ``python -m kiln.bento.loadgen``.

Why here and not only in bench/: the serving tests run it from a second process (10 % malformed
requests: every one must get a 4xx, no request a 5xx) and bench/serving.py measures with it.
Bounded by request count *and* seconds; refuses any host but 127.0.0.1 / localhost / ::1.

Output (stdout, one JSON object)::

    {"requests": N, "seconds": s, "rps": r, "p50_ms": .., "p99_ms": .., "codes": {"200": n, ...},
     "bad_sent": n, "bad_4xx": n, "good_non200": n, "errors": n}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlparse

__all__ = ["run", "main", "MALFORMED"]

# bodies every kiln deployment must answer with a 4xx
MALFORMED: list[bytes] = [
    b"{not json",
    b'{"instances": "nope"}',
    b'{"instances": []}',
    b'{"something": 1}',
    b'[1, 2, 3]',
    b'{"instances": [{"data": "!!!not base64!!!"}]}',
    b'{"instances": [{"data": "aGVsbG8gd29ybGQ="}]}',  # base64 of text, not an image
    b'{"instances": [17]}',
    b'{"instances": [{"x": [1, 2]}]}',
]


def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"loadgen: refusing non-loopback host {host!r}")


async def run(url: str, body: bytes, *, concurrency: int = 16, requests: int = 2000, seconds: float = 20.0,
              bad_every: int = 0, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Send up to ``requests`` POSTs (stop after ``seconds``) from ``concurrency`` keep-alive
    clients; every ``bad_every``-th request (0: none) is a malformed body."""
    import httpx

    _check_loopback(url)
    hdrs = {"content-type": "application/json", **(headers or {})}
    lat: list[float] = []
    codes: dict[str, int] = {}
    stats = {"bad_sent": 0, "bad_4xx": 0, "good_non200": 0, "errors": 0}
    counter = iter(range(requests))
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(c: httpx.AsyncClient) -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                return
            bad = bad_every > 0 and i % bad_every == bad_every - 1
            data = MALFORMED[(i // max(bad_every, 1)) % len(MALFORMED)] if bad else body
            t0 = time.perf_counter()
            try:
                r = await c.post(url, content=data, headers=hdrs)
            except httpx.HTTPError:
                stats["errors"] += 1
                continue
            lat.append(time.perf_counter() - t0)
            codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
            if bad:
                stats["bad_sent"] += 1
                stats["bad_4xx"] += 400 <= r.status_code < 500
            elif r.status_code != 200:
                stats["good_non200"] += 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as c:
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
    dt = time.perf_counter() - t0
    lat.sort()
    n = len(lat)

    def q(p: float) -> float:
        return round(lat[min(n - 1, int(p * n))] * 1000, 2) if n else 0.0

    return {"requests": n, "seconds": round(dt, 3), "rps": round(n / dt, 1) if dt else 0.0,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "codes": codes, **stats}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--body-file", required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--bad-every", type=int, default=0)
    ap.add_argument("--header", action="append", default=[], help="Name: value (e.g. the API token)")
    a = ap.parse_args(argv)
    headers = dict(h.split(":", 1) for h in a.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    with open(a.body_file, "rb") as f:
        body = f.read()
    res = asyncio.run(run(a.url, body, concurrency=a.concurrency, requests=a.requests, seconds=a.seconds,
                          bad_every=a.bad_every, headers=headers))
    json.dump(res, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
