"""The machine-wide resource queue: which pod may start now, given the CPU, memory and GPUs it
asks for, what the machine has, and what its workspace's quotas still allow.

Why a ledger file next to the slots (``kiln.runners._slots``): every kiln process on the machine
(an apply, the controller, ``kiln run-workflow``) starts pods, so the queue must be shared
between processes, and ``kiln queue`` must be able to read it from yet another one. The ledger is
one JSON file, ``<slots dir>/resources.json``, read and rewritten in place under an exclusive
``flock`` on that file. Entries carry their process's pid: an entry whose process is gone
(``kill -9`` included) is dropped by the next reader, so a crash leaks nothing.

Only pods that ask for resources (``container.resources.requests``, which kiln renders from the
workspace's preset) take part; a plain Argo pod pays nothing here.

Order: first come, first served within a workspace (a pod never overtakes an earlier one of its
own workspace); between workspaces, when the machine is the limit, the waiting head of the
workspace that holds the fewest running jobs goes first (fairness), so a workspace that submits
a hundred jobs cannot keep another's one job waiting. GPUs are handed out by index and never
shared; the pod sees them as ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiln._util.proc import pid_alive
from kiln.api.common import cpu_cores, memory_bytes
from kiln.errors import WorkflowError

LEDGER = "resources.json"
QUOTA_ANNOTATION = "kiln.dev/quotas"  # the workspace's quotas, JSON, rendered into each workflow
POLL_S = 0.1  # a waiting pod looks again this often (and whenever a release in this process wakes it)
# where a pod's process finds why `kiln stop --job` ended it (the path is in its environment):
# a signal carries no text, and the trial the process trains records the reason (#18)
STOP_REASON_ENV = "KILN_STOP_REASON_FILE"


class JobStopped(WorkflowError):
    """A waiting job that ``kiln stop RUN --job NODE`` took out of the queue."""


def stopped_message(message: str) -> str:
    """A job's phase message once ``kiln stop --job`` ended it; the runner does not retry it."""
    return "stopped by kiln stop" + (f": {message}" if message and message != "stopped by user" else "")


@dataclass
class Capacity:
    """What this machine offers pods: CPUs, memory bytes and GPU count."""

    cpu: float
    memory: int
    gpus: int

    @classmethod
    def detect(cls, override: dict[str, Any] | None = None) -> Capacity:
        """The machine's own capacity (GPUs via NVML when present), with kiln.yaml's
        ``capacity: {cpu, memory, gpus}`` taking precedence field by field."""
        o = override or {}
        cpu = cpu_cores(o["cpu"]) if o.get("cpu") is not None else float(len(os.sched_getaffinity(0)))
        if o.get("memory") is not None:
            mem = memory_bytes(str(o["memory"]))
        else:
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        gpus = int(o["gpus"]) if o.get("gpus") is not None else nvml_gpu_count()
        return cls(cpu, mem, gpus)


def nvml_gpu_count() -> int:
    """GPUs NVML sees; 0 without the library or a driver."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - pynvml raises NVMLError subclasses for "no driver"
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


@dataclass
class Request:
    """One pod's ask: its workspace, quotas and sizes (parsed once, at admission)."""

    workspace: str
    workflow: str
    node: str
    cpu: float
    memory: int
    gpu: int
    deployment: bool = False  # counted against deploymentGpus rather than trainingGpus
    quotas: dict[str, Any] = field(default_factory=dict)


def request_of(wf: dict, node_name: str, container: dict) -> Request | None:
    """The pod's request from its container's ``resources.requests``; None when it asks for
    nothing (then it takes no part in the queue)."""
    req = (container.get("resources") or {}).get("requests") or {}
    if not req:
        return None
    meta = wf.get("metadata") or {}
    labels = meta.get("labels") or {}
    raw = (meta.get("annotations") or {}).get(QUOTA_ANNOTATION)
    try:
        quotas = json.loads(raw) if raw else {}
    except ValueError:
        quotas = {}
    try:
        return Request(
            workspace=labels.get("kiln.dev/workspace", "default"),
            workflow=meta.get("name", ""),
            node=node_name,
            cpu=cpu_cores(req.get("cpu", 0)),
            memory=memory_bytes(str(req.get("memory", 0))),
            gpu=int(req.get("nvidia.com/gpu", 0)),
            deployment=labels.get("kiln.dev/kind") == "Deployment",
            quotas=quotas,
        )
    except ValueError as exc:
        raise WorkflowError(
            f"workflow {meta.get('name')!r} node {node_name!r}: bad resources.requests: {exc}",
            hint="give cpu like 2 or 500m, memory like 4Gi, nvidia.com/gpu as a whole number",
        ) from None


def resources_duration(req: Request, seconds: float) -> dict[str, int]:
    """Argo's ``node.resourcesDuration`` of a pod that held ``req`` for ``seconds``: CPU in
    core-seconds, memory in 100Mi-seconds, GPUs in GPU-seconds (Argo's units)."""
    out = {"cpu": round(req.cpu * seconds), "memory": round(req.memory / MEMORY_UNIT * seconds)}
    if req.gpu:
        out["nvidia.com/gpu"] = round(req.gpu * seconds)
    return out


MEMORY_UNIT = 100 * 2**20  # Argo counts memory in 100Mi units in resourcesDuration
_SEQ = itertools.count()


class ResourceQueue:
    """The ledger of one slots directory, as used by this process."""

    def __init__(self, directory: Path, capacity: Capacity) -> None:
        self.dir = Path(directory)
        self.capacity = capacity
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- the ledger ------------------------------------------------------------------------
    def _locked(self) -> int:
        fd = os.open(self.dir / LEDGER, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _read(self, fd: int) -> dict[str, Any]:
        chunks, off = [], 0
        while chunk := os.pread(fd, 1 << 16, off):
            chunks.append(chunk)
            off += len(chunk)
        try:
            data = json.loads(b"".join(chunks)) if chunks else {}
        except ValueError:  # a writer died mid-write: what live processes hold is rebuilt as they go on
            data = {}
        data.setdefault("running", [])
        data.setdefault("waiting", [])
        host = socket.gethostname()
        # drop what dead processes left (a crashed runner must not hold resources)
        for k in ("running", "waiting"):
            data[k] = [e for e in data[k] if e.get("host") != host or pid_alive(int(e["pid"]))]
        return data

    def _write(self, fd: int, data: dict[str, Any]) -> None:
        # in place under the flock (every reader takes it): a rename per write cost 1.3 ms here
        raw = json.dumps(data, separators=(",", ":")).encode()
        os.pwrite(fd, raw, 0)
        os.ftruncate(fd, len(raw))

    def snapshot(self) -> dict[str, Any]:
        """Running and waiting entries (for ``kiln queue``), each waiting one with its reason."""
        fd = self._locked()
        try:
            data = self._read(fd)
            self._decide(data)  # refresh the reasons: they depend on what runs now
            return data
        finally:
            os.close(fd)

    # -- admission -------------------------------------------------------------------------
    def acquire(self, req: Request, check: Callable[[], None]) -> dict[str, Any]:
        """Wait until ``req`` may start; its running entry (with ``gpus``, the indices it holds).
        ``check`` runs between polls and may raise (a stop request): the pod then leaves the queue."""
        cap = self.capacity
        if req.gpu > cap.gpus:
            raise WorkflowError(
                f"workflow {req.workflow!r} node {req.node!r} asks for {req.gpu} GPU; this machine has {cap.gpus}",
                hint="use a preset without GPUs here, or set capacity: {gpus: N} in kiln.yaml if NVML does not see them",
            )
        # a pod larger than the whole machine runs alone rather than never (the OS does not cap it)
        req.cpu, req.memory = min(req.cpu, cap.cpu), min(req.memory, cap.memory)
        entry = {
            "id": f"{os.getpid()}-{next(_SEQ)}-{time.monotonic_ns()}",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            **asdict(req),
            "since": time.time(),
        }
        fd = self._locked()
        try:
            data = self._read(fd)
            data["waiting"].append(entry)
            granted = self._decide(data, entry["id"])
            self._write(fd, data)
        finally:
            os.close(fd)
        try:
            while granted is None:
                check()
                time.sleep(POLL_S)
                fd = self._locked()
                try:
                    data = self._read(fd)
                    mine = next((e for e in data["waiting"] if e["id"] == entry["id"]), None)
                    if mine is not None and mine.get("stop"):
                        raise JobStopped(stopped_message(mine["stop"]))
                    granted = self._decide(data, entry["id"])
                    if granted is not None:
                        self._write(fd, data)
                finally:
                    os.close(fd)
        except BaseException:
            self.release(entry["id"])
            raise
        return granted

    def started(self, entry_id: str, pid: int, reason_file: str = "") -> None:
        """Note the pod's process (the leader of its process group), so that ``stop`` can end it,
        and the file (``STOP_REASON_ENV``) where ``stop`` writes why before it signals."""
        self._update(lambda data: [e.update(pgid=pid, reasonFile=reason_file) for e in data["running"]
                                   if e["id"] == entry_id])

    def stop(self, workflow: str, job: str, message: str) -> list[str]:
        """Stop one job (``kiln stop RUN --job NODE``): a running one's process group gets SIGTERM,
        a waiting one leaves the queue failing with ``message``; what frees goes to the next job.
        The jobs it matched, as ``workflow/node``."""
        hit: list[str] = []

        def mark(data: dict[str, Any]) -> None:
            host = socket.gethostname()
            for state in ("running", "waiting"):
                for e in data[state]:
                    if e["workflow"] != workflow or job not in (e["node"], e["node"].split(".", 1)[-1]):
                        continue
                    hit.append(f"{e['workflow']}/{e['node']}")
                    e["stop"] = message
                    if state == "running" and e.get("pgid") and e.get("host") == host:
                        if e.get("reasonFile"):
                            try:
                                Path(e["reasonFile"]).write_text(stopped_message(message))
                            except OSError:
                                pass  # the pod's sandbox is gone: it is ending anyway
                        try:
                            os.killpg(int(e["pgid"]), signal.SIGTERM)
                        except (ProcessLookupError, PermissionError):
                            pass

        self._update(mark)
        return hit

    def _update(self, fn: Callable[[dict[str, Any]], Any]) -> None:
        fd = self._locked()
        try:
            data = self._read(fd)
            fn(data)
            self._write(fd, data)
        finally:
            os.close(fd)

    def release(self, entry_id: str) -> dict[str, Any] | None:
        """Drop the entry; returns it (its ``stop`` says whether ``kiln stop --job`` ended it)."""
        fd = self._locked()
        try:
            data = self._read(fd)
            gone = next((e for st in ("running", "waiting") for e in data[st] if e["id"] == entry_id), None)
            data["running"] = [e for e in data["running"] if e["id"] != entry_id]
            data["waiting"] = [e for e in data["waiting"] if e["id"] != entry_id]
            self._write(fd, data)
        finally:
            os.close(fd)
        return gone

    def _decide(self, data: dict[str, Any], want: str | None = None) -> dict[str, Any] | None:
        """Give a waiting entry its place if it may start now (only ``want``: each process starts
        its own pods), and write every waiting entry's reason. The granted entry moves to
        ``running``; returned, or None."""
        running, waiting = data["running"], data["waiting"]
        granted = None
        jobs: dict[str, int] = {}
        for e in running:
            jobs[e["workspace"]] = jobs.get(e["workspace"], 0) + 1
        heads: dict[str, dict] = {}
        for e in waiting:
            heads.setdefault(e["workspace"], e)
        # heads blocked by nothing but the machine, fairest first: fewest running jobs, then oldest
        machine_blocked = sorted(
            (h for h in heads.values() if not self._quota_reason(h, running)),
            key=lambda h: (jobs.get(h["workspace"], 0), h["since"]),
        )
        for pos, e in enumerate(list(waiting)):
            head = heads[e["workspace"]]
            reason = ""
            if head is not e:
                reason = (
                    f"queued behind {head['workflow']}/{head['node']} of workspace {e['workspace']} (first come, first served)"
                )
            else:
                reason = self._quota_reason(e, running) or self._machine_reason(e, running)
                if not reason and machine_blocked and machine_blocked[0] is not e:
                    first = machine_blocked[0]
                    reason = f"the machine's next free resources go to {first['workflow']}/{first['node']} of workspace {first['workspace']} (fair share)"
            e["reason"], e["position"] = reason, pos + 1
            if not reason and e["id"] == want:
                e["gpus"] = self._free_gpus(running)[: e["gpu"]]
                waiting.remove(e)
                running.append(e)
                granted = e
                e.pop("reason", None)
                e.pop("position", None)
                e["started"] = time.time()
                break
        for pos, e in enumerate(waiting):
            e["position"] = pos + 1
        return granted

    def _quota_reason(self, e: dict, running: list[dict]) -> str:
        q = e.get("quotas") or {}
        mine = [r for r in running if r["workspace"] == e["workspace"]]
        ws = e["workspace"]
        if q.get("maxConcurrentJobs") is not None and len(mine) + 1 > int(q["maxConcurrentJobs"]):
            return f"workspace {ws} runs {len(mine)} jobs, quota maxConcurrentJobs is {q['maxConcurrentJobs']}"
        if q.get("cpu") is not None:
            used = sum(r["cpu"] for r in mine)
            if used + e["cpu"] > cpu_cores(q["cpu"]) + 1e-9:
                return f"workspace {ws} quota cpu: {used:g} of {q['cpu']} CPU in use, needs {e['cpu']:g}"
        if q.get("memory") is not None:
            used_m = sum(r["memory"] for r in mine)
            if used_m + e["memory"] > memory_bytes(str(q["memory"])):
                return f"workspace {ws} quota memory: {_gib(used_m)} of {q['memory']} in use, needs {_gib(e['memory'])}"
        key = "deploymentGpus" if e.get("deployment") else "trainingGpus"
        if e["gpu"] and q.get(key) is not None:
            used_g = sum(r["gpu"] for r in mine if bool(r.get("deployment")) == bool(e.get("deployment")))
            if used_g + e["gpu"] > int(q[key]):
                return f"workspace {ws} quota {key}: {used_g} of {q[key]} GPU in use, needs {e['gpu']}"
        return ""

    def _machine_reason(self, e: dict, running: list[dict]) -> str:
        cap = self.capacity
        used = sum(r["cpu"] for r in running)
        if used + e["cpu"] > cap.cpu + 1e-9:
            return f"machine CPU: {used:g} of {cap.cpu:g} in use, needs {e['cpu']:g}"
        used_m = sum(r["memory"] for r in running)
        if used_m + e["memory"] > cap.memory:
            return f"machine memory: {_gib(used_m)} of {_gib(cap.memory)} in use, needs {_gib(e['memory'])}"
        if e["gpu"] and len(self._free_gpus(running)) < e["gpu"]:
            return f"machine GPUs: {cap.gpus - len(self._free_gpus(running))} of {cap.gpus} in use, needs {e['gpu']}"
        return ""

    def _free_gpus(self, running: list[dict]) -> list[int]:
        held = {i for r in running for i in r.get("gpus") or []}
        return [i for i in range(self.capacity.gpus) if i not in held]


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g}Gi"


_QUEUES: dict[tuple[str, float, int, int], ResourceQueue] = {}


def queue_for(directory: Path, capacity: Capacity) -> ResourceQueue:
    key = (os.path.abspath(directory), capacity.cpu, capacity.memory, capacity.gpus)
    q = _QUEUES.get(key)
    if q is None:
        q = _QUEUES[key] = ResourceQueue(Path(key[0]), capacity)
    return q


__all__ = ["MEMORY_UNIT", "Capacity", "QUOTA_ANNOTATION", "Request", "ResourceQueue", "nvml_gpu_count", "queue_for", "request_of", "resources_duration"]
