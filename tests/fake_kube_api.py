"""A small, real HTTP server that speaks the slice of the Kubernetes API the Argo runner uses.

Why a fake: no Kubernetes cluster can run on this machine. Everything on the client side is real
(``kubernetes.client.ApiClient``, urllib3, JSON (de)serialisation, kubeconfig loading); only the
server is ours. It implements, for ``argoproj.io/v1alpha1`` ``workflows`` in any namespace:
create (POST), get (GET), delete (DELETE) and JSON-merge patch (PATCH; strategic merge answers 415
as the real API server does for custom resources), plus ``GET /api/v1/namespaces/{ns}/pods/{pod}/log``.

Every workflow body it receives (and every object after a patch) is validated against the bundled
strict Argo schema; violations are collected in ``invalid_bodies`` so tests can assert the client
never sent an invalid manifest. A background "controller" thread per workflow walks the entrypoint's
steps/DAG tasks: node Pending -> Running -> Succeeded (or Failed for names in ``fail_nodes``),
writing pod logs under the pod names Argo (POD_NAMES=v2) would use, and honours
``spec.shutdown``. Faults on demand: ``force(status, method=...)``, ``crd_installed = False``,
bearer-token checking (401), missing namespaces, slow deletion (``delete_delay``).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import secrets
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from kiln.runners.schema import validate_workflow

WF_PATH = re.compile(r"^/apis/argoproj\.io/v1alpha1/namespaces/([^/]+)/workflows(?:/([^/]+))?$")
CM_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?$")
LOG_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fnv1a_32(text: str) -> int:
    # written the way Argo's UI does it (shift-add form), independent of kiln's implementation
    h = 2166136261
    for byte in text.encode():
        h ^= byte
        h = (h + (h << 1) + (h << 4) + (h << 7) + (h << 8) + (h << 24)) & 0xFFFFFFFF
    return h


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


class FakeKube:
    def __init__(self, *, token: str | None = None, step_delay: float = 0.05) -> None:
        self.token = token
        self.step_delay = step_delay
        self.lock = threading.RLock()
        self.workflows: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], dict[str, str]] = {}  # (ns, pod) -> container -> log text
        self.namespaces = {"argo"}
        self.configmaps: dict[tuple[str, str], dict] = {}  # (namespace, name) -> ConfigMap
        self.crd_installed = True
        self.fail_nodes: set[str] = set()
        self.delete_delay = 0.0
        self.forced: dict[str, tuple[int, dict | str]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.invalid_bodies: list[tuple[str, list]] = []
        self.gate = threading.Event()  # cleared: nodes stay Running until set
        self.gate.set()
        self._rv = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            kube = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self.gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def force(self, status: int, *, method: str = "*", body: dict | str | None = None) -> None:
        """Answer every ``method`` request with ``status`` until ``clear_forced``."""
        reason = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 422: "Invalid",
                  500: "InternalError"}.get(status, "Error")
        self.forced[method] = (status, body if body is not None else status_body(status, reason, f"forced {status}"))

    def clear_forced(self) -> None:
        self.forced.clear()

    # -- object store -----------------------------------------------------------------------

    def _validate(self, where: str, obj: dict) -> None:
        issues = validate_workflow(obj)
        if issues:
            self.invalid_bodies.append((where, issues))

    def _bump(self, wf: dict) -> None:
        wf["metadata"]["resourceVersion"] = str(next(self._rv))
        self._validate(f"stored {wf['metadata']['name']}", wf)

    def create(self, ns: str, body: dict) -> tuple[int, dict]:
        self._validate(f"POST {ns}", body)
        if ns not in self.namespaces:
            return 404, status_body(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
        meta = body.setdefault("metadata", {})
        if meta.get("namespace", ns) != ns:
            return 400, status_body(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        if not meta.get("name"):
            if not meta.get("generateName"):
                return 422, status_body(422, "Invalid", "name or generateName is required",
                                        {"kind": "Workflow", "causes": [{"field": "metadata.name", "message": "Required value"}]})
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta["name"]
        with self.lock:
            if (ns, name) in self.workflows:
                return 409, status_body(409, "AlreadyExists", f'workflows.argoproj.io "{name}" already exists',
                                        {"name": name, "group": "argoproj.io", "kind": "workflows"})
            meta.update(namespace=ns, uid=secrets.token_hex(8), creationTimestamp=_now())
            self.workflows[(ns, name)] = body
            self._bump(body)
            stored = copy.deepcopy(body)
        t = threading.Thread(target=self._controller, args=(ns, name), daemon=True)
        self._threads.append(t)
        t.start()
        return 201, stored

    def _not_found(self, name: str) -> tuple[int, dict]:
        return 404, status_body(404, "NotFound", f'workflows.argoproj.io "{name}" not found',
                                {"name": name, "group": "argoproj.io", "kind": "workflows"})

    def get(self, ns: str, name: str) -> tuple[int, dict]:
        with self.lock:
            wf = self.workflows.get((ns, name))
            return (200, copy.deepcopy(wf)) if wf else self._not_found(name)

    def patch(self, ns: str, name: str, content_type: str | None, body: Any) -> tuple[int, dict]:
        if content_type != "application/merge-patch+json":
            return 415, status_body(415, "UnsupportedMediaType",
                                    f'the body of the request was in an unknown format - accepted media types include: '
                                    f'application/json-patch+json, application/merge-patch+json (got {content_type})')
        with self.lock:
            wf = self.workflows.get((ns, name))
            if wf is None:
                return self._not_found(name)
            merged = _merge_patch(wf, body)
            self._validate(f"PATCH {name}", merged)
            self.workflows[(ns, name)] = merged
            self._bump(merged)
            return 200, copy.deepcopy(merged)

    def delete(self, ns: str, name: str) -> tuple[int, dict]:
        with self.lock:
            wf = self.workflows.get((ns, name))
            if wf is None:
                return self._not_found(name)
            wf["spec"]["shutdown"] = "Terminate"  # owner gone: its controller loop stops
            if self.delete_delay > 0:
                wf["metadata"]["deletionTimestamp"] = _now()
                self._bump(wf)
                threading.Timer(self.delete_delay, self._remove, args=(ns, name, wf["metadata"]["uid"])).start()
            else:
                self._remove(ns, name, wf["metadata"]["uid"])
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": name, "group": "argoproj.io", "kind": "workflows", "uid": wf["metadata"]["uid"]}}

    def _remove(self, ns: str, name: str, uid: str) -> None:
        with self.lock:
            wf = self.workflows.get((ns, name))
            if wf is not None and wf["metadata"]["uid"] == uid:
                del self.workflows[(ns, name)]
                for pod in [p for p in self.pods if p[0] == ns and p[1].startswith(name)]:
                    del self.pods[pod]

    def pod_log(self, ns: str, pod: str, container: str | None) -> tuple[int, dict | str]:
        with self.lock:
            containers = self.pods.get((ns, pod))
            if containers is None:
                return 404, status_body(404, "NotFound", f'pods "{pod}" not found', {"name": pod, "kind": "pods"})
            if container is None and len(containers) > 1:
                return 400, status_body(400, "BadRequest", f"a container name must be specified for pod {pod}")
            key = container or next(iter(containers))
            if key not in containers:
                return 400, status_body(400, "BadRequest", f"container {key} is not valid for pod {pod}")
            return 200, containers[key]

    # -- simulated Argo controller -------------------------------------------------------------

    def _plan(self, wf: dict) -> tuple[str, list[tuple[str, str, str]]]:
        """(root node type, [(node name, display name, template name)]) for the entrypoint."""
        name = wf["metadata"]["name"]
        spec = wf["spec"]
        templates = {t["name"]: t for t in spec.get("templates", [])}
        entry = templates.get(spec.get("entrypoint", ""), {})
        # a fake: every step/task becomes one pod, run in document order
        if "steps" in entry:
            return "Steps", [(f"{name}[{i}].{s['name']}", s["name"], s.get("template") or "inline")
                             for i, group in enumerate(entry["steps"]) for s in group]
        if "dag" in entry:
            return "DAG", [(f"{name}.{t['name']}", t["name"], t.get("template") or "inline")
                           for t in entry["dag"]["tasks"]]
        return "Pod", []

    def _update(self, ns: str, name: str, fn) -> bool:
        with self.lock:
            wf = self.workflows.get((ns, name))
            if wf is None:
                return False
            fn(wf)
            self._bump(wf)
            return True

    def _stopped(self, ns: str, name: str) -> bool:
        with self.lock:
            wf = self.workflows.get((ns, name))
            return wf is None or wf["spec"].get("shutdown") in ("Terminate", "Stop")

    def _controller(self, ns: str, name: str) -> None:
        time.sleep(self.step_delay)
        with self.lock:
            wf = copy.deepcopy(self.workflows.get((ns, name)))
        if wf is None:
            return
        root_type, plan = self._plan(wf)
        entry = wf["spec"]["entrypoint"]
        params = {p["name"]: p.get("value", "") for p in wf["spec"].get("arguments", {}).get("parameters", [])}

        def start(w: dict) -> None:
            root = {"id": name, "name": name, "displayName": name, "type": root_type, "templateName": entry,
                    "phase": "Running", "startedAt": _now()}
            w["status"] = {"phase": "Running", "startedAt": _now(), "nodes": {name: root}}
        self._update(ns, name, start)
        if root_type == "Pod":
            plan_nodes = [(name, name, entry, name)]
        else:
            plan_nodes = [(n, d, t, f"{name}-{t}-{_fnv1a_32(n)}") for n, d, t in plan]

        failed: str | None = None
        for node_name, display, template, pod in plan_nodes:
            node_id = name if node_name == name else f"{name}-{_fnv1a_32(node_name)}"
            if self._stopped(ns, name):
                break

            def running(w: dict, node_id=node_id, node_name=node_name, display=display, template=template) -> None:
                if node_id != name:
                    w["status"]["nodes"][node_id] = {
                        "id": node_id, "name": node_name, "displayName": display, "type": "Pod",
                        "templateName": template, "phase": "Running", "startedAt": _now(), "boundaryID": name}
                    w["status"]["nodes"][name].setdefault("children", []).append(node_id)
            self._update(ns, name, running)
            with self.lock:
                self.pods[(ns, pod)] = {"main": f"start {display}\nparams {json.dumps(params, sort_keys=True)}\n",
                                        "wait": "argoexec wait\n"}
            time.sleep(self.step_delay)
            while not self.gate.wait(0.02):
                if self._stopped(ns, name):
                    break
            stopped = self._stopped(ns, name)
            phase = "Failed" if (display in self.fail_nodes or stopped) else "Succeeded"
            with self.lock:
                if (ns, pod) in self.pods:
                    self.pods[(ns, pod)]["main"] += f"end {display} {phase}\n"

            def finished(w: dict, node_id=node_id, phase=phase, stopped=stopped) -> None:
                node = w["status"]["nodes"][node_id]
                node.update(phase=phase, finishedAt=_now())
                if stopped:
                    node["message"] = "Stopped with strategy 'Terminate'"
            self._update(ns, name, finished)
            if phase == "Failed":
                failed = display
                break

        stopped = self._stopped(ns, name)

        def done(w: dict) -> None:
            st = w["status"]
            ok = failed is None and not stopped
            st["phase"] = "Succeeded" if ok else "Failed"
            st["finishedAt"] = _now()
            st["nodes"][name].update(phase=st["phase"], finishedAt=_now())
            if stopped:
                st["message"] = "Stopped with strategy 'Terminate'"
            elif failed:
                st["message"] = f"child '{failed}' failed"
        self._update(ns, name, done)


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: dict | str) -> None:
        if isinstance(body, str):
            data, ctype = body.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _handle(self, method: str) -> None:
        kube = self.kube
        url = urlparse(self.path)
        body = self._body()
        ctype = (self.headers.get("Content-Type") or "").split(";")[0] or None
        kube.requests.append((method, url.path, ctype))
        if kube.token is not None and self.headers.get("Authorization") != f"Bearer {kube.token}":
            return self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
        forced = kube.forced.get(method) or kube.forced.get("*")
        if forced:
            return self._send(*forced)
        if m := WF_PATH.match(url.path):
            if not kube.crd_installed:
                return self._send(404, "404 page not found\n")
            ns, name = m.groups()
            if method == "POST" and name is None:
                return self._send(*kube.create(ns, body))
            if name is not None and method == "GET":
                return self._send(*kube.get(ns, name))
            if name is not None and method == "PATCH":
                return self._send(*kube.patch(ns, name, ctype, body))
            if name is not None and method == "DELETE":
                return self._send(*kube.delete(ns, name))
            return self._send(405, status_body(405, "MethodNotAllowed", f"{method} not supported by the fake"))
        if m := CM_PATH.match(url.path):  # config maps: the workspaces' semaphores (#18)
            ns, name = m.groups()
            with kube.lock:
                if method == "POST" and name is None:
                    name = body["metadata"]["name"]
                    if (ns, name) in kube.configmaps:
                        return self._send(409, status_body(409, "AlreadyExists", f'configmaps "{name}" already exists'))
                    kube.configmaps[(ns, name)] = body
                    return self._send(201, body)
                cm = kube.configmaps.get((ns, name or ""))
                if cm is None:
                    return self._send(404, status_body(404, "NotFound", f'configmaps "{name}" not found',
                                                       {"name": name, "kind": "configmaps"}))
                if method == "PATCH":
                    cm.setdefault("data", {}).update((body or {}).get("data") or {})
                if method in ("GET", "PATCH"):
                    return self._send(200, cm)
            return self._send(405, status_body(405, "MethodNotAllowed", f"{method} not supported by the fake"))
        if (m := LOG_PATH.match(url.path)) and method == "GET":
            container = parse_qs(url.query).get("container", [None])[0]
            return self._send(*kube.pod_log(m.group(1), m.group(2), container))
        return self._send(404, "404 page not found\n")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
