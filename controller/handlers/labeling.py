"""LabelingJob handler: the steps of ``kiln.controller.labeling_steps``, run in-process.

Why not a workflow, as Datasets are: a labelling job is mostly waiting for people. Its steps are
a few Label Studio API calls each, idempotent and cheap when nothing changed, so every
``kiln apply`` runs all of them again (``Step.always``) instead of trusting a spec-hash memo:
new dataset items get imported, a hand-edited project is restored, and completion is checked.
(The same steps, from the same pipeline ``pipelines.labeling``, run as tasks of the Argo
workflow that ``render`` makes of it.)

The lifecycle, as ``kiln status`` shows it:

- applied, not complete: Ready True, health **Progressing**, ``info`` "project 3: 12/42 annotated
  or skipped". ``kiln plan`` lists the job with a note ("labelling in progress ...; apply checks
  completion") and ``kiln apply`` re-runs its steps: ``apply`` returns promptly (wait-complete
  does one check), so a later apply, or a controller loop calling apply, picks up completion.
- complete: the export step writes the new dataset version (once; ``exported.json``), health
  **Healthy**; plan is quiet again.
- the project drifted (classes renamed by hand in Label Studio): plan shows an update with the
  drift described; apply restores the spec's classes and moves the annotations along.
- Label Studio unreachable: a TemporaryError, the object stays Reconciling and plan retries it;
  a refused token: Stalled with the one-line reason.

Status kept in the record's ``extra`` (``kiln describe LabelingJob/NAME``)::

    {"project": 3, "url": "http://127.0.0.1:8080/projects/3", "dataset": "vision/shapes@v1",
     "assignment": {"cy@x": [1, 14], ...}, "completion": {"complete": false, "rule": "...",
     "done": 12, "total": 42, "reason": "..."}, "progress": {"per_annotator": {...},
     "per_class": {...}}, "output": {"dataset": "vision/shapes", "number": "v2", ...},
     "info": "project 3: 12/42 items annotated or skipped"}
"""

from __future__ import annotations

# Step modules are imported inside the methods that use them: see LAZY_STEP_IMPORTS in base.py.
from typing import TYPE_CHECKING, Any

from kiln.controller import pipelines
from kiln.controller.handlers.base import Context, Handler, Step, in_process
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.loader import LoadedSpec
    from kiln.state import ObjectRecord

class LabelingJobHandler(Handler):
    kind = "LabelingJob"

    @classmethod
    def unavailable(cls, spec: LoadedSpec) -> str | None:
        from kiln.controller.dataset_steps import data_rel
        from kiln.controller.labeling_steps import pre_annotation_unavailable

        s = spec.obj.spec
        if s.task.startswith("tabular"):
            return f"task {s.task}: tabular labelling is not available in this kiln version (image tasks are)"
        ws = s.dataset.workspace or spec.workspace
        if not (cls.repo_of(spec) / f"{data_rel(ws, s.dataset.name)}.versions.json").is_file():
            # e.g. a capture dataset before its deployment has seen traffic
            return f"dataset {s.dataset.name!r} has no version yet: apply it (and feed it) first"
        return pre_annotation_unavailable(s)

    @classmethod
    def makes(cls, spec: LoadedSpec) -> set[str]:
        s = spec.obj.spec  # the labels become a new version of the output dataset
        return {f"dataset:{s.dataset.workspace or spec.workspace}/{s.output.dataset or s.dataset.name}"}

    @classmethod
    def uses(cls, spec: LoadedSpec) -> set[str]:
        pa = spec.obj.spec.preAnnotation
        named = pa.model.name if pa is not None and pa.model is not None else None
        return super().uses(spec) | ({f"model:{spec.workspace}/{named}"} if named else set())

    @classmethod
    def own_output(cls, spec: LoadedSpec, lineage: dict[str, Any]) -> bool:
        return (lineage.get("labelingJob") or {}).get("job") == f"LabelingJob/{spec.workspace}/{spec.name}"

    @classmethod
    def on_new_inputs(cls, spec: LoadedSpec, note: str) -> tuple[str, str] | None:
        return ("update", f"{note}: apply imports its new items")

    def steps(self, ctx: Context) -> list[Step]:
        """The tasks of the kind's pipeline (``pipelines.labeling``, also what the Argo workflow
        runs), each run here through ``kiln.controller.steps.STEPS``. Without the task's
        arguments: in-process, wait-complete checks once instead of polling."""
        assert ctx.spec is not None
        return in_process(pipelines.labeling(ctx.spec), always=True, args=False, inventory={"project": _inventory})

    def health(self, ctx: Context) -> str:
        exp = ctx.outputs.get("export") or {}
        return "Healthy" if exp.get("exported") else "Progressing"

    def extra(self, ctx: Context) -> dict[str, Any]:
        o = ctx.outputs
        proj, imp, wait, exp = (o.get(k) or {} for k in ("project", "import", "wait-complete", "export"))
        extra: dict[str, Any] = {}
        if proj:
            extra.update(project=proj["project"], url=proj["url"])
            if proj.get("drift"):
                extra["corrected"] = proj["drift"]
        if imp:
            extra.update(dataset=f"{imp['dataset']}@{imp['datasetNumber']}", items=imp["items"],
                         assignment=imp["assignment"] or (ctx.record.extra.get("assignment") if ctx.record else {}))
            if "pre-annotate" in o:
                extra["preAnnotation"] = {**o["pre-annotate"], "withPredictions": imp["withPredictions"],
                                          "belowThreshold": imp["belowThreshold"]}
        if wait:
            extra["completion"] = {k: wait[k] for k in ("complete", "rule", "done", "total", "reason")}
            extra["progress"] = {k: wait["progress"][k] for k in ("per_annotator", "per_class")}
        if exp.get("exported"):
            extra["output"] = {k: exp[k] for k in ("dataset", "version", "number", "items", "skipped", "deleted")}
        state = "complete" if wait.get("complete") else "in progress"
        line = f"project {proj.get('project', '?')}: {wait.get('reason', '?')} ({state})"
        if exp.get("exported"):
            line += f" -> {exp['dataset']} {exp['number']}"
        extra["info"] = line
        return extra

    @classmethod
    def observe(cls, config: KilnConfig, spec: LoadedSpec, record: ObjectRecord) -> tuple[str, str] | None:
        """For plan: ("update", why) when the Label Studio project drifted from the spec, ("poll",
        why) while labelling is in progress; None when there is nothing to do."""
        from kiln.controller.labeling_steps import classes, connect, kiln_id

        s = spec.obj.spec
        try:
            client = connect(config, timeout=10)
            p = client.find_project(kiln_id(config.repo, spec.workspace, spec.name))
            if p is None:
                if record.extra.get("project") is not None:
                    return ("update", f"Label Studio project {record.extra['project']} is gone; apply recreates it")
            else:
                d = client.drift(p, s.task, classes(s))
                if d.drifted:
                    return ("update", f"drift: {d.describe()}; apply restores the spec's classes")
        except KilnError as exc:
            return ("poll", f"Label Studio not checked: {exc.message}")
        comp = record.extra.get("completion") or {}
        if comp and not comp.get("complete"):
            return ("poll", f"labelling in progress: {comp.get('reason')}; apply checks completion")
        if comp.get("complete") and not record.extra.get("output"):
            return ("poll", "complete, not exported yet; apply exports it")
        return None

    def delete(self, ctx: Context) -> list[str]:
        """Delete the Label Studio project, unless it holds annotations that were never exported."""
        from kiln.controller.labeling_steps import connect

        assert ctx.record is not None
        done = []
        for item in ctx.record.inventory:
            if item.get("kind") != "labelstudio-project":
                continue
            client = connect(ctx.config)
            pid = int(item["id"])
            if not ctx.record.extra.get("output"):
                annotated = sum(bool(t.get("annotations")) for t in client.export_tasks(pid)) \
                    if _exists(client, pid) else 0
                if annotated:
                    raise KilnError(f"Label Studio project {pid} holds {annotated} annotated item(s) that were "
                                    "never exported to a dataset version",
                                    hint="complete the job first, or delete the project in Label Studio yourself")
            if _exists(client, pid):
                client._call(client.ls.projects.delete, pid, what=f"delete project {pid}")
                done.append(f"delete Label Studio project {pid}")
        return done


def _exists(client: Any, pid: int) -> bool:
    from kiln.labeling.client import LabelStudioRequestError

    try:
        client._call(client.ls.projects.get, pid, what=f"read project {pid}")
        return True
    except LabelStudioRequestError:
        return False


def _inventory(out: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"kind": "labelstudio-project", "id": out["project"], "url": out["url"]}]
