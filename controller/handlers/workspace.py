"""Workspace handler: records members, roles, quotas and presets, and owns the workspace's
storage area (``.kiln/workspaces/<name>/``: run outputs, capture areas).

Roles and quotas are enforced before anything runs, at validate/plan time (``kiln.validate``);
what is applied here is what other handlers and ``kiln status`` read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.controller.handlers.base import Context, Handler, Step

KV_NAMESPACE = "workspace"


def workspace_dir(ctx: Context, name: str) -> Path:
    return ctx.config.kiln_dir() / "workspaces" / name


class WorkspaceHandler(Handler):
    kind = "Workspace"

    def steps(self, ctx: Context) -> list[Step]:
        assert ctx.spec is not None
        name = ctx.spec.name

        def storage(ctx: Context) -> dict[str, Any]:
            path = workspace_dir(ctx, name)
            path.mkdir(parents=True, exist_ok=True)
            return {"path": str(path.relative_to(ctx.repo))}

        def members(ctx: Context) -> dict[str, Any]:
            spec = ctx.spec.obj.spec  # type: ignore[union-attr]
            value = {
                "members": {m.user: m.role for m in spec.members},
                "quotas": spec.quotas.model_dump(exclude_none=True),
                "presets": {p.name: p.model_dump(exclude_none=True, exclude={"name"}) for p in spec.presets},
                "defaultPreset": spec.defaultPreset,
            }
            ctx.store.put_kv(KV_NAMESPACE, name, value)
            return {"members": len(spec.members), "presets": len(spec.presets)}

        return [
            Step("storage", f"create storage area .kiln/workspaces/{name}", storage,
                 inventory=lambda out: [{"kind": "directory", "id": out["path"]}]),
            Step("members", "record members, roles, quotas and presets", members,
                 inventory=lambda out: [{"kind": "kv", "id": f"{KV_NAMESPACE}/{name}"}]),
        ]

    def delete(self, ctx: Context) -> list[str]:
        assert ctx.record is not None
        name = ctx.record.name
        done: list[str] = []
        ctx.store.delete_kv(KV_NAMESPACE, name)
        done.append(f"forget members of workspace {name}")
        path = workspace_dir(ctx, name)
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
