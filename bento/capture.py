"""Input capture: keep a sample of what a deployment sees, for relabelling and retraining.

The request path only calls :meth:`Capture.offer`, which draws the sample, checks the day's budget
and does ``put_nowait`` on a bounded queue: it never blocks and never raises. A daemon thread
writes the files. When the queue is full the item is dropped and counted (``dropped``; the server
exports it as ``kiln_capture_dropped_total``).

Folder layout (one per deployment)::

    <dir>/<YYYY-MM-DD>/<id>.png|.jpg|...   an image instance, decoded from its base64
    <dir>/index.jsonl                     one line per captured instance:
        {"id": "...", "time": "...Z", "deployment": "d", "model": "m", "version": 3,
         "file": "2025-01-31/<id>.png" | null, "input": {...tabular row...} | null,
         "prediction": ...}

``maxPerDay`` is counted per server process: with N workers each keeps at most maxPerDay // N.

A request carrying the header ``X-Kiln-No-Capture: 1`` (``NO_CAPTURE_HEADER``) is never captured:
kiln's own rollout smoke test sends it, so its synthetic blank image never reaches the dataset
that gets labelled and retrained on.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import os
import queue
import random
import threading
import uuid
from pathlib import Path
from typing import Any

from kiln._util.clock import utcnow
from kiln._util.fs import write_bytes_atomic

__all__ = ["Capture", "NO_CAPTURE_HEADER"]

NO_CAPTURE_HEADER = "X-Kiln-No-Capture"

log = logging.getLogger("kiln.bento.capture")
_MAGIC = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"BM": ".bmp", b"RIFF": ".webp"}


class Capture:
    def __init__(self, directory: str | os.PathLike[str], *, sample_rate: float, max_per_day: int,
                 deployment: str = "", model: str = "", version: int = 0, queue_size: int = 256,
                 workers: int = 1, seed: int | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rate = sample_rate
        self.max_per_day = max(1, max_per_day // max(1, workers))
        self.ids = {"deployment": deployment, "model": model, "version": version}
        self.q: queue.Queue[tuple | None] = queue.Queue(maxsize=queue_size)
        self.rng = random.Random(seed)
        self.day = ""
        self.taken = 0
        self.dropped = 0
        self.written = 0
        self.errors = 0
        self.on_drop = None  # set by the server: a metrics counter's inc
        self._t = threading.Thread(target=self._writer, name="kiln-capture", daemon=True)
        self._t.start()

    def offer(self, instance: Any, prediction: Any) -> None:
        """Maybe capture one instance. Cheap, non-blocking, never raises."""
        try:
            if self.rng.random() >= self.rate:
                return
            day = _dt.date.today().isoformat()
            if day != self.day:
                self.day, self.taken = day, 0
            if self.taken >= self.max_per_day:
                return
            self.taken += 1
            self.q.put_nowait((day, instance, prediction))
        except queue.Full:
            self.dropped += 1
            if self.on_drop:
                self.on_drop()
        except Exception:  # noqa: BLE001 - capture must never fail a request
            self.errors += 1

    def close(self, timeout: float = 5.0) -> None:
        try:
            self.q.put(None, timeout=timeout)
        except queue.Full:
            return
        self._t.join(timeout)

    def _writer(self) -> None:
        index = self.dir / "index.jsonl"
        while True:
            item = self.q.get()
            if item is None:
                return
            try:
                self._write(index, *item)
                self.written += 1
            except Exception:  # noqa: BLE001
                self.errors += 1
                log.exception("capture write failed (the request was not affected)")

    def _write(self, index: Path, day: str, instance: Any, prediction: Any) -> None:
        cid = uuid.uuid4().hex
        rec: dict[str, Any] = {"id": cid, "time": utcnow(),
                               **self.ids, "file": None, "input": None, "prediction": prediction}
        data = instance.get("data") if isinstance(instance, dict) else None
        if isinstance(data, str) and len(instance) == 1:
            raw = base64.b64decode(data)
            ext = next((e for m, e in _MAGIC.items() if raw.startswith(m)), ".bin")
            (self.dir / day).mkdir(exist_ok=True)
            rel = f"{day}/{cid}{ext}"
            write_bytes_atomic(self.dir / rel, raw, mkdir=False)
            rec["file"] = rel
        else:
            rec["input"] = instance
        line = (json.dumps(rec, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
