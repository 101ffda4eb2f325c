"""Deployment handler: a model version served by a managed BentoML server (the local runtime).

The work is the workflow ``resolve-model -> build -> rollout -> smoke-test`` (steps in
``kiln.controller.deployment_steps``); before it, the ``auth`` step hashes the tokens that
``auth.tokens[].env`` names from *this* process's environment (the workflow's tasks do not see
the user's environment) into the serving layer's token store as ``env-<VAR>`` records: only the
sha256 is kept, never the token, and nothing about it enters the state, logs or manifests.
A deployment turned off (``enabled: false``) needs no token: the step does nothing.

The record's ``extra`` (``kiln describe``)::

    {"url": "http://127.0.0.1:40123", "pid": 12345, "model": "iris", "version": 3,
     "info": "iris v3 at http://127.0.0.1:40123"}

Health comes from the server's pid and ``/readyz``: Healthy, Progressing (starting), Degraded
(exited or not answering), Missing (no server recorded), Suspended (``enabled: false``).
Drift (``observe``, so ``kiln plan`` shows it and ``kiln apply``/the controller heal it), for an
applied spec that did not change: the server died or was stopped outside kiln; the model
reference now resolves to another version (an alias moved, the experiment registered a new
model); a token that ``auth.tokens[].env`` names has a new value in this environment. Healing
runs the steps again under a rollout key derived from what drifted (``g3.<hash>``), so a crash
while healing resumes, and the same drift is healed once.

A change of only how the server runs (resources, workers, batching, limits: update class
``restart``, ``kiln.api.kinds``) runs rollout and smoke-test in place: same model, no rebuild.

Delete (``apply --prune``) stops the server and drops the env tokens; the capture folder stays
(it is data a Dataset versions).
"""

from __future__ import annotations

# Step modules are imported inside the methods that use them: see LAZY_STEP_IMPORTS in base.py.
import hashlib
import os
import shutil
from typing import Any

from kiln.controller.handlers.base import Context, Step
from kiln.controller.handlers.workflow import WorkflowHandler
from kiln.errors import ConfigError, KilnError


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


def drift(config: Any, spec: Any, record: Any) -> list[str]:
    """Why the applied deployment no longer matches its unchanged spec (module doc); [] if it does.
    Read-only; an unset token variable is not drift (a plan in CI without the secret)."""
    from kiln.bento.auth import ENV_PREFIX, TokenStore, default_token_file
    from kiln.controller.deployment_steps import ModelNotReady, deployment_home, live_health, resolve_model

    s = spec.obj.spec
    if not s.enabled or record is None or record.generation == 0:
        return []
    out = []
    health, info = live_health(deployment_home(config, spec.workspace, spec.name), True)
    if health in ("Degraded", "Missing"):
        what = f"server pid {info.get('pid')} ({info.get('url')}) is not serving" if info else "no server is running"
        out.append(f"{what}; apply starts it again")
    if info:
        try:
            name, version = resolve_model(config.repo, s.model, spec.workspace)
        except (ModelNotReady, KilnError):
            name, version = info.get("model"), info.get("version")
        rollout = info.get("rollout") or {}
        # a version that is shadowed, or was rolled back, is no drift: the rollout decided
        shadowing = rollout.get("phase") in ("Shadowing", "RolledBack") and rollout.get("to") == version
        if (name, version) != (info.get("model"), info.get("version")) and not shadowing:
            out.append(f"the model reference now resolves to {name} v{version} (serving {info.get('model')} "
                       f"v{info.get('version')}); apply rolls it out")
    stored = TokenStore(default_token_file(config.repo)).read().get(f"{spec.workspace}/{spec.name}", {})
    for ref in s.auth.tokens:
        value = os.environ.get(ref.env or "") if ref.env else None
        rec = stored.get(f"{ENV_PREFIX}{ref.env}")
        if value and (rec is None or rec.get("sha256") != hashlib.sha256(value.encode()).hexdigest()):
            out.append(f"${ref.env} holds a different token than the one registered; apply registers it")
    return out


class DeploymentHandler(WorkflowHandler):
    kind = "Deployment"

    @classmethod
    def uses(cls, spec: Any) -> set[str]:
        named = spec.obj.spec.model.name  # a registered model by name (by experiment: a hard dependency)
        return super().uses(spec) | ({f"model:{spec.workspace}/{named}"} if named else set())

    @classmethod
    def observe(cls, config: Any, spec: Any, record: Any) -> tuple[str, str] | None:
        found = drift(config, spec, record)
        return ("update", "drift: " + "; ".join(found)) if found else None

    @classmethod
    def unavailable(cls, spec: Any) -> str | None:
        """Stalled (not failed) while the model has no registered version: the experiment that
        registers it has not run yet. A file check of the store; BentoML is not imported."""
        import yaml

        from kiln.api.experiment import from_experiment

        repo = cls.repo_of(spec)
        models = repo / ".kiln" / "bentoml" / "models"
        ref = spec.obj.spec.model
        if ref.name:
            if not any((models / ref.name).glob("v*/model.yaml")):
                return f"model {ref.name} has no version yet: apply the experiment that registers it"
            return None
        for f in models.glob("*/v*/model.yaml"):
            try:
                if from_experiment((yaml.safe_load(f.read_text()) or {}).get("labels") or {},
                                   spec.workspace, ref.experiment):
                    return None
            except (OSError, yaml.YAMLError):
                continue
        return f"the model of experiment {ref.experiment} has no version yet: apply the experiment that registers it"

    def steps(self, ctx: Context) -> list[Step]:
        assert ctx.spec is not None
        spec = ctx.spec

        def auth(ctx: Context) -> dict[str, Any]:
            from kiln.bento.auth import TokenStore, default_token_file

            if not spec.obj.spec.enabled:
                # a server being turned off checks no token: the rollout only stops it, and the
                # variable need not be set where it is switched off (the next enable hashes again)
                return {"skipped": "enabled: false"}
            hashes = env_token_hashes(spec.obj.spec, spec.name)
            TokenStore(default_token_file(ctx.repo)).set_env_tokens(f"{spec.workspace}/{spec.name}", hashes)
            return {"public": spec.obj.spec.auth.public, "envTokens": sorted(hashes)}  # names only

        # A server is live state: going back to an earlier spec must roll out again, so the
        # workflow step is named per generation (progress is kept per spec hash and step) and a
        # finished run of it is dropped first (the runner would reuse it by name and hash). A
        # crashed apply keeps its generation, so resuming still resumes.
        rec = ctx.record
        same = rec is not None and rec.spec_hash == spec.spec_hash and rec.generation > 0
        gen: int | str = rec.generation if same else (rec.generation + 1 if rec is not None else 1)
        healing = drift(ctx.config, spec, rec) if same else []
        if healing:  # heal under a key of its own: the first rollout of this spec succeeded long ago
            gen = f"{gen}.{hashlib.sha256(repr(healing).encode()).hexdigest()[:8]}"
        steps = []
        for st in super().steps(ctx):
            inner = st.run

            def run(ctx: Context, inner: Any = inner) -> dict[str, Any]:
                from kiln.controller.render import workflow_name
                from kiln.controller.runner import make_runner

                runner = make_runner(ctx.config)
                wf = runner.get(workflow_name(spec)) or {}
                if (wf.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Error"):
                    runner.delete(workflow_name(spec))
                return inner(ctx)

            steps.append(Step(f"{st.name}@g{gen}", st.describe, run, inventory=st.inventory))
        return [Step(f"auth@g{gen}", "register the tokens auth.tokens names (hashes only)", auth), *steps]

    def in_place_steps(self, ctx: Context) -> list[Step]:
        """``restart`` (resources, workers, batching, limits, ...): the same model version, served
        again with the new settings by the workflow's own rollout and smoke-test steps, in this
        process; resolve-model and the Bento build are not redone."""
        if ctx.update != "restart":
            return super().in_place_steps(ctx)
        from kiln.controller.deployment_steps import deployment_rollout, deployment_smoke_test
        from kiln.controller.steps import StepContext

        spec = ctx.spec
        assert spec is not None

        def sctx(c: Context) -> StepContext:
            return StepContext(c.config, f"Deployment/{spec.workspace}/{spec.name}", spec.doc, spec.spec_hash)

        def inventory(out: dict[str, Any]) -> list[dict[str, Any]]:
            return self.inventory_from(spec, {"rollout": out})

        return [Step("rollout", "restart the server with the new settings (same model, no rebuild)",
                     lambda c: deployment_rollout(sctx(c)), inventory=inventory),
                Step("smoke-test", "check that it answers", lambda c: deployment_smoke_test(sctx(c)))]

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
        from kiln.controller.deployment_rollout import describe_rollout

        out = {"url": info["url"], "pid": info["pid"], "model": info["model"], "version": info["version"],
               "device": info.get("device"),
               "info": f"{info['model']} v{info['version']} at {info['url']} ({health})"}
        routed = describe_rollout(self._home(ctx, ctx.spec.workspace, ctx.spec.name), info)
        if routed:
            out.update(routed)
            r = routed.get("rollout") or {}
            if r.get("phase"):
                out["info"] += f"; {r['strategy']} v{r['from']} -> v{r['to']}: {r['phase']}" + \
                    (f" ({r['reason']})" if r.get("reason") else "")
        return out

    def delete(self, ctx: Context) -> list[str]:
        from kiln.bento.auth import TokenStore, default_token_file
        from kiln.controller.deployment_rollout import stop_all
        from kiln.controller.deployment_steps import _read_json

        assert ctx.record is not None
        rec = ctx.record
        done = super().delete(ctx)
        home = self._home(ctx, rec.workspace, rec.name)
        info = _read_json(home / "server.json")
        if info and stop_all(home, info):
            done.append(f"stop server pid {info['pid']} ({info.get('url')})" + (
                f" and the {len(info.get('backends') or {})} version(s) behind its router" if info.get("router") else ""))
        # every token of the deployment goes with it: one created again under the same name
        # must not accept the old ones
        if TokenStore(default_token_file(ctx.repo)).drop(f"{rec.workspace}/{rec.name}"):
            done.append("revoke its API tokens")
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
