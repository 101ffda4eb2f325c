"""Render a spec object's work as an Argo ``Workflow`` manifest (a plain dict).

One manifest serves both runners: the local runner executes it as subprocesses on this machine,
the Argo runner submits it to a cluster. Each task runs a ``kiln step <name>`` command in kiln's
image; the composed spec travels as the workflow parameter ``spec`` (specs never hold secrets),
so a pod needs nothing but the image. Every manifest validates against Argo's strict schema
(``kiln.runners.schema``), which a test checks for every kind.

Labels tie a workflow to its object and spec hash (``kiln.dev/kind``, ``kiln.dev/workspace``,
``kiln.dev/name``, ``kiln.dev/spec-hash``): the runners use the hash to resume or reuse a run.
Tasks whose outputs depend only on their inputs are memoized (Argo's ``memoize``) on a key made
of the spec hash, the step, the data version and the code version, on both runners.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import kiln
from kiln.api.workspace import Preset, WorkspaceSpec

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.loader import LoadedSpec

PERMANENT_EXIT = 4  # kiln.controller.steps.PERMANENT_EXIT (not imported: render stays light)
CACHE_CONFIGMAP = "kiln-step-cache"
MEMO_MAX_AGE = "720h"  # keys are content hashes: an entry is only ever replaced, never wrong
KIND_SHORT = {"Workspace": "ws", "Dataset": "data", "LabelingJob": "label", "Experiment": "exp",
              "Deployment": "deploy"}


@dataclass
class Task:
    """One DAG task: ``kiln step <step>`` with arguments, after ``depends``."""

    name: str
    step: str
    depends: list[str] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    compute: bool = False            # gets the object's resource request (training, serving)
    memoize: bool = False            # outputs depend only on inputs: reuse them
    retries: int = 0
    with_items: list[Any] | None = None
    with_sequence: int | None = None
    timeout: int | None = None       # activeDeadlineSeconds


# -- per-kind pipelines --------------------------------------------------------------------------

def _workspace(s: LoadedSpec) -> list[Task]:
    return [Task("storage", "workspace.storage"),
            Task("members", "workspace.members", depends=["storage"])]


def _dataset(s: LoadedSpec) -> list[Task]:
    spec = s.obj.spec
    tasks = [Task("fetch", "dataset.fetch", memoize=True, retries=2),
             Task("validate", "dataset.validate", depends=["fetch"], memoize=True)]
    prev = "validate"
    for i, op in enumerate(spec.preprocessing):
        name = f"preprocess-{i}"
        tasks.append(Task(name, "dataset.preprocess", depends=[prev], args={"op-index": str(i)},
                          memoize=True, compute=True))
        prev = name
    if spec.splits is not None:
        tasks.append(Task("split", "dataset.split", depends=[prev], memoize=True))
        prev = "split"
    tasks.append(Task("version", "dataset.version", depends=[prev], retries=2))
    return tasks


def _labeling(s: LoadedSpec) -> list[Task]:
    # pre-annotate before import: predictions travel with the new tasks (kiln.controller.labeling_steps)
    spec = s.obj.spec
    tasks = [Task("project", "labeling.project", retries=3)]
    prev = "project"
    if spec.preAnnotation is not None:
        tasks.append(Task("pre-annotate", "labeling.pre-annotate", depends=["project"], compute=True, retries=1))
        prev = "pre-annotate"
    tasks.append(Task("import", "labeling.import", depends=[prev], retries=3))
    tasks.append(Task("assign", "labeling.assign", depends=["import"], retries=3))
    # polls up to 10 minutes, then ends Succeeded either way (incomplete: the next run checks again)
    tasks.append(Task("wait-complete", "labeling.wait-complete", depends=["assign"],
                      args={"timeout": "600", "interval": "30"}))
    tasks.append(Task("export", "labeling.export", depends=["wait-complete"], retries=2))
    return tasks


def _experiment(s: LoadedSpec) -> list[Task]:
    spec = s.obj.spec
    retries = spec.retries
    tasks = [Task("prepare-data", "experiment.prepare-data", memoize=True, retries=2)]
    if spec.mode == "run" and spec.parameterSets:
        tasks.append(Task("train", "experiment.train", depends=["prepare-data"], compute=True, retries=retries,
                          with_items=[json.dumps(p, sort_keys=True) for p in spec.parameterSets],
                          args={"parameters": "{{item}}"}, timeout=spec.timeoutSeconds))
    elif spec.mode == "run":
        tasks.append(Task("train", "experiment.train", depends=["prepare-data"], compute=True,
                          retries=retries, memoize=True, timeout=spec.timeoutSeconds))
    elif spec.mode == "hpo":
        # the study needs only the spec: it is created while the data is prepared (about 1 s of
        # imports and schema off the serial path of every HPO run)
        tasks.append(Task("create-study", "experiment.create-study"))
        # parallelTrials workers share one Optuna study (RDB storage) and pull trials until
        # maxTrials, maxFailedTrials or the goal stops the study.
        tasks.append(Task("trials", "experiment.hpo-worker", depends=["prepare-data", "create-study"], compute=True,
                          retries=retries, with_sequence=spec.hpo.parallelTrials, args={"worker": "{{item}}"},
                          timeout=spec.timeoutSeconds))
    else:
        tasks.append(Task("candidates", "experiment.train-candidate", depends=["prepare-data"], compute=True,
                          retries=retries, with_items=[c.name for c in spec.automl.candidates],
                          args={"candidate": "{{item}}"}, timeout=spec.timeoutSeconds))
    tasks.append(Task("select", "experiment.select", depends=[tasks[-1].name]))
    if spec.registration is not None:
        # export (and its parity check) before register: a model whose ONNX file computes
        # something else is never registered as ONNX
        prev = "select"
        if spec.registration.export:
            tasks.append(Task("export-onnx", "experiment.export-onnx", depends=["select"], compute=True))
            prev = "export-onnx"
        tasks.append(Task("register", "experiment.register", depends=[prev], retries=2))
    return tasks


def _deployment(s: LoadedSpec) -> list[Task]:
    return [Task("resolve-model", "deployment.resolve-model"),
            Task("build", "deployment.build", depends=["resolve-model"], memoize=True, retries=1),
            Task("rollout", "deployment.rollout", depends=["build"], retries=2),
            Task("smoke-test", "deployment.smoke-test", depends=["rollout"], retries=3)]


PIPELINES: dict[str, Callable[[LoadedSpec], list[Task]]] = {
    "Workspace": _workspace,
    "Dataset": _dataset,
    "LabelingJob": _labeling,
    "Experiment": _experiment,
    "Deployment": _deployment,
}


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


def _size(s: LoadedSpec, workspace: WorkspaceSpec | None) -> Preset:
    req = getattr(s.obj.spec, "resources", None)
    return (workspace or WorkspaceSpec()).resolve(req)


def render_workflow(config: KilnConfig, s: LoadedSpec, *, workspace: WorkspaceSpec | None = None,
                    data_version: str = "", code_version: str = "") -> dict[str, Any]:
    """The Argo Workflow for ``s``. ``workspace`` resolves resource presets and the concurrency
    quota; ``data_version``/``code_version`` enter the memoization keys."""
    tasks = PIPELINES[s.kind](s)
    name = workflow_name(s)
    ref = f"{s.kind}/{s.workspace}/{s.name}"
    size = _size(s, workspace)
    node_selector = {"nvidia.com/gpu.product": size.gpuModel} if size.gpu and size.gpuModel else None
    labels = {
        "app.kubernetes.io/managed-by": "kiln",
        "kiln.dev/kind": _label_value(s.kind),
        "kiln.dev/workspace": _label_value(s.workspace),
        "kiln.dev/name": _label_value(s.name),
        # with a data version the run is of this spec *and* that data: runners reuse a Succeeded
        # run by this label, which must not swallow a retrain on a new dataset version
        "kiln.dev/spec-hash": f"{s.spec_hash}-{data_version[:8]}" if data_version else s.spec_hash,
    }
    templates: list[dict[str, Any]] = []
    dag_tasks: list[dict[str, Any]] = []
    for t in tasks:
        tmpl_name = t.name
        args = ["step", t.step, "--object", ref, "--spec", "{{workflow.parameters.spec}}",
                "--spec-hash", "{{workflow.parameters.spec-hash}}"]
        inputs: list[dict[str, Any]] = []
        for k in t.args:
            inputs.append({"name": k})
            args += ["--arg", f"{k}={{{{inputs.parameters.{k}}}}}"]
        container: dict[str, Any] = {"image": config.image, "command": ["kiln"], "args": args,
                                     "env": [{"name": "KILN_WORKFLOW", "value": "{{workflow.name}}"},
                                             {"name": "KILN_NODE", "value": "{{pod.name}}"}]}
        if t.compute:
            container["resources"] = _resources(size)
        else:
            container["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
        tmpl: dict[str, Any] = {"name": tmpl_name, "container": container}
        if inputs:
            tmpl["inputs"] = {"parameters": inputs}
        if t.retries:
            # exit code PERMANENT_EXIT (kiln.controller.steps): bad input, which a retry cannot fix
            tmpl["retryStrategy"] = {"limit": str(t.retries), "retryPolicy": "OnFailure",
                                     "expression": f"asInt(lastRetry.exitCode) != {PERMANENT_EXIT}",
                                     "backoff": {"duration": "5s", "factor": "2", "maxDuration": "10m"}}
        if t.timeout:
            tmpl["activeDeadlineSeconds"] = t.timeout
        if t.compute and node_selector:
            tmpl["nodeSelector"] = node_selector
        if t.memoize:
            key = hashlib.sha256(json.dumps([s.spec_hash, t.step, t.args, data_version, code_version,
                                             kiln.__version__], sort_keys=True).encode()).hexdigest()[:32]
            tmpl["memoize"] = {"key": key, "maxAge": MEMO_MAX_AGE, "cache": {"configMap": {"name": CACHE_CONFIGMAP}}}
        templates.append(tmpl)
        task: dict[str, Any] = {"name": t.name, "template": tmpl_name}
        if t.depends:
            task["depends"] = " && ".join(f"{d}.Succeeded" for d in t.depends)
        if t.args:
            task["arguments"] = {"parameters": [{"name": k, "value": v} for k, v in t.args.items()]}
        if t.with_items is not None:
            task["withItems"] = t.with_items
        if t.with_sequence is not None:
            task["withSequence"] = {"count": str(t.with_sequence)}
        dag_tasks.append(task)
    spec: dict[str, Any] = {
        "entrypoint": "main",
        "arguments": {"parameters": [
            {"name": "spec", "value": json.dumps(s.doc, sort_keys=True, separators=(",", ":"), default=str)},
            {"name": "spec-hash", "value": s.spec_hash},
            {"name": "data-version", "value": data_version},
            {"name": "code-version", "value": code_version},
        ]},
        "templates": [{"name": "main", "dag": {"failFast": True, "tasks": dag_tasks}}, *templates],
        "podGC": {"strategy": "OnPodSuccess"},
        "workflowMetadata": {"labels": labels},
    }
    if workspace is not None and workspace.quotas.maxConcurrentJobs:
        spec["parallelism"] = workspace.quotas.maxConcurrentJobs
    timeout = getattr(s.obj.spec, "timeoutSeconds", None)
    if timeout:
        spec["activeDeadlineSeconds"] = timeout * 2 if s.kind == "Experiment" else timeout
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"kiln.dev/object": ref, "kiln.dev/source": s.location(),
                                     "kiln.dev/version": kiln.__version__}},
        "spec": spec,
    }
