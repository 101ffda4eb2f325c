"""Manifest checks done at submit, before anything runs: every template a workflow names
exists, each template is of a kind this runner can run, ``depends`` expressions parse and name
tasks of their DAG, and ``{{=...}}`` expressions compile. Pure functions; no I/O here."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from kiln.errors import NeedsCluster, WorkflowError
from kiln.runners import _expr
from kiln.runners._template import _find_close
from kiln.runners.base import Workflow
from kiln.runners.local.common import TEMPLATE_KINDS, UNSUPPORTED_KINDS, image_base

# kiln.controller.render.RUNNER_INIT (not imported: runners do not depend on the controller): the
# init container that marks a step rendered to run in the user's own image (command.image)
_KILN_RUNNER_INIT = "kiln-runner"
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


# images whose program is a Kubernetes API client: what they do needs the cluster itself
KUBE_CLIENT_IMAGES = {"bitnami/kubectl": "kubectl", "bitnamilegacy/kubectl": "kubectl", "argoproj/argocli": "argo CLI"}
# volume sources that name an object of the cluster (emptyDir is a folder of the pod's own)
CLUSTER_VOLUMES = {"persistentVolumeClaim": "PersistentVolumeClaim", "secret": "Secret", "configMap": "ConfigMap volume",
                   "hostPath": "hostPath volume (a node's disk)", "nfs": "NFS volume", "csi": "CSI volume"}
CLUSTER_ENV = {"secretKeyRef": "Secret", "configMapKeyRef": "ConfigMap", "fieldRef": "the pod's own fields (fieldRef)",
               "resourceFieldRef": "the pod's resources (resourceFieldRef)"}
_NO_CLUSTER_HINT = "run it with the argo runner (a cluster), or rewrite that part to use parameters, artifacts and emptyDir volumes"


def _needs(feature: str, where: str, provider: str = "only a Kubernetes cluster provides") -> NeedsCluster:
    return NeedsCluster(f"{where}: needs {feature}, which {provider}; the local runner does not start it",
                        hint=_NO_CLUSTER_HINT)


def check_cluster_objects(spec: dict) -> None:
    """Refuse, before anything runs, a workflow that needs a Kubernetes API object (raises
    :class:`~kiln.errors.NeedsCluster`, exit code 4): a resource template, a PVC, a Secret,
    a ConfigMap or a node path mounted, a ServiceAccount of its own, a kubectl step, a sidecar
    or daemon whose image has no command to run on the host (its entrypoint is the image's)."""
    if spec.get("volumeClaimTemplates"):
        names = ", ".join(str((v.get("metadata") or {}).get("name")) for v in spec["volumeClaimTemplates"])
        raise _needs(f"a PersistentVolumeClaim ({names})", "spec.volumeClaimTemplates")
    sa = spec.get("serviceAccountName")
    if sa not in (None, "", "default"):
        raise _needs(f"the ServiceAccount {sa!r} and its permissions", "spec.serviceAccountName")
    for where, vols in [("spec.volumes", spec.get("volumes"))] + [
            (f"template {t.get('name')!r} volumes", t.get("volumes")) for t in spec.get("templates") or []]:
        for v in vols or []:
            kind = next((CLUSTER_VOLUMES[k] for k in v if k in CLUSTER_VOLUMES), None)
            if kind:
                raise _needs(f"a {kind} (volume {v.get('name')!r})", where)
    for t in spec.get("templates") or []:
        where = f"template {t.get('name')!r}"
        if t.get("resource") is not None:
            action = (t["resource"] or {}).get("action", "")
            raise _needs(f"a resource template ({action} of a Kubernetes object)", where)
        if t.get("serviceAccountName") not in (None, "", "default"):
            raise _needs(f"the ServiceAccount {t['serviceAccountName']!r}", where)
        for hd in (t.get("http") or {}).get("headers") or []:
            if (hd.get("valueFrom") or {}).get("secretKeyRef"):
                raise _needs(f"a Secret (http header {hd.get('name')!r})", where)
        containers = [("container", t.get("container")), ("script", t.get("script"))]
        containers += [(f"containerSet container {c.get('name')!r}", c) for c in (t.get("containerSet") or {}).get("containers") or []]
        containers += [(f"sidecar {c.get('name')!r}", c) for c in t.get("sidecars") or []]
        containers += [(f"initContainer {c.get('name')!r}", c) for c in t.get("initContainers") or []]
        for label, c in containers:
            if not c:
                continue
            base = image_base(c.get("image") or "")
            if base in KUBE_CLIENT_IMAGES:
                raise _needs(f"the Kubernetes API ({KUBE_CLIENT_IMAGES[base]} in image {c.get('image')!r})", f"{where} {label}")
            for e in c.get("env") or []:
                kind = next((CLUSTER_ENV[k] for k in e.get("valueFrom") or {} if k in CLUSTER_ENV), None)
                if kind:
                    raise _needs(f"a {kind} (env {e.get('name')!r})", f"{where} {label}")
            background = label.startswith("sidecar") or (t.get("daemon") and label == "container")
            if background and not c.get("command") and base != "argoproj/argosay":
                raise _needs(f"the image {c.get('image')!r} run as a server with its own entrypoint (no command given)",
                             f"{where} {label}", "only a container runtime (the cluster's nodes) runs")


def validate(manifest: Workflow) -> None:
    """Reject manifests this runner cannot run, naming the template and field."""
    if not isinstance(manifest, dict) or manifest.get("kind") != "Workflow":
        raise WorkflowError(f"not a Workflow manifest (kind {manifest.get('kind') if isinstance(manifest, dict) else type(manifest).__name__!r})",
                            hint="pass an argoproj.io/v1alpha1 Workflow")
    spec = manifest.get("spec") or {}
    check_cluster_objects(spec)
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
    ref = _TemplateRefs(names)
    ref(entry, "spec.entrypoint")
    if spec.get("onExit"):
        ref(spec["onExit"], "spec.onExit")
    for t in templates:
        _check_template(t, ref)


class _TemplateRefs:
    """Checks that a name is one of the workflow's templates."""

    def __init__(self, names: dict[str, dict]) -> None:
        self.names = names
        self.valid = ", ".join(sorted(names)) or "(none)"

    def __call__(self, tname: Any, where: str) -> None:
        if tname not in self.names:
            raise WorkflowError(f"{where} refers to unknown template {tname!r}", hint=f"templates: {self.valid}")


def _check_template(t: dict, ref: _TemplateRefs) -> None:
    where = f"template {t['name']!r}"
    kinds = [k for k in TEMPLATE_KINDS if t.get(k) is not None]
    bad = [k for k in UNSUPPORTED_KINDS if t.get(k) is not None]
    if bad:
        raise WorkflowError(f"{where}: {bad[0]} templates are not supported by the local runner",
                            hint=f"supported kinds: {', '.join(TEMPLATE_KINDS)}")
    if len(kinds) != 1:
        raise WorkflowError(f"{where} must have exactly one of {', '.join(TEMPLATE_KINDS)} (has {kinds or 'none'})")
    if t.get("steps") is not None:
        for gi, group in enumerate(t["steps"]):
            for si, s in enumerate(group or []):
                _check_step_refs(s, f"{where} steps[{gi}][{si}] ({s.get('name')!r})", ref)
    if t.get("dag") is not None:
        _check_dag(t["dag"], where, ref)
    _check_retry(t.get("retryStrategy") or {}, where)
    # C-speed screen first: walking a 100-task DAG building field paths costs ~0.2 ms a submit
    if "{{" in json.dumps(t, default=str):
        _check_expr_tags(t, where)
    # a container without a command is not refused here: like a pod whose image cannot be
    # pulled in Argo, it fails when it runs (Pod.argv), and the workflow's handlers see it
    c = t.get("container") or t.get("script")
    if c is not None and any(i.get("name") == _KILN_RUNNER_INIT for i in t.get("initContainers") or []):
        # one line: the fix is a setting, not the spec (the image is right for a cluster)
        raise WorkflowError(f"{where} runs in image {c.get('image')!r} (command.image), which the local runner cannot "
                            "run: set `runner: argo` in kiln.yaml to run it on a cluster, or "
                            "`localRunner.foreignImages: host` to run it in kiln's own environment")


def _check_step_refs(s: dict, swhere: str, ref: _TemplateRefs) -> None:
    ref(s.get("template"), f"{swhere}.template")
    for hname, hook in (s.get("hooks") or {}).items():
        ref(hook.get("template"), f"{swhere}.hooks.{hname}.template")
    if s.get("onExit"):
        ref(s["onExit"], f"{swhere}.onExit")


def _check_dag(dag: dict, where: str, ref: _TemplateRefs) -> None:
    tasks = dag.get("tasks") or []
    tnames = {x.get("name") for x in tasks}
    for task in tasks:
        twhere = f"{where} dag task {task.get('name')!r}"
        _check_step_refs(task, twhere, ref)
        if task.get("depends"):
            parse_depends(task["depends"], tnames, twhere)
        for d in task.get("dependencies") or []:
            if d not in tnames:
                raise WorkflowError(f"{twhere}: dependencies names unknown task {d!r}",
                                    hint=f"tasks: {', '.join(sorted(tnames))}")
    for tg in (dag.get("target") or "").split():
        if tg not in tnames and "{{" not in tg:  # a parameter's value is checked when the DAG runs
            raise WorkflowError(f"{where}: dag.target names unknown task {tg!r}")


def _check_retry(rs: dict, where: str) -> None:
    if rs.get("expression") and "{{" not in rs["expression"]:
        try:
            _expr.check(rs["expression"])
        except _expr.ExprError as exc:
            raise WorkflowError(f"{where}.retryStrategy.expression: {exc}") from exc
    if rs.get("retryPolicy") not in (None, "Always", "OnFailure", "OnError", "OnTransientError"):
        raise WorkflowError(f"{where}.retryStrategy.retryPolicy {rs['retryPolicy']!r} is invalid",
                            hint="valid: Always, OnFailure, OnError, OnTransientError")
