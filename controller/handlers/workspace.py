"""Workspace handler: records members, roles, quotas and presets, and owns the workspace's
storage area (``.kiln/workspaces/<name>/``: run outputs, capture areas).

Roles and quotas are enforced before anything runs, at validate/plan time (``kiln.validate``).
The work itself (``workspace.storage``, ``workspace.members`` in ``kiln.controller.steps``) runs
as the workspace's workflow, like every kind's, so the same manifest works on Argo.
"""

from __future__ import annotations

from typing import Any

from kiln.controller.handlers.base import Context
from kiln.controller.handlers.workflow import WorkflowHandler
from kiln.controller.steps import workspace_dir

KV_NAMESPACE = "workspace"


class WorkspaceHandler(WorkflowHandler):
    kind = "Workspace"

    def inventory_from(self, spec: Any, outputs: dict[str, Any]) -> list[dict[str, Any]]:
        items = []
        if isinstance(outputs.get("storage"), dict):
            items.append({"kind": "directory", "id": outputs["storage"]["path"]})
        if "members" in outputs:
            items.append({"kind": "kv", "id": f"{KV_NAMESPACE}/{spec.name}"})
        return items

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
