"""Deployment handler: a model version served by a managed BentoML server (the local runtime).

The work is the workflow ``resolve-model -> build -> rollout -> smoke-test`` (steps in
``kiln.controller.deployment_steps``); before it, the ``auth`` step hashes the tokens that
``auth.tokens[].env`` names from *this* process's environment (the workflow's tasks do not see
the user's environment) into the serving layer's token store as ``env-<VAR>`` records: only the
sha256 is kept, never the token, and nothing about it enters the state, logs or manifests.

The record's ``extra`` (``kiln describe``)::

    {"url": "http://127.0.0.1:40123", "pid": 12345, "model": "iris", "version": 3,
     "info": "iris v3 at http://127.0.0.1:40123"}

Health comes from the server's pid and ``/readyz``: Healthy, Progressing (starting), Degraded
(exited or not answering), Missing (no server recorded), Suspended (``enabled: false``).
Delete (``apply --prune``) stops the server and drops the env tokens; the capture folder stays
(it is data a Dataset versions).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any

from kiln.controller.handlers.base import Context, Step
from kiln.controller.handlers.workflow import WorkflowHandler
from kiln.errors import ConfigError


def env_token_hashes(spec: Any, name: str) -> dict[str, str]:
    """``VAR`` -> sha256 of the token each ``auth.tokens[].env`` names; clear errors otherwise."""
    out = {}
    for i, ref in enumerate(spec.auth.tokens):
        if ref.secretName:
            raise ConfigError(f"Deployment {name}: auth.tokens[{i}].secretName {ref.secretName!r} needs a cluster "
                              "(a Kubernetes Secret, see `kiln render --what k8s`)",
                              hint="on the local runtime name an environment variable: auth.tokens[].env")
        value = os.environ.get(ref.env or "")
        if not value:
            raise ConfigError(f"Deployment {name}: auth.tokens[{i}].env: ${ref.env} is not set",
                              hint=f"export {ref.env}=<token> before kiln apply, or remove the entry")
        out[str(ref.env)] = hashlib.sha256(value.encode()).hexdigest()
    return out


class DeploymentHandler(WorkflowHandler):
    kind = "Deployment"

    def steps(self, ctx: Context) -> list[Step]:
        assert ctx.spec is not None
        spec = ctx.spec

        def auth(ctx: Context) -> dict[str, Any]:
            from kiln.bento.auth import TokenStore, default_token_file

            hashes = env_token_hashes(spec.obj.spec, spec.name)
            TokenStore(default_token_file(ctx.repo)).set_env_tokens(spec.name, hashes)
            return {"public": spec.obj.spec.auth.public, "envTokens": sorted(hashes)}  # names only

        return [Step("auth", "register the tokens auth.tokens names (hashes only)", auth),
                *super().steps(ctx)]

    def inventory_from(self, spec: Any, outputs: dict[str, Any]) -> list[dict[str, Any]]:
        out = outputs.get("rollout")
        if not isinstance(out, dict) or "pid" not in out:
            return []
        return [{"kind": "server", "id": out["url"], "pid": out["pid"]}]

    def _home(self, ctx: Context, ws: str, name: str):
        from kiln.controller.deployment_steps import deployment_home

        return deployment_home(ctx.config, ws, name)

    def health(self, ctx: Context) -> str:
        from kiln.controller.deployment_steps import live_health

        assert ctx.spec is not None
        return live_health(self._home(ctx, ctx.spec.workspace, ctx.spec.name), ctx.spec.obj.spec.enabled)[0]

    def extra(self, ctx: Context) -> dict[str, Any]:
        from kiln.controller.deployment_steps import live_health

        assert ctx.spec is not None
        health, info = live_health(self._home(ctx, ctx.spec.workspace, ctx.spec.name), ctx.spec.obj.spec.enabled)
        if not ctx.spec.obj.spec.enabled or info is None:
            return {"url": None, "pid": None, "info": "disabled" if health == "Suspended" else "no server"}
        return {"url": info["url"], "pid": info["pid"], "model": info["model"], "version": info["version"],
                "info": f"{info['model']} v{info['version']} at {info['url']} ({health})"}

    def delete(self, ctx: Context) -> list[str]:
        from kiln.bento.auth import TokenStore, default_token_file
        from kiln.controller.deployment_steps import stop_pid, _read_json

        assert ctx.record is not None
        rec = ctx.record
        done = super().delete(ctx)
        home = self._home(ctx, rec.workspace, rec.name)
        info = _read_json(home / "server.json")
        if info and info.get("pid") and stop_pid(int(info["pid"]), home):
            done.append(f"stop server pid {info['pid']} ({info.get('url')})")
        TokenStore(default_token_file(ctx.repo)).set_env_tokens(rec.name, {})
        if home.exists():
            for p in home.iterdir():
                if p.name == "capture":
                    continue  # captured inputs are data: a Dataset versions them
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            done.append(f"remove {home.relative_to(ctx.repo)} (capture kept)" if (home / "capture").exists()
                        else f"remove {home.relative_to(ctx.repo)}")
            if not any(home.iterdir()):
                home.rmdir()
        return done
