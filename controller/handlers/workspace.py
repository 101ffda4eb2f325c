"""Workspace handler: records members, roles, quotas and presets, and owns the workspace's
storage area (``.kiln/workspaces/<name>/``: run outputs, capture areas).

Roles and quotas are enforced before anything runs, at validate/plan time (``kiln.validate``).
The work itself is bookkeeping (a folder and a row in the state store): the tasks of the kind's
pipeline (``workspace.storage``, ``workspace.members`` in ``kiln.controller.steps``) run in the
controller's process (``handlers.base.in_process``), not as a workflow of subprocesses: a
thousand workspaces apply in seconds, not in ten minutes (#16). ``kiln render`` still writes
the same tasks as an Argo Workflow, for a cluster that wants to run them itself.
"""

from __future__ import annotations

from typing import Any

from kiln.controller import pipelines
from kiln.controller.handlers.base import Context, Step, in_process
from kiln.controller.handlers.workflow import WorkflowHandler
from kiln.controller.steps import workspace_dir

KV_NAMESPACE = "workspace"


class WorkspaceHandler(WorkflowHandler):
    # a WorkflowHandler still for delete: a workspace applied by an earlier kiln version lists
    # the workflow it ran in its inventory, and pruning it deletes that run
    kind = "Workspace"

    def steps(self, ctx: Context) -> list[Step]:
        assert ctx.spec is not None
        name = ctx.spec.name
        return in_process(pipelines.workspace(ctx.spec), inventory={
            "storage": lambda out: [{"kind": "directory", "id": out["path"]}],
            "members": lambda out: [{"kind": "kv", "id": f"{KV_NAMESPACE}/{name}"}]})

    def delete(self, ctx: Context) -> list[str]:
        assert ctx.record is not None
        name = ctx.record.name
        done = super().delete(ctx)
        ctx.store.delete_kv(KV_NAMESPACE, name)
        done.append(f"forget members of workspace {name}")
        path = workspace_dir(ctx.config, name)
        if path.is_dir():
            try:
                path.rmdir()  # only when empty: never delete run outputs silently
                done.append(f"remove empty {path.relative_to(ctx.repo)}")
            except OSError:
                done.append(f"kept {path.relative_to(ctx.repo)} (not empty)")
        return done

    def extra(self, ctx: Context) -> dict[str, Any]:
        spec = ctx.spec.obj.spec  # type: ignore[union-attr]
        roles: dict[str, int] = {}
        for m in spec.members:
            roles[m.role] = roles.get(m.role, 0) + 1
        return {"roles": roles, "quotas": spec.quotas.model_dump(exclude_none=True)}
