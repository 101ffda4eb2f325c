"""A bounded hostile load against one deployment (loopback only): paced valid clients, a share of
whose requests are attacks, with the latency of the valid ones and the server's peak memory.

Why here and not only in bench/: the serving test ``tests/bento/test_security_load.py`` (issue
#20's acceptance: no 5xx, valid p99 within 3x, memory within 1.5x) and ``bench/security_load.py``
run the same load. Clients are threads with ``http.client`` (keep-alive) and raw sockets for the
attacks that need them, paced at ``rate`` requests a second each: a closed loop would measure how
fast this process can send on a shared machine more than how the server holds up.

Every attack has one right answer, asserted by the caller from :attr:`Phase.bad`:

========================  ======================================================================
``pixel-bomb``            a ~100 KB PNG of 10,000 x 10,000 pixels: 400, from its header
``text-bomb``             a 64 KB PNG of 8 x 8 pixels with 62 compressed text chunks of 1 MiB
                          each (Pillow reads them all before the pixels): 400
``icc-bomb``              the same with as many iCCP chunks (colour profiles) as fit in the body
                          limit, inflated one after the other: 400
``deep-json``             100,000 ``[``: 400 (orjson stops at 1,024 levels)
``deep-field``            an instance whose every field is nested 1,000 deep: 400
``malformed``             a truncated JSON document: 400
``wrong-type``            a valid body sent as ``text/plain``: 415
``bad-token``             a valid body with a token that does not exist: 401
``too-many``              more instances than ``limits.maxInstances``: 413
``huge-declared``         ``Content-Length`` over ``limits.maxPayloadBytes``; the client sends
                          16 KiB and waits for the answer: 413 before the body is read
``huge-chunked``          a chunked body without a length, sent until it passes the limit: 413
                          (the client then stops sending and reads; one that kept sending could
                          see a reset, since the server stops reading at the limit)
``slow-body``             a 1,000-byte body sent a byte every 0.25 s: 408 after
                          ``limits.timeoutSeconds`` (the client watches for the answer between
                          bytes, as a client should)
========================  ======================================================================

An answer that never came (connection closed or reset, timeout) is recorded as ``"closed"``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import os
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["ATTACKS", "EXPECTED", "Phase", "Target", "run", "interleaved", "tree_peak_rss", "reset_peak_rss", "loadavg"]

EXPECTED = {"pixel-bomb": 400, "text-bomb": 400, "icc-bomb": 400, "deep-json": 400, "deep-field": 400, "malformed": 400, "wrong-type": 415,
            "bad-token": 401, "too-many": 413, "huge-declared": 413, "huge-chunked": 413, "slow-body": 408}
ATTACKS = tuple(EXPECTED)


@dataclass
class Target:
    """One deployment: its predict URL, a valid token (None: public), one valid instance, and the
    limits the attacks go past."""

    url: str
    token: str | None
    instance: dict
    max_payload: int
    max_instances: int = 64

    def __post_init__(self) -> None:
        u = urlsplit(self.url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"hostile: refusing non-loopback host {u.hostname!r}")
        self.host, self.port, self.path = u.hostname, u.port or 80, u.path or "/predict"

    def headers(self, token: str | None = None, ctype: str = "application/json") -> dict[str, str]:
        h = {"Content-Type": ctype}
        tok = token or self.token
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        return h


@dataclass
class Phase:
    """What one phase saw: valid latencies (s), valid status codes, each attack's answers."""

    seconds: float
    valid_s: list[float] = field(default_factory=list)
    valid_codes: Counter = field(default_factory=Counter)
    bad: dict[str, Counter] = field(default_factory=dict)
    peak_rss: int = 0

    def p(self, q: float) -> float:
        lat = sorted(self.valid_s)
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    @property
    def sent(self) -> int:
        return len(self.valid_s) + sum(sum(c.values()) for c in self.bad.values())

    def summary(self) -> str:
        bad = sum(sum(c.values()) for c in self.bad.values())
        return (f"{len(self.valid_s)} valid ({len(self.valid_s) / self.seconds:.0f}/s) + {bad} attacks in "
                f"{self.seconds:.1f}s: p50 {self.p(.5) * 1000:.1f} ms, p99 {self.p(.99) * 1000:.1f} ms, "
                f"peak RSS {self.peak_rss / 2**20:.0f} MiB")


# ------------------------------------------------------------------------------ the attacks --
def _png_bomb() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG")  # ~100 KB, 100 M pixels
    return buf.getvalue()


def _png_text_bomb(chunks: int = 62, kind: bytes = b"zTXt") -> bytes:
    """An 8 x 8 PNG with ``chunks`` compressed chunks that inflate to ~1 MiB each (~1 KB on the
    wire), all inflated by Pillow when the file is opened: zTXt (text; Pillow's defaults allow 1
    MiB a chunk and 64 MiB in all) or iCCP (a colour profile: the PNG standard allows one)."""
    import struct
    import zlib

    from PIL import Image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    png = buf.getvalue()
    payload = zlib.compress(b"a" * (2**20 - 100), 9)
    ihdr_end = 8 + 25  # signature, IHDR
    return png[:ihdr_end] + b"".join(chunk(kind, b"k%d\0\0" % i + payload) for i in range(chunks)) + png[ihdr_end:]


class _Attacks:
    """The attack bodies, built once, and how to send each."""

    def __init__(self, t: Target) -> None:
        import orjson

        self.t = t
        valid = orjson.dumps({"instances": [t.instance]})
        self.bodies = {
            "pixel-bomb": orjson.dumps({"instances": [{"data": base64.b64encode(_png_bomb()).decode()}]}),
            "text-bomb": orjson.dumps({"instances": [{"data": base64.b64encode(_png_text_bomb()).decode()}]}),
            # as many colour profiles as fit in the body limit (base64: 4/3 of the bytes)
            "icc-bomb": orjson.dumps({"instances": [{"data": base64.b64encode(
                _png_text_bomb(int(t.max_payload * 0.7) // 1100, b"iCCP")).decode()}]}),
            "deep-json": b'{"instances": ' + b"[" * 100_000,
            # every field of a valid instance nested 1,000 deep (written by hand: orjson writes
            # at most 255 levels, and reads 1,023)
            "deep-field": b'{"instances": [{' + b", ".join(orjson.dumps(k) + b": " + b"[" * 1000 + b"]" * 1000
                                                       for k in t.instance) + b"}]}",
            "malformed": valid[: len(valid) // 2],
            "wrong-type": valid,
            "bad-token": valid,
            "too-many": orjson.dumps({"instances": [t.instance] * (t.max_instances + 1)}),
        }
        self.filler = b" " * 16384

    def send(self, kind: str) -> int | str:
        try:
            with socket.create_connection((self.t.host, self.t.port), timeout=30) as s:
                return getattr(self, "_" + kind.replace("-", "_"), self._plain)(s, kind)
        except OSError:
            return "closed"

    def _head(self, extra: dict[str, str], kind: str = "") -> bytes:
        h = self.t.headers(token="kiln_00000000_not-a-token" if kind == "bad-token" else None,
                           ctype="text/plain" if kind == "wrong-type" else "application/json")
        h.update(extra)
        lines = [f"POST {self.t.path} HTTP/1.1", f"Host: {self.t.host}", *(f"{k}: {v}" for k, v in h.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _plain(self, s: socket.socket, kind: str) -> int | str:
        body = self.bodies[kind]
        s.sendall(self._head({"Content-Length": str(len(body))}, kind) + body)
        return _status(s)

    def _huge_declared(self, s: socket.socket, kind: str) -> int | str:
        s.sendall(self._head({"Content-Length": str(50 * 2**20)}) + self.filler)
        return _status(s)

    def _huge_chunked(self, s: socket.socket, kind: str) -> int | str:
        s.sendall(self._head({"Transfer-Encoding": "chunked"}))
        chunk = b"%x\r\n%s\r\n" % (len(self.filler), self.filler)
        for _ in range(self.t.max_payload // len(self.filler) + 1):
            s.sendall(chunk)
        return _status(s)

    def _slow_body(self, s: socket.socket, kind: str) -> int | str:
        s.sendall(self._head({"Content-Length": "1000"}) + b"{")
        for _ in range(999):
            if select.select([s], [], [], 0.25)[0]:  # the server answered: stop sending
                break
            s.sendall(b" ")
        return _status(s)


def _status(s: socket.socket) -> int | str:
    """The status code of the answer on ``s``, or "closed" when none came."""
    buf = b""
    while b"\r\n" not in buf:
        try:
            got = s.recv(4096)
        except OSError:
            return "closed"
        if not got:
            return "closed"
        buf += got
    try:
        return int(buf.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return "closed"


# ------------------------------------------------------------------------------- the memory --
def reset_peak_rss(pids: list[int]) -> None:
    """Start each process's peak-RSS count (VmHWM) afresh (Linux: ``clear_refs`` 5)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def tree_peak_rss(pids: list[int]) -> int:
    """Bytes: the sum of each process's peak RSS since :func:`reset_peak_rss`. The kernel keeps
    the peak, so a spike between two samples (one image decoded to a gigabyte) is not missed."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) * 1024
        except (OSError, StopIteration):
            pass
    return total


# -------------------------------------------------------------------------------- the load --
def interleaved(baseline_s: float = 10, attack_s: float = 20, pairs: int = 4, warmup_s: float = 2) -> list[tuple[str, float]]:
    """A warm-up, then ``pairs`` of (baseline, attack) blocks adding up to the given seconds.
    Why interleaved: on a shared machine a neighbour's busy minute lands on both phases alike,
    so the ratio of their p99s measures the attacks, not the neighbours."""
    return [("warmup", warmup_s)] + [(k, s / pairs) for _ in range(pairs) for k, s in
                                     (("baseline", baseline_s), ("attack", attack_s))]


class _Load:
    """The clients of one :func:`run` and what they share: the block now running (read before
    each request), the attacks in flight, the phases' records."""

    def __init__(self, t: Target, clients: int, rate: float, attack_every: int) -> None:
        import orjson

        self.t, self.clients, self.step, self.every = t, clients, 1.0 / rate, attack_every
        self.attacks = _Attacks(t)
        self.body = orjson.dumps({"instances": [t.instance]})
        self.phases = {"baseline": Phase(0.0), "attack": Phase(0.0)}
        self.mode = "warmup"
        self.stop = False
        self.inflight = 0
        self.cv = threading.Condition()
        self.pool = concurrent.futures.ThreadPoolExecutor(4 * clients, thread_name_prefix="hostile-attack")
        self.t0 = time.monotonic()

    def attack(self, kind: str) -> None:
        got = self.attacks.send(kind)
        with self.cv:
            self.phases["attack"].bad.setdefault(kind, Counter())[got] += 1
            self.inflight -= 1
            self.cv.notify_all()

    def valid(self, conn: http.client.HTTPConnection, mode: str) -> None:
        s = time.perf_counter()
        code: int | str
        try:
            conn.request("POST", self.t.path, body=self.body, headers=self.t.headers())
            r = conn.getresponse()
            r.read()
            code = r.status
        except (OSError, http.client.HTTPException):
            conn.close()  # http.client reconnects on the next request
            code = "closed"
        dt = time.perf_counter() - s
        ph = self.phases.get(mode)  # warm-up and drain: not recorded
        if ph is not None:
            with self.cv:
                ph.valid_codes[code] += 1
                if code == 200:
                    ph.valid_s.append(dt)

    def client(self, k: int) -> None:
        conn = http.client.HTTPConnection(self.t.host, self.t.port, timeout=30)
        due = self.t0 + self.step * k / self.clients  # spread the clients over one interval
        n = k  # the clients' attacks fall on different ticks
        j = k  # and each client starts at another kind, so a short run still sends every kind
        while not self.stop:
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            due = max(due + self.step, time.monotonic() - self.step)  # late: no burst to catch up
            n += 1
            if n % self.every == 0:
                with self.cv:  # checked and counted together: a drain sees every attack it waits for
                    go = self.mode == "attack"
                    self.inflight += go
                if go:
                    self.pool.submit(self.attack, ATTACKS[j % len(ATTACKS)])
                    j += 1
                    continue
            self.valid(conn, self.mode)
        conn.close()

    def drive(self, blocks: list[tuple[str, float]], procs: list[int]) -> None:
        attacked = False
        for kind, seconds in blocks:
            if kind == "attack" and not attacked:
                self.phases["baseline"].peak_rss = tree_peak_rss(procs)
                reset_peak_rss(procs)
                attacked = True
            elif kind == "baseline" and not attacked and self.mode == "warmup":
                reset_peak_rss(procs)
            with self.cv:
                self.mode = kind
            time.sleep(seconds)
            if kind in self.phases:
                self.phases[kind].seconds += seconds
            if kind == "attack":
                with self.cv:
                    self.mode = "drain"
                    self.cv.wait_for(lambda: self.inflight == 0, timeout=60)
        self.phases["attack" if attacked else "baseline"].peak_rss = tree_peak_rss(procs)


def run(t: Target, blocks: list[tuple[str, float]], *, clients: int = 8, rate: float = 20.0,
        attack_every: int = 10, pids: Callable[[], list[int]] | None = None) -> dict[str, Phase]:
    """``clients`` threads, each sending ``rate`` requests a second through ``blocks`` ((kind,
    seconds): "warmup", "baseline", "attack"). In an attack block every ``attack_every``-th
    request of each client is an attack (the kinds in turn, each client starting at another), sent
    from a pool of threads so the valid requests keep their pace. After an attack block its
    attacks in flight (slow bodies: up to the server's timeout) end before the next block starts,
    while the valid clients go on unrecorded. A request counts in the block it started in.

    Returns a :class:`Phase` for "baseline" and "attack". Memory: the baseline's peak is that of
    the blocks before the first attack; the attack's is the peak from the first attack to the end
    (memory an attack leaves behind counts against it, whatever block comes next)."""
    load = _Load(t, clients, rate, attack_every)
    threads = [threading.Thread(target=load.client, args=(k,), name=f"hostile-{k}") for k in range(clients)]
    for th in threads:
        th.start()
    try:
        load.drive(blocks, pids() if pids else [])
    finally:
        load.stop = True
        for th in threads:
            th.join()
        load.pool.shutdown(wait=True)
    return load.phases


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())
