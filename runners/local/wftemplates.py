"""WorkflowTemplates and ClusterWorkflowTemplates from a folder, and the references to them.

Argo resolves ``templateRef`` (a step's or task's template from a (Cluster)WorkflowTemplate) and
``spec.workflowTemplateRef`` (a whole workflow from one) against objects in the cluster. The local
runner reads them from a folder of YAML files instead (``LocalRunner(templates_dir=...)``, else
``$KILN_WORKFLOW_TEMPLATES``), and resolves both before validation by copying what they name into
the workflow: a referenced template becomes a template of the workflow named
``<WorkflowTemplate>.<template>``, its own ``template:`` references renamed alike, so the
interpreter only ever sees plain ``template:`` references. A step's or task's ``inline`` template
is copied the same way (as ``<template>.<step>.inline``).

What a run may read is limited to what the folder holds: nothing in a template is executed here.
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

import yaml

from kiln.errors import NeedsCluster, WorkflowError
from kiln.runners.base import Workflow

TEMPLATE_KINDS = {"WorkflowTemplate": False, "ClusterWorkflowTemplate": True}
# other objects the folder may hold, by kind: ConfigMaps that parameters read (configMapKeyRef)
OBJECT_KINDS = ("ConfigMap",)
ENV_DIR = "KILN_WORKFLOW_TEMPLATES"


class TemplateStore:
    """The (Cluster)WorkflowTemplates of a folder, read once, by (clusterScope, name)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._objs: dict[tuple[bool, str], dict] | None = None
        self.others: dict[tuple[str, str], dict] = {}
        self.lock = threading.Lock()

    @property
    def objs(self) -> dict[tuple[bool, str], dict]:
        with self.lock:  # runs submitted at once read the folder once, and never half-read
            if self._objs is None:
                objs: dict[tuple[bool, str], dict] = {}
                if self.folder is not None and self.folder.is_dir():
                    for path in sorted(self.folder.rglob("*.y*ml")):
                        try:
                            docs = list(yaml.safe_load_all(path.read_text()))
                        except (OSError, yaml.YAMLError):
                            continue  # not ours to judge: only the templates a workflow names matter
                        for d in docs:
                            name = (d.get("metadata") or {}).get("name") if isinstance(d, dict) else None
                            if name and d.get("kind") in TEMPLATE_KINDS:
                                objs[(TEMPLATE_KINDS[d["kind"]], name)] = d
                            elif name and d.get("kind") in OBJECT_KINDS:
                                self.others[(d["kind"], name)] = d
                self._objs = objs
            return self._objs

    def get(self, name: str, cluster: bool, where: str) -> dict:
        obj = self.objs.get((cluster, name))
        if obj is None:
            kind = "ClusterWorkflowTemplate" if cluster else "WorkflowTemplate"
            raise NeedsCluster(
                f"{where}: {kind} {name!r} not found",
                hint=f"put it in a YAML file under {self.folder} (templates folder: --templates DIR or ${ENV_DIR})"
                if self.folder
                else f"give the runner a folder of WorkflowTemplates (--templates DIR or ${ENV_DIR})",
            )
        return obj


    def provide(self, name: str, data: dict[str, str]) -> None:
        """Set keys of a ConfigMap that a workflow brings with it: kiln's workspace quotas
        (annotation ``kiln.dev/semaphores``), which the Argo runner writes into the cluster's
        ConfigMap before it creates the workflow (``ArgoRunner._ensure_semaphores``). The local
        runner runs the same manifest, so it sets them here, over what the folder holds."""
        _ = self.objs  # read the folder first: its copy must not replace these later
        with self.lock:
            cm = self.others.setdefault(("ConfigMap", name), {"kind": "ConfigMap", "metadata": {"name": name}})
            cm["data"] = {**(cm.get("data") or {}), **{str(k): str(v) for k, v in data.items()}}

    def config_value(self, ref: dict, where: str) -> str:
        """The value a ``configMapKeyRef`` names, from a ConfigMap of the folder."""
        _ = self.objs  # read the folder
        name, key = ref.get("name", ""), ref.get("key", "")
        cm = self.others.get(("ConfigMap", name))
        value = ((cm or {}).get("data") or {}).get(key)
        if value is None:
            if ref.get("optional"):
                return ""
            raise NeedsCluster(f"{where}: needs key {key!r} of the ConfigMap {name!r}, which is not in "
                               f"{self.folder or 'the objects folder (none given)'}",
                               hint=f"put the ConfigMap in a YAML file under the folder given with --templates DIR or ${ENV_DIR}")
        return str(value)


def default_folder() -> Path | None:
    value = os.environ.get(ENV_DIR)
    return Path(value) if value else None


def _config_refs(spec: dict) -> list[tuple[dict, str]]:
    """The parameters whose value comes from a ConfigMap, with where they are."""
    out = [(p, f"spec.arguments.parameters {p.get('name')!r}") for p in (spec.get("arguments") or {}).get("parameters") or []]
    for t in spec.get("templates") or []:
        out += [(p, f"template {t.get('name')!r} input parameter {p.get('name')!r}")
                for p in (t.get("inputs") or {}).get("parameters") or []]
    return [(p, w) for p, w in out if isinstance(p, dict) and (p.get("valueFrom") or {}).get("configMapKeyRef")]


def _has_refs(spec: dict) -> bool:
    if spec.get("workflowTemplateRef") or _config_refs(spec):
        return True
    for t in spec.get("templates") or []:
        for s in _calls(t):
            if s.get("templateRef") or s.get("inline"):
                return True
    return False


def _calls(t: dict) -> list[dict]:
    """The steps and DAG tasks of a template (the places a template is named)."""
    out = [s for group in t.get("steps") or [] for s in group or []]
    out += list((t.get("dag") or {}).get("tasks") or [])
    return out


def resolve(manifest: Workflow, store: TemplateStore) -> Workflow:
    """``manifest`` with workflowTemplateRef, templateRef and inline templates resolved (a copy
    when there was anything to resolve)."""
    spec = manifest.get("spec") if isinstance(manifest, dict) else None
    if not isinstance(spec, dict) or not _has_refs(spec):
        return manifest
    wf = copy.deepcopy(manifest)
    spec = wf["spec"]
    ref = spec.pop("workflowTemplateRef", None)
    if ref:
        obj = store.get(ref.get("name", ""), bool(ref.get("clusterScope")), "spec.workflowTemplateRef")
        spec = wf["spec"] = _merge_spec(copy.deepcopy(obj.get("spec") or {}), spec)
    templates: list[dict] = spec.setdefault("templates", [])
    names: set[str] = {str(t.get("name")) for t in templates}
    # the workflow's own templates: their names stay; referenced ones are added under new names
    work: list[tuple[dict, dict | None]] = [(t, None) for t in templates]
    added: set[str] = set()
    while work:
        t, owner = work.pop()
        for s in _calls(t):
            where = f"template {t.get('name')!r} step/task {s.get('name')!r}"
            if s.get("inline"):
                new = dict(s.pop("inline"), name=f"{t['name']}.{s.get('name')}.inline")
                s["template"] = new["name"]
                if new["name"] not in names:
                    names.add(new["name"])
                    templates.append(new)
                    work.append((new, owner))
            elif s.get("templateRef"):
                r = s.pop("templateRef")
                obj = store.get(r.get("name", ""), bool(r.get("clusterScope")), where)
                s["template"] = _import(obj, r.get("template", ""), where, templates, names, added, work)
            elif owner is not None and s.get("template"):
                # a template of a WorkflowTemplate names its siblings: the renamed copies
                s["template"] = _import(owner, s["template"], where, templates, names, added, work)
    for p, where in _config_refs(spec):  # ConfigMap values are read once, at submit, as Argo does
        p["value"] = store.config_value(p["valueFrom"]["configMapKeyRef"], where)
        p.pop("valueFrom")
    return wf


def _import(
    obj: dict,
    tname: str,
    where: str,
    templates: list[dict],
    names: set[str],
    added: set[str],
    work: list[tuple[dict, dict | None]],
) -> str:
    oname = obj["metadata"]["name"]
    new_name = f"{oname}.{tname}"
    if new_name in added:
        return new_name
    src = next((t for t in (obj.get("spec") or {}).get("templates") or [] if t.get("name") == tname), None)
    if src is None:
        have = ", ".join(sorted(str(t.get("name")) for t in (obj.get("spec") or {}).get("templates") or []))
        raise WorkflowError(f"{where}: {obj['kind']} {oname!r} has no template {tname!r}", hint=f"its templates: {have}")
    t = copy.deepcopy(src)
    t["name"] = new_name
    added.add(new_name)
    names.add(new_name)
    templates.append(t)
    work.append((t, obj))
    return new_name


def _merge_spec(base: dict, over: dict) -> dict:
    """A Workflow's own spec fields over its WorkflowTemplate's (arguments merged by name)."""
    out = dict(base)
    for k, v in over.items():
        if k == "arguments":
            out[k] = _merge_args(base.get(k) or {}, v or {})
        elif k == "templates":
            mine = {t.get("name"): t for t in v or []}
            out[k] = [mine.pop(t.get("name"), t) for t in base.get(k) or []] + list(mine.values())
        else:
            out[k] = v
    return out


def _merge_args(base: dict, over: dict) -> dict:
    out = dict(base)
    for kind in ("parameters", "artifacts"):
        if kind in over:
            mine = {p.get("name"): p for p in over.get(kind) or []}
            out[kind] = [mine.pop(p.get("name"), p) for p in base.get(kind) or []] + list(mine.values())
    return out
