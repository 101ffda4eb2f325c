"""The predict fast path: a plain ASGI handler in front of BentoML's app.

Why: measured on this machine kind, every request through BentoML 1.4's middleware stack
(OpenTelemetry, metrics, access log, a timeout task per request) runs at 0.12-0.38x of a bare
Starlette app with p99 of 120-280 ms; handling ``POST /predict`` (and EasyMaker's ``/inference``)
before that stack reached 0.78-0.96x. Everything else (``/livez``, ``/readyz``, ``/metrics``,
BentoML's docs and its own ``/predict`` API, the lifespan that loads the model) still goes to
BentoML's app, so the Bento packaging is unchanged. :func:`wrap` is applied by
``kiln.bento.service`` patching ``Service.to_asgi`` (BentoML is pinned to 1.4.39 for that; a test
checks the ``x-kiln-path: fast`` header).

What this path adds back, since it skips BentoML's middleware: request ids (``x-request-id``,
taken from the client when sane), Prometheus metrics (``kiln_requests_total{code}``,
``kiln_request_duration_seconds``, ``kiln_batch_size``, ``kiln_capture_dropped_total``, in
BentoML's multiprocess registry so ``/metrics`` shows them), an access log line per request
(token *ids* only), a timeout (504), a concurrency limit (503), a payload limit (413), auth (401).

Responses: ``{"predictions": [P_1, ..., P_n]}``, one entry per instance, for every task and
batch size (what each P_i is: ``kiln.bento.runtime``). Why one shape: EasyMaker answers one
classification instance with a bare list and detection with an object, so a client had to know
both the task and the batch size to read an answer (#14).

Errors: 400/413 with ``{"error": ..., "request_id": ..., "errors": [{"instance", "field",
"message"}]}`` naming each bad instance; an unexpected error is 500 with only the request id, and
the traceback goes to the server log under that id.

Server config: :class:`kiln.bento.config.ServeConfig` (re-exported here), read from the JSON file
``KILN_SERVE_CONFIG`` names (written by kiln.bento.server).
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import concurrent.futures
import itertools
import logging
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from kiln.bento.auth import TokenChecker
from kiln.bento.capture import NO_CAPTURE_HEADER, Capture
from kiln.bento.config import ServeConfig
from kiln.bento.runtime import Engine, InstanceError
from kiln.bento.ui import openapi, page

__all__ = ["ServeConfig", "STATE", "wrap", "FastPath", "MicroBatcher", "PREDICT_PATHS", "OPEN_PATHS"]

PREDICT_PATHS = ("/predict", "/inference")
# reachable without a token: health, metrics, the API description and the test page (it asks for
# the token and sends it with each request)
OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics", "/openapi.json", "/ui", "/docs.json", "/")
_RID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# request ids: a random prefix per server process and a counter (32 hex characters, like a
# uuid4 hex; unique across restarts and replicas, without an os.urandom call per request)
_RID_PREFIX = uuid.uuid4().hex[:24]
_RID_SEQ = itertools.count()
_NO_CAPTURE = NO_CAPTURE_HEADER.lower().encode()  # ASGI header names arrive lower-case

log = logging.getLogger("kiln.bento.server")


class _State:
    """Filled by the BentoML service when it has loaded the model (its lifespan)."""

    engine: Engine | None = None


STATE = _State()


# -------------------------------------------------------------------------------- batching ----
class MicroBatcher:
    """Adaptive micro-batching on the event loop.

    A batch is dispatched as soon as the model thread is free; while it runs, new requests queue
    and go together in the next batch (up to ``max_batch`` instances). When the model is idle the
    dispatcher holds a batch open for at most ``min(max_latency, recent run time)``: waiting
    longer than one model run cannot pay off. A model run on the loop itself (``executor`` None)
    gets no hold: its batch is every request that queued before the dispatcher's turn. A failing
    batch is retried request by request, so one bad request never fails the others.
    """

    def __init__(self, fn: Callable[[list], list], max_batch: int, max_latency_s: float,
                 executor: concurrent.futures.Executor | None, on_batch: Callable[[int], None] | None = None) -> None:
        self.fn, self.max_batch, self.max_latency = fn, max_batch, max_latency_s
        self.executor, self.on_batch = executor, on_batch
        self.pending: deque[tuple[list, asyncio.Future]] = deque()
        self.n = 0
        self.wake: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.ema = 0.0

    async def submit(self, xs: list) -> list:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.wake = asyncio.Event()
            self.task = loop.create_task(self._run())
        fut = loop.create_future()
        self.pending.append((xs, fut))
        self.n += len(xs)
        assert self.wake is not None
        self.wake.set()
        return await fut

    async def _call(self, loop: asyncio.AbstractEventLoop, xs: list) -> list:
        if self.executor is None:  # quick models run on the loop (see FastPath.inline)
            return self.fn(xs)
        return await loop.run_in_executor(self.executor, self.fn, xs)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.wake is not None
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not self.pending:
                continue
            # a model on the loop (executor None) is over in microseconds, so a hold gathers
            # little, and its asyncio.wait_for per batch cost more than that: without it
            # bench/serving.py went from 0.68x to 0.71-0.82x of the bare app with batching on
            hold = 0.0 if self.executor is None else min(self.max_latency, self.ema)
            if self.n < self.max_batch and hold > 0:
                deadline = loop.time() + hold
                while self.n < self.max_batch and (left := deadline - loop.time()) > 0:
                    try:
                        await asyncio.wait_for(self.wake.wait(), left)
                    except TimeoutError:
                        break
                    self.wake.clear()
            batch: list[tuple[list, asyncio.Future]] = []
            size = 0
            while self.pending and (not batch or size + len(self.pending[0][0]) <= self.max_batch):
                xs, fut = self.pending.popleft()
                self.n -= len(xs)
                if fut.cancelled():  # timed out while queued
                    continue
                batch.append((xs, fut))
                size += len(xs)
            if self.pending:
                self.wake.set()
            if not batch:
                continue
            t0 = time.perf_counter()
            flat = [x for xs, _ in batch for x in xs]
            try:
                outs = await self._call(loop, flat)
                i = 0
                for xs, fut in batch:
                    if not fut.done():
                        fut.set_result(outs[i:i + len(xs)])
                    i += len(xs)
            except Exception:  # noqa: BLE001 - isolate the request that breaks the batch
                for xs, fut in batch:
                    try:
                        res = await self._call(loop, xs)
                        if not fut.done():
                            fut.set_result(res)
                    except Exception as e:  # noqa: BLE001
                        if not fut.done():
                            fut.set_exception(e)
            dt = time.perf_counter() - t0
            self.ema = dt if self.ema == 0 else 0.8 * self.ema + 0.2 * dt
            if self.on_batch:
                self.on_batch(size)


# -------------------------------------------------------------------------------- metrics ----
def report_device(device: str) -> None:
    """``kiln_model_device{device="cuda"|"cpu"} 1`` in ``/metrics``: where the model runs, which
    the spec cannot say (a GPU asked for may be absent); rollout reads it for ``kiln describe``."""
    try:
        import prometheus_client as pc
    except ImportError:  # pragma: no cover - BentoML depends on it
        return
    pc.Gauge("kiln_model_device", "where the model runs (1 for its device)", ["device"],
             multiprocess_mode="max").labels(device).set(1)


class _Tally:
    """Request metrics counted in plain Python and handed to prometheus_client in bulk.

    Why: in BentoML's multiprocess mode each ``inc``/``observe`` writes an mmap'ed file and
    checks the pid; three per request took about 6.5 % of the worker's CPU at full load (py-spy
    on bench/serving.py). ``flush`` runs before ``/metrics`` is served and a second after the
    first unflushed request, so a scrape sees every request."""

    def __init__(self, requests: Any, duration: Any, batch: Any) -> None:
        self.requests, self.hists = requests, (duration, batch)
        self.codes: dict[int, int] = {}
        # per histogram: [sum, count per bucket]; prometheus_client keeps one value per bucket
        # (``_buckets``, non-cumulative) and ``_sum``; a version without them is observed directly
        self.bulk = all(hasattr(h, "_buckets") and hasattr(h, "_sum") and hasattr(h, "_upper_bounds") for h in self.hists)
        self.bounds = [list(h._upper_bounds) if self.bulk else [] for h in self.hists]
        self.pending: list[list[Any]] = [[0.0, [0] * len(b)] for b in self.bounds]
        self.children: dict[int, Any] = {}
        self.scheduled = False

    def count(self, code: int) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1

    def flush_soon(self) -> None:
        """Flush a second from now on the running event loop, unless a flush is already due."""
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_later(1.0, self.flush)

    def observe(self, which: int, value: float) -> None:
        if not self.bulk:
            self.hists[which].observe(value)
            return
        p = self.pending[which]
        p[0] += value
        p[1][bisect.bisect_left(self.bounds[which], value)] += 1  # the first bound >= value: observe()'s bucket

    def flush(self) -> None:
        self.scheduled = False
        codes, self.codes = self.codes, {}
        for code, n in codes.items():
            c = self.children.get(code)
            if c is None:
                c = self.children[code] = self.requests.labels(code=str(code))
            c.inc(n)
        for h, p in zip(self.hists, self.pending):
            total, counts = p[0], p[1]
            if any(counts):
                p[0], p[1] = 0.0, [0] * len(counts)
                h._sum.inc(total)
                for i, n in enumerate(counts):
                    if n:
                        h._buckets[i].inc(n)


# ------------------------------------------------------------------------------- the handler --
class _Reject(Exception):
    def __init__(self, status: int, message: str, errors: list[dict] | None = None) -> None:
        self.status, self.message, self.errors = status, message, errors
        super().__init__(message)

    def body(self, rid: str) -> bytes:
        payload: dict[str, Any] = {"error": self.message, "request_id": rid}
        if self.errors:
            payload["errors"] = self.errors
        return orjson.dumps(payload)


class FastPath:
    """ASGI app: ``POST /predict|/inference``, ``GET /ui``, ``GET /openapi.json`` here; auth for
    BentoML's own routes; everything else passes to ``inner`` (BentoML's app)."""

    def __init__(self, inner: Any, cfg: ServeConfig) -> None:
        self.inner, self.cfg = inner, cfg
        self.inflight = 0
        self.max_payload = cfg.limits.maxPayloadBytes
        self.max_instances = cfg.limits.maxInstances
        self.timeout = float(cfg.limits.timeoutSeconds)
        self.max_conc = cfg.limits.maxConcurrency
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kiln-model")
        self.checker = None
        if not cfg.public:
            self.checker = TokenChecker(cfg.token_file or "/nonexistent", f"{cfg.workspace}/{cfg.deployment}")
        self._setup_logging()
        self._setup_metrics()
        b = cfg.batching
        self.batcher = (MicroBatcher(self._run_model, b.maxBatchSize, b.maxLatencyMs / 1000,
                                     self.pool, on_batch=self._observe_batch if self.tally else None)
                        if b.enabled else None)
        # without batching the model runs on the event loop when it is quick (ONNX, sklearn): the
        # executor hop measured about 100 us a request; torch models go to the model thread so
        # health checks and timeouts keep working while they run
        self.inline: bool | None = cfg.inline  # None: decided on the first request
        self.capture = None
        if cfg.capture:
            c = cfg.capture
            self.capture = Capture(c.dir, sample_rate=c.sampleRate, max_per_day=c.maxPerDay,
                                   deployment=cfg.deployment, model=cfg.model, version=cfg.version,
                                   queue_size=c.queueSize, workers=cfg.workers)
            if self._m_drop is not None:
                self.capture.on_drop = self._m_drop.inc

    def _setup_logging(self) -> None:
        for lg in (log,):
            if not lg.handlers:
                h = logging.StreamHandler(sys.stderr)
                h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
                lg.addHandler(h)
                lg.setLevel(logging.INFO)
                lg.propagate = False
        self.alog = sys.stderr if self.cfg.access_log else None
        self.alog_buf: list[str] = []
        atexit.register(self._flush_alog)

    def _setup_metrics(self) -> None:
        try:
            import prometheus_client as pc
        except ImportError:  # pragma: no cover - BentoML depends on it
            self._m_req = self._m_dur = self._m_batch = self._m_drop = None
            self.tally = None
            return
        self._m_req = pc.Counter("kiln_requests", "predict requests by status code", ["code"])
        self._m_dur = pc.Histogram("kiln_request_duration_seconds", "predict latency",
                                   buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self._m_batch = pc.Histogram("kiln_batch_size", "instances per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self._m_drop = pc.Counter("kiln_capture_dropped", "captured inputs dropped because the writer queue was full")
        self.tally = _Tally(self._m_req, self._m_dur, self._m_batch)

    def _observe_batch(self, size: int) -> None:
        assert self.tally is not None
        self.tally.observe(1, size)
        self.tally.flush_soon()

    def _decide_inline(self, eng: Engine) -> None:
        self.inline = eng.cfg.framework in ("onnx", "sklearn")
        if self.batcher is not None and self.inline:
            self.batcher.executor = None

    def _run_model(self, xs: list) -> list:
        eng = STATE.engine
        assert eng is not None
        return eng.predict(xs)

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path in PREDICT_PATHS and scope["method"] == "POST":
                return await self.predict(scope, receive, send)
            if path == "/ui" and scope["method"] == "GET":
                return await _send(send, 200, page().encode(), b"text/html; charset=utf-8")
            if path == "/openapi.json":
                return await _send(send, 200, orjson.dumps(self.openapi()))
            if path == "/metrics" and self.tally is not None:
                self.tally.flush()  # this worker's counts so far, before BentoML reads the files
            if self.checker is not None and path not in OPEN_PATHS and self._auth(scope) is None:
                return await _send(send, 401, orjson.dumps({"error": "missing or invalid API token"}),
                                   extra=[(b"www-authenticate", b"Bearer")])
        await self.inner(scope, receive, send)

    def _auth(self, scope: dict) -> str | None:
        token = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                s = v.decode("latin-1")
                if s[:7].lower() == "bearer ":
                    token = s[7:].strip()
            elif k == b"x-api-key":
                token = v.decode("latin-1").strip()
        assert self.checker is not None
        return self.checker.check(token)

    async def predict(self, scope: dict, receive: Callable, send: Callable) -> None:
        """One predict request: admit -> read -> decode -> run the model -> reply, then count it
        and log it (``finally``: every request, whatever its outcome)."""
        t0 = time.perf_counter()
        rid, clen, ctype, skip_capture = _request_headers(scope["headers"])
        hdrs = [(b"x-request-id", rid.encode()), (b"x-kiln-path", b"fast")]
        tid = "-"
        status, n = 500, 0
        counted = False
        try:
            tid = self._token_id(scope)
            _check_content_type(ctype)
            self._check_size(clen)
            body = await self._read_body(receive)
            # counted once the body is in: clients that send slowly must not fill the places of
            # requests that are ready to run (they are bounded by the read timeout instead)
            self.inflight += 1
            counted = True
            self._check_load()
            eng = STATE.engine
            if eng is None:
                raise _Reject(503, "the model is still loading; retry when /readyz is 200")
            instances = self._instances(body)
            n = len(instances)
            if eng.cfg.input == "image":
                # decoding an image takes milliseconds: off the event loop, so that other requests
                # (and /healthz) are not held up behind it
                xs, metas = await asyncio.get_running_loop().run_in_executor(None, _decode, eng, instances)
            else:
                xs, metas = _decode(eng, instances)
            ys = await self._infer(eng, xs)
            preds = [eng.format(y, m) for y, m in zip(ys, metas)]
            if self.capture is not None and not skip_capture:
                for inst, p in zip(instances, preds):
                    self.capture.offer(inst, p)
            status = 200
            await _send(send, 200, orjson.dumps({"predictions": preds}, option=orjson.OPT_SERIALIZE_NUMPY), extra=hdrs)
        except _Reject as r:
            status = r.status
            extra = hdrs + ([(b"www-authenticate", b"Bearer")] if r.status == 401 else [])
            await _send(send, r.status, r.body(rid), extra=extra)
        except TimeoutError:
            status = 504
            await _send(send, 504, orjson.dumps({"error": f"prediction took longer than {self.timeout}s", "request_id": rid}), extra=hdrs)
        except Exception:  # noqa: BLE001 - never a traceback to the client
            status = 500
            log.exception("request %s failed", rid)
            await _send(send, 500, orjson.dumps({"error": "internal error; quote the request id to the operator",
                                                 "request_id": rid}), extra=hdrs)
        finally:
            if counted:
                self.inflight -= 1
            self._record(scope, rid, status, n, tid, time.perf_counter() - t0)

    def _token_id(self, scope: dict) -> str:
        """The id of the request's token ("-" on a public deployment); 401 without a valid one."""
        if self.checker is None:
            return "-"
        tid = self._auth(scope)
        if not tid:
            raise _Reject(401, "missing or invalid API token (send 'Authorization: Bearer <token>' or 'X-API-Key')")
        return tid

    def _check_size(self, clen: bytes | None) -> None:
        if clen is not None and int(clen) > self.max_payload:
            raise _Reject(413, f"payload of {int(clen)} bytes is over the limit of {self.max_payload} bytes")

    def _check_load(self) -> None:
        if self.inflight > self.max_conc:
            raise _Reject(503, f"too many concurrent requests (limit {self.max_conc}); retry later")

    async def _read_body(self, receive: Callable) -> bytes:
        """The body, within the request timeout (limits.timeoutSeconds): a client that sends a
        byte a second gets 408 instead of holding its connection and memory for ever."""
        try:
            async with asyncio.timeout(self.timeout):  # a timer, not a task per request (hot path)
                return await self._body(receive)
        except TimeoutError:
            raise _Reject(408, f"the request body did not arrive within {self.timeout:g}s") from None

    async def _infer(self, eng: Engine, xs: list) -> list:
        if self.inline is None:
            self._decide_inline(eng)
        if self.batcher is not None:
            return await asyncio.wait_for(self.batcher.submit(xs), self.timeout)
        if self.inline:
            return eng.predict(xs)  # small models: a thread hop costs more than the model
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self.pool, eng.predict, xs), self.timeout)

    def _record(self, scope: dict, rid: str, status: int, n: int, tid: str, dt: float) -> None:
        """Metrics and the access log line of a finished request."""
        if self.tally is not None:
            self.tally.count(status)
            self.tally.observe(0, dt)
            self.tally.flush_soon()
        if self.alog is not None:
            # not the logging machinery (about 100 us a request); lines are written together,
            # at most 0.2 s late: a write(2) per line was 3.6 % of the worker's CPU under load
            buf = self.alog_buf
            buf.append(f"{_stamp()} access {rid} {(scope.get('client') or ('-',))[0]} {scope['path']} {status} "
                       f"{dt * 1000:.2f}ms n={n} token={tid}\n")
            if len(buf) >= 64:
                self._flush_alog()
            elif len(buf) == 1:
                asyncio.get_running_loop().call_later(0.2, self._flush_alog)

    def _flush_alog(self) -> None:
        if self.alog_buf and self.alog is not None:
            lines, self.alog_buf = self.alog_buf, []
            try:
                self.alog.write("".join(lines))
            except (OSError, ValueError):  # a closed log at shutdown must not fail a request
                pass

    async def _body(self, receive: Callable) -> bytes:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _Reject(400, "client disconnected")
            b = msg.get("body", b"")
            if b:
                size += len(b)
                if size > self.max_payload:
                    raise _Reject(413, f"payload is over the limit of {self.max_payload} bytes")
                chunks.append(b)
            if not msg.get("more_body"):
                return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def _instances(self, body: bytes) -> list:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise _Reject(400, f"malformed JSON: {e}") from None
        if not isinstance(doc, dict) or "instances" not in doc:
            raise _Reject(400, 'expected a JSON object {"instances": [...]}')
        inst = doc["instances"]
        if not isinstance(inst, list):
            raise _Reject(400, f"'instances' must be a list, got {type(inst).__name__}")
        if not inst:
            raise _Reject(400, "'instances' is empty")
        if len(inst) > self.max_instances:
            raise _Reject(413, f"{len(inst)} instances is over the limit of {self.max_instances} per request")
        return inst

    def openapi(self) -> dict[str, Any]:
        return openapi(self.cfg, STATE.engine)


def _request_headers(headers: list) -> tuple[str, bytes | None, bytes | None, bool]:
    """(request id, content-length, content-type, skip capture?) from one pass over the request
    headers. A client's ``x-request-id`` is kept when sane, else one is made."""
    rid = clen = ctype = None
    skip_capture = False
    for k, v in headers:
        if k == b"x-request-id":
            s = v.decode("latin-1")
            rid = s if _RID_RE.match(s) else None
        elif k == b"content-length":
            clen = v
        elif k == b"content-type":
            ctype = v
        elif k == _NO_CAPTURE and v == b"1":
            skip_capture = True  # kiln's smoke test: not user traffic
    return rid or f"{_RID_PREFIX}{next(_RID_SEQ):08x}", clen, ctype, skip_capture


def _check_content_type(ctype: bytes | None) -> None:
    """415 unless the body is declared JSON (``application/json``, ``application/*+json``) or
    not declared at all. Why: a web page can make a visitor's browser POST a form or
    ``text/plain`` to a public deployment on their network without asking the server first (no
    CORS preflight for those types); a JSON body declared as such needs the preflight, which this
    server never grants. A client that sends no type (a bare ``urllib`` request) is not a
    browser form, so it is accepted."""
    if ctype is None:
        return
    media = ctype.split(b";", 1)[0].strip().lower()
    if media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json")):
        return
    shown = media.decode("latin-1")[:60] or "(empty)"
    raise _Reject(415, f"Content-Type {shown} is not JSON; send 'Content-Type: application/json'")


def _decode(eng: Engine, instances: list) -> tuple[list, list]:
    """Model inputs and format metadata of every instance; 400 naming each bad one."""
    xs, metas, errors = [], [], []
    for i, inst in enumerate(instances):
        try:
            x, m = eng.decode(inst, i)
            xs.append(x)
            metas.append(m)
        except InstanceError as e:
            errors.append({"instance": e.index, "field": e.field, "message": e.problem})
    if errors:
        first = errors[0]
        where = f"instances[{first['instance']}]" + (f".{first['field']}" if first["field"] else "")
        raise _Reject(400, f"{len(errors)} invalid instance(s); first: {where}: {first['message']}", errors[:20])
    return xs, metas


_STAMP: list[Any] = [-1, ""]


def _stamp() -> str:
    """The access log's timestamp, formatted once a second (strftime is microseconds a call)."""
    now = int(time.time())
    if now != _STAMP[0]:
        _STAMP[0], _STAMP[1] = now, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
    return _STAMP[1]


async def _send(send: Callable, status: int, body: bytes, ctype: bytes = b"application/json",
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def wrap(inner: Any, cfg: ServeConfig | None = None) -> FastPath:
    return FastPath(inner, cfg or ServeConfig.from_env() or ServeConfig(public=True))
