"""Run kiln's Argo ``Workflow`` manifests on a real Argo Workflows installation in Kubernetes.

The same manifest the local runner executes is created as a ``workflows`` custom object
(``argoproj.io/v1alpha1``) through the official ``kubernetes`` client; Argo's controller runs it and
this runner reads the object's ``status`` back. Nothing is stored on the kiln side: the cluster is
the run's state, so ``get``/``logs``/``stop``/``delete`` work from any machine with the same
kubeconfig.

Idempotency (the Runner contract): kiln names workflows deterministically and labels them with
``kiln.dev/spec-hash``. Submitting a name that already exists with the same hash (and the same
submit-time parameters) returns that run instead of starting another, unless it ended Failed or
Error, in which case it is re-run. A different hash means the spec changed: the old object is
deleted (waiting until the API server has really removed it) and the new one created under the
same name. We do not use ``generateName`` for this because the controller finds runs again by their
name (``get(name)``), and two live objects for one pipeline would make "which run is current"
ambiguous. Manifests that carry only ``generateName`` are created as-is (no idempotency possible).

``stop`` patches ``spec.shutdown: Terminate`` (what ``argo terminate`` does: running pods are
killed, exit handlers skipped, phase Failed) and records the user's message in the annotation
``kiln.dev/stop-message``, which ``get`` reports as ``status.message`` once the run has ended.

Logs come from the pods' ``main`` container. Argo (v3.4+, ``POD_NAMES=v2``, the default) names a
node's pod ``<workflow>-<template>-<fnv32a(node name)>`` (``pod_name`` below follows
``workflow/util/pod_name.go``); the annotation ``workflows.argoproj.io/pod-name-format: v1`` means
the older scheme, where the pod is called by the node id.

Every failure a user can act on (no kubeconfig, unreachable API server, 401, 403, Argo CRD missing,
manifest rejected with 422) becomes a one-line ``WorkflowError`` naming the cluster and namespace
and the fix.
"""

from __future__ import annotations

import base64
import copy
import difflib
import gzip
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from kiln.errors import ConfigError, WorkflowError
from kiln.runners.base import Runner, Workflow
from kiln.runners.schema import check_workflow

GROUP = "argoproj.io"  # the CRD is named workflows.argoproj.io; its API group is argoproj.io
VERSION = "v1alpha1"
PLURAL = "workflows"
SPEC_HASH_LABEL = "kiln.dev/spec-hash"
STOP_MESSAGE_ANNOTATION = "kiln.dev/stop-message"
POD_NAME_FORMAT_ANNOTATION = "workflows.argoproj.io/pod-name-format"
MAIN_CONTAINER = "main"
FINISHED = ("Succeeded", "Failed", "Error")
# ArgoRunner._call: no if_missing given (a 404 raises), and "the object was already gone"
_RAISE = object()
_GONE = object()
INSTALL_HINT = (
    "install Argo Workflows: kubectl create namespace argo && kubectl apply -n argo -f "
    "https://github.com/argoproj/argo-workflows/releases/download/v4.1.2/install.yaml"
)
RBAC_HINT = (
    "grant the user/service account a Role on workflows.argoproj.io (create, get, patch, delete) and "
    "pods, pods/log (get) in that namespace; see docs/argo.md"
)

# kiln.yaml `argo:` key -> ArgoConfig field; the only keys accepted there.
CONFIG_KEYS: dict[str, str] = {
    "namespace": "namespace",
    "serviceAccount": "service_account",
    "kubeconfig": "kubeconfig",
    "context": "context",
    "inCluster": "in_cluster",
}


@dataclass
class ArgoConfig:
    """Where and how to reach the cluster. ``api_client`` (tests, embedding) overrides the rest."""

    namespace: str = "argo"
    service_account: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    poll_interval: float = 2.0
    api_client: k8s.ApiClient | None = None
    request_timeout: float = 30.0  # read timeout per API call; connect timeout is min(5, this)
    delete_timeout: float = 120.0  # how long submit waits for a replaced workflow to disappear

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, *, where: str = "kiln.yaml argo") -> ArgoConfig:
        """Build from kiln.yaml's ``argo:`` mapping (camelCase keys, see ``CONFIG_KEYS``)."""
        data = dict(data or {})
        unknown = [k for k in data if k not in CONFIG_KEYS]
        if unknown:
            parts = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), CONFIG_KEYS, n=1)
                parts.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            raise ConfigError(f"{where}: unknown key{'s' if len(parts) > 1 else ''} {', '.join(parts)}",
                              hint=f"valid keys: {', '.join(CONFIG_KEYS)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            if key == "inCluster":
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}.inCluster must be true or false, got {value!r}")
            elif not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}.{key} must be a non-empty string, got {value!r}")
            kwargs[CONFIG_KEYS[key]] = os.path.expanduser(value) if key == "kubeconfig" else value
        if kwargs.get("in_cluster") and (kwargs.get("kubeconfig") or kwargs.get("context")):
            raise ConfigError(f"{where}: inCluster: true cannot be combined with kubeconfig/context",
                              hint="inside a pod kiln uses the pod's service account; drop one of them")
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Argo's pod naming


def fnv32a(text: str) -> int:
    """32-bit FNV-1a of the UTF-8 bytes (Go's hash/fnv New32a, which Argo uses for pod names)."""
    h = 0x811C9DC5
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


_MAX_NAME = 253
_HASH_LEN = 10


def pod_name(workflow: Workflow, node: Mapping[str, Any]) -> str:
    """The pod Argo created for ``node`` (a ``status.nodes`` entry of ``workflow``).

    Follows Argo's GeneratePodName: v1 -> node id; v2 -> the workflow name for a single-node
    workflow, else ``<wf>-<template>-<fnv32a(node name)>`` with the prefix cut to 242 characters.
    """
    meta = workflow.get("metadata") or {}
    wf_name = meta.get("name", "")
    if (meta.get("annotations") or {}).get(POD_NAME_FORMAT_ANNOTATION) == "v1":
        return node["id"]
    if node.get("name") == wf_name:
        return wf_name
    template = node.get("templateName") or (node.get("templateRef") or {}).get("template") or ""
    prefix = f"{wf_name}-{template}" if template else wf_name
    prefix = prefix[: _MAX_NAME - _HASH_LEN - 1]
    return f"{prefix}-{fnv32a(node['name'])}"


def _decompress_nodes(status: dict[str, Any]) -> None:
    # Large workflows store nodes as base64(gzip(json)) in status.compressedNodes.
    if not status.get("nodes") and status.get("compressedNodes"):
        raw = gzip.decompress(base64.b64decode(status["compressedNodes"]))
        status["nodes"] = json.loads(raw)


def spec_hash(manifest: Workflow) -> str:
    """Hash of what a run depends on (``spec``), for manifests that come without the label."""
    data = json.dumps(manifest.get("spec", {}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _one_line(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _param_value(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # true / 3 / 1.5: how Argo would print them
    raise WorkflowError(f"parameter '{name}' must be a string, got {type(value).__name__}",
                        hint="pass submit-time parameters as strings")


def apply_parameters(manifest: Workflow, parameters: Mapping[str, Any] | None) -> None:
    """Set ``spec.arguments.parameters`` values in place: override by name, append new ones."""
    if not parameters:
        return
    spec = manifest.setdefault("spec", {})
    params = spec.setdefault("arguments", {}).setdefault("parameters", [])
    by_name = {p.get("name"): p for p in params if isinstance(p, dict)}
    for name, value in parameters.items():
        text = _param_value(name, value)
        if name in by_name:
            entry = by_name[name]
            entry.pop("valueFrom", None)  # a literal value replaces any configmap/enum source
            entry["value"] = text
        else:
            params.append({"name": name, "value": text})


# ---------------------------------------------------------------------------------------------


class ArgoRunner(Runner):
    """Runs manifests as ``Workflow`` objects in ``config.namespace`` of a Kubernetes cluster."""

    name = "argo"

    def __init__(self, config: ArgoConfig | None = None, **fields: Any) -> None:
        if config is not None and fields:
            raise TypeError("pass either an ArgoConfig or its fields, not both")
        self.config = config if config is not None else ArgoConfig(**fields)
        self._api_client: k8s.ApiClient | None = self.config.api_client
        self._cluster = "the cluster"

    # -- connection ---------------------------------------------------------------------------

    def _client(self) -> k8s.ApiClient:
        if self._api_client is None:
            self._api_client = self._load_client()
        self._cluster = self._describe_cluster(self._api_client.configuration)
        return self._api_client

    def _describe_cluster(self, configuration: k8s.Configuration) -> str:
        ctx = f", context {self.config.context}" if self.config.context else ""
        return f"{configuration.host}{ctx}"

    def _load_client(self) -> k8s.ApiClient:
        cfg = k8s.Configuration()
        try:
            if self.config.in_cluster:
                k8s_config.load_incluster_config(client_configuration=cfg)
            else:
                k8s_config.load_kube_config(config_file=self.config.kubeconfig, context=self.config.context,
                                            client_configuration=cfg, persist_config=False)
        except ConfigException as exc:
            raise self._config_error(exc) from None
        except OSError as exc:  # unreadable kubeconfig, or a missing cert/key file it names
            raise WorkflowError(f"cannot read the kubeconfig for the Argo runner: {_one_line(exc)}",
                                hint="check argo.kubeconfig in kiln.yaml (or $KUBECONFIG)") from None
        # A dead API server should fail fast, not after urllib3's default retries and backoff.
        cfg.retries = urllib3.Retry(total=1, backoff_factor=0.2, status=0, redirect=0)
        return k8s.ApiClient(cfg)

    def _config_error(self, exc: Exception) -> WorkflowError:
        text = _one_line(exc)
        if self.config.in_cluster:
            return WorkflowError(f"argo.inCluster is true but kiln is not running in a Kubernetes pod ({text})",
                                 hint="set argo.inCluster: false and point argo.kubeconfig at a kubeconfig")
        where = self.config.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        if "No configuration found" in text:
            return WorkflowError(f"no kubeconfig found at {where} for the Argo runner",
                                 hint="set argo.kubeconfig in kiln.yaml or $KUBECONFIG, or use runner: local")
        if self.config.context and self.config.context in text:
            return WorkflowError(f"context '{self.config.context}' not found in kubeconfig {where}",
                                 hint="list contexts with `kubectl config get-contexts` and fix argo.context")
        return WorkflowError(f"invalid kubeconfig {where}: {text}", hint="check argo.kubeconfig / argo.context")

    def _timeout(self) -> tuple[float, float]:
        return (min(5.0, self.config.request_timeout), self.config.request_timeout)

    def _custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self._client())

    def _core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self._client())

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, if_missing: Any = _RAISE, **kwargs: Any) -> Any:
        """Run one API call; turn every transport/HTTP failure into a one-line WorkflowError.
        With ``if_missing``, a 404 for the object itself (not for a missing API) returns it."""
        try:
            return fn(*args, _request_timeout=self._timeout(), **kwargs)
        except ApiException as exc:
            if if_missing is not _RAISE and exc.status == 404 and _is_object_not_found(exc):
                return if_missing
            raise self._api_error(exc, what) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._transport_error(exc, what) from None

    def _transport_error(self, exc: Exception, what: str) -> WorkflowError:
        cause = getattr(exc, "reason", None) or exc
        # urllib3 errors carry (connection, message); the message is the part worth showing
        args = getattr(cause, "args", ())
        reason = _one_line(args[-1] if args and isinstance(args[-1], str) else cause)
        # urllib3 wraps the useful part ("[Errno 111] Connection refused", "Read timed out") in pool reprs
        reason = re.sub(r"^.*Failed to establish a new connection:\s*", "", reason)
        reason = re.sub(r"^\w+\(host=[^)]*\):\s*", "", reason)
        return _Unreachable(
            f"cannot reach the Kubernetes API at {self._cluster} while {what}: {reason}",
            hint="check that the cluster is running and that argo.kubeconfig/argo.context point at it "
                 "(`kubectl cluster-info`)")

    def _api_error(self, exc: ApiException, what: str) -> WorkflowError:
        ns = self.config.namespace
        status, message, details = _status_of(exc)
        where = f"namespace '{ns}' of {self._cluster}"
        if exc.status == 401:
            return WorkflowError(f"the Kubernetes API at {self._cluster} rejected kiln's credentials "
                                 f"(401 Unauthorized) while {what}",
                                 hint="refresh the kubeconfig credentials (log in again) or check argo.context")
        if exc.status == 403:
            return WorkflowError(f"access denied (403 Forbidden) while {what} in {where}: {message}",
                                 hint=RBAC_HINT)
        if exc.status == 404:
            if details.get("kind") == "namespaces":
                return WorkflowError(f"namespace '{ns}' does not exist in {self._cluster}",
                                     hint=f"kubectl create namespace {ns}, or set argo.namespace in kiln.yaml")
            return WorkflowError(f"Argo Workflows CRD not found in cluster {self._cluster} "
                                 f"(no {PLURAL}.{GROUP}/{VERSION} API) while {what}", hint=INSTALL_HINT)
        if exc.status == 422:
            causes = "; ".join(f"{c.get('field', '?')}: {c.get('message', '')}" for c in details.get("causes", []))
            return WorkflowError(f"the API server of {self._cluster} rejected the manifest while {what} "
                                 f"(422 Invalid): {causes or message}",
                                 hint="the field named is valid for Argo's schema but not for this cluster "
                                      "(e.g. a name that is not a DNS-1123 label); fix it in the spec")
        return WorkflowError(f"the Kubernetes API at {self._cluster} answered {exc.status} "
                             f"{status or exc.reason or ''} while {what} in {where}: {message}".rstrip(": "))

    # -- raw object access ----------------------------------------------------------------------

    def _get_raw(self, name: str) -> Workflow | None:
        return self._call(f"reading workflow '{name}'", self._custom().get_namespaced_custom_object,
                          GROUP, VERSION, self.config.namespace, PLURAL, name, if_missing=None)

    def _create(self, manifest: Workflow) -> Workflow:
        return self._call(f"creating workflow '{_name_of(manifest)}'", self._custom().create_namespaced_custom_object,
                          GROUP, VERSION, self.config.namespace, PLURAL, manifest)

    def _delete_raw(self, name: str) -> bool:
        """Delete; False if it was already gone."""
        gone = self._call(f"deleting workflow '{name}'", self._custom().delete_namespaced_custom_object,
                          GROUP, VERSION, self.config.namespace, PLURAL, name, propagation_policy="Background",
                          if_missing=_GONE)
        return gone is not _GONE

    def _wait_gone(self, name: str) -> None:
        # Deletion is asynchronous (finalizers, e.g. Argo's artifact GC); creating the new object
        # before the old one is gone would answer 409 AlreadyExists.
        deadline = time.monotonic() + self.config.delete_timeout
        while self._get_raw(name) is not None:
            if time.monotonic() > deadline:
                raise WorkflowError(
                    f"workflow '{name}' in namespace '{self.config.namespace}' is still being deleted "
                    f"after {self.config.delete_timeout:.0f}s", hint=f"check its finalizers: kubectl -n "
                    f"{self.config.namespace} get workflow {name} -o yaml")
            time.sleep(min(self.config.poll_interval, 0.5))

    # -- Runner API -----------------------------------------------------------------------------

    def submit(self, manifest: Workflow, *, parameters: dict[str, str] | None = None, wait: bool = True,
               on_update: Callable[[Workflow], None] | None = None) -> Workflow:
        body = self._prepare(manifest, parameters)
        self._ensure_semaphores(body)
        name = body["metadata"].get("name")
        if not name:
            created = self._create(body)
        else:
            created = self._create_or_reuse(body)
        if wait:
            return self._wait(created["metadata"]["name"], on_update)
        result = self._to_kiln(created)
        if on_update is not None:
            on_update(result)
        return result

    def _prepare(self, manifest: Workflow, parameters: Mapping[str, Any] | None) -> Workflow:
        if not isinstance(manifest, dict) or manifest.get("kind") != "Workflow":
            kind = manifest.get("kind") if isinstance(manifest, dict) else type(manifest).__name__
            raise WorkflowError(f"the Argo runner submits kind Workflow, got {kind!r}",
                                hint="WorkflowTemplates/CronWorkflows are applied with kubectl, not run by kiln")
        body = copy.deepcopy(manifest)
        body.pop("status", None)
        meta = body.setdefault("metadata", {})
        ns = meta.get("namespace")
        if ns and ns != self.config.namespace:
            raise WorkflowError(f"workflow '{_name_of(body)}' names namespace '{ns}' but the Argo runner is "
                                f"configured for '{self.config.namespace}'",
                                hint="drop metadata.namespace from the manifest or change argo.namespace")
        meta["namespace"] = self.config.namespace
        apply_parameters(body, parameters)
        if self.config.service_account:
            body.setdefault("spec", {})["serviceAccountName"] = self.config.service_account
        labels = meta.setdefault("labels", {})
        labels.setdefault(SPEC_HASH_LABEL, spec_hash(body))
        check_workflow(body)
        return body

    def _ensure_semaphores(self, body: Workflow) -> None:
        """The workspace quotas a kiln workflow holds as Argo semaphores (annotation
        ``kiln.dev/semaphores``, written by kiln's render) set in their ConfigMap before the
        workflow that waits on them exists: Argo fails a workflow whose semaphore key is missing."""
        raw = ((body.get("metadata") or {}).get("annotations") or {}).get("kiln.dev/semaphores")
        if not raw:
            return
        limits = {str(k): str(v) for k, v in json.loads(raw).items()}
        name, ns, core = "kiln-workspace-quotas", self.config.namespace, self._core()
        cm = self._call(f"reading ConfigMap '{name}'", core.read_namespaced_config_map, name, ns, if_missing=None)
        if cm is None:
            self._call(f"creating ConfigMap '{name}'", core.create_namespaced_config_map, ns,
                       {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": limits})
        elif {k: (cm.data or {}).get(k) for k in limits} != limits:
            self._call(f"updating ConfigMap '{name}'", core.patch_namespaced_config_map, name, ns, {"data": limits})

    def _create_or_reuse(self, body: Workflow) -> Workflow:
        name = body["metadata"]["name"]
        existing = self._get_raw(name)
        if existing is not None:
            being_deleted = bool((existing.get("metadata") or {}).get("deletionTimestamp"))
            if not being_deleted and _same_run(existing, body) and _phase(existing) not in ("Failed", "Error"):
                return existing
            if not being_deleted:
                self._delete_raw(name)
            self._wait_gone(name)
        try:
            return self._custom().create_namespaced_custom_object(
                GROUP, VERSION, self.config.namespace, PLURAL, body, _request_timeout=self._timeout())
        except ApiException as exc:
            if exc.status != 409:
                raise self._api_error(exc, f"creating workflow '{name}'") from None
            # another kiln process created it between our get and create
            existing = self._get_raw(name)
            if existing is not None and _same_run(existing, body):
                return existing
            raise WorkflowError(f"workflow '{name}' in namespace '{self.config.namespace}' was created "
                                f"concurrently with a different spec",
                                hint="another kiln process submitted it; retry after it finishes") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._transport_error(exc, f"creating workflow '{name}'") from None

    def _wait(self, name: str, on_update: Callable[[Workflow], None] | None) -> Workflow:
        # Polling (not the watch API): one GET per poll_interval is cheap, survives API-server
        # restarts and proxies that cut long-lived watches, and needs no resourceVersion bookkeeping.
        last_version: object = object()
        failures = 0
        while True:
            try:
                raw = self._get_raw(name)
                failures = 0
            except _Unreachable:
                # ride out a short API-server blip (restart, LB failover) during a long run
                failures += 1
                if failures >= 5:
                    raise
                time.sleep(self.config.poll_interval)
                continue
            if raw is None:
                raise WorkflowError(f"workflow '{name}' disappeared from namespace '{self.config.namespace}' "
                                    f"of {self._cluster} while kiln was waiting for it",
                                    hint="someone deleted it (kubectl/argo delete or a TTL strategy); resubmit")
            version = (raw.get("metadata") or {}).get("resourceVersion") or json.dumps(raw.get("status"), sort_keys=True)
            wf = self._to_kiln(raw)
            if version != last_version:
                last_version = version
                if on_update is not None:
                    on_update(wf)
            if _phase(raw) in FINISHED:
                return wf
            time.sleep(self.config.poll_interval)

    def get(self, name: str) -> Workflow | None:
        raw = self._get_raw(name)
        return None if raw is None else self._to_kiln(raw)

    def _require(self, name: str) -> Workflow:
        wf = self.get(name)
        if wf is None:
            raise WorkflowError(f"no workflow '{name}' in namespace '{self.config.namespace}' of {self._cluster}",
                                hint=f"list runs with: kubectl -n {self.config.namespace} get workflows")
        return wf

    def logs(self, name: str, node: str | None = None) -> Iterator[str]:
        wf = self._require(name)
        nodes: dict[str, dict[str, Any]] = wf["status"].get("nodes") or {}
        if node is not None:
            target = _find_node(nodes, node)
            if target is None:
                valid = ", ".join(sorted(n.get("displayName") or n.get("name", "") for n in nodes.values()
                                         if n.get("type") in ("Pod", "Container")))
                raise WorkflowError(f"workflow '{name}' has no node '{node}'",
                                    hint=f"valid nodes: {valid or '(none has started yet)'}")
            pod, container = self._pod_and_container(wf, nodes, target)
            text = self._read_log(pod, container, f"node '{node}' of workflow '{name}'")
            yield from text.splitlines()
            return
        runnable = [n for n in nodes.values() if n.get("type") in ("Pod", "Container") and n.get("startedAt")]
        runnable.sort(key=lambda n: (n.get("startedAt") or "", n.get("name") or ""))
        for entry in runnable:
            label = entry.get("displayName") or entry.get("name")
            pod, container = self._pod_and_container(wf, nodes, entry)
            try:
                text = self._read_log(pod, container, f"node '{label}' of workflow '{name}'")
            except _LogsUnavailable as gone:
                yield f"{label}: ({gone})"
                continue
            for line in text.splitlines():
                yield f"{label}: {line}"

    def _pod_and_container(self, wf: Workflow, nodes: Mapping[str, Any], node: Mapping[str, Any]) -> tuple[str, str]:
        if node.get("type") == "Container":
            # containerSet: each container node lives in its boundary (Pod) node's pod
            boundary = nodes.get(node.get("boundaryID") or "")
            if boundary is not None:
                return pod_name(wf, boundary), node.get("displayName") or MAIN_CONTAINER
        return pod_name(wf, node), MAIN_CONTAINER

    def _read_log(self, pod: str, container: str, what: str) -> str:
        try:
            return self._core().read_namespaced_pod_log(
                pod, self.config.namespace, container=container, _request_timeout=self._timeout())
        except ApiException as exc:
            # 400: container not started yet; 404 naming the pod: never created or garbage-collected
            if exc.status == 400 or (exc.status == 404 and _is_object_not_found(exc)):
                _, message, _ = _status_of(exc)
                raise _LogsUnavailable(f"logs of {what} unavailable: pod {pod}: {message or exc.reason}",
                                       hint="the pod may not have started yet, or was deleted by Argo's podGC; "
                                            "configure archiveLogs to keep logs") from None
            raise self._api_error(exc, f"reading logs of pod {pod}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._transport_error(exc, f"reading logs of pod {pod}") from None

    def stop(self, name: str, message: str = "stopped by user") -> None:
        wf = self._require(name)
        if wf["status"].get("phase") in FINISHED:
            return
        patch = {"metadata": {"annotations": {STOP_MESSAGE_ANNOTATION: message}},
                 "spec": {"shutdown": "Terminate"}}
        # Custom resources take JSON merge patches only (no strategic merge).
        self._call(f"stopping workflow '{name}'", self._custom().patch_namespaced_custom_object,
                   GROUP, VERSION, self.config.namespace, PLURAL, name, patch,
                   _content_type="application/merge-patch+json")

    def delete(self, name: str) -> None:
        self._delete_raw(name)

    # -- shaping --------------------------------------------------------------------------------

    def _to_kiln(self, raw: Workflow) -> Workflow:
        wf = copy.deepcopy(raw)
        status = wf.setdefault("status", {}) or {}
        wf["status"] = status
        _decompress_nodes(status)
        status.setdefault("nodes", {})
        status["phase"] = status.get("phase") or "Pending"  # Argo's controller has not picked it up yet
        stop_message = ((wf.get("metadata") or {}).get("annotations") or {}).get(STOP_MESSAGE_ANNOTATION)
        if stop_message and status["phase"] in FINISHED:
            status["message"] = stop_message
        return wf


class _Unreachable(WorkflowError):
    """The API server could not be reached (connection refused, timeout, TLS)."""


class _LogsUnavailable(WorkflowError):
    """A pod's log cannot be read (not started / garbage-collected)."""


def _status_of(exc: ApiException) -> tuple[str, str, dict[str, Any]]:
    """(reason, message, details) from a Kubernetes ``Status`` body, tolerant of non-JSON bodies."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return "", _one_line(exc.body or exc.reason or ""), {}
    if not isinstance(body, dict):
        return "", _one_line(body), {}
    return body.get("reason") or "", _one_line(body.get("message") or exc.reason or ""), body.get("details") or {}


def _is_object_not_found(exc: ApiException) -> bool:
    # The API server answers a missing *object* with a Status naming it (details.name); a missing
    # CRD/API path answers "404 page not found" or a Status without details.
    _, _, details = _status_of(exc)
    return bool(details.get("name")) and details.get("kind") != "namespaces"


def _name_of(manifest: Workflow) -> str:
    meta = manifest.get("metadata") or {}
    return meta.get("name") or meta.get("generateName") or "<unnamed>"


def _phase(raw: Workflow) -> str:
    return ((raw.get("status") or {}).get("phase")) or ""


def _params(wf: Workflow) -> list[tuple[str, Any]]:
    params = (((wf.get("spec") or {}).get("arguments") or {}).get("parameters")) or []
    return sorted((str(p.get("name")), p.get("value")) for p in params if isinstance(p, dict))


def _same_run(existing: Workflow, body: Workflow) -> bool:
    labels_old = (existing.get("metadata") or {}).get("labels") or {}
    labels_new = body["metadata"].get("labels") or {}
    return (labels_old.get(SPEC_HASH_LABEL) == labels_new.get(SPEC_HASH_LABEL)
            and _params(existing) == _params(body))


def _find_node(nodes: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    if key in nodes:
        return nodes[key]
    for field in ("name", "displayName"):
        matches = [n for n in nodes.values() if n.get(field) == key]
        if len(matches) == 1:
            return matches[0]
    return None


__all__ = ["ArgoConfig", "ArgoRunner", "CONFIG_KEYS", "apply_parameters", "fnv32a", "pod_name", "spec_hash"]
