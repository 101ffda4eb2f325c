"""Handlers whose work runs as a workflow: render the object's Argo Workflow and run it through
the configured runner (local subprocesses by default, a cluster with ``runner: argo``).

The workflow is one handler step. Its tasks' progress lives with the runner, which resumes a
run by name and spec hash: after a crash, re-applying resubmits the same manifest and the runner
skips the tasks that already Succeeded. While it runs, the phase and task phases are mirrored
into the object's record so that ``kiln status`` shows progress.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from kiln.controller.handlers.base import Context, Handler, Step


class WorkflowHandler(Handler):
    def steps(self, ctx: Context) -> list[Step]:
        from kiln.controller.render import render_workflow, workflow_name

        assert ctx.spec is not None
        spec = ctx.spec
        workspace = spec.obj.spec if spec.kind == "Workspace" else ctx.workspaces.get(spec.workspace)

        def run(ctx: Context) -> dict[str, Any]:
            from kiln.controller.runner import run_workflow

            manifest = render_workflow(ctx.config, spec, workspace=workspace)
            wf = run_workflow(ctx.config, manifest, on_progress=lambda p: _mirror(ctx, p))
            st = wf.get("status") or {}
            return {"workflow": manifest["metadata"]["name"], "phase": st.get("phase"),
                    "outputs": _task_outputs(wf)}

        def inventory(out: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"kind": "workflow", "id": out["workflow"], "runner": ctx.config.runner},
                    *self.inventory_from(spec, out.get("outputs", {}))]

        return [Step("workflow", f"run workflow {workflow_name(spec)} ({ctx.config.runner} runner)", run,
                     inventory=inventory)]

    def inventory_from(self, spec: Any, outputs: dict[str, Any]) -> list[dict[str, Any]]:
        """What the tasks created for ``spec``, from their JSON outputs (task name -> output)."""
        return []

    def delete(self, ctx: Context) -> list[str]:
        from kiln.controller.runner import make_runner

        assert ctx.record is not None
        done = []
        runner = None
        for item in ctx.record.inventory:
            if item.get("kind") == "workflow":
                runner = runner or make_runner(ctx.config)
                runner.delete(item["id"])
                done.append(f"delete workflow {item['id']}")
        return done


def _mirror(ctx: Context, progress: dict[str, Any]) -> None:
    if ctx.record is None:
        return
    ctx.record = replace(ctx.record, extra={**ctx.record.extra, "workflow": progress})
    ctx.store.put(ctx.record)


def _task_outputs(wf: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for n in ((wf.get("status") or {}).get("nodes") or {}).values():
        if n.get("type") == "Pod" and n.get("phase") == "Succeeded":
            result = (n.get("outputs") or {}).get("result")
            if result is not None:
                try:  # `kiln step` prints its output as one JSON line
                    out[n.get("displayName") or n.get("name")] = json.loads(result.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    out[n.get("displayName") or n.get("name")] = result
    return out
