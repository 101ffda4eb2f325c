"""The facade: :class:`LocalRunner` submits, resumes, queries, stops and deletes runs."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kiln._util.clock import utcnow_seconds
from kiln._util.fs import write_text_atomic
from kiln._util.proc import pid_alive
from kiln.errors import WorkflowError
from kiln.runners import _resources, _slots
from kiln.runners.base import Runner, Workflow
from kiln.runners.local import sync
from kiln.runners.local.admission import PodGate, start
from kiln.runners.local.interpreter import _Run
from kiln.runners.local.journal import JOURNAL, reap_orphans, replay_journal
from kiln.runners.local.pod import ENV_PASSTHROUGH
from kiln.runners.local.validation import validate
from kiln.runners.local.wftemplates import TemplateStore, default_folder, resolve

# kiln's render puts a workspace's quotas on its workflows as semaphores of this ConfigMap, with
# their limits in this annotation (kiln.controller.render; runners/argo.py writes the same ConfigMap)
QUOTA_ANNOTATION = "kiln.dev/semaphores"
QUOTA_CONFIGMAP = "kiln-workspace-quotas"


class LocalRunner(Runner):
    """Runs Argo Workflow manifests as host subprocesses; state under ``workdir``."""

    name = "local"

    def __init__(self, workdir: Path, *, max_concurrency: int | None = None, env: dict | None = None,
                 flush_interval: float = 0.05, slots_dir: Path | None = None,
                 capacity: dict[str, Any] | None = None, templates_dir: Path | None = None) -> None:
        """``max_concurrency`` (default: CPU count) caps the pods running at once on this machine,
        across every process that uses the same ``slots_dir`` (default ``$KILN_SLOTS_DIR``, else
        ``~/.cache/kiln/slots``; see ``kiln.runners._slots``). Pods that request resources also
        queue for them (``kiln.runners._resources``) against the machine's ``capacity``
        (``{cpu, memory, gpus}``, detected where a field is not given). ``templates_dir`` (default
        ``$KILN_WORKFLOW_TEMPLATES``) holds the WorkflowTemplates that templateRef and
        workflowTemplateRef name (``wftemplates.py``)."""
        self.workdir = Path(workdir)
        self.slots_dir = Path(slots_dir) if slots_dir is not None else _slots.default_slots_dir()
        self.cache_dir = self.workdir.parent / "cache"
        # stands in for the S3/GCS/... artifact repository: artifacts with a key are kept there
        self.artifact_repo = Path(os.environ.get("KILN_ARTIFACT_REPOSITORY") or self.workdir.parent / "artifact-repository")
        self.max_concurrency = max_concurrency or os.cpu_count() or 1
        if self.max_concurrency < 1:
            raise WorkflowError(f"max_concurrency must be >= 1 (got {max_concurrency})")
        self.gate = PodGate(self.max_concurrency)
        self._slots: _slots.SlotPool | None = None
        self.capacity_override = dict(capacity or {})
        self._resources: _resources.ResourceQueue | None = None
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.flush_interval = flush_interval
        self.locks = sync.Locks()  # synchronization's mutexes and semaphores, shared by this runner's runs
        self.templates = TemplateStore(Path(templates_dir) if templates_dir is not None else default_folder())
        self._active: dict[str, _Run] = {}
        self._lock = threading.Lock()

    @property
    def slots(self) -> _slots.SlotPool:
        if self._slots is None:
            self._slots = _slots.pool_for(self.slots_dir)
        return self._slots

    @property
    def resources(self) -> _resources.ResourceQueue:
        if self._resources is None:
            cap = _resources.Capacity.detect(self.capacity_override)
            self._resources = _resources.queue_for(self.slots_dir, cap)
        return self._resources

    def base_env(self, site_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ENV_PASSTHROUGH or k.startswith(("KILN_", "LC_"))}
        env.update(self.env)
        if env.get("KILN_RANDOM_SEED"):
            env["PYTHONPATH"] = os.pathsep.join(x for x in (str(site_dir), env.get("PYTHONPATH")) if x)
        return env

    # ------------------------------------------------------------------ submit
    def prepare(self, manifest: Workflow, parameters: dict[str, str] | None) -> tuple[Workflow, str]:
        manifest = resolve(manifest, self.templates)
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
        quotas = ((manifest.get("metadata") or {}).get("annotations") or {}).get(QUOTA_ANNOTATION)
        if quotas:  # the workspace quotas its semaphores count against, as the Argo runner sets them
            self.templates.provide(QUOTA_CONFIGMAP, json.loads(quotas))
        wf, run_hash = self.prepare(manifest, parameters)
        _ = self.slots  # created now: a slots folder that cannot be made fails the submit, not every pod
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
                alive = phase in ("Running", "Pending") and pid and pid != os.getpid() and pid_alive(pid) \
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

        finished = start(functools.partial(self._execute, run))
        if not wait:
            return json.loads(run.snapshot())
        try:
            while not finished.wait(0.2):
                pass
        except KeyboardInterrupt:
            run.cancel("interrupted (Ctrl-C)")
            finished.wait()
        return run.wf  # the run is over and nothing else holds it: no copy needed

    def _execute(self, run: _Run) -> None:
        try:
            run.execute()
        finally:
            with self._lock:
                self._active.pop(run.name, None)

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
        write_text_atomic(run_dir / "stop", message)
        pid = int(wf.get("metadata", {}).get("annotations", {}).get("kiln.dev/runner-pid") or 0)
        if pid and pid_alive(pid):
            return
        # the runner is gone: finish the record ourselves
        now = utcnow_seconds()
        for n in wf["status"].get("nodes", {}).values():
            if n.get("phase") in ("Running", "Pending"):
                n.update(phase="Failed", message=message, finishedAt=now)
        wf["status"].update(phase="Failed", message=message, finishedAt=now)
        write_text_atomic(run_dir / "workflow.json", json.dumps(wf, separators=(",", ":")))
        try:
            (run_dir / JOURNAL).unlink()  # replayed into the snapshot just written
        except OSError:
            pass

    def resume(self, name: str) -> None:
        """Resume a run's suspended steps (``suspend`` templates waiting now), as `argo resume` does."""
        wf = self.get(name)
        if wf is None:
            raise WorkflowError(f"no run named {name!r} under {self.workdir}")
        if wf.get("status", {}).get("phase") not in ("Running", "Pending"):
            raise WorkflowError(f"run {name!r} is {wf.get('status', {}).get('phase')}, not running: nothing to resume")
        if not any(n.get("type") == "Suspend" and n.get("phase") == "Running" for n in wf["status"].get("nodes", {}).values()):
            raise WorkflowError(f"run {name!r} has no suspended step", hint=f"kiln logs {name} shows where it is")
        write_text_atomic(self.workdir / name / "resume", utcnow_seconds())

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

