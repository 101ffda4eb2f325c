"""Render a spec object's work as an Argo ``Workflow`` manifest (a plain dict).

One manifest serves both runners: the local runner executes it as subprocesses on this machine,
the Argo runner submits it to a cluster. Each task runs a ``kiln step <name>`` command in kiln's
image; the composed spec travels as the workflow parameter ``spec`` (specs never hold secrets),
so a pod needs nothing but the image. Every manifest validates against Argo's strict schema
(``kiln.runners.schema``), which a test checks for every kind.

A step whose spec names its own image (``command.image``: the training tasks) runs in that image;
kiln's step runner reaches it through an init container of kiln's image that copies kiln's Python
packages into a shared ``emptyDir`` (``RUNNER_DIR``), so the user's image needs only a Python of
the same minor version as kiln's image. The local runner runs no images: it refuses such a step
(``kiln.runners.local.validation``) unless ``localRunner.foreignImages: host`` (``on_host``).

Labels tie a workflow to its object and spec hash (``kiln.dev/kind``, ``kiln.dev/workspace``,
``kiln.dev/name``, ``kiln.dev/spec-hash``): the runners use the hash to resume or reuse a run.
Tasks whose outputs depend only on their inputs are memoized (Argo's ``memoize``) on a key made
of the spec hash, the step, the data version and the code version, on both runners.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import kiln
from kiln.api.workspace import Preset, WorkspaceSpec
from kiln.controller.handlers import KINDS, PIPELINES
from kiln.controller.pipelines import Task

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.loader import LoadedSpec

PERMANENT_EXIT = 4  # kiln.controller.steps.PERMANENT_EXIT (not imported: render stays light)
CACHE_CONFIGMAP = "kiln-step-cache"
MEMO_MAX_AGE = "720h"  # keys are content hashes: an entry is only ever replaced, never wrong
QUOTA_ANNOTATION = "kiln.dev/quotas"  # kiln.runners._resources.QUOTA_ANNOTATION (render stays light)
# the quotas that bound what runs at once (the others count objects, checked at validate time)
SEMAPHORE_CONFIGMAP = "kiln-workspace-quotas"  # on a cluster, the quotas as Argo semaphores (#18)
SEMAPHORE_ANNOTATION = "kiln.dev/semaphores"  # {key: limit}: the Argo runner writes them into the ConfigMap
RUN_TIME_QUOTAS = {"cpu", "memory", "trainingGpus", "deploymentGpus", "maxConcurrentJobs"}
KIND_SHORT = {name: kind.short for name, kind in KINDS.items()}
# kiln's step runner in a user's image: the init container (named so the local runner can tell a
# foreign-image step) copies kiln's image's site-packages into the volume the step mounts
RUNNER_INIT = "kiln-runner"
RUNNER_DIR = "/opt/kiln-runner"
_COPY_RUNNER = ("import shutil, sysconfig; "
                f"shutil.copytree(sysconfig.get_paths()['purelib'], {RUNNER_DIR!r}, dirs_exist_ok=True)")

__all__ = ["KIND_SHORT", "PIPELINES", "RUNNER_INIT", "Task", "on_host", "render_workflow", "workflow_name"]


# -- manifest ----------------------------------------------------------------------------------

def workflow_name(s: LoadedSpec) -> str:
    """Stable per object (runs are found by name), a valid DNS name of at most 63 characters."""
    base = f"kiln-{KIND_SHORT[s.kind]}-{s.workspace}-{s.name}" if s.workspace != "default" \
        else f"kiln-{KIND_SHORT[s.kind]}-{s.name}"
    if len(base) <= 63:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[:54].rstrip('-')}-{digest}"


def _label_value(v: str) -> str:
    v = re.sub(r"[^A-Za-z0-9_.-]", "-", v)[:63]
    return v.strip("-_.") or "x"


def _resources(size: Preset) -> dict[str, Any]:
    req: dict[str, str] = {"cpu": str(size.cpu), "memory": str(size.memory)}
    res: dict[str, Any] = {"requests": dict(req), "limits": {"memory": str(size.memory)}}
    if size.gpu:
        res["requests"]["nvidia.com/gpu"] = str(size.gpu)
        res["limits"]["nvidia.com/gpu"] = str(size.gpu)
    return res


def workspaces_of(specs: Iterable[LoadedSpec]) -> dict[str, WorkspaceSpec]:
    """Each workspace as the specs define it (validated with everything else): what resource
    presets and quotas resolve against. Apply and ``kiln render`` both take it from here, so a
    rendered workflow is the one apply runs (render once printed the default resources where
    apply used the workspace's preset, #25)."""
    return {s.name: s.obj.spec for s in specs if s.kind == "Workspace"}


def _semaphores(s: LoadedSpec, size: Preset, workspace: WorkspaceSpec | None, *, deployment: bool) -> dict[str, int]:
    """Argo semaphores (ConfigMap key -> limit) that hold a workspace's quotas across its workflows
    on a cluster. A semaphore counts holders, not units: the GPU key is per GPU size (``.gpus-x2``
    admits quota // 2 holders), exact for a workspace whose jobs share one size."""
    if workspace is None:
        return {}
    q, ws, out = workspace.quotas, _label_value(s.workspace), {}
    if q.maxConcurrentJobs is not None and not deployment:
        out[f"{ws}.jobs"] = q.maxConcurrentJobs
    gpus = q.deploymentGpus if deployment else q.trainingGpus
    if gpus is not None and size.gpu:
        out[f"{ws}.{'deployment' if deployment else 'training'}-gpus-x{size.gpu}"] = gpus // size.gpu
    return out


def _size(s: LoadedSpec, workspace: WorkspaceSpec | None) -> Preset:
    req = getattr(s.obj.spec, "resources", None)
    return (workspace or WorkspaceSpec()).resolve(req)


def render_workflow(config: KilnConfig, s: LoadedSpec, *, workspace: WorkspaceSpec | None,
                    data_version: str = "", code_version: str = "") -> dict[str, Any]:
    """The Argo Workflow for ``s``. ``workspace`` (``workspaces_of(specs).get(s.workspace)``;
    required, so that no caller renders with the defaults by forgetting it) resolves resource
    presets and the concurrency quota; ``data_version``/``code_version`` enter the memoization keys."""
    tasks = PIPELINES[s.kind](s)
    ref = f"{s.kind}/{s.workspace}/{s.name}"
    size = _size(s, workspace)
    labels = {
        "app.kubernetes.io/managed-by": "kiln",
        "kiln.dev/kind": _label_value(s.kind),
        "kiln.dev/workspace": _label_value(s.workspace),
        "kiln.dev/name": _label_value(s.name),
        # with a data version the run is of this spec *and* that data: runners reuse a Succeeded
        # run by this label, which must not swallow a retrain on a new dataset version
        "kiln.dev/spec-hash": f"{s.spec_hash}-{data_version[:8]}" if data_version else s.spec_hash,
    }
    memo = (s.spec_hash, data_version, code_version)
    templates = [_template(config, t, ref, size, memo) for t in tasks]
    semaphores = _semaphores(s, size, workspace, deployment=s.kind == "Deployment")
    if semaphores:
        for tmpl, t in zip(templates, tasks):
            if t.compute:
                tmpl["synchronization"] = {"semaphores": [
                    {"configMapKeyRef": {"name": SEMAPHORE_CONFIGMAP, "key": k}} for k in semaphores]}
    spec: dict[str, Any] = {
        "entrypoint": "main",
        "arguments": {"parameters": [
            {"name": "spec", "value": json.dumps(s.doc, sort_keys=True, separators=(",", ":"), default=str)},
            {"name": "spec-hash", "value": s.spec_hash},
            {"name": "data-version", "value": data_version},
            {"name": "code-version", "value": code_version},
        ]},
        "templates": [{"name": "main", "dag": {"failFast": True, "tasks": [_dag_task(t) for t in tasks]}},
                      *templates],
        "podGC": {"strategy": "OnPodSuccess"},
        "workflowMetadata": {"labels": labels},
    }
    pull = _pull_secrets(s)
    if pull:
        spec["imagePullSecrets"] = pull
    if workspace is not None and workspace.quotas.maxConcurrentJobs:
        spec["parallelism"] = workspace.quotas.maxConcurrentJobs
    annotations = {"kiln.dev/object": ref, "kiln.dev/source": s.location(), "kiln.dev/version": kiln.__version__}
    quotas = workspace.quotas.model_dump(include=RUN_TIME_QUOTAS, exclude_none=True) if workspace is not None else {}
    if quotas:  # the local runner's resource queue holds them across all the workspace's runs
        annotations[QUOTA_ANNOTATION] = json.dumps(quotas, sort_keys=True)
    if semaphores:
        annotations[SEMAPHORE_ANNOTATION] = json.dumps(semaphores, sort_keys=True)
    timeout = getattr(s.obj.spec, "timeoutSeconds", None)
    if timeout:
        spec["activeDeadlineSeconds"] = timeout * 2 if s.kind == "Experiment" else timeout
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": workflow_name(s), "labels": labels, "annotations": annotations},
        "spec": spec,
    }


def _template(config: KilnConfig, t: Task, ref: str, size: Preset, memo: tuple[str, str, str]) -> dict[str, Any]:
    """The container template of one task; ``memo`` is (spec hash, data version, code version)."""
    args = ["step", t.step, "--object", ref, "--spec", "{{workflow.parameters.spec}}",
            "--spec-hash", "{{workflow.parameters.spec-hash}}"]
    for k in t.args:
        args += ["--arg", f"{k}={{{{inputs.parameters.{k}}}}}"]
    container: dict[str, Any] = {"image": config.image, "command": ["kiln"], "args": args,
                                 "env": [{"name": "KILN_WORKFLOW", "value": "{{workflow.name}}"},
                                         {"name": "KILN_NODE", "value": "{{pod.name}}"}]}
    if t.compute:
        container["resources"] = _resources(size)
    else:
        container["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
    tmpl: dict[str, Any] = {"name": t.name, "container": container}
    if t.args:
        tmpl["inputs"] = {"parameters": [{"name": k} for k in t.args]}
    if t.retries:
        # exit code PERMANENT_EXIT (kiln.controller.steps): bad input, which a retry cannot fix
        tmpl["retryStrategy"] = {"limit": str(t.retries), "retryPolicy": "OnFailure",
                                 "expression": f"asInt(lastRetry.exitCode) != {PERMANENT_EXIT}",
                                 "backoff": {"duration": "5s", "factor": "2", "maxDuration": "10m"}}
    if t.timeout:
        tmpl["activeDeadlineSeconds"] = t.timeout
    if t.compute and size.gpu and size.gpuModel:
        tmpl["nodeSelector"] = {"nvidia.com/gpu.product": size.gpuModel}
    if t.image:
        _in_user_image(config, tmpl, t.image)
    if t.memoize:
        spec_hash, data_version, code_version = memo
        key = hashlib.sha256(json.dumps([spec_hash, t.step, t.args, data_version, code_version,
                                         kiln.__version__], sort_keys=True).encode()).hexdigest()[:32]
        tmpl["memoize"] = {"key": key, "maxAge": MEMO_MAX_AGE, "cache": {"configMap": {"name": CACHE_CONFIGMAP}}}
    return tmpl


def _pull_secrets(s: LoadedSpec) -> list[dict[str, str]]:
    """``imagePullSecrets`` by name (the Secrets themselves are the cluster's, never kiln's)."""
    command = getattr(s.obj.spec, "command", None)
    return [{"name": n} for n in (command.imagePullSecrets if command is not None else [])]


def _in_user_image(config: KilnConfig, tmpl: dict[str, Any], image: str) -> None:
    """Run ``tmpl``'s ``kiln step`` in ``image``: kiln's packages come from the init container.
    The step itself puts them last on its user command's path (``controller.experiment.command``),
    so the user's own packages win there."""
    c = tmpl["container"]
    c["image"] = image
    c["command"] = ["python", "-m", "kiln.cli"]
    c["env"] = [*c["env"], {"name": "PYTHONPATH", "value": RUNNER_DIR}, {"name": "KILN_RUNNER_PATH", "value": RUNNER_DIR}]
    c["volumeMounts"] = [{"name": RUNNER_INIT, "mountPath": RUNNER_DIR, "readOnly": True}]
    tmpl["initContainers"] = [{
        "name": RUNNER_INIT, "image": config.image, "command": ["python", "-c", _COPY_RUNNER],
        "volumeMounts": [{"name": RUNNER_INIT, "mountPath": RUNNER_DIR}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]
    tmpl["volumes"] = [{"name": RUNNER_INIT, "emptyDir": {}}]


def on_host(manifest: dict[str, Any], image: str) -> tuple[dict[str, Any], list[str]]:
    """``manifest`` with every foreign-image step back in kiln's own image ``image`` (the local
    runner's ``localRunner.foreignImages: host``), and the names of the templates changed."""
    manifest = json.loads(json.dumps(manifest))
    changed = []
    for tmpl in manifest["spec"]["templates"]:
        if not any(ic.get("name") == RUNNER_INIT for ic in tmpl.get("initContainers") or []):
            continue
        c = tmpl["container"]
        c["image"], c["command"] = image, ["kiln"]
        c["env"] = [e for e in c["env"] if e["name"] not in ("PYTHONPATH", "KILN_RUNNER_PATH")]
        c.pop("volumeMounts", None)
        tmpl.pop("initContainers")
        tmpl.pop("volumes", None)
        changed.append(tmpl["name"])
    return manifest, changed


def _dag_task(t: Task) -> dict[str, Any]:
    task: dict[str, Any] = {"name": t.name, "template": t.name}
    if t.depends:
        task["depends"] = " && ".join(d if "." in d else f"{d}.Succeeded" for d in t.depends)
    if t.args:
        task["arguments"] = {"parameters": [{"name": k, "value": v} for k, v in t.args.items()]}
    if t.with_items is not None:
        task["withItems"] = t.with_items
    if t.with_sequence is not None:
        task["withSequence"] = {"count": str(t.with_sequence)}
    return task
