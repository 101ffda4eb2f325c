"""kiln's embedded Argo Workflows runner: executes a ``Workflow`` manifest on this machine.

Each container/script step runs as a host subprocess (the image is not run: busybox/alpine/bash/
python/ubuntu/debian map to the host's tools, ``python`` to ``sys.executable``, and
``argoproj/argosay:v2`` without a command to a built-in shim). Steps, DAGs, parameters,
artifacts, retries, timeouts, exit handlers and memoization follow Argo's semantics.

Persisted layout, one folder per run (``<workdir>/<workflow-name>/``)::

    workflow.json     manifest + Argo-shaped ``status``; rewritten atomically (temp + os.replace)
                      at most every ``flush_interval`` seconds while nodes change, and at the end.
                      metadata.annotations carry kiln.dev/runner-pid and kiln.dev/run-hash.
    nodes.jsonl       journal of node records since that snapshot, one JSON object (a full
                      status node, as in ``status.nodes``) per line, appended with one write(2)
                      on an O_APPEND fd whenever a node reaches a final phase, before anything
                      that depends on it starts; removed once the final workflow.json is written
    logs/<node>.log   stdout+stderr of one pod node
    artifacts/<node>/<artifact-name>   output artifacts (file or folder, stored as is)
    tmp/<node>/       a pod's sandbox: cwd, script file, and the host paths its container
                      paths (/tmp/out.txt ...) are rewritten to, so parallel pods never collide
    stop              a stop request (written by ``stop()`` from any process)

Memoization cache: ``<workdir>/../cache/<configmap>/<sha256 of key>.json`` =
``{"key", "cacheName", "nodeID", "outputs", "createdAt"}``.

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

Stop requests go through the ``stop`` file, polled every 0.1 s by the run's housekeeper, not a
signal: the runner is often embedded in a bigger process (the controller) that a stray signal
would kill.
"""

from __future__ import annotations

import collections
import copy
import datetime as _dt
import functools
import hashlib
import heapq
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kiln._util.proc import pid_alive as _pid_alive
from kiln.errors import WorkflowError
from kiln.runners import _expr, _slots
from kiln.runners._template import UnresolvedTag, render, render_obj
from kiln.runners.base import Runner, Workflow

DONE = {"Succeeded", "Failed", "Error", "Skipped", "Omitted"}
FAILED = {"Failed", "Error"}

# image (without registry/tag) -> how a step with that image runs on the host
HOST_IMAGES: dict[str, str] = {
    "busybox": "host tools", "alpine": "host tools", "bash": "host tools", "ubuntu": "host tools",
    "debian": "host tools", "python": "host python", "argoproj/argosay": "argosay shim",
}

# how template kinds are run; anything else is reported with this list
TEMPLATE_KINDS = ("container", "script", "steps", "dag")
_UNSUPPORTED_KINDS = ("resource", "suspend", "containerSet", "data", "http", "plugin")

_ARGOSAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_argosay.py")

_SITECUSTOMIZE = '''\
# written by kiln's local runner: seed `random` so examples that flip coins are reproducible
import os, random
_seed = os.environ.get("KILN_RANDOM_SEED")
if _seed:
    random.seed(_seed)
'''

_ENV_PASSTHROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM",
                    "SHELL", "VIRTUAL_ENV", "PYTHONPATH", "SYSTEMROOT")


_NOW_CACHE: tuple[int, str] = (-1, "")


def _now() -> str:
    """UTC now as Argo writes it (whole seconds); formatted once per second, it is on every node."""
    global _NOW_CACHE
    sec = int(time.time())
    cached = _NOW_CACHE
    if cached[0] != sec:
        cached = _NOW_CACHE = (sec, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec)))
    return cached[1]


@functools.lru_cache(maxsize=8192)  # a node's id and its pod name hash the same name
def fnv32a(s: str) -> int:
    h = 0x811C9DC5
    for b in s.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def parse_duration(value: Any, field: str = "duration") -> float:
    """Seconds from an Argo duration: ``"10"``, ``10``, ``"1m30s"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise WorkflowError(f"invalid {field} {value!r}", hint="use seconds or a duration like 30s, 5m, 1h")
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, u in parts)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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


def _item_label(item: Any) -> str:
    if isinstance(item, dict):
        return ",".join(f"{k}:{_expr.format_value(item[k])}" for k in sorted(item))
    return _expr.format_value(item)


def _image_base(image: str) -> str:
    name = image.split("@")[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    for prefix in ("docker.io/library/", "docker.io/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


# composite/retry fields rendered non-strictly: their tags may name steps that have not run yet
_LATE_KEYS = frozenset(("steps", "dag", "retryStrategy", "memoize"))


def _has_tags(obj: Any) -> bool:
    if isinstance(obj, str):
        return "{{" in obj
    if isinstance(obj, dict):
        return any(_has_tags(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_tags(v) for v in obj)
    return False


class _Stopped(Exception):
    pass


# --------------------------------------------------------------------------- validation

_DEP_TOKEN = re.compile(r"\s*(&&|\|\||!|\(|\)|[A-Za-z0-9_][A-Za-z0-9_\-]*(?:\.[A-Za-z]+)?)")
_DEP_RESULTS = {"Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned", "Completed",
                "AnySucceeded", "AllFailed"}


def parse_depends(text: str, task_names: set[str], where: str) -> list[tuple[str, str, str]]:
    """Tokens of a ``depends`` expression: ('op', '&&', '') or ('ref', task, result)."""
    toks = _depends_tokens(text.strip())
    if isinstance(toks, str):
        raise WorkflowError(f"{where}: cannot parse depends {text.strip()!r} at {toks!r}",
                            hint="use task names with .Succeeded/.Failed/... joined by && || ! and ()")
    for kind, name, result in toks:
        if kind != "ref":
            continue
        if name not in task_names:
            # a task name may itself contain a dot-less suffix; report the unknown one
            raise WorkflowError(f"{where}: depends refers to unknown task {name!r}",
                                hint=f"tasks in this DAG: {', '.join(sorted(task_names))}")
        if result and result not in _DEP_RESULTS:
            raise WorkflowError(f"{where}: unknown task result {result!r} in depends {text!r}",
                                hint=f"valid: {', '.join(sorted(_DEP_RESULTS))}")
    return list(toks)


@functools.lru_cache(maxsize=4096)
def _depends_tokens(text: str) -> tuple[tuple[str, str, str], ...] | str:
    """The tokens of ``text``, or the unparsable rest of it. Cached: validation and the run
    both parse every task's depends, and wide DAGs repeat the same few shapes."""
    out: list[tuple[str, str, str]] = []
    pos = 0
    while pos < len(text):
        m = _DEP_TOKEN.match(text, pos)
        if not m:
            return text[pos:]
        tok = m.group(1)
        pos = m.end()
        if tok in ("&&", "||", "!", "(", ")"):
            out.append(("op", tok, ""))
            continue
        name, _, result = tok.partition(".")
        out.append(("ref", name, result))
    return tuple(out)


def _check_expr_tags(obj: Any, where: str) -> None:
    if isinstance(obj, str):
        i = obj.find("{{")
        while i >= 0:
            j = obj.find("}}", i)
            body = obj[i + 2:j].strip() if j > 0 else ""
            if body.startswith("="):
                from kiln.runners._template import _find_close
                k = _find_close(obj, i + 2)
                try:
                    _expr.check(obj[i + 2:k].strip()[1:].strip() if k > 0 else body[1:])
                except _expr.ExprError as exc:
                    raise WorkflowError(f"{where}: bad expression: {exc}") from exc
            i = obj.find("{{", i + 2)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_expr_tags(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for n, v in enumerate(obj):
            _check_expr_tags(v, f"{where}[{n}]")


def validate(manifest: Workflow) -> None:
    """Reject manifests this runner cannot run, naming the template and field."""
    if not isinstance(manifest, dict) or manifest.get("kind") != "Workflow":
        raise WorkflowError(f"not a Workflow manifest (kind {manifest.get('kind') if isinstance(manifest, dict) else type(manifest).__name__!r})",
                            hint="pass an argoproj.io/v1alpha1 Workflow")
    spec = manifest.get("spec") or {}
    if spec.get("workflowTemplateRef"):
        raise WorkflowError("spec.workflowTemplateRef is not supported by the local runner",
                            hint="inline the WorkflowTemplate's templates into the Workflow")
    templates = spec.get("templates") or []
    names: dict[str, dict] = {}
    for n, t in enumerate(templates):
        name = t.get("name")
        if not name:
            raise WorkflowError(f"spec.templates[{n}] has no name")
        if name in names:
            raise WorkflowError(f"template {name!r} is defined twice in spec.templates")
        names[name] = t
    entry = spec.get("entrypoint")
    if not entry:
        raise WorkflowError("spec.entrypoint is missing", hint="name the template to run first")
    valid = ", ".join(sorted(names)) or "(none)"

    def ref(tname: Any, where: str) -> None:
        if tname not in names:
            raise WorkflowError(f"{where} refers to unknown template {tname!r}", hint=f"templates: {valid}")

    ref(entry, "spec.entrypoint")
    if spec.get("onExit"):
        ref(spec["onExit"], "spec.onExit")
    for t in templates:
        where = f"template {t['name']!r}"
        kinds = [k for k in TEMPLATE_KINDS if t.get(k) is not None]
        bad = [k for k in _UNSUPPORTED_KINDS if t.get(k) is not None]
        if bad:
            raise WorkflowError(f"{where}: {bad[0]} templates are not supported by the local runner",
                                hint=f"supported kinds: {', '.join(TEMPLATE_KINDS)}")
        if len(kinds) != 1:
            raise WorkflowError(f"{where} must have exactly one of {', '.join(TEMPLATE_KINDS)} (has {kinds or 'none'})")

        def step_refs(s: dict, swhere: str) -> None:
            if s.get("templateRef"):
                raise WorkflowError(f"{swhere}: templateRef is not supported by the local runner",
                                    hint="inline the referenced template")
            if s.get("inline"):
                raise WorkflowError(f"{swhere}: inline templates are not supported by the local runner")
            ref(s.get("template"), f"{swhere}.template")
            for hname, hook in (s.get("hooks") or {}).items():
                ref(hook.get("template"), f"{swhere}.hooks.{hname}.template")
            if s.get("onExit"):
                ref(s["onExit"], f"{swhere}.onExit")

        if t.get("steps") is not None:
            for gi, group in enumerate(t["steps"]):
                for si, s in enumerate(group or []):
                    step_refs(s, f"{where} steps[{gi}][{si}] ({s.get('name')!r})")
        if t.get("dag") is not None:
            tasks = t["dag"].get("tasks") or []
            tnames = {x.get("name") for x in tasks}
            for task in tasks:
                twhere = f"{where} dag task {task.get('name')!r}"
                step_refs(task, twhere)
                if task.get("depends"):
                    parse_depends(task["depends"], tnames, twhere)
                for d in task.get("dependencies") or []:
                    if d not in tnames:
                        raise WorkflowError(f"{twhere}: dependencies names unknown task {d!r}",
                                            hint=f"tasks: {', '.join(sorted(tnames))}")
            for tg in (t["dag"].get("target") or "").split():
                if tg not in tnames:
                    raise WorkflowError(f"{where}: dag.target names unknown task {tg!r}")
        rs = t.get("retryStrategy") or {}
        if rs.get("expression") and "{{" not in rs["expression"]:
            try:
                _expr.check(rs["expression"])
            except _expr.ExprError as exc:
                raise WorkflowError(f"{where}.retryStrategy.expression: {exc}") from exc
        if rs.get("retryPolicy") not in (None, "Always", "OnFailure", "OnError", "OnTransientError"):
            raise WorkflowError(f"{where}.retryStrategy.retryPolicy {rs['retryPolicy']!r} is invalid",
                                hint="valid: Always, OnFailure, OnError, OnTransientError")
        # C-speed screen first: walking a 100-task DAG building field paths costs ~0.2 ms a submit
        if "{{" in json.dumps(t, default=str):
            _check_expr_tags(t, where)
        c = t.get("container") or t.get("script")
        if c is not None and not c.get("command") and t.get("script") is None:
            base = _image_base(c.get("image") or "")
            if base != "argoproj/argosay":
                raise WorkflowError(f"{where}: container has no command and image {c.get('image')!r} cannot be run on the host",
                                    hint="give container.command (images are not run by the local runner)")


# --------------------------------------------------------------------------- one run


class _Run:
    """The state of one workflow run while this process executes it."""

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
        self.plans: dict[str, list[tuple[str, Any, bool]]] = {}
        self.exe_cache: dict[tuple[str, str], str] = {}
        self.prev_nodes: dict[str, dict] = (prev or {}).get("status", {}).get("nodes", {}) or {}
        self.lock = threading.RLock()
        self.nodes: dict[str, dict] = {}
        self.status: dict[str, Any] = {"phase": "Pending", "startedAt": _now(), "finishedAt": None,
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
        par = self.spec.get("parallelism")
        self.wf_sem = _Tokens(int(par)) if par else None
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
            (self.site_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        self.hostname = socket.gethostname()
        self.global_outputs: dict[str, str] = {}
        # a fresh journal, carrying the Succeeded nodes of the run being resumed (see module doc)
        carried = "".join(json.dumps(n, separators=(",", ":")) + "\n"
                          for n in self.prev_nodes.values() if n.get("phase") == "Succeeded")
        self.journal = self.dir / JOURNAL
        if carried:
            _atomic_write(self.journal, carried)
            self.journal_fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        else:  # nothing to lose: no temp file and rename needed
            self.journal_fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.journal_lock = threading.Lock()
        self.pods_fd = os.open(self.dir / PODS, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
        data = (line + "\n").encode()
        with self.journal_lock:  # one write(2) per line; the lock only matters after a short write
            while data:
                data = data[os.write(self.journal_fd, data):]

    def new_node(self, name: str, display: str, ntype: str, tmpl_name: str | None, boundary: str | None,
                 parent: str | None, phase: str = "Running", message: str = "", outputs: dict | None = None,
                 extra: dict | None = None) -> dict:
        nid = self.node_id(name)
        node: dict[str, Any] = {"id": nid, "name": name, "displayName": display, "type": ntype,
                                "templateName": tmpl_name, "phase": phase, "message": message,
                                "startedAt": _now(), "finishedAt": None, "children": []}
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
            node["finishedAt"] = _now()
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
        _atomic_write(self.dir / "workflow.json", text)
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
                _kill_group(p)

    def cancel(self, message: str) -> None:
        self.stop_message = message
        self.stop_event.set()
        with self.lock:
            procs = [p for p, _ in self.procs.values()]
        for p in procs:
            _kill_group(p)

    def check_stop(self) -> None:
        if self.stop_event.is_set():
            raise _Stopped(self.stop_message)

    # ------------------------------------------------------------------ run
    def execute(self) -> None:
        self.status["phase"] = "Running"
        self.touch()
        keeper_done = threading.Event()

        def keeper() -> None:
            try:
                self.housekeeper()
            finally:
                keeper_done.set()

        _WORKERS.submit(keeper)  # pooled: starting threads per run costs milliseconds under load
        try:
            root = self.run_template(self.name, self.name, self.spec["entrypoint"],
                                     self.spec.get("arguments") or {}, None, None, dict(self.globals))
            phase = root["phase"] if root["phase"] in FAILED else "Succeeded"
            message = root.get("message", "") if phase != "Succeeded" else ""
            if self.stop_event.is_set():
                phase, message = "Failed", self.stop_message
            on_exit = self.spec.get("onExit")
            if on_exit and not self.stop_event.is_set():
                scope = dict(self.globals)
                scope["workflow.status"] = phase
                scope["workflow.failures"] = self._failures()
                scope["workflow.duration"] = f"{time.monotonic() - self.t0:.6f}"
                exit_node = self.run_template(f"{self.name}.onExit", f"{self.name}.onExit", on_exit, {},
                                              None, None, scope)
                if exit_node["phase"] in FAILED and phase == "Succeeded":
                    phase, message = exit_node["phase"], exit_node.get("message", "") or "exit handler failed"
            if self.stop_event.is_set():
                phase, message = "Failed", self.stop_message
        except Exception as exc:  # an internal error must still leave a finished, readable run
            phase, message = "Error", f"{type(exc).__name__}: {exc}"
        with self.lock:
            for n in self.nodes.values():
                if n["phase"] in ("Running", "Pending"):
                    n["phase"] = "Failed"
                    n["message"] = n.get("message") or self.stop_message or message
                    n["finishedAt"] = _now()
            self.status["phase"] = phase
            self.status["message"] = message
            self.status["finishedAt"] = _now()
            if self.global_outputs:
                self.status["outputs"] = {"parameters": [{"name": k, "value": v} for k, v in self.global_outputs.items()]}
        self.done.set()
        self.dirty.set()
        keeper_done.wait()
        self.flush()
        # the final snapshot holds everything the journal did
        os.close(self.journal_fd)
        os.close(self.pods_fd)
        (self.dir / PODS).unlink(missing_ok=True)
        try:
            self.journal.unlink()
        except OSError:
            pass

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

    # ------------------------------------------------------------------ templates
    def run_template(self, name: str, display: str, tmpl_name: str, arguments: dict, boundary: str | None,
                     parent: str | None, scope: dict[str, Any], retry_index: int | None = None) -> dict:
        """Run one template invocation as node ``name``; returns its (finished) node."""
        nid = self.node_id(name)
        reused = self.reuse(nid, parent)
        if reused is not None:
            return reused
        tmpl = self.templates[tmpl_name]
        if self.stop_event.is_set():
            return self.new_node(name, display, "Skipped", tmpl_name, boundary, parent, "Failed", self.stop_message)
        kind = next(k for k in TEMPLATE_KINDS if tmpl.get(k) is not None)
        ntype = {"container": "Pod", "script": "Pod", "steps": "Steps", "dag": "DAG"}[kind]
        try:
            local = self.bind_inputs(tmpl, arguments, scope)
            # Argo's pod naming (v2): <workflow>-<template>-<fnv32a(node name)>
            local["pod.name"] = f"{self.name}-{tmpl_name}-{fnv32a(name)}"
            strict = kind in ("container", "script")
            tmpl_r: dict[str, Any] = {}
            for k, v, tagged in self.plan(tmpl_name):
                if not tagged:  # nothing to substitute: share the manifest's value, never mutated
                    tmpl_r[k] = v
                elif k in _LATE_KEYS:  # rendered again per step/attempt, where more names exist
                    tmpl_r[k] = render_obj(v, local, strict=False)
                else:
                    tmpl_r[k] = render_obj(v, local, strict=strict)
            tmpl_r["outputs"] = tmpl.get("outputs") or {}
        except (UnresolvedTag, WorkflowError, _expr.ExprError) as exc:
            return self.new_node(name, display, ntype, tmpl_name, boundary, parent, "Error", str(exc))
        memo = tmpl_r.get("memoize")
        if memo:
            hit = self.memo_lookup(memo, local)
            if hit is not None:
                node = self.new_node(name, display, ntype, tmpl_name, boundary, parent, "Succeeded", outputs=hit["outputs"],
                                     extra={"memoizationStatus": {"hit": True, "key": hit["key"], "cacheName": hit["cacheName"]}})
                self._publish_globals(node)
                return node
        rs = tmpl_r.get("retryStrategy")
        if rs:
            node = self.run_retry(name, display, tmpl_name, tmpl_r, kind, rs, boundary, parent, local)
        else:
            node = self.new_node(name, display, ntype, tmpl_name, boundary, parent)
            self.run_body(node, tmpl_r, kind, local)
        if memo:
            node["memoizationStatus"] = {"hit": False, "key": str(memo.get("key", "")),
                                         "cacheName": ((memo.get("cache") or {}).get("configMap") or {}).get("name", "")}
            self.record(node)
            if node["phase"] == "Succeeded":
                self.memo_store(memo, node)
        self._publish_globals(node)
        return node

    def plan(self, tmpl_name: str) -> list[tuple[str, Any, bool]]:
        """A template's fields as (key, value, has ``{{`` tags), worked out once per template."""
        plan = self.plans.get(tmpl_name)
        if plan is None:
            plan = [(k, v, _has_tags(v)) for k, v in self.templates[tmpl_name].items()
                    if k != "outputs" and v is not None]
            self.plans[tmpl_name] = plan
        return plan

    def which(self, cmd: str, path: str) -> str:
        """``cmd`` resolved on ``path`` once per run: given a bare name, Popen joins it with every
        PATH entry in Python and the child tries execve on each in turn, for every pod. Names
        not found, or found through a relative PATH entry, are left to the child as before."""
        key = (cmd, path)
        found = self.exe_cache.get(key)
        if found is None:
            found = cmd
            if os.sep not in cmd:
                hit = shutil.which(cmd, path=path)
                if hit and os.path.isabs(hit):
                    found = hit
            self.exe_cache[key] = found
        return found

    def bind_inputs(self, tmpl: dict, arguments: dict, scope: dict[str, Any]) -> dict[str, Any]:
        local = dict(self.globals)
        for k in ("workflow.status", "workflow.failures", "workflow.duration"):
            if k in scope:
                local[k] = scope[k]
        args = {p["name"]: p for p in (arguments or {}).get("parameters") or []}
        inputs = tmpl.get("inputs") or {}
        plist = []
        for p in inputs.get("parameters") or []:
            a = args.get(p["name"])
            if a is not None and ("value" in a or "valueFrom" in a):
                value = a.get("value")
                if value is None and (a.get("valueFrom") or {}).get("default") is not None:
                    value = a["valueFrom"]["default"]
            elif "value" in p:
                value = p["value"]
            elif "default" in p:
                value = p["default"]
            else:
                raise WorkflowError(f"template {tmpl['name']!r}: input parameter {p['name']!r} was not supplied",
                                    hint="pass it in the step's arguments.parameters or give it a default")
            value = _expr.format_value(value) if not isinstance(value, str) else value
            local[f"inputs.parameters.{p['name']}"] = value
            plist.append({"name": p["name"], "value": value})
        local["inputs.parameters"] = _expr.to_json(plist) if plist else "[]"
        arts = {a["name"]: a for a in (arguments or {}).get("artifacts") or []}
        for a in inputs.get("artifacts") or []:
            src = arts.get(a["name"])
            resolved = dict(a)
            if src is not None:
                resolved.update({k: v for k, v in src.items() if k not in ("name", "path")})
            local[f"inputs.artifacts.{a['name']}"] = resolved
            if a.get("path"):
                local[f"inputs.artifacts.{a['name']}.path"] = a["path"]
        for p in (tmpl.get("outputs") or {}).get("parameters") or []:
            if (p.get("valueFrom") or {}).get("path"):
                local[f"outputs.parameters.{p['name']}.path"] = p["valueFrom"]["path"]
        for a in (tmpl.get("outputs") or {}).get("artifacts") or []:
            if a.get("path"):
                local[f"outputs.artifacts.{a['name']}.path"] = a["path"]
        return local

    def run_body(self, node: dict, tmpl: dict, kind: str, local: dict[str, Any]) -> None:
        try:
            if kind in ("container", "script"):
                self.run_pod(node, tmpl, kind, local)
            elif kind == "steps":
                self.run_steps(node, tmpl, local)
            else:
                self.run_dag(node, tmpl, local)
        except _Stopped as exc:
            self.finish(node, "Failed", str(exc))
        except (UnresolvedTag, WorkflowError, _expr.ExprError) as exc:
            self.finish(node, "Error", str(exc))

    def run_retry(self, name: str, display: str, tmpl_name: str, tmpl: dict, kind: str, rs: dict,
                  boundary: str | None, parent: str | None, local: dict[str, Any]) -> dict:
        node = self.new_node(name, display, "Retry", tmpl_name, boundary, parent)
        limit = int(rs["limit"]) if rs.get("limit") not in (None, "") else None
        policy = rs.get("retryPolicy") or ("Always" if rs.get("expression") else "OnFailure")
        backoff = rs.get("backoff") or {}
        ntype = {"container": "Pod", "script": "Pod", "steps": "Steps", "dag": "DAG"}[kind]
        start = time.monotonic()
        attempt = 0
        while True:
            a_name = f"{name}({attempt})"
            reused = self.reuse(self.node_id(a_name), node["id"])
            if reused is not None:
                child = reused
            else:
                child = self.new_node(a_name, f"{display}({attempt})", ntype, tmpl_name, boundary, node["id"])
                alocal = dict(local)
                alocal["retries"] = str(attempt)
                self.run_body(child, tmpl, kind, alocal)
            phase = child["phase"]
            if phase == "Succeeded" or self.stop_event.is_set():
                break
            if limit is not None and attempt >= limit:
                break
            if policy == "OnFailure" and phase != "Failed":
                break
            if policy in ("OnError", "OnTransientError") and phase != "Error":
                break
            if rs.get("expression"):
                outs = child.get("outputs") or {}
                t0 = _dt.datetime.strptime(child["startedAt"], "%Y-%m-%dT%H:%M:%SZ")
                t1 = _dt.datetime.strptime(child["finishedAt"] or _now(), "%Y-%m-%dT%H:%M:%SZ")
                env = {"lastRetry": {"exitCode": outs.get("exitCode", "-1"), "status": phase,
                                     "duration": str(int((t1 - t0).total_seconds())), "message": child.get("message", "")}}
                try:
                    if not _expr.evaluate(rs["expression"], env):
                        break
                except _expr.ExprError as exc:
                    self.finish(node, "Error", f"retryStrategy.expression: {exc}")
                    return node
            if backoff.get("duration"):
                delay = parse_duration(backoff["duration"], "retryStrategy.backoff.duration")
                delay *= float(backoff.get("factor") or 2) ** attempt if backoff.get("factor") else 1
                if backoff.get("cap"):
                    delay = min(delay, parse_duration(backoff["cap"], "retryStrategy.backoff.cap"))
                if backoff.get("maxDuration"):
                    max_d = parse_duration(backoff["maxDuration"], "retryStrategy.backoff.maxDuration")
                    if time.monotonic() - start + delay > max_d:
                        self.finish(node, phase, f"{child.get('message', '')} (backoff.maxDuration exceeded)".strip(),
                                    child.get("outputs"))
                        return node
                if self.stop_event.wait(delay):
                    break
            attempt += 1
        self.finish(node, child["phase"], child.get("message", ""), child.get("outputs"))
        return node

    # ------------------------------------------------------------------ pods
    def run_pod(self, node: dict, tmpl: dict, kind: str, local: dict[str, Any]) -> None:
        c = tmpl[kind]
        nid = node["id"]
        sandbox = f"{self.dir_s}/tmp/{nid}"  # str, not Path: pathlib costs microseconds per join
        outputs_spec = tmpl.get("outputs") or {}
        # container paths -> private host paths (longest first so /tmp/a/b wins over /tmp/a)
        cpaths: list[str] = []
        for p in outputs_spec.get("parameters") or []:
            if (p.get("valueFrom") or {}).get("path"):
                cpaths.append(render(p["valueFrom"]["path"], local))
        for a in outputs_spec.get("artifacts") or []:
            if a.get("path"):
                cpaths.append(render(a["path"], local))
        for a in (tmpl.get("inputs") or {}).get("artifacts") or []:
            if a.get("path"):
                cpaths.append(a["path"])
        pmap = {cp: f"{sandbox}/fs/{cp.lstrip('/')}" for cp in cpaths if cp.startswith("/")}
        # a private folder only for pods that write files or scripts: mkdir is not free
        if pmap or cpaths or kind == "script":
            if os.path.exists(sandbox):
                shutil.rmtree(sandbox, ignore_errors=True)
            os.makedirs(sandbox)
            workdir = sandbox
        else:
            workdir = f"{self.dir_s}/tmp"
        for cp, hp in pmap.items():
            os.makedirs(os.path.dirname(hp), exist_ok=True)
        rx = (re.compile(r"(?<![\w.])(" + "|".join(re.escape(p) for p in sorted(pmap, key=len, reverse=True)) + r")(?![\w.\-])")
              if pmap else None)

        def remap(s: str) -> str:
            return rx.sub(lambda m: pmap[m.group(1)], s) if rx else s

        def host_path(cp: str) -> Path:
            return Path(pmap[cp]) if cp in pmap else Path(workdir, cp)  # an absolute cp stays as is

        # input artifacts onto their (mapped) paths
        for a in (tmpl.get("inputs") or {}).get("artifacts") or []:
            art = local.get(f"inputs.artifacts.{a['name']}") or a
            dest = host_path(a["path"]) if a.get("path") else None
            if dest is None:
                continue
            if (art.get("raw") or {}).get("data") is not None:
                dest.write_text(art["raw"]["data"])
            elif (art.get("local") or {}).get("path"):
                src = Path(art["local"]["path"])
                if src.is_dir():
                    shutil.copytree(src, dest, dirs_exist_ok=True)
                else:
                    shutil.copyfile(src, dest)
            elif not a.get("optional"):
                raise WorkflowError(f"input artifact {a['name']!r} of template {tmpl['name']!r} has no source",
                                    hint="pass it with arguments.artifacts (from/raw) in the calling step")
        command = [remap(str(x)) for x in c.get("command") or []]
        args = [remap(str(x)) for x in c.get("args") or []]
        if kind == "script":
            script = f"{sandbox}/script"
            with open(script, "w") as f:
                f.write(remap(c.get("source") or ""))
            argv = (command or ["sh"]) + [script] + args
        elif command:
            argv = command + args
        else:
            if _image_base(c.get("image") or "") != "argoproj/argosay":
                raise WorkflowError(f"template {tmpl['name']!r}: no command and image {c.get('image')!r} cannot run on the host",
                                    hint="give container.command")
            argv = [sys.executable, _ARGOSAY] + args
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        elif argv[0] == "kiln":  # kiln's own image: run this installation's kiln
            argv = [sys.executable, "-m", "kiln.cli", *argv[1:]]
        env = dict(self.base_env)
        env["TMPDIR"] = workdir
        if env.get("KILN_RANDOM_SEED"):
            env["KILN_RANDOM_SEED"] = f"{env['KILN_RANDOM_SEED']}/{node['name']}"
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = remap(str(e["value"]))
            elif e.get("valueFrom"):
                raise WorkflowError(f"template {tmpl['name']!r}: env {e['name']!r} uses valueFrom, which the local runner cannot resolve",
                                    hint="pass the value through KILN_* environment variables or a parameter")
        cwd = c.get("workingDir")
        cwd = cwd if cwd and os.path.isdir(cwd) else workdir
        executable = self.which(argv[0], env.get("PATH", os.defpath))
        deadline_s = None
        for key in ("activeDeadlineSeconds", "timeout"):
            if tmpl.get(key) not in (None, ""):
                d = parse_duration(tmpl[key], f"template {tmpl['name']!r} {key}")
                deadline_s = d if deadline_s is None else min(deadline_s, d)
        log_path = f"{self.dir_s}/logs/{nid}.log"
        wf_held = placed = False
        # a DAG task started through the gate already holds its place (see _PodGate)
        gated, _HANDOFF.place = _HANDOFF.place, False
        slot = -1
        try:
            # spec.parallelism, then this runner's own cap (a thread that waited inside the slot
            # pool instead would be woken twice)
            if self.wf_sem is not None:
                while not self.wf_sem.acquire(timeout=0.2):
                    self.check_stop()
                wf_held = True
            if not gated:
                self.runner.gate.acquire(self.check_stop)
            placed = True
            # the machine-wide slot, shared with other kiln processes, held while the process runs;
            # it also caps this runner's own pods at max_concurrency (slots 0..N-1 only)
            slot = self.runner.slots.acquire(self.runner.max_concurrency, self.check_stop)
            self.check_stop()
            out_chunks: list[bytes] = []
            log_fd = -1  # the log file is created on the first byte: most `true`s print nothing
            try:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)  # the child's dup2 drops CLOEXEC on fds 1 and 2
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                try:
                    proc = subprocess.Popen(argv, executable=executable, cwd=cwd, env=env, stdin=_devnull(), stdout=out_w, stderr=err_w,
                                            start_new_session=True)
                except OSError as exc:
                    for fd in (out_r, err_r):
                        os.close(fd)
                    self.finish(node, "Error", f"cannot start {argv[0]!r}: {exc.strerror}")
                    return
                except BaseException:
                    for fd in (out_r, err_r):
                        os.close(fd)
                    raise
                finally:
                    os.close(out_w)
                    os.close(err_w)
                os.write(self.pods_fd, b'{"pid":%d}\n' % proc.pid)
                dl = time.monotonic() + deadline_s if deadline_s is not None else None
                with self.lock:
                    self.procs[nid] = (proc, dl)
                    node["hostNodeName"] = self.hostname
                try:
                    poller = select.poll()
                    poller.register(out_r, select.POLLIN)
                    poller.register(err_r, select.POLLIN)
                    open_fds = 2
                    while open_fds:
                        for fd, ev in poller.poll():
                            # a pipe whose writer closed with nothing left reports POLLHUP without
                            # POLLIN: most pods print nothing, so this saves a read per pipe
                            chunk = os.read(fd, 65536) if ev & select.POLLIN else b""
                            if not chunk:
                                poller.unregister(fd)
                                open_fds -= 1
                                continue
                            if fd == out_r:
                                out_chunks.append(chunk)
                            if log_fd < 0:
                                log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
                            os.write(log_fd, chunk)
                finally:
                    os.close(out_r)
                    os.close(err_r)
                rc = proc.wait()
            finally:
                if log_fd >= 0:
                    os.close(log_fd)
                with self.lock:
                    self.procs.pop(nid, None)
        finally:
            if slot >= 0:
                self.runner.slots.release(slot)
            if placed or gated:
                # the freed place may go to a waiting DAG task: a gated pod's thread runs it next
                _hand(self.runner.gate.release(), inline=gated)
            if wf_held:
                self.wf_sem.release()
        stdout = b"".join(out_chunks).decode(errors="replace")
        if rc < 0:  # killed by a signal: report it as a shell would (143 for SIGTERM)
            rc = 128 - rc
        outputs: dict[str, Any] = {"exitCode": str(rc)}
        outputs["result"] = stdout.strip()
        if nid in self.timed_out:
            phase, msg = "Failed", "Pod was active on the node longer than the specified deadline"
        elif self.stop_event.is_set():
            phase, msg = "Failed", self.stop_message
        elif rc != 0:
            phase, msg = "Failed", f"Error (exit code {rc})"
        else:
            phase, msg = "Succeeded", ""
        perr = self.collect_outputs(node, tmpl, outputs, local, host_path, phase == "Succeeded")
        if perr and phase == "Succeeded":
            phase, msg = "Error", perr
        self.finish(node, phase, msg, outputs)

    def collect_outputs(self, node: dict, tmpl: dict, outputs: dict, local: dict[str, Any],
                        host_path: Callable[[str], Path], strict: bool) -> str:
        spec = tmpl.get("outputs") or {}
        params = []
        err = ""
        for p in spec.get("parameters") or []:
            vf = p.get("valueFrom") or {}
            value = None
            if "value" in p:
                value = render(str(p["value"]), local)
            elif vf.get("path"):
                hp = host_path(render(vf["path"], local))
                try:
                    value = hp.read_text().strip()
                except OSError:
                    value = None
            elif vf.get("expression"):
                env_scope = dict(local)
                env_scope["outputs.result"] = outputs.get("result", "")
                env_scope["exitCode"] = outputs.get("exitCode", "")
                from kiln.runners._template import nested_env
                try:
                    value = _expr.format_value(_expr.evaluate(vf["expression"], nested_env(env_scope)))
                except _expr.ExprError as exc:
                    err = err or f"output parameter {p['name']!r}: {exc}"
            if value is None and vf.get("default") is not None:
                value = str(vf["default"])
            if value is None:
                if vf.get("path") and not err:
                    err = f"output parameter {p['name']!r}: {vf['path']} was not written and there is no valueFrom.default"
                continue
            entry = {"name": p["name"], "value": value}
            if p.get("globalName"):
                entry["globalName"] = p["globalName"]
            params.append(entry)
        if params:
            outputs["parameters"] = params
        arts = []
        for a in spec.get("artifacts") or []:
            if not a.get("path"):
                continue
            src = host_path(render(a["path"], local))
            dest = self.dir / "artifacts" / node["id"] / a["name"]
            if src.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, dest, dirs_exist_ok=True)
                else:
                    shutil.copyfile(src, dest)
                entry = {"name": a["name"], "path": a["path"], "local": {"path": str(dest)}}
                if a.get("globalName"):
                    entry["globalName"] = a["globalName"]
                arts.append(entry)
            elif not a.get("optional") and strict and not err:
                err = f"output artifact {a['name']!r}: {a['path']} was not written"
        if arts:
            outputs["artifacts"] = arts
        return err

    # ------------------------------------------------------------------ composite helpers
    def expand(self, step: dict, scope: dict[str, Any], where: str) -> list[Any] | None:
        if step.get("withItems") is not None:
            return list(step["withItems"])
        if step.get("withParam") is not None:
            raw = render(step["withParam"], scope) if isinstance(step["withParam"], str) else step["withParam"]
            if isinstance(raw, list):
                return raw
            try:
                items = json.loads(raw)
            except ValueError as exc:
                raise WorkflowError(f"{where}: withParam is not a JSON list: {raw[:200]!r}") from exc
            if not isinstance(items, list):
                raise WorkflowError(f"{where}: withParam is not a JSON list: {raw[:200]!r}")
            return items
        seq = step.get("withSequence")
        if seq is not None:
            seq = render_obj(seq, scope)
            start = int(seq.get("start", 0))
            if seq.get("count") not in (None, ""):
                end = start + int(seq["count"]) - 1
            else:
                end = int(seq.get("end", start))
            rng = range(start, end + 1) if end >= start else range(start, end - 1, -1)
            fmt = seq.get("format")
            return [(fmt % i) if fmt else str(i) for i in rng]
        return None

    def item_scope(self, scope: dict[str, Any], item: Any) -> dict[str, Any]:
        s = dict(scope)
        s["item"] = item if not isinstance(item, (dict, list)) else _expr.to_json(item)
        if isinstance(s["item"], (int, float, bool)):
            s["item"] = _expr.format_value(item)
        if isinstance(item, dict):
            for k, v in item.items():
                s[f"item.{k}"] = v if isinstance(v, str) else _expr.format_value(v)
        return s

    def resolve_args(self, step: dict, scope: dict[str, Any]) -> dict:
        args = step.get("arguments") or {}
        out: dict[str, Any] = {}
        if args.get("parameters"):
            out["parameters"] = [dict(p, **({"value": render(_expr.format_value(p["value"]) if not isinstance(p["value"], str) else p["value"], scope)} if "value" in p else {}))
                                 for p in args["parameters"]]
        arts = []
        for a in args.get("artifacts") or []:
            a2 = dict(a)
            if a.get("from"):
                ref = a["from"].strip()
                key = ref[2:-2].strip() if ref.startswith("{{") and ref.endswith("}}") else ref
                src = scope.get(key)
                if not isinstance(src, dict):
                    raise UnresolvedTag(key, f"artifact {a['name']!r}: failed to resolve {ref}")
                a2.pop("from")
                a2.update({k: v for k, v in src.items() if k not in ("name", "path")})
            arts.append(render_obj(a2, scope))
        if arts:
            out["artifacts"] = arts
        return out

    def when_ok(self, step: dict, scope: dict[str, Any]) -> tuple[bool, str]:
        cond = step.get("when")
        if cond is None or cond == "":
            return True, ""
        text = render(str(cond), scope)
        return _expr.evaluate_when(text), text

    def skip_node(self, name: str, display: str, tmpl_name: str, boundary: str, parent: str, phase: str, msg: str) -> dict:
        # Argo publishes valueFrom.default of a skipped producer so consumers can use it
        params = [{"name": p["name"], "value": str(p["valueFrom"]["default"])}
                  for p in (self.templates[tmpl_name].get("outputs") or {}).get("parameters") or []
                  if (p.get("valueFrom") or {}).get("default") is not None]
        return self.new_node(name, display, "Skipped", tmpl_name, boundary, parent, phase, msg,
                             outputs={"parameters": params} if params else None)

    def publish(self, scope: dict[str, Any], prefix: str, node: dict, children: list[dict] | None) -> None:
        """Make a finished step/task's results visible to later ones as ``prefix.*``."""
        scope[f"{prefix}.id"] = node["id"]
        scope[f"{prefix}.status"] = node["phase"]
        scope[f"{prefix}.startedAt"] = node["startedAt"]
        scope[f"{prefix}.finishedAt"] = node.get("finishedAt") or ""
        if children is not None:  # fanned out: aggregate as JSON lists
            plist, results, per_name = [], [], {}
            for ch in children:
                outs = ch.get("outputs") or {}
                if outs.get("parameters"):
                    plist.append({p["name"]: p["value"] for p in outs["parameters"]})
                    for p in outs["parameters"]:
                        per_name.setdefault(p["name"], []).append(p["value"])
                if "result" in outs:
                    try:
                        results.append(json.loads(outs["result"]))
                    except ValueError:
                        results.append(outs["result"])
            scope[f"{prefix}.outputs.parameters"] = _expr.to_json(plist)
            scope[f"{prefix}.outputs.result"] = _expr.to_json(results)
            for k, v in per_name.items():
                scope[f"{prefix}.outputs.parameters.{k}"] = _expr.to_json(v)
            return
        outs = node.get("outputs") or {}
        if "exitCode" in outs:
            scope[f"{prefix}.exitCode"] = outs["exitCode"]
        if "result" in outs:
            scope[f"{prefix}.outputs.result"] = outs["result"]
        for p in outs.get("parameters") or []:
            scope[f"{prefix}.outputs.parameters.{p['name']}"] = p["value"]
        for a in outs.get("artifacts") or []:
            scope[f"{prefix}.outputs.artifacts.{a['name']}"] = a

    def run_hook(self, step: dict, node: dict, boundary: str, scope: dict[str, Any]) -> None:
        hook = (step.get("hooks") or {}).get("exit") or ({"template": step["onExit"]} if step.get("onExit") else None)
        if not hook or node["phase"] not in DONE or node["type"] == "Skipped":
            return
        hscope = dict(scope)
        hscope["status"] = node["phase"]
        try:
            args = self.resolve_args(hook, hscope)
        except (UnresolvedTag, WorkflowError) as exc:
            self.new_node(f"{node['name']}.onExit", f"{node['displayName']}.onExit", "Skipped", hook["template"],
                          boundary, node["id"], "Error", str(exc))
            return
        self.run_template(f"{node['name']}.onExit", f"{node['displayName']}.onExit", hook["template"], args,
                          boundary, node["id"], hscope)

    def run_one(self, step: dict, name: str, display: str, boundary: str, parent: str, scope: dict[str, Any]) -> dict:
        """A step/task (or one fanned-out item of it): when, arguments, then the template."""
        try:
            ok, text = self.when_ok(step, scope)
        except (UnresolvedTag, _expr.ExprError) as exc:
            return self.new_node(name, display, "Skipped", step["template"], boundary, parent, "Error", f"when: {exc}")
        if not ok:
            return self.skip_node(name, display, step["template"], boundary, parent, "Skipped", f"when '{text}' evaluated false")
        try:
            args = self.resolve_args(step, scope)
        except (UnresolvedTag, WorkflowError) as exc:
            return self.new_node(name, display, "Skipped", step["template"], boundary, parent, "Error", str(exc))
        node = self.run_template(name, display, step["template"], args, boundary, parent, scope)
        if step.get("hooks") or step.get("onExit"):
            self.run_hook(step, node, boundary, self._with_self(scope, step["name"], node))
        return node

    def _with_self(self, scope: dict[str, Any], sname: str, node: dict) -> dict[str, Any]:
        s = dict(scope)
        self.publish(s, f"steps.{sname}", node, None)
        self.publish(s, f"tasks.{sname}", node, None)
        return s

    def fan_out(self, step: dict, name: str, display: str, boundary: str, parent: str, scope: dict[str, Any],
                items: list[Any], limit: int | None) -> list[dict]:
        results: list[dict | None] = [None] * len(items)
        sem = threading.Semaphore(limit) if limit else None

        def one(i: int, item: Any) -> None:
            if sem:
                sem.acquire()
            try:
                label = _item_label(item)
                results[i] = self.run_one(step, f"{name}({i}:{label})", f"{display}({i}:{label})", boundary, parent,
                                          self.item_scope(scope, item))
            finally:
                if sem:
                    sem.release()

        _run_parallel([lambda i=i, it=it: one(i, it) for i, it in enumerate(items)])
        return [r for r in results if r is not None]

    def output_params(self, node: dict, tmpl: dict, scope: dict[str, Any]) -> None:
        """Outputs of a steps/dag template: valueFrom.parameter / expression / artifacts from."""
        spec = tmpl.get("outputs") or {}
        params, arts = [], []
        for p in spec.get("parameters") or []:
            vf = p.get("valueFrom") or {}
            value = None
            try:
                if vf.get("parameter"):
                    value = render(vf["parameter"], scope)
                elif vf.get("expression"):
                    from kiln.runners._template import nested_env
                    value = _expr.format_value(_expr.evaluate(vf["expression"], nested_env(scope)))
                elif "value" in p:
                    value = render(str(p["value"]), scope)
            except (UnresolvedTag, _expr.ExprError):
                value = None
            if value is None and vf.get("default") is not None:
                value = str(vf["default"])
            if value is None:
                raise WorkflowError(f"template {tmpl['name']!r}: cannot resolve output parameter {p['name']!r}")
            entry = {"name": p["name"], "value": value}
            if p.get("globalName"):
                entry["globalName"] = p["globalName"]
            params.append(entry)
        for a in spec.get("artifacts") or []:
            if a.get("from"):
                key = a["from"].strip().strip("{}").strip()
                src = scope.get(key)
                if isinstance(src, dict):
                    arts.append(dict(src, name=a["name"]))
        if params or arts:
            node["outputs"] = {**({"parameters": params} if params else {}), **({"artifacts": arts} if arts else {})}

    # ------------------------------------------------------------------ steps
    def run_steps(self, node: dict, tmpl: dict, local: dict[str, Any]) -> None:
        scope = dict(local)
        limit = int(tmpl["parallelism"]) if tmpl.get("parallelism") else None
        for gi, group in enumerate(tmpl["steps"]):
            self.check_stop()
            gname = f"{node['name']}[{gi}]"
            gnode = self.reuse(self.node_id(gname), node["id"])
            if gnode is None:
                gnode = self.new_node(gname, f"[{gi}]", "StepGroup", None, node["id"], node["id"])
            outcome: dict[str, tuple[dict | None, list[dict] | None]] = {}

            def run_step(step: dict, gnode: dict = gnode) -> None:
                sname = f"{gnode['name']}.{step['name']}"
                items = self.expand(step, scope, f"template {tmpl['name']!r} step {step['name']!r}")
                if items is None:
                    outcome[step["name"]] = (self.run_one(step, sname, step["name"], node["id"], gnode["id"], scope), None)
                elif not items:
                    outcome[step["name"]] = (self.skip_node(sname, step["name"], step["template"], node["id"], gnode["id"],
                                                            "Skipped", "Skipped, empty params"), [])
                else:
                    outcome[step["name"]] = (None, self.fan_out(step, sname, step["name"], node["id"], gnode["id"], scope, items, limit))

            errors: list[str] = []

            def guarded(step: dict) -> None:
                try:
                    run_step(step)
                except (UnresolvedTag, WorkflowError, _expr.ExprError) as exc:
                    errors.append(str(exc))
                    outcome[step["name"]] = (self.new_node(f"{gnode['name']}.{step['name']}", step["name"], "Skipped",
                                                           step["template"], node["id"], gnode["id"], "Error", str(exc)), None)

            steps = list(group or [])
            if limit and len(steps) > 1:
                sem = threading.Semaphore(limit)

                def limited(step: dict) -> None:
                    with sem:
                        guarded(step)
                _run_parallel([lambda s=s: limited(s) for s in steps])
            else:
                _run_parallel([lambda s=s: guarded(s) for s in steps])
            failed = ""
            for step in steps:
                single, many = outcome.get(step["name"], (None, None))
                nodes = [single] if single is not None else (many or [])
                self.publish(scope, f"steps.{step['name']}", single if single is not None else gnode, many if single is None else None)
                cont = step.get("continueOn") or {}
                for n in nodes:
                    if n["phase"] == "Failed" and not cont.get("failed") or n["phase"] == "Error" and not cont.get("error"):
                        failed = failed or f"child '{n['id']}' {n['phase'].lower()}" + (f": {n['message']}" if n.get("message") else "")
            self.finish(gnode, "Failed" if failed else "Succeeded", failed)
            if failed:
                self.finish(node, "Error" if "error" in failed.split(":")[0] else "Failed", failed)
                return
        self.output_params(node, tmpl, scope)
        self.finish(node, "Succeeded")

    # ------------------------------------------------------------------ dag
    def run_dag(self, node: dict, tmpl: dict, local: dict[str, Any]) -> None:
        dag = tmpl["dag"]
        tasks = {t["name"]: t for t in dag.get("tasks") or []}
        order = list(tasks)
        names = set(order)
        where = f"template {tmpl['name']!r}"
        deps: dict[str, list[tuple[str, str, str]]] = {}
        for t in order:
            task = tasks[t]
            if task.get("depends"):
                deps[t] = parse_depends(task["depends"], names, f"{where} dag task {t!r}")
            elif task.get("dependencies"):
                toks: list[tuple[str, str, str]] = []
                for d in task["dependencies"]:
                    if toks:
                        toks.append(("op", "&&", ""))
                    toks.append(("ref", d, ""))
                deps[t] = toks
            else:
                deps[t] = []
        parents = {t: sorted({x[1] for x in deps[t] if x[0] == "ref"}) for t in order}
        children_of: dict[str, list[str]] = {t: [] for t in order}
        for t in order:
            for p in parents[t]:
                children_of[p].append(t)
        targets = (dag.get("target") or "").split() or [t for t in order if not children_of[t]]
        # only targets and their ancestors run
        needed: set[str] = set()
        stack = list(targets)
        while stack:
            t = stack.pop()
            if t not in needed:
                needed.add(t)
                stack.extend(parents[t])
        fail_fast = dag.get("failFast", True) is not False
        limit = int(tmpl["parallelism"]) if tmpl.get("parallelism") else None
        scope = dict(local)
        cv = threading.Condition()
        tnodes: dict[str, dict] = {}
        groups: dict[str, list[dict] | None] = {}

        def result_of(tname: str, result: str) -> bool:
            n = tnodes[tname]
            ph = n["phase"]
            task = tasks[tname]
            cont = task.get("continueOn") or {}
            kids = groups.get(tname)
            if result == "":
                return ph in ("Succeeded", "Skipped") or (ph == "Failed" and bool(cont.get("failed"))) or (ph == "Error" and bool(cont.get("error")))
            if result == "Errored":
                return ph == "Error"
            if result == "Completed":
                return ph in ("Succeeded", "Failed")
            if result == "Daemoned":
                return False
            if result == "AnySucceeded":
                return any(k["phase"] == "Succeeded" for k in kids or [n])
            if result == "AllFailed":
                return all(k["phase"] == "Failed" for k in kids or [n])
            return ph == result

        def depends_ok(tname: str) -> bool:
            toks = deps[tname]
            if not toks:
                return True
            text = " ".join(tok[1] if tok[0] == "op" else ("true" if result_of(tok[1], tok[2]) else "false") for tok in toks)
            return bool(_expr.evaluate(text, {}))

        def run_task(tname: str) -> None:
            task = tasks[tname]
            tnode_name = f"{node['name']}.{tname}"
            try:
                with cv:
                    tscope = dict(scope)
                # like Argo, a dependent hangs off the outbound node (a Retry's last attempt)
                parent_ids = [self.outbound(tnodes[p]) for p in parents[tname]] or [node["id"]]
                items = self.expand(task, tscope, f"{where} dag task {tname!r}")
                if items is None:
                    n = self.run_one(task, tnode_name, tname, node["id"], parent_ids[0], tscope)
                    kids = None
                else:
                    n = self.reuse(self.node_id(tnode_name), parent_ids[0])
                    if n is None:
                        n = self.new_node(tnode_name, tname, "TaskGroup", task["template"], node["id"], parent_ids[0])
                        kids = self.fan_out(task, tnode_name, tname, node["id"], n["id"], tscope, items, limit) if items else []
                        bad = [k for k in kids if k["phase"] in FAILED]
                        self.finish(n, bad[0]["phase"] if bad else ("Skipped" if not items else "Succeeded"),
                                    f"child '{bad[0]['id']}' {bad[0]['phase'].lower()}" if bad else "")
                    else:
                        kids = [self.nodes[c] for c in n["children"] if c in self.nodes]
                for pid in parent_ids[1:]:
                    self.link(pid, n["id"])
            except (UnresolvedTag, WorkflowError, _expr.ExprError) as exc:
                n = self.new_node(tnode_name, tname, "Skipped", task["template"], node["id"], node["id"], "Error", str(exc))
                kids = None
            except BaseException as exc:  # keep the scheduler alive; report the task
                n = self.new_node(tnode_name, tname, "Skipped", task["template"], node["id"], node["id"], "Error",
                                  f"{type(exc).__name__}: {exc}")
                kids = None
            with cv:
                tnodes[tname] = n
                groups[tname] = kids
                self.publish(scope, f"tasks.{tname}", n, kids)
                recorded(tname)

        def branch_phase(tname: str, memo: dict[str, str]) -> str:
            if tname in memo:
                return memo[tname]
            ph = tnodes[tname]["phase"]
            if ph == "Omitted":
                inherited = [branch_phase(p, memo) for p in parents[tname] if p in tnodes]
                bad = [x for x in inherited if x in FAILED]
                ph = bad[0] if bad else "Succeeded"
            memo[tname] = ph
            return ph

        def assess() -> tuple[str, str]:
            memo: dict[str, str] = {}
            for t in targets:
                if t not in tnodes:
                    continue
                ph = branch_phase(t, memo)
                cont = tasks[t].get("continueOn") or {}
                if ph == "Failed" and not cont.get("failed") or ph == "Error" and not cont.get("error"):
                    n = tnodes[t]
                    return ph, f"child '{n['id']}' {ph.lower()}" if n["phase"] != "Omitted" else f"task {t!r} omitted after a failure"
            return "Succeeded", ""

        # ready-to-run bookkeeping: a task is ready when its last parent is recorded in tnodes;
        # ready tasks start in declaration order
        index = {t: i for i, t in enumerate(order)}
        waiting = {t: len(parents[t]) for t in order}
        ready = [(index[t], t) for t in order if t in needed and not parents[t]]
        pending = [0]  # tasks handed to workers and not yet recorded

        def recorded(t: str) -> None:
            """``t`` now has its node in tnodes (caller holds cv): release its children."""
            for c in children_of[t]:
                waiting[c] -= 1
                if not waiting[c] and c in needed:
                    heapq.heappush(ready, (index[c], c))

        def schedule() -> list[str]:
            """Take every ready task (caller holds cv): the ones to start are returned, counted
            in ``pending``; the caller starts them once it has released cv."""
            starts: list[str] = []
            while ready and not self.stop_event.is_set():
                _, t = heapq.heappop(ready)
                try:
                    ok = depends_ok(t)
                except _expr.ExprError as exc:
                    tnodes[t] = self.new_node(f"{node['name']}.{t}", t, "Skipped", tasks[t]["template"], node["id"],
                                              node["id"], "Error", f"depends: {exc}")
                    recorded(t)
                    continue
                if not ok:
                    pid = self.outbound(tnodes[parents[t][0]]) if parents[t] else node["id"]
                    n = self.reuse(self.node_id(f"{node['name']}.{t}"), pid) or self.skip_node(
                        f"{node['name']}.{t}", t, tasks[t]["template"], node["id"], pid, "Omitted",
                        "omitted: depends condition not met")
                    for p in parents[t][1:]:
                        self.link(self.outbound(tnodes[p]), n["id"])
                    tnodes[t] = n
                    self.publish(scope, f"tasks.{t}", n, None)
                    recorded(t)
                    continue
                pending[0] += 1
                starts.append(t)
            return starts

        gate = self.runner.gate

        def is_plain_pod(task: dict) -> bool:
            """A task that is one pod and nothing else: it may wait for a place as a callable."""
            tm = self.templates.get(task.get("template") or "") or {}
            return (self.wf_sem is None and (tm.get("container") is not None or tm.get("script") is not None)
                    and not tm.get("retryStrategy") and not task.get("hooks") and not task.get("onExit")
                    and not any(task.get(k) is not None for k in ("withItems", "withParam", "withSequence")))

        plain_pod = {t: is_plain_pod(tasks[t]) for t in order}

        def run_gated(t: str) -> None:  # holds a gate place, which its pod takes over
            _HANDOFF.place = True
            try:
                run_task(t)
            finally:
                if _HANDOFF.place:  # ended before its pod (when false, reused, an error)
                    _HANDOFF.place = False
                    _hand(gate.release(), inline=True)
                task_done(t)

        def run_plain(t: str) -> None:
            try:
                run_task(t)
            finally:
                task_done(t)

        def task_done(t: str) -> None:
            with cv:
                pending[0] -= 1
                starts = schedule()
                if not pending[0]:
                    cv.notify_all()
            launch(starts, inline=True)

        def launch(starts: list[str], inline: bool) -> None:
            """Start tasks: plain pods through the gate (now, or queued there for a place), others
            at once. ``inline``: on this thread's driver loop (the first) and workers (the rest);
            never for run_dag's own thread, which goes on to wait for them."""
            for t in starts:
                if plain_pod[t]:
                    fn = functools.partial(run_gated, t)
                    if not gate.try_start(fn):
                        continue  # queued: the pod that frees a place runs it
                else:
                    fn = functools.partial(run_plain, t)
                _hand(fn, inline)

        with cv:
            starts = schedule()
        launch(starts, inline=False)
        with cv:
            while pending[0]:
                cv.wait(0.5)
        self.check_stop()
        phase, msg = assess()
        if phase == "Succeeded" and any(t not in tnodes for t in targets):
            phase, msg = "Failed", "not all target tasks ran"
        if phase == "Succeeded":
            dscope = dict(scope)
            self.output_params(node, tmpl, dscope)
        self.finish(node, phase, msg)

    # ------------------------------------------------------------------ memoize
    def _memo_path(self, memo: dict) -> tuple[Path, str, str]:
        key = str(memo.get("key", ""))
        cache = ((memo.get("cache") or {}).get("configMap") or {}).get("name") or "default"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cache):
            raise WorkflowError(f"memoize.cache.configMap.name {cache!r} is not a valid name")
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.runner.cache_dir / cache / f"{digest}.json", key, cache

    def memo_lookup(self, memo: dict, local: dict[str, Any]) -> dict | None:
        path, key, cache = self._memo_path(memo)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if entry.get("key") != key:
            return None
        if memo.get("maxAge"):
            created = _dt.datetime.fromisoformat(entry["createdAt"].replace("Z", "+00:00"))
            age = (_dt.datetime.now(_dt.UTC) - created).total_seconds()
            if age > parse_duration(memo["maxAge"], "memoize.maxAge"):
                return None
        return {"key": key, "cacheName": cache, "outputs": entry.get("outputs") or {}}

    def memo_store(self, memo: dict, node: dict) -> None:
        path, key, cache = self._memo_path(memo)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps({"key": key, "cacheName": cache, "nodeID": node["id"], "workflow": self.name,
                                        "outputs": node.get("outputs") or {}, "createdAt": _now()}, indent=1))


_DEVNULL_FD = -1


def _devnull() -> int:
    """One read-only /dev/null fd for every pod's stdin (Popen would open and close one per pod)."""
    global _DEVNULL_FD
    if _DEVNULL_FD < 0:
        _DEVNULL_FD = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _DEVNULL_FD


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return

    def hard() -> None:
        time.sleep(2)
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    threading.Thread(target=hard, daemon=True).start()


class _Tokens:
    """spec.parallelism: a counting semaphore whose acquire/release run in C (queue.SimpleQueue);
    threading.Semaphore is Python code around a Condition, paid on every pod."""

    def __init__(self, n: int) -> None:
        import queue
        self._empty = queue.Empty
        self.q: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(n):
            self.q.put(None)

    def acquire(self, timeout: float) -> bool:
        try:
            self.q.get(timeout=timeout)
        except self._empty:
            return False
        return True

    def release(self) -> None:
        self.q.put(None)


class _PodGate:
    """The runner's cap on pods running at once, with one FIFO of what waits for a place: a
    parked thread (an Event) or a DAG task start (a callable, not yet on any thread).

    Why not just a semaphore: a DAG with many ready pods then parks a thread per pod on it, and
    every release wakes one of them. Measured on 2 cores, 100 `true` pods at width 10: with 20
    threads parked on 2 places the same work took 1.27x as long as with 2 threads that each take
    the next task themselves. So a DAG task that is a plain pod waits here as a callable, and
    the thread whose pod frees a place runs it next (``_Run.run_dag``'s driver loop).
    """

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiters: collections.deque[threading.Event | Callable[[], None]] = collections.deque()
        self.lock = threading.Lock()

    def try_start(self, fn: Callable[[], None]) -> bool:
        """Take a place for ``fn`` (True: the caller runs it), or queue ``fn`` to be handed to
        the thread of the pod that next frees one (False)."""
        with self.lock:
            if self.free > 0:
                self.free -= 1
                return True
            self.waiters.append(fn)
            return False

    def acquire(self, check: Callable[[], None]) -> None:
        """Take a place, waiting on this thread; ``check`` runs every 0.2 s and may raise."""
        with self.lock:
            if self.free > 0:
                self.free -= 1
                return
            ev = threading.Event()
            self.waiters.append(ev)
        try:
            while not ev.wait(0.2):
                check()
        except BaseException:
            with self.lock:
                try:
                    self.waiters.remove(ev)
                    granted = False
                except ValueError:  # handed a place while giving up
                    granted = True
            if granted:
                _hand(self.release(), inline=False)
            raise

    def release(self) -> Callable[[], None] | None:
        """Free a place. If a task start was waiting it now holds the place and is returned: the
        caller must run it (or submit it to a worker)."""
        with self.lock:
            if self.waiters:
                w = self.waiters.popleft()
                if isinstance(w, threading.Event):
                    w.set()
                    return None
                return w
            self.free += 1
            return None


class _Handoff(threading.local):
    """Per thread: ``place`` is True while a DAG task started through the gate holds a place its
    pod has not taken yet; ``queue`` collects the starts handed to this thread to run next
    (None outside a driver loop)."""

    place = False
    queue: list[Callable[[], None]] | None = None


_HANDOFF = _Handoff()


def _drive(fn: Callable[[], None]) -> None:
    """Run ``fn``, then what it handed to this thread: the first inline, the rest on workers."""
    tl = _HANDOFF
    outer = tl.queue
    tl.queue = []
    try:
        while True:
            try:
                fn()
            except BaseException:  # noqa: BLE001 - callers record their own failures
                pass
            if not tl.queue:
                return
            fn, *rest = tl.queue
            tl.queue = []
            for r in rest:
                _WORKERS.submit(functools.partial(_drive, r))
    finally:
        tl.queue = outer


def _hand(fn: Callable[[], None] | None, inline: bool) -> None:
    """A start that now holds a place: to this thread's driver loop when ``inline``, else a worker."""
    if fn is None:
        return
    q = _HANDOFF.queue
    if inline and q is not None:
        q.append(fn)
    else:
        _WORKERS.submit(functools.partial(_drive, fn))


class _Workers:
    """A process-wide pool of reusable threads that grows whenever no thread is idle.

    Why not ThreadPoolExecutor: a step that runs a steps/dag template blocks until its children
    finish, so a bounded pool deadlocks on deep nesting; why not a thread per step: starting a
    thread costs about as much as spawning `true` on a small VM. Concurrency is bounded by the
    runner's gate (_PodGate), the machine-wide slots (kiln.runners._slots) and spec.parallelism,
    not by this pool.
    """

    def __init__(self) -> None:
        import queue
        self.q: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.idle = 0
        self.lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        with self.lock:
            spawn = self.idle == 0
            if not spawn:
                self.idle -= 1
        self.q.put(fn)
        if spawn:
            threading.Thread(target=self._loop, name="kiln-worker", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn = self.q.get()
            try:
                fn()
            except BaseException:  # noqa: BLE001 - callers record their own failures
                pass
            with self.lock:
                self.idle += 1


_WORKERS = _Workers()


def _run_parallel(fns: list[Callable[[], None]]) -> None:
    """Run callables concurrently and wait for all; the last runs on the calling thread."""
    if not fns:
        return
    done = threading.Semaphore(0)

    def wrap(f: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                f()
            finally:
                done.release()
        return run

    for f in fns[:-1]:
        _WORKERS.submit(wrap(f))
    fns[-1]()
    for _ in fns[:-1]:
        done.acquire()


# --------------------------------------------------------------------------- the runner


class LocalRunner(Runner):
    """Runs Argo Workflow manifests as host subprocesses; state under ``workdir``."""

    name = "local"

    def __init__(self, workdir: Path, *, max_concurrency: int | None = None, env: dict | None = None,
                 flush_interval: float = 0.05, slots_dir: Path | None = None) -> None:
        """``max_concurrency`` (default: CPU count) caps the pods running at once on this machine,
        across every process that uses the same ``slots_dir`` (default ``$KILN_SLOTS_DIR``, else
        ``~/.cache/kiln/slots``; see ``kiln.runners._slots``)."""
        self.workdir = Path(workdir)
        self.slots_dir = Path(slots_dir) if slots_dir is not None else _slots.default_slots_dir()
        self.cache_dir = self.workdir.parent / "cache"
        self.max_concurrency = max_concurrency or os.cpu_count() or 1
        if self.max_concurrency < 1:
            raise WorkflowError(f"max_concurrency must be >= 1 (got {max_concurrency})")
        self.gate = _PodGate(self.max_concurrency)
        self._slots: _slots.SlotPool | None = None
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.flush_interval = flush_interval
        self._active: dict[str, _Run] = {}
        self._lock = threading.Lock()

    @property
    def slots(self) -> _slots.SlotPool:
        if self._slots is None:
            self._slots = _slots.pool_for(self.slots_dir)
        return self._slots

    def base_env(self, site_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in _ENV_PASSTHROUGH or k.startswith(("KILN_", "LC_"))}
        env.update(self.env)
        if env.get("KILN_RANDOM_SEED"):
            env["PYTHONPATH"] = os.pathsep.join(x for x in (str(site_dir), env.get("PYTHONPATH")) if x)
        return env

    # ------------------------------------------------------------------ submit
    def prepare(self, manifest: Workflow, parameters: dict[str, str] | None) -> tuple[Workflow, str]:
        validate(manifest)
        try:  # a JSON round trip copies 10x faster than deepcopy, and the run is stored as JSON anyway
            wf = json.loads(json.dumps(manifest))
        except (TypeError, ValueError) as exc:
            raise WorkflowError(f"workflow manifest is not JSON-serialisable: {exc}",
                                hint="use only strings, numbers, booleans, lists and mappings") from exc
        wf.pop("status", None)
        wf.setdefault("apiVersion", "argoproj.io/v1alpha1")
        meta = wf.setdefault("metadata", {})
        spec = wf["spec"]
        if parameters:
            args = spec.setdefault("arguments", {}).setdefault("parameters", [])
            declared = {p["name"]: p for p in args}
            for k, v in parameters.items():
                if k not in declared:
                    raise WorkflowError(f"parameter {k!r} is not declared in spec.arguments.parameters",
                                        hint=f"declared: {', '.join(sorted(declared)) or '(none)'}")
                declared[k]["value"] = str(v)
        for p in (spec.get("arguments") or {}).get("parameters") or []:
            if "value" not in p and "default" not in p and not p.get("valueFrom"):
                raise WorkflowError(f"workflow parameter {p['name']!r} has no value",
                                    hint=f"pass it with -p {p['name']}=VALUE")
        label = (meta.get("labels") or {}).get("kiln.dev/spec-hash")
        canon = json.dumps({"manifest": {k: v for k, v in wf.items() if k != "status"}, "params": parameters or {}},
                           sort_keys=True, separators=(",", ":"))
        run_hash = (label + ("" if not parameters else "-" + hashlib.sha256(canon.encode()).hexdigest()[:12])) if label \
            else hashlib.sha256(canon.encode()).hexdigest()[:20]
        if not meta.get("name"):
            gen = meta.get("generateName")
            if not gen:
                raise WorkflowError("metadata.name or metadata.generateName is required")
            meta["name"] = gen + hashlib.sha256(canon.encode()).hexdigest()[:5]
            meta.pop("generateName", None)
        name = meta["name"]
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
            raise WorkflowError(f"workflow name {name!r} is invalid", hint="use lowercase letters, digits, '-' and '.'")
        return wf, run_hash

    def submit(self, manifest: Workflow, *, parameters: dict[str, str] | None = None, wait: bool = True,
               on_update: Callable[[Workflow], None] | None = None) -> Workflow:
        wf, run_hash = self.prepare(manifest, parameters)
        self.slots  # a slots folder that cannot be created fails the submit, not every pod
        name = wf["metadata"]["name"]
        run_dir = self.workdir / name
        prev = None
        with self._lock:
            if name in self._active:
                raise WorkflowError(f"workflow {name!r} is already running in this process")
            old = self.get(name)
            if old is not None:
                ann = old.get("metadata", {}).get("annotations", {})
                same = ann.get("kiln.dev/run-hash") == run_hash
                phase = old.get("status", {}).get("phase")
                pid = int(ann.get("kiln.dev/runner-pid") or 0)
                alive = phase in ("Running", "Pending") and pid and pid != os.getpid() and _pid_alive(pid) \
                    and ann.get("kiln.dev/runner-host", socket.gethostname()) == socket.gethostname()
                if alive:
                    raise WorkflowError(f"workflow {name!r} is already running (pid {pid})",
                                        hint=f"wait for it or `kiln stop {name}`")
                reap_orphans(run_dir)  # its runner is gone: so must its pods be
                if same and phase == "Succeeded":
                    return old
                if same:
                    prev = old
                else:
                    self._discard(run_dir)
            elif run_dir.exists():
                self._discard(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            stop_file = run_dir / "stop"
            if stop_file.exists():
                stop_file.unlink()
            run = _Run(self, wf, run_dir, run_hash, prev, on_update)
            self._active[name] = run
            run.flush()

        finished = threading.Event()

        def body() -> None:
            try:
                run.execute()
            finally:
                with self._lock:
                    self._active.pop(name, None)
                finished.set()

        _WORKERS.submit(body)
        if not wait:
            return json.loads(run.snapshot())
        try:
            while not finished.wait(0.2):
                pass
        except KeyboardInterrupt:
            run.cancel("interrupted (Ctrl-C)")
            finished.wait()
        return run.wf  # the run is over and nothing else holds it: no copy needed

    def _discard(self, run_dir: Path) -> None:
        if run_dir.exists():
            aside = run_dir.with_name(f".{run_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(run_dir, aside)
            shutil.rmtree(aside, ignore_errors=True)

    # ------------------------------------------------------------------ queries
    def get(self, name: str) -> Workflow | None:
        run = self._active.get(name)
        if run is not None:
            return json.loads(run.snapshot())
        path = self.workdir / name / "workflow.json"
        try:
            wf = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise WorkflowError(f"{path} is not valid JSON: {exc}", hint=f"delete the run with `kiln` or remove {path.parent}") from exc
        return replay_journal(wf, path.with_name(JOURNAL))

    def logs(self, name: str, node: str | None = None) -> Iterator[str]:
        wf = self.get(name)
        if wf is None:
            raise WorkflowError(f"no run named {name!r} under {self.workdir}")
        nodes = wf.get("status", {}).get("nodes", {})
        pods = sorted((n for n in nodes.values() if n.get("type") == "Pod"), key=lambda n: (n.get("startedAt") or "", n["name"]))
        if node is not None:
            pods = [n for n in pods if node in (n["id"], n["name"], n["displayName"])]
            if not pods:
                raise WorkflowError(f"run {name!r} has no pod node {node!r}",
                                    hint=f"nodes: {', '.join(sorted(n['displayName'] for n in nodes.values() if n.get('type') == 'Pod'))}")
        for n in pods:
            path = self.workdir / name / "logs" / f"{n['id']}.log"
            if not path.exists():
                continue
            with open(path, errors="replace") as f:
                for line in f:
                    yield line.rstrip("\n") if node is not None else f"{n['displayName']}: {line.rstrip(chr(10))}"

    def stop(self, name: str, message: str = "stopped by user") -> None:
        run = self._active.get(name)
        if run is not None:
            run.cancel(message)
            return
        wf = self.get(name)
        if wf is None:
            raise WorkflowError(f"no run named {name!r} under {self.workdir}")
        phase = wf.get("status", {}).get("phase")
        if phase not in ("Running", "Pending"):
            return
        run_dir = self.workdir / name
        _atomic_write(run_dir / "stop", message)
        pid = int(wf.get("metadata", {}).get("annotations", {}).get("kiln.dev/runner-pid") or 0)
        if pid and _pid_alive(pid):
            return
        # the runner is gone: finish the record ourselves
        now = _now()
        for n in wf["status"].get("nodes", {}).values():
            if n.get("phase") in ("Running", "Pending"):
                n.update(phase="Failed", message=message, finishedAt=now)
        wf["status"].update(phase="Failed", message=message, finishedAt=now)
        _atomic_write(run_dir / "workflow.json", json.dumps(wf, separators=(",", ":")))
        try:
            (run_dir / JOURNAL).unlink()  # replayed into the snapshot just written
        except OSError:
            pass

    def wait_stopped(self, name: str, timeout: float = 30.0) -> Workflow | None:
        """Poll until a stopped run is no longer Running (for callers in another process)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            wf = self.get(name)
            if wf is None or wf.get("status", {}).get("phase") not in ("Running", "Pending"):
                return wf
            time.sleep(0.1)
        return self.get(name)

    def delete(self, name: str) -> None:
        if name in self._active:
            raise WorkflowError(f"workflow {name!r} is running", hint=f"stop it first: kiln stop {name}")
        self._discard(self.workdir / name)


__all__ = ["LocalRunner", "validate", "parse_duration", "HOST_IMAGES"]
