"""Pod execution: one container/script node run as a host process group.

A :class:`Pod` goes through its steps in order: lay out the sandbox (container paths mapped to
private host paths), stage input artifacts, build argv and environment, take its places
(:mod:`kiln.runners.local.admission`), spawn, pump stdout/stderr into the log until both pipes
close, wait, and turn the exit code and the files it wrote into the node's outputs.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.errors import WorkflowError
from kiln.runners import _expr
from kiln.runners._resources import STOP_REASON_ENV, JobStopped, Request, request_of, resources_duration, stopped_message
from kiln.runners._template import nested_env, render
from kiln.runners.local.admission import HANDOFF, hand
from kiln.runners.local.common import Stopped, image_base, parse_duration

if TYPE_CHECKING:
    from kiln.runners.local.interpreter import _Run

# runners/_argosay.py, next to this package
ARGOSAY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_argosay.py")

SITECUSTOMIZE = '''\
# written by kiln's local runner: seed `random` so examples that flip coins are reproducible
import os, random
_seed = os.environ.get("KILN_RANDOM_SEED")
if _seed:
    random.seed(_seed)
'''

ENV_PASSTHROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM",
                   "SHELL", "VIRTUAL_ENV", "PYTHONPATH", "SYSTEMROOT")


class Pod:
    """One attempt of a container/script node, on the thread that runs it. :meth:`execute`
    finishes the node (Succeeded, Failed or Error) unless it raises; the caller turns a
    :class:`~kiln.runners.local.common.Stopped` or a ``WorkflowError`` into the node's phase."""

    def __init__(self, run: _Run, node: dict, tmpl: dict, kind: str, local: dict[str, Any]) -> None:
        self.run = run
        self.node = node
        self.tmpl = tmpl
        self.kind = kind
        self.local = local
        self.c = tmpl[kind]
        self.nid = node["id"]
        self.sandbox = f"{run.dir_s}/tmp/{self.nid}"  # str, not Path: pathlib costs microseconds per join
        self.workdir = f"{run.dir_s}/tmp"
        self.root = self.workdir  # the container's "/" (its default working directory), once laid out
        self.pmap: dict[str, str] = {}
        self.rx: re.Pattern[str] | None = None
        # what admit() took, for leave()
        self.gated = self.placed = self.wf_held = False
        self.slot = -1
        self.req: Request | None = None
        self.res_id = ""  # the resource queue entry held (kiln.runners._resources), "" when none
        self.stopped = ""  # `kiln stop --job` ended it: the phase message (no retry)
        self.log_fd = -1  # the log file is created on the first byte: most `true`s print nothing

    def execute(self) -> None:
        self.lay_out()
        self.stage_inputs()
        if self.tmpl.get("daemon") and self.kind != "containerSet":
            self.start_daemon()
            return
        containers = self.containers()
        deadline_s = self.deadline()
        # a DAG task started through the gate already holds its place (see PodGate)
        self.gated, HANDOFF.place = HANDOFF.place, False
        ended: tuple[int, list[bytes]] | None = None
        sidecars: list[subprocess.Popen] = []
        try:
            self.admit()
            if self.tmpl.get("sidecars"):
                started = self.start_sidecars()
                if started is None:
                    return  # a sidecar could not start: the node is finished (Error)
                sidecars = started
            result: tuple[int, list[bytes]] | None = None
            t0 = time.monotonic()
            for c in containers:
                self.c = c
                argv = self.argv()
                env = self.env()
                if self.gpus is not None:  # GPUs by index, never shared; a pod that asked for none sees none
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in self.gpus)
                if self.res_id:
                    env[STOP_REASON_ENV] = f"{self.run.dir_s}/logs/{self.nid}.stop"
                cwd = c.get("workingDir")
                cwd = cwd if cwd and os.path.isdir(cwd) else self.root
                executable = self.run.which(argv[0], env.get("PATH", os.defpath))
                ended = self.spawn_and_wait(argv, executable, cwd, env, deadline_s)
                if ended is None:
                    return  # could not start: the node is finished (Error)
                if len(containers) == 1 or c.get("name") == "main":
                    result = ended  # a containerSet's result is its "main" container's stdout, as in Argo
                if ended[0] != 0:
                    break  # a failed container fails the pod; the ones after it never start
            if self.req is not None:
                # what it held while it ran (not while it queued), in Argo's units and field, so
                # that `kiln usage` reads the same from both runners
                with self.run.lock:
                    self.node["resourcesDuration"] = resources_duration(self.req, time.monotonic() - t0)
        finally:
            self.stop_sidecars(sidecars)
            self.leave()
        if ended is not None:
            self.conclude(ended[0], (result or (0, []))[1] if ended[0] == 0 else ended[1])

    def start_daemon(self) -> None:
        """A daemoned step (``daemon: true``): its process is started in the background, the node
        is marked ``daemoned`` once it is ready (its readinessProbe's httpGet answers on
        loopback, when it has one) and the steps after it run; it is killed when the template
        that started it ends (``_Run.stop_daemons``). It takes no pod slot: it would hold one
        for as long as its siblings run, and could starve them."""
        run, c = self.run, self.c
        argv, env = self.argv(), self.env()
        log = os.open(f"{run.dir_s}/logs/{self.nid}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            p = subprocess.Popen(argv, executable=run.which(argv[0], env.get("PATH", os.defpath)), cwd=self.root, env=env,
                                 stdin=devnull(), stdout=log, stderr=log, start_new_session=True)
        except OSError as exc:
            run.finish(self.node, "Error", f"cannot start {argv[0]!r}: {exc.strerror}")
            return
        finally:
            os.close(log)
        run.pods.add(p.pid)
        with run.lock:
            run.procs[self.nid] = (p, None)
            run.daemons.setdefault(self.node.get("boundaryID") or "", []).append((self.nid, p))
        probe = ((c.get("readinessProbe") or {}).get("httpGet") or {})
        if probe.get("port"):
            url = f"http://127.0.0.1:{probe['port']}{probe.get('path') or '/'}"
            end = time.monotonic() + float((c.get("readinessProbe") or {}).get("initialDelaySeconds") or 0) + 30
            while time.monotonic() < end and p.poll() is None:
                try:
                    with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback
                        break
                except (OSError, ValueError):
                    run.stop_event.wait(0.2)
                    run.check_stop()
        if p.poll() is not None:
            run.finish(self.node, "Failed", f"daemon exited before it was ready (exit code {p.returncode})")
            return
        with run.lock:
            self.node["daemoned"] = True
            self.node["hostNodeName"] = run.hostname
        run.finish(self.node, "Succeeded", "", {"exitCode": "0"})

    def start_sidecars(self) -> list[subprocess.Popen] | None:
        """Start the template's sidecars as background process groups writing into the pod's
        log, as Argo starts them next to the main container; None (the node finished with
        Error) when one cannot start. They are killed once the main container(s) ended."""
        main_c = self.c
        procs: list[subprocess.Popen] = []
        log = os.open(f"{self.run.dir_s}/logs/{self.nid}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            for sc in self.tmpl.get("sidecars") or []:
                self.c = sc
                argv, env = self.argv(), self.env()
                try:
                    p = subprocess.Popen(argv, executable=self.run.which(argv[0], env.get("PATH", os.defpath)),
                                         cwd=self.workdir, env=env, stdin=devnull(), stdout=log, stderr=log,
                                         start_new_session=True)
                except OSError as exc:
                    self.stop_sidecars(procs)
                    self.run.finish(self.node, "Error", f"sidecar {sc.get('name')!r}: cannot start {argv[0]!r}: {exc.strerror}")
                    return None
                self.run.pods.add(p.pid)
                with self.run.lock:  # a stop or the workflow's deadline kills them with the pod
                    self.run.procs[f"{self.nid}/{sc.get('name')}"] = (p, None)
                procs.append(p)
        finally:
            os.close(log)
            self.c = main_c
        return procs

    def stop_sidecars(self, procs: list[subprocess.Popen]) -> None:
        for p in procs:
            kill_group(p)
        for p, sc in zip(procs, self.tmpl.get("sidecars") or [], strict=False):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            with self.run.lock:
                self.run.procs.pop(f"{self.nid}/{sc.get('name')}", None)

    def containers(self) -> list[dict]:
        """The containers to run, in order: one, or a containerSet's in an order its
        ``dependencies`` allow (one after another: one pod's slot, and each sees the files the
        ones it depends on wrote in the shared volumes)."""
        if self.kind != "containerSet":
            return [self.c]
        cs = list(self.c.get("containers") or [])
        names = {c.get("name") for c in cs}
        done: set[str] = set()
        order: list[dict] = []
        while len(order) < len(cs):
            ready = [c for c in cs if c.get("name") not in done and set(c.get("dependencies") or []) <= done]
            if not ready:
                unknown = sorted({d for c in cs for d in c.get("dependencies") or []} - names)
                raise WorkflowError(f"template {self.tmpl['name']!r}: containerSet dependencies "
                                    + (f"name unknown containers {unknown}" if unknown else "form a cycle"))
            for c in ready:
                done.add(c.get("name"))
                order.append(c)
        return order

    # ------------------------------------------------------------------ sandbox and inputs
    def lay_out(self) -> None:
        """Map the container paths the template declares to private host paths (longest first,
        so /tmp/a/b wins over /tmp/a) and create the pod's sandbox when it needs one."""
        tmpl, local = self.tmpl, self.local
        outputs_spec = tmpl.get("outputs") or {}
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
        # volume mounts (emptyDir: the only kind that passed validation) are private folders too
        mounts = [m.get("mountPath") for m in self.c.get("volumeMounts") or []]
        for c in self.c.get("containers") or []:
            mounts += [m.get("mountPath") for m in c.get("volumeMounts") or []]
        mounts = [m.rstrip("/") for m in mounts if isinstance(m, str) and m.startswith("/") and m.rstrip("/")]
        cpaths += mounts
        # "/tmp/" names the folder /tmp; and a file's own folder below the top level
        # (/mnt/out of /mnt/out/part.json) is the program's to create: map it too, so that
        # `mkdir /mnt/out` and the file land in the same private place
        dirs = [cp.rstrip("/") for cp in cpaths if cp.endswith("/") and cp.rstrip("/")] + mounts
        cpaths = [cp.rstrip("/") or "/" for cp in cpaths]
        cpaths += [os.path.dirname(cp) for cp in cpaths if cp.startswith("/") and cp.count("/") >= 3]
        sandbox = self.sandbox
        pmap = self.pmap = {cp: f"{sandbox}/fs/{cp.lstrip('/')}" for cp in cpaths if cp.startswith("/") and cp != "/"}
        # a private folder only for pods that write files or scripts: mkdir is not free
        if pmap or cpaths or self.kind == "script":
            if os.path.exists(sandbox):
                shutil.rmtree(sandbox, ignore_errors=True)
            os.makedirs(sandbox)
            self.workdir = sandbox
            # an image's working directory is "/" unless it says otherwise: a relative path
            # the program writes lands where the template's absolute paths are mapped
            self.root = f"{sandbox}/fs"
            os.makedirs(self.root, exist_ok=True)
        for cp in pmap:
            # top-level folders (/tmp, /mnt) exist in any image; deeper ones the program makes
            os.makedirs(f"{sandbox}/fs/{cp.split('/')[1]}" if cp.count("/") >= 2 else f"{sandbox}/fs", exist_ok=True)
        for d in dirs:  # folders the template names as such (a mount, "/tmp/")
            os.makedirs(pmap[d], exist_ok=True)
        if pmap:
            self.rx = re.compile(r"(?<![\w.])(" + "|".join(re.escape(p) for p in sorted(pmap, key=len, reverse=True))
                                 + r")(?![\w.\-])")

    def remap(self, s: str) -> str:
        """``s`` with the mapped container paths replaced by their host paths."""
        pmap = self.pmap
        return self.rx.sub(lambda m: pmap[m.group(1)], s) if self.rx else s

    def host_path(self, cp: str) -> Path:
        cp = cp.rstrip("/") or "/"  # as lay_out keys them
        return Path(self.pmap[cp]) if cp in self.pmap else Path(self.workdir, cp)  # an absolute cp stays as is

    def stage_inputs(self) -> None:
        """Input artifacts onto their (mapped) paths."""
        tmpl = self.tmpl
        for a in (tmpl.get("inputs") or {}).get("artifacts") or []:
            art = self.local.get(f"inputs.artifacts.{a['name']}") or a
            dest = self.host_path(a["path"]) if a.get("path") else None
            if dest is None:
                continue
            key = repo_key(art, self.local)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if (art.get("raw") or {}).get("data") is not None:
                dest.write_text(art["raw"]["data"])
            elif (art.get("local") or {}).get("path") or key is not None:
                # a step's own output (local.path), or a key of the local artifact repository
                src = Path(art["local"]["path"]) if (art.get("local") or {}).get("path") else self.run.runner.artifact_repo / key
                if art.get("subPath"):
                    src = src / render(str(art["subPath"]), self.local)
                if not src.exists():
                    if a.get("optional"):
                        continue
                    raise WorkflowError(f"input artifact {a['name']!r} of template {tmpl['name']!r}: "
                                        + (f"key {key!r} is not in the artifact repository {self.run.runner.artifact_repo}"
                                           if key is not None and not (art.get("local") or {}).get("path") else f"{src} does not exist"),
                                        hint="an earlier step must save it (outputs.artifacts with the same key)")
                if src.is_dir():
                    shutil.copytree(src, dest, dirs_exist_ok=True)
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dest)
            elif not a.get("optional"):
                raise WorkflowError(f"input artifact {a['name']!r} of template {tmpl['name']!r} has no source",
                                    hint="pass it with arguments.artifacts (from/raw) in the calling step")

    # ------------------------------------------------------------------ argv, env, deadline
    def argv(self) -> list[str]:
        c, tmpl = self.c, self.tmpl
        command = [self.remap(str(x)) for x in c.get("command") or []]
        args = [self.remap(str(x)) for x in c.get("args") or []]
        if self.kind == "script":
            script = f"{self.sandbox}/script"
            with open(script, "w") as f:
                f.write(self.remap(c.get("source") or ""))
            argv = (command or ["sh"]) + [script] + args
        elif command:
            argv = command + args
        else:
            if image_base(c.get("image") or "") != "argoproj/argosay":
                raise WorkflowError(f"template {tmpl['name']!r}: no command and image {c.get('image')!r} cannot run on the host",
                                    hint="give container.command")
            argv = [sys.executable, ARGOSAY] + args
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        elif argv[0] == "kiln":  # kiln's own image: run this installation's kiln
            argv = [sys.executable, "-m", "kiln.cli", *argv[1:]]
        return argv

    def env(self) -> dict[str, str]:
        env = dict(self.run.base_env)
        env["TMPDIR"] = self.workdir
        if env.get("KILN_RANDOM_SEED"):
            env["KILN_RANDOM_SEED"] = f"{env['KILN_RANDOM_SEED']}/{self.node['name']}"
        for e in self.c.get("env") or []:
            if "value" in e:
                env[e["name"]] = self.remap(str(e["value"]))
            elif e.get("valueFrom"):
                raise WorkflowError(f"template {self.tmpl['name']!r}: env {e['name']!r} uses valueFrom, which the local runner cannot resolve",
                                    hint="pass the value through KILN_* environment variables or a parameter")
        return env

    def deadline(self) -> float | None:
        """Seconds the process may run: the smaller of activeDeadlineSeconds and timeout."""
        tmpl = self.tmpl
        deadline_s = None
        for key in ("activeDeadlineSeconds", "timeout"):
            if tmpl.get(key) not in (None, ""):
                d = parse_duration(tmpl[key], f"template {tmpl['name']!r} {key}")
                deadline_s = d if deadline_s is None else min(deadline_s, d)
        return deadline_s

    # ------------------------------------------------------------------ admission
    def admit(self) -> None:
        """Take spec.parallelism, then this runner's own cap (a thread that waited inside the slot
        pool instead would be woken twice), then the machine-wide slot, shared with other kiln
        processes and held while the process runs; the slot also caps this runner's own pods at
        max_concurrency (slots 0..N-1 only). What was taken is recorded for :meth:`leave`."""
        run = self.run
        if run.wf_sem is not None:
            while not run.wf_sem.acquire(timeout=0.2):
                run.check_stop()
            self.wf_held = True
        # the resource queue before the runner's own places: a pod waiting for its workspace's
        # quota must not hold a place that a pod of another workspace could use
        self.gpus: list[int] | None = None
        self.req = req = request_of(run.wf, self.node["name"], self.c)
        if req is not None:
            queue = run.runner.resources
            try:
                entry = queue.acquire(req, run.check_stop)  # why it waits: the queue's entry (`kiln queue`)
            except JobStopped as exc:  # taken out of the queue before it started: ends Failed, not retried
                self.stopped = str(exc)
                with run.lock:
                    run.user_stopped.add(self.nid)
                raise Stopped(self.stopped) from None
            self.res_id = entry["id"]
            self.gpus = entry["gpus"] if queue.capacity.gpus else None
        if not self.gated:
            run.runner.gate.acquire(run.check_stop)
        self.placed = True
        self.slot = run.runner.slots.acquire(run.runner.max_concurrency, run.check_stop)
        run.check_stop()

    def leave(self) -> None:
        run = self.run
        if self.slot >= 0:
            run.runner.slots.release(self.slot)
        if self.res_id:
            ended = run.runner.resources.release(self.res_id) or {}
            if ended.get("stop"):
                self.stopped = stopped_message(ended["stop"])
        if self.placed or self.gated:
            # the freed place may go to a waiting DAG task: a gated pod's thread runs it next
            hand(run.runner.gate.release(), inline=self.gated)
        if self.wf_held and run.wf_sem is not None:
            run.wf_sem.release()

    # ------------------------------------------------------------------ the process
    def spawn_and_wait(self, argv: list[str], executable: str, cwd: str, env: dict[str, str],
                       deadline_s: float | None) -> tuple[int, list[bytes]] | None:
        """(exit status, stdout chunks), or None when the process could not start (the node
        is finished with Error then)."""
        out_chunks: list[bytes] = []
        try:
            started = self.spawn(argv, executable, cwd, env, deadline_s)
            if started is None:
                return None
            proc, out_r, err_r = started
            try:
                self.pump(out_r, err_r, out_chunks)
            finally:
                os.close(out_r)
                os.close(err_r)
            return proc.wait(), out_chunks
        finally:
            if self.log_fd >= 0:
                os.close(self.log_fd)
                self.log_fd = -1  # a containerSet's next container opens it again
            with self.run.lock:
                self.run.procs.pop(self.nid, None)

    def spawn(self, argv: list[str], executable: str, cwd: str, env: dict[str, str],
              deadline_s: float | None) -> tuple[subprocess.Popen, int, int] | None:
        run = self.run
        out_r, out_w = os.pipe2(os.O_CLOEXEC)  # the child's dup2 drops CLOEXEC on fds 1 and 2
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(argv, executable=executable, cwd=cwd, env=env, stdin=devnull(), stdout=out_w, stderr=err_w,
                                    start_new_session=True)
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            run.finish(self.node, "Error", f"cannot start {argv[0]!r}: {exc.strerror}")
            return None
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        run.pods.add(proc.pid)
        if self.res_id:  # `kiln stop RUN --job NODE` ends this process group through the queue
            run.runner.resources.started(self.res_id, proc.pid, env.get(STOP_REASON_ENV, ""))
        dl = time.monotonic() + deadline_s if deadline_s is not None else None
        with run.lock:
            run.procs[self.nid] = (proc, dl)  # the housekeeper kills it past dl (run.watch)
            self.node["hostNodeName"] = run.hostname
        return proc, out_r, err_r

    def pump(self, out_r: int, err_r: int, out_chunks: list[bytes]) -> None:
        """Copy stdout and stderr into the log (stdout also into ``out_chunks``) until both close."""
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
                if self.log_fd < 0:
                    self.log_fd = os.open(f"{self.run.dir_s}/logs/{self.nid}.log",
                                          os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
                os.write(self.log_fd, chunk)

    # ------------------------------------------------------------------ outputs
    def conclude(self, rc: int, out_chunks: list[bytes]) -> None:
        run = self.run
        stdout = b"".join(out_chunks).decode(errors="replace")
        if rc < 0:  # killed by a signal: report it as a shell would (143 for SIGTERM)
            rc = 128 - rc
        outputs: dict[str, Any] = {"exitCode": str(rc)}
        outputs["result"] = stdout.strip()
        if self.nid in run.timed_out:
            phase, msg = "Failed", "Pod was active on the node longer than the specified deadline"
        elif run.stop_event.is_set():
            phase, msg = "Failed", run.stop_message
        elif self.stopped:  # as Argo's `stop --node-field-selector`: Failed, and never retried
            phase, msg = "Failed", self.stopped
            with run.lock:
                run.user_stopped.add(self.nid)
        elif rc != 0:
            phase, msg = "Failed", f"Error (exit code {rc})"
        else:
            phase, msg = "Succeeded", ""
        perr = self.collect_outputs(outputs, phase == "Succeeded")
        if perr and phase == "Succeeded":
            phase, msg = "Error", perr
        run.finish(self.node, phase, msg, outputs)

    def collect_outputs(self, outputs: dict, strict: bool) -> str:
        """Output parameters and artifacts into ``outputs``; returns the first error, or ""."""
        spec = self.tmpl.get("outputs") or {}
        params, err = self.output_parameters(spec, outputs)
        if params:
            outputs["parameters"] = params
        arts = []
        for a in spec.get("artifacts") or []:
            if not a.get("path"):
                continue
            src = self.host_path(render(a["path"], self.local))
            dest = self.run.dir / "artifacts" / self.nid / a["name"]
            if src.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, dest, dirs_exist_ok=True)
                else:
                    shutil.copyfile(src, dest)
                entry = {"name": a["name"], "path": a["path"], "local": {"path": str(dest)}}
                key = repo_key(a, self.local)
                if key is not None:  # saved to the (local) artifact repository under its key too
                    kind = next(k for k in REPO_KEYS if a.get(k) is not None)
                    repo_dest = self.run.runner.artifact_repo / key
                    repo_dest.parent.mkdir(parents=True, exist_ok=True)
                    if src.is_dir():
                        shutil.copytree(src, repo_dest, dirs_exist_ok=True)
                    else:
                        shutil.copyfile(src, repo_dest)
                    entry[kind] = {**a[kind], REPO_KEYS[kind]: key}
                if a.get("globalName"):
                    entry["globalName"] = a["globalName"]
                arts.append(entry)
            elif not a.get("optional") and strict and not err:
                err = f"output artifact {a['name']!r}: {a['path']} was not written"
        if arts:
            outputs["artifacts"] = arts
        return err

    def output_parameters(self, spec: dict, outputs: dict) -> tuple[list[dict], str]:
        local = self.local
        params = []
        err = ""
        for p in spec.get("parameters") or []:
            vf = p.get("valueFrom") or {}
            value = None
            if "value" in p:
                value = render(str(p["value"]), local)
            elif vf.get("path"):
                hp = self.host_path(render(vf["path"], local))
                try:
                    value = hp.read_text().strip()
                except OSError:
                    value = None
            elif vf.get("expression"):
                env_scope = dict(local)
                env_scope["outputs.result"] = outputs.get("result", "")
                env_scope["exitCode"] = outputs.get("exitCode", "")
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
        return params, err


# artifact repositories Argo stores artifacts in, and the field naming an artifact's place in
# one: the local runner keeps them all in one folder (LocalRunner.artifact_repo), by that key
REPO_KEYS = {"s3": "key", "gcs": "key", "oss": "key", "azure": "blob", "hdfs": "path"}


def repo_key(art: dict, scope: dict[str, Any]) -> str | None:
    """The repository key of an artifact (rendered), or None when it names no repository."""
    for kind, field in REPO_KEYS.items():
        loc = art.get(kind)
        if isinstance(loc, dict) and loc.get(field):
            key = render(str(loc[field]), scope).strip("/")
            if ".." in Path(key).parts:
                raise WorkflowError(f"artifact {art.get('name')!r}: {kind}.{field} {key!r} leaves the repository")
            return key
    return None


_DEVNULL_FD = -1


def devnull() -> int:
    """One read-only /dev/null fd for every pod's stdin (Popen would open and close one per pod)."""
    global _DEVNULL_FD
    if _DEVNULL_FD < 0:
        _DEVNULL_FD = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _DEVNULL_FD


def kill_group(p: subprocess.Popen) -> None:
    """SIGTERM to the pod's process group, SIGKILL 2 s later if it is still there."""
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
