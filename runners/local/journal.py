"""A run's crash journal: ``nodes.jsonl`` (final nodes) and ``pods.jsonl`` (started pods).

Why a snapshot plus a journal: rewriting the whole status after every one of 100 fast nodes
costs more than the nodes themselves, so workflow.json is coalesced; but a step that Succeeded
must never run again after a crash, so each final node is also appended to ``nodes.jsonl``
(a few hundred bytes, no fsync: the page cache survives a killed process). Readers
(``get()``, resume) replay the journal over the snapshot: a journal record replaces a node the
snapshot has in a non-final phase or lacks, and only adds children to a node the snapshot
already has final (a final node's phase and outputs never change afterwards). A torn last
line (power loss mid-write) is ignored. A resumed run starts a fresh journal (temp +
os.replace) holding the previous run's Succeeded nodes, so nothing is appended after a torn
line and a second crash before those nodes are taken over loses none of them.

Schemas, one JSON object per line::

    nodes.jsonl   a full status node, as in workflow.json's ``status.nodes``
    pods.jsonl    {"pid": <process group of a started pod>}
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

from kiln._util.fs import write_text_atomic
from kiln.runners.base import Workflow
from kiln.runners.local.common import DONE

JOURNAL = "nodes.jsonl"
# Process groups of started pods, one JSON line each: after a kill -9 of the runner its pods run
# on as orphans (each has its own session), and resuming must stop them before running the same
# task again. The marker in the pod's environment proves a pid still is that pod.
PODS = "pods.jsonl"
POD_MARKER = "KILN_LOCAL_RUN"


def reap_orphans(run_dir: Path) -> list[int]:
    """Kill the process groups of pods a dead runner left behind in ``run_dir``; returns them."""
    try:
        data = (run_dir / PODS).read_bytes()
    except FileNotFoundError:
        return []
    marker = f"{POD_MARKER}={run_dir.resolve()}".encode()
    killed = []
    for line in data.split(b"\n"):
        try:
            pid = int(json.loads(line)["pid"])
        except (ValueError, KeyError, TypeError):
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if marker not in fh.read().split(b"\0"):
                    continue  # the pid was reused by something else
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
        except (OSError, ProcessLookupError):
            continue
    (run_dir / PODS).unlink(missing_ok=True)
    return killed


def replay_journal(wf: Workflow, journal: Path) -> Workflow:
    """``wf`` (a workflow.json snapshot) with the node records of ``journal`` applied, in place."""
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return wf
    status = wf.setdefault("status", {})
    nodes = status.get("nodes")
    if not isinstance(nodes, dict):
        nodes = status["nodes"] = {}
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # torn by a crash mid-write: the node simply was not recorded
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
            continue
        cur = nodes.get(rec["id"])
        if cur is None:
            nodes[rec["id"]] = rec
            continue
        # a node's children only grow (a DAG dependent hangs off a finished task): keep them all
        kids = list(cur.get("children") or [])
        kids += [c for c in rec.get("children") or [] if c not in kids]
        if cur.get("phase") not in DONE:
            nodes[rec["id"]] = rec
        nodes[rec["id"]]["children"] = kids
    return wf


class Journal:
    """The append-only ``nodes.jsonl`` of one run; :meth:`append` may be called from any thread."""

    def __init__(self, run_dir: Path, carried: list[dict]) -> None:
        """Start a fresh journal in ``run_dir`` holding ``carried`` (the Succeeded nodes of the run
        being resumed; see the module docstring)."""
        self.path = run_dir / JOURNAL
        text = "".join(json.dumps(n, separators=(",", ":")) + "\n" for n in carried)
        if text:
            write_text_atomic(self.path, text)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        else:  # nothing to lose: no temp file and rename needed
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.lock = threading.Lock()

    def append(self, line: str) -> None:
        """Append one JSON line; returns once the kernel has it (survives kill -9)."""
        data = (line + "\n").encode()
        with self.lock:  # one write(2) per line; the lock only matters after a short write
            while data:
                data = data[os.write(self.fd, data):]

    def close(self) -> None:
        os.close(self.fd)

    def remove(self) -> None:
        """Once the final workflow.json holds everything the journal did."""
        try:
            self.path.unlink()
        except OSError:
            pass


class PodList:
    """The ``pods.jsonl`` of one run: the pid of every pod it started, for :func:`reap_orphans`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / PODS
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def add(self, pid: int) -> None:
        os.write(self.fd, b'{"pid":%d}\n' % pid)

    def close(self) -> None:
        """The run is over: none of its pods can be left running."""
        os.close(self.fd)
        self.path.unlink(missing_ok=True)
