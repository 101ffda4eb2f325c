"""Handlers whose work runs as a workflow: render the object's Argo Workflow and run it through
the configured runner (local subprocesses by default, a cluster with ``runner: argo``).

The workflow is one handler step. Its tasks' progress lives with the runner, which resumes a
run by name and spec hash: after a crash, re-applying resubmits the same manifest and the runner
skips the tasks that already Succeeded. While it runs, the phase and task phases are mirrored
into the object's record so that ``kiln status`` shows progress.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from typing import Any

from kiln.controller.events import Shown
from kiln.controller.handlers.base import Context, Handler, Step
from kiln.controller.runner import make_runner, run_workflow
from kiln.errors import WorkflowError


class WorkflowHandler(Handler):
    def steps(self, ctx: Context) -> list[Step]:
        # lazy: render looks pipelines up in this package's registry (handlers.KINDS), which
        # imports this module; at module level the two would import each other
        from kiln.controller.render import render_workflow, workflow_name

        assert ctx.spec is not None
        spec = ctx.spec
        workspace = spec.obj.spec if spec.kind == "Workspace" else ctx.workspaces.get(spec.workspace)

        def run(ctx: Context) -> dict[str, Any]:
            args = self.render_args(ctx)
            # a followed dataset's new version is a new run of the same spec (retraining trigger)
            args.setdefault("data_version", ctx.run_key[len(spec.spec_hash) + 1:])
            manifest = render_workflow(ctx.config, spec, workspace=workspace, **args)
            try:
                wf = run_workflow(ctx.config, manifest,
                                  on_progress=lambda p: _mirror(ctx, p, self.live_extra, self.progress))
            except WorkflowError:
                detail = _failure_detail(ctx.config, manifest["metadata"]["name"])
                if detail is None:
                    raise
                raise WorkflowError(detail) from None  # the task's own line says what to fix
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

    def render_args(self, ctx: Context) -> dict[str, Any]:
        """Extra keyword arguments of ``render_workflow`` (e.g. the data version for memo keys)."""
        return {}

    def live_extra(self, ctx: Context) -> dict[str, Any]:
        """Kind-specific status to mirror into the record while the workflow runs (cheap; called
        on progress at most every couple of seconds)."""
        return {}

    def progress(self, ctx: Context, workflow: dict[str, Any],
                 live: dict[str, Any]) -> Shown | None:
        """What apply shows while the workflow runs (``Context.progress``): by default the tasks running and how many are done, from the workflow's summary
        (``runner.summarize``); ``live``: what ``live_extra`` just returned. None: nothing to show."""
        tasks = workflow.get("tasks") or {}
        running = sorted(t for t, phase in tasks.items() if phase == "Running")
        if not running:
            return None
        done = sum(phase in ("Succeeded", "Skipped", "Omitted") for phase in tasks.values())
        return Shown(f"running {', '.join(running)} ({done} task{'s' if done != 1 else ''} done)", stage="tasks")

    def delete(self, ctx: Context) -> list[str]:
        assert ctx.record is not None
        done = []
        runner = None
        for item in ctx.record.inventory:
            if item.get("kind") == "workflow":
                runner = runner or make_runner(ctx.config)
                runner.delete(item["id"])
                done.append(f"delete workflow {item['id']}")
        return done


_LIVE_EVERY = 2.0


def _mirror(ctx: Context, progress: dict[str, Any], live: Any = None, report: Any = None) -> None:
    """Mirror the workflow's progress into the record; every ``_LIVE_EVERY`` seconds also the
    kind's live status (``live``) and what apply shows of it (``report``: ``progress``)."""
    if ctx.record is None:
        return
    extra = {**ctx.record.extra, "workflow": progress}
    now = time.monotonic()
    if live is not None and now - getattr(ctx, "_live_at", 0.0) >= _LIVE_EVERY:
        ctx._live_at = now  # type: ignore[attr-defined]
        try:
            status = live(ctx)
            extra.update(status)
            shown = report(ctx, progress, status) if report is not None and progress.get("phase") == "Running" else None
            if shown is not None:
                ctx.progress(shown)
        except Exception:  # noqa: BLE001 - live status is a courtesy; never fail the run for it
            pass
    ctx.record = replace(ctx.record, extra=extra)
    ctx.store.put(ctx.record)


def _failure_detail(config: Any, name: str) -> str | None:
    """``<task>: <the error line it printed>`` for the last failed task, so that the object's
    Stalled message says what is wrong (a corrupt file, a bad column), not just "exit code 4"."""
    try:
        runner = make_runner(config)
        wf = runner.get(name) or {}
        failed = [n for n in ((wf.get("status") or {}).get("nodes") or {}).values()
                  if n.get("type") == "Pod" and n.get("phase") in ("Failed", "Error")]
        if not failed:
            return None
        node = max(failed, key=lambda n: n.get("finishedAt") or "")
        lines = list(runner.logs(name, node["id"]))
    except Exception:  # the detail is a courtesy: never hide the workflow's own error behind it
        return None
    task = re.sub(r"\(\d+\)$", "", node.get("displayName") or node.get("name", "?"))
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error: "):
            text = lines[i][len("error: "):].strip()
            if i + 1 < len(lines) and lines[i + 1].strip().startswith("hint:"):
                text += " -- " + lines[i + 1].strip()[len("hint:"):].strip()
            return f"{task}: {text}"
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return f"{task}: {node.get('message') or 'failed'}" + (f" ({last[:200]})" if last else "")


def _task_outputs(wf: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for n in ((wf.get("status") or {}).get("nodes") or {}).values():
        if n.get("type") == "Pod" and n.get("phase") == "Succeeded":
            result = (n.get("outputs") or {}).get("result")
            if result is not None:
                # a retried task's pods are "<task>(<attempt>)"; only one of them succeeds
                key = re.sub(r"\(\d+\)$", "", n.get("displayName") or n.get("name"))
                try:  # `kiln step` prints its output as one JSON line
                    out[key] = json.loads(result.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    out[key] = result
    return out
