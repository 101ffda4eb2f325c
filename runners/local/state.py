"""The bookkeeping of one run: status nodes, their records on disk, stop and deadlines.

``workflow.json`` (manifest + Argo-shaped ``status``) is rewritten atomically by the run's
housekeeper at most every ``flush_interval`` seconds while nodes change, and at the end; every
node that reaches a final phase is first appended to the journal (:mod:`.journal`). Stop
requests go through the run folder's ``stop`` file, polled every 0.1 s by the housekeeper.
The listener (``on_update``) hears of every write, and every ``HEARTBEAT`` seconds while nothing
changes.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln._util.clock import utcnow_seconds
from kiln._util.fs import write_text_atomic
from kiln.runners import _expr
from kiln.runners.base import Workflow
from kiln.runners.local.admission import Tokens
from kiln.runners.local.common import DONE, FAILED, Stopped, fnv32a, parse_duration
from kiln.runners.local.journal import POD_MARKER, Journal, PodList
from kiln.runners.local.pod import SITECUSTOMIZE, kill_group

# a quiet run (one long task) still reports to its listener this often (``on_update``), without
# writing workflow.json: apply's progress lines read the training's own files meanwhile
HEARTBEAT = 2.0

if TYPE_CHECKING:
    from kiln.runners.local.runner import LocalRunner


class RunState:
    """The state of one workflow run while this process executes it: its nodes and the records
    of them (journal, workflow.json), the stop request and deadlines, the running pods.

    Thread safety: ``nodes``/``status`` change under ``lock`` (an RLock); steps run on many
    threads at once and call :meth:`new_node`, :meth:`finish`, :meth:`link` and :meth:`reuse`
    freely. The interpreter (``interpreter._Run``) builds on this class.
    """

    def __init__(self, runner: LocalRunner, manifest: Workflow, run_dir: Path, run_hash: str,
                 prev: Workflow | None, on_update: Callable[[Workflow], None] | None) -> None:
        self.runner = runner
        self.wf = manifest
        self.name = manifest["metadata"]["name"]
        self.dir = run_dir
        self.dir_s = str(run_dir)
        self.stop_file = f"{self.dir_s}/stop"
        self.hash = run_hash
        self.on_update = on_update
        self.spec = manifest["spec"]
        self.templates = {t["name"]: t for t in self.spec.get("templates") or []}
        self.prev_nodes: dict[str, dict] = (prev or {}).get("status", {}).get("nodes", {}) or {}
        self.lock = threading.RLock()
        self.nodes: dict[str, dict] = {}
        self.status: dict[str, Any] = {"phase": "Pending", "startedAt": utcnow_seconds(), "finishedAt": None,
                                       "message": "", "nodes": self.nodes}
        if prev and prev.get("status", {}).get("startedAt"):
            self.status["startedAt"] = prev["status"]["startedAt"]
        self.wf["status"] = self.status
        ann = self.wf["metadata"].setdefault("annotations", {})
        ann["kiln.dev/runner-pid"] = str(os.getpid())
        ann["kiln.dev/runner-host"] = socket.gethostname()
        ann["kiln.dev/run-hash"] = run_hash
        self.stop_event = threading.Event()
        self.stop_message = ""
        self.dirty = threading.Event()
        self.done = threading.Event()
        self.procs: dict[str, tuple[subprocess.Popen, float | None]] = {}
        self.timed_out: set[str] = set()
        self.user_stopped: set[str] = set()  # pods `kiln stop --job` ended: their Retry ends too
        par = self.spec.get("parallelism")
        self.wf_sem = Tokens(int(par)) if par else None
        self.t0 = time.monotonic()
        self.deadline = (self.t0 + parse_duration(self.spec["activeDeadlineSeconds"], "spec.activeDeadlineSeconds")
                         if self.spec.get("activeDeadlineSeconds") else None)
        for sub in ("logs", "artifacts", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.site_dir = self.dir / "tmp" / "_site"
        self.globals = self._globals()
        self.base_env = runner.base_env(self.site_dir)
        if self.base_env.get("KILN_RANDOM_SEED"):  # only then is the folder on PYTHONPATH
            self.site_dir.mkdir(exist_ok=True)
            (self.site_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.hostname = socket.gethostname()
        self.global_outputs: dict[str, str] = {}
        self.global_artifacts: dict[str, dict] = {}
        # daemoned steps' processes, by the id of the steps/DAG node whose end kills them
        self.daemons: dict[str, list[tuple[str, subprocess.Popen]]] = {}
        # a fresh journal, carrying the Succeeded nodes of the run being resumed (see journal.py)
        self.journal = Journal(self.dir, [n for n in self.prev_nodes.values() if n.get("phase") == "Succeeded"])
        self.pods = PodList(self.dir)
        self.base_env[POD_MARKER] = str(self.dir.resolve())

    # ------------------------------------------------------------------ bookkeeping
    def _globals(self) -> dict[str, Any]:
        meta = self.wf["metadata"]
        g: dict[str, Any] = {
            "workflow.name": self.name, "workflow.namespace": meta.get("namespace", "default"),
            "workflow.uid": meta.get("uid") or f"local-{fnv32a(self.name + self.hash):08x}",
            "workflow.creationTimestamp": self.status["startedAt"],
            "workflow.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "workflow.mainEntrypoint": self.spec["entrypoint"],
        }
        params = {}
        for p in (self.spec.get("arguments") or {}).get("parameters") or []:
            params[p["name"]] = str(p.get("value", p.get("default", "")))
        for k, v in params.items():
            g[f"workflow.parameters.{k}"] = v
        g["workflow.parameters"] = _expr.to_json([{"name": k, "value": v} for k, v in params.items()])
        for k, v in (meta.get("labels") or {}).items():
            g[f"workflow.labels.{k}"] = str(v)
        for k, v in (meta.get("annotations") or {}).items():
            g[f"workflow.annotations.{k}"] = str(v)
        return g

    def node_id(self, name: str) -> str:
        return self.name if name == self.name else f"{self.name}-{fnv32a(name)}"

    def touch(self) -> None:
        if not self.dirty.is_set():  # Event.set takes a Condition even when already set
            self.dirty.set()

    def record(self, node: dict) -> None:
        """Append ``node`` to the journal; returns once the kernel has it (survives kill -9)."""
        try:
            line = json.dumps(node, separators=(",", ":"))
        except RuntimeError:  # see snapshot()
            with self.lock:
                line = json.dumps(node, separators=(",", ":"))
        self.journal.append(line)

    def new_node(self, name: str, display: str, ntype: str, tmpl_name: str | None, boundary: str | None,
                 parent: str | None, phase: str = "Running", message: str = "", outputs: dict | None = None,
                 extra: dict | None = None) -> dict:
        nid = self.node_id(name)
        node: dict[str, Any] = {"id": nid, "name": name, "displayName": display, "type": ntype,
                                "templateName": tmpl_name, "phase": phase, "message": message,
                                "startedAt": utcnow_seconds(), "finishedAt": None, "children": []}
        if boundary:
            node["boundaryID"] = boundary
        if outputs:
            node["outputs"] = outputs
        if extra:
            node.update(extra)
        if phase in DONE:
            node["finishedAt"] = node["startedAt"]
        with self.lock:
            self.nodes[nid] = node
            if parent and parent in self.nodes and nid not in self.nodes[parent]["children"]:
                self.nodes[parent]["children"].append(nid)
        if phase in DONE:
            self.record(node)
        self.touch()
        return node

    def finish(self, node: dict, phase: str, message: str = "", outputs: dict | None = None) -> dict:
        with self.lock:
            node["phase"] = phase
            if message:
                node["message"] = message
            if outputs:
                node["outputs"] = outputs
            node["finishedAt"] = utcnow_seconds()
        self.record(node)
        self.touch()
        return node

    def outbound(self, node: dict) -> str:
        if node["type"] == "Retry" and node["children"]:
            return node["children"][-1]
        return node["id"]

    def link(self, parent: str, child: str) -> None:
        with self.lock:
            ch = self.nodes[parent]["children"]
            if child not in ch:
                ch.append(child)

    def reuse(self, nid: str, parent: str | None) -> dict | None:
        """On resume: a node that Succeeded before (and its subtree) is taken over, not re-run."""
        prev = self.prev_nodes.get(nid)
        if not prev or prev.get("phase") != "Succeeded":
            return None
        with self.lock:
            stack = [nid]
            while stack:
                cur = stack.pop()
                if cur in self.prev_nodes and cur not in self.nodes:
                    self.nodes[cur] = copy.deepcopy(self.prev_nodes[cur])
                    stack.extend(self.prev_nodes[cur].get("children", []))
            if parent and parent in self.nodes and nid not in self.nodes[parent]["children"]:
                self.nodes[parent]["children"].append(nid)
        self._publish_globals(self.nodes[nid])
        self.touch()
        return self.nodes[nid]

    def snapshot(self) -> str:
        # CPython's C JSON encoder holds the GIL for the whole dump (no Python callbacks for
        # dict/list/str), so the status cannot change under it; taking self.lock as well only
        # made every finishing node queue behind the writer. The lock is the fallback.
        try:
            return json.dumps(self.wf, separators=(",", ":"))
        except RuntimeError:
            with self.lock:
                return json.dumps(self.wf, separators=(",", ":"))

    def flush(self) -> None:
        text = self.snapshot()
        write_text_atomic(self.dir / "workflow.json", text)
        if self.on_update is not None:
            self.on_update(json.loads(text))

    def housekeeper(self) -> None:
        """One loop per run (on a pooled thread) for the coalesced snapshot and the watchdog:
        writes workflow.json when nodes changed and ``flush_interval`` has passed since the last
        write, and every 0.1 s looks for a stop request, the workflow deadline and pod timeouts."""
        interval = self.runner.flush_interval
        last_flush = time.monotonic()  # submit() has just written the first snapshot
        next_check = last_flush + 0.1
        while not self.done.is_set():
            now = time.monotonic()
            if now >= next_check:
                self.watch(now)
                next_check = now + 0.1
            dirty = self.dirty.is_set()
            if dirty and now >= last_flush + interval:
                self.dirty.clear()
                dirty = False
                try:
                    self.flush()
                except Exception:  # pragma: no cover - a full disk must not kill the run
                    pass
                last_flush = time.monotonic()
            elif not dirty and self.on_update is not None and now >= last_flush + HEARTBEAT:
                # nothing changed for a while (one long training task): the listener still hears
                # from the run, so that apply can show how far the training has got
                try:
                    self.on_update(json.loads(self.snapshot()))
                except Exception:  # pragma: no cover - a listener's error must not kill the run
                    pass
                last_flush = time.monotonic()
            until = min(next_check, last_flush + interval) if dirty else next_check
            timeout = until - time.monotonic()
            if timeout > 0:
                # quiet: the first change wakes us (and flushes at once); busy: changes coalesce
                (self.done if dirty else self.dirty).wait(timeout)

    def watch(self, now: float) -> None:
        if not self.stop_event.is_set() and os.path.exists(self.stop_file):
            try:
                with open(self.stop_file) as f:
                    msg = f.read().strip() or "stopped by user"
            except OSError:
                msg = "stopped by user"
            self.cancel(msg)
        if self.deadline and now > self.deadline and not self.stop_event.is_set():
            self.cancel("Max duration limit exceeded")
        with self.lock:
            expired = [(nid, p) for nid, (p, dl) in self.procs.items() if dl is not None and now > dl]
        for nid, p in expired:
            if nid not in self.timed_out:
                self.timed_out.add(nid)
                kill_group(p)

    def cancel(self, message: str) -> None:
        self.stop_message = message
        self.stop_event.set()
        with self.lock:
            procs = [p for p, _ in self.procs.values()]
        for p in procs:
            kill_group(p)

    def stop_daemons(self, boundary: str | None) -> None:
        """Kill the daemoned steps started inside ``boundary`` (every one when None)."""
        with self.lock:
            keys = [boundary or ""] if boundary is not None else list(self.daemons)
            gone = [d for k in keys for d in self.daemons.pop(k, [])]
        for nid, p in gone:
            kill_group(p)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            with self.lock:
                self.procs.pop(nid, None)

    def check_stop(self) -> None:
        if self.stop_event.is_set():
            raise Stopped(self.stop_message)

    def _failures(self) -> str:
        with self.lock:
            out = [{"displayName": n["displayName"], "message": n.get("message", ""), "templateName": n.get("templateName"),
                    "phase": n["phase"], "podName": n["id"], "finishedAt": n.get("finishedAt")}
                   for n in self.nodes.values() if n["type"] == "Pod" and n["phase"] in FAILED]
        return _expr.to_json(out)

    def _publish_globals(self, node: dict) -> None:
        for p in (node.get("outputs") or {}).get("parameters") or []:
            if p.get("globalName"):
                with self.lock:
                    self.global_outputs[p["globalName"]] = p.get("value", "")
                    self.globals[f"workflow.outputs.parameters.{p['globalName']}"] = p.get("value", "")
        for a in (node.get("outputs") or {}).get("artifacts") or []:
            if a.get("globalName"):  # {{workflow.outputs.artifacts.NAME}} for a later step's `from`
                with self.lock:
                    self.global_artifacts[a["globalName"]] = dict(a, name=a["globalName"])
                    self.globals[f"workflow.outputs.artifacts.{a['globalName']}"] = self.global_artifacts[a["globalName"]]

