"""The template interpreter: runs a workflow's templates as Argo does (steps, DAGs, pods,
parameters and artifacts between them, retries, ``when``, loops, exit handlers, memoization).

Memoization cache: ``<workdir>/../cache/<configmap>/<sha256 of key>.json`` =
``{"key", "cacheName", "nodeID", "outputs", "createdAt"}``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln._util.clock import utcnow_seconds
from kiln._util.fs import write_json_atomic
from kiln.errors import WorkflowError
from kiln.runners import _expr
from kiln.runners._template import UnresolvedTag, nested_env, render, render_obj
from kiln.runners.base import Workflow
from kiln.runners.local import sync
from kiln.runners.local.admission import run_parallel, start
from kiln.runners.local.common import DONE, FAILED, NODE_TYPES, POD_KINDS, TEMPLATE_KINDS, Stopped, fnv32a, parse_duration
from kiln.runners.local.dag import DagRun
from kiln.runners.local.http import http_call
from kiln.runners.local.pod import Pod
from kiln.runners.local.state import RunState

if TYPE_CHECKING:
    from kiln.runners.local.runner import LocalRunner


def _item_label(item: Any) -> str:
    if isinstance(item, dict):
        return ",".join(f"{k}:{_expr.format_value(item[k])}" for k in sorted(item))
    return _expr.format_value(item)


# composite/retry fields rendered non-strictly: their tags may name steps that have not run yet
# (metrics are not emitted by the local runner: their tags, such as {{status}}, may name what a
# run only knows at its end, and must not fail the step)
_LATE_KEYS = frozenset(("steps", "dag", "retryStrategy", "memoize", "metrics"))


def _has_tags(obj: Any) -> bool:
    if isinstance(obj, str):
        return "{{" in obj
    if isinstance(obj, dict):
        return any(_has_tags(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_tags(v) for v in obj)
    return False


class _Run(RunState):
    """One workflow run: interprets its templates (steps, DAGs, pods, retries, memoization,
    exit handlers) on top of the run's bookkeeping (:class:`~kiln.runners.local.state.RunState`)."""

    def __init__(self, runner: LocalRunner, manifest: Workflow, run_dir: Path, run_hash: str,
                 prev: Workflow | None, on_update: Callable[[Workflow], None] | None) -> None:
        super().__init__(runner, manifest, run_dir, run_hash, prev, on_update)
        self.plans: dict[str, list[tuple[str, Any, bool]]] = {}
        self.exe_cache: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ run
    def execute(self) -> None:
        self.status["phase"] = "Running"
        self.touch()
        keeper_done = start(self.housekeeper)
        try:
            # spec.synchronization: held for the whole run, exit handler included (sync.py)
            with sync.held(self.runner.locks, sync.requirements(self.spec.get("synchronization"), self.runner.templates,
                                                                "spec.synchronization"), self.check_stop):
                root = self.run_template(self.name, self.name, self.spec["entrypoint"],
                                         self.spec.get("arguments") or {}, None, None, dict(self.globals))
            phase = root["phase"] if root["phase"] in FAILED else "Succeeded"
            message = root.get("message", "") if phase != "Succeeded" else ""
            if self.stop_event.is_set():
                phase, message = "Failed", self.stop_message
            on_exit = self.spec.get("onExit")
            if on_exit and not self.stop_event.is_set():
                scope = dict(self.globals)
                scope["workflow.status"] = phase
                scope["workflow.failures"] = self._failures()
                scope["workflow.duration"] = f"{time.monotonic() - self.t0:.6f}"
                exit_node = self.run_template(f"{self.name}.onExit", f"{self.name}.onExit", on_exit, {},
                                              None, None, scope)
                if exit_node["phase"] in FAILED and phase == "Succeeded":
                    phase, message = exit_node["phase"], exit_node.get("message", "") or "exit handler failed"
            if self.stop_event.is_set():
                phase, message = "Failed", self.stop_message
        except Exception as exc:  # an internal error must still leave a finished, readable run
            phase, message = "Error", f"{type(exc).__name__}: {exc}"
        self.stop_daemons(None)
        with self.lock:
            for n in self.nodes.values():
                if n["phase"] in ("Running", "Pending"):
                    n["phase"] = "Failed"
                    n["message"] = n.get("message") or self.stop_message or message
                    n["finishedAt"] = utcnow_seconds()
            self.status["phase"] = phase
            self.status["message"] = message
            self.status["finishedAt"] = utcnow_seconds()
            if self.global_outputs:
                self.status["outputs"] = {"parameters": [{"name": k, "value": v} for k, v in self.global_outputs.items()]}
            if self.global_artifacts:
                self.status.setdefault("outputs", {})["artifacts"] = list(self.global_artifacts.values())
        self.done.set()
        self.dirty.set()
        keeper_done.wait()
        self.flush()
        # the final snapshot holds everything the journal did
        self.journal.close()
        self.pods.close()
        self.journal.remove()

    # ------------------------------------------------------------------ templates
    def run_template(self, name: str, display: str, tmpl_name: str, arguments: dict, boundary: str | None,
                     parent: str | None, scope: dict[str, Any], retry_index: int | None = None) -> dict:
        """Run one template invocation as node ``name``; returns its (finished) node."""
        nid = self.node_id(name)
        reused = self.reuse(nid, parent)
        if reused is not None:
            return reused
        tmpl = self.templates[tmpl_name]
        if self.stop_event.is_set():
            return self.new_node(name, display, "Skipped", tmpl_name, boundary, parent, "Failed", self.stop_message)
        kind = next(k for k in TEMPLATE_KINDS if tmpl.get(k) is not None)
        ntype = NODE_TYPES[kind]
        try:
            local = self.bind_inputs(tmpl, arguments, scope)
            # Argo's pod naming (v2): <workflow>-<template>-<fnv32a(node name)>
            local["pod.name"] = f"{self.name}-{tmpl_name}-{fnv32a(name)}"
            local["node.name"] = name
            strict = kind in POD_KINDS or kind == "http"
            tmpl_r: dict[str, Any] = {}
            for k, v, tagged in self.plan(tmpl_name):
                if not tagged:  # nothing to substitute: share the manifest's value, never mutated
                    tmpl_r[k] = v
                elif k in _LATE_KEYS:  # rendered again per step/attempt, where more names exist
                    tmpl_r[k] = render_obj(v, local, strict=False)
                else:
                    tmpl_r[k] = render_obj(v, local, strict=strict)
            tmpl_r["outputs"] = tmpl.get("outputs") or {}
        except (UnresolvedTag, WorkflowError, _expr.ExprError) as exc:
            return self.new_node(name, display, ntype, tmpl_name, boundary, parent, "Error", str(exc))
        memo = tmpl_r.get("memoize")
        if memo:
            hit = self.memo_lookup(memo, local)
            if hit is not None:
                node = self.new_node(name, display, ntype, tmpl_name, boundary, parent, "Succeeded", outputs=hit["outputs"],
                                     extra={"memoizationStatus": {"hit": True, "key": hit["key"], "cacheName": hit["cacheName"]}})
                self._publish_globals(node)
                return node
        rs = tmpl_r.get("retryStrategy")
        try:
            reqs = sync.requirements(tmpl_r.get("synchronization"), self.runner.templates, f"template {tmpl_name!r}")
        except WorkflowError as exc:
            return self.new_node(name, display, ntype, tmpl_name, boundary, parent, "Error", exc.message)
        try:
            with sync.held(self.runner.locks, reqs, self.check_stop):
                if rs:
                    node = self.run_retry(name, display, tmpl_name, tmpl_r, kind, rs, boundary, parent, local)
                else:
                    node = self.new_node(name, display, ntype, tmpl_name, boundary, parent)
                    self.run_body(node, tmpl_r, kind, local)
        except Stopped as exc:  # stopped while waiting for a mutex or semaphore
            return self.new_node(name, display, ntype, tmpl_name, boundary, parent, "Failed", str(exc))
        if memo:
            node["memoizationStatus"] = {"hit": False, "key": str(memo.get("key", "")),
                                         "cacheName": ((memo.get("cache") or {}).get("configMap") or {}).get("name", "")}
            self.record(node)
            if node["phase"] == "Succeeded":
                self.memo_store(memo, node)
        self._publish_globals(node)
        return node

    def plan(self, tmpl_name: str) -> list[tuple[str, Any, bool]]:
        """A template's fields as (key, value, has ``{{`` tags), worked out once per template."""
        plan = self.plans.get(tmpl_name)
        if plan is None:
            plan = [(k, v, _has_tags(v)) for k, v in self.templates[tmpl_name].items()
                    if k != "outputs" and v is not None]
            self.plans[tmpl_name] = plan
        return plan

    def which(self, cmd: str, path: str) -> str:
        """``cmd`` resolved on ``path`` once per run: given a bare name, Popen joins it with every
        PATH entry in Python and the child tries execve on each in turn, for every pod. Names
        not found, or found through a relative PATH entry, are left to the child as before."""
        key = (cmd, path)
        found = self.exe_cache.get(key)
        if found is None:
            found = cmd
            if os.sep not in cmd:
                hit = shutil.which(cmd, path=path)
                if hit and os.path.isabs(hit):
                    found = hit
            self.exe_cache[key] = found
        return found

    def bind_inputs(self, tmpl: dict, arguments: dict, scope: dict[str, Any]) -> dict[str, Any]:
        local = dict(self.globals)
        for k in ("workflow.status", "workflow.failures", "workflow.duration", "steps.name", "tasks.name"):
            if k in scope:
                local[k] = scope[k]
        args = {p["name"]: p for p in (arguments or {}).get("parameters") or []}
        inputs = tmpl.get("inputs") or {}
        plist = []
        for p in inputs.get("parameters") or []:
            a = args.get(p["name"])
            if a is not None and ("value" in a or "valueFrom" in a):
                value = a.get("value")
                if value is None and (a.get("valueFrom") or {}).get("default") is not None:
                    value = a["valueFrom"]["default"]
            elif "value" in p or "default" in p:
                # a template's own value/default sees the workflow's globals, as in Argo
                value = p["value"] if "value" in p else p["default"]
                if isinstance(value, str) and "{{" in value:
                    value = render(value, local)
            else:
                raise WorkflowError(f"template {tmpl['name']!r}: input parameter {p['name']!r} was not supplied",
                                    hint="pass it in the step's arguments.parameters or give it a default")
            value = _expr.format_value(value) if not isinstance(value, str) else value
            local[f"inputs.parameters.{p['name']}"] = value
            plist.append({"name": p["name"], "value": value})
        local["inputs.parameters"] = _expr.to_json(plist) if plist else "[]"
        arts = {a["name"]: a for a in (arguments or {}).get("artifacts") or []}
        for a in inputs.get("artifacts") or []:
            src = arts.get(a["name"])
            resolved = dict(a)
            if src is not None:
                resolved.update({k: v for k, v in src.items() if k not in ("name", "path")})
            local[f"inputs.artifacts.{a['name']}"] = resolved
            if a.get("path"):
                local[f"inputs.artifacts.{a['name']}.path"] = a["path"]
        for p in (tmpl.get("outputs") or {}).get("parameters") or []:
            if (p.get("valueFrom") or {}).get("path"):
                local[f"outputs.parameters.{p['name']}.path"] = p["valueFrom"]["path"]
        for a in (tmpl.get("outputs") or {}).get("artifacts") or []:
            if a.get("path"):
                local[f"outputs.artifacts.{a['name']}.path"] = a["path"]
        return local

    def run_body(self, node: dict, tmpl: dict, kind: str, local: dict[str, Any]) -> None:
        try:
            if kind in POD_KINDS:
                Pod(self, node, tmpl, kind, local).execute()
            elif kind == "http":
                http_call(self, node, tmpl)
            elif kind == "suspend":
                self.run_suspend(node, tmpl)
            elif kind == "steps":
                try:
                    self.run_steps(node, tmpl, local)
                finally:  # its daemoned steps live as long as it runs
                    self.stop_daemons(node["id"])
            else:
                try:
                    DagRun(self, node, tmpl, local).execute()
                finally:
                    self.stop_daemons(node["id"])
        except Stopped as exc:
            self.finish(node, "Failed", str(exc))
        except (UnresolvedTag, WorkflowError, _expr.ExprError) as exc:
            self.finish(node, "Error", str(exc))

    def run_retry(self, name: str, display: str, tmpl_name: str, tmpl: dict, kind: str, rs: dict,
                  boundary: str | None, parent: str | None, local: dict[str, Any]) -> dict:
        node = self.new_node(name, display, "Retry", tmpl_name, boundary, parent)
        limit = int(rs["limit"]) if rs.get("limit") not in (None, "") else None
        policy = rs.get("retryPolicy") or ("Always" if rs.get("expression") else "OnFailure")
        backoff = rs.get("backoff") or {}
        ntype = NODE_TYPES[kind]
        start = time.monotonic()
        attempt = 0
        while True:
            a_name = f"{name}({attempt})"
            reused = self.reuse(self.node_id(a_name), node["id"])
            if reused is not None:
                child = reused
            else:
                child = self.new_node(a_name, f"{display}({attempt})", ntype, tmpl_name, boundary, node["id"])
                alocal = dict(local)
                alocal["retries"] = str(attempt)
                self.run_body(child, tmpl, kind, alocal)
            phase = child["phase"]
            if phase == "Succeeded" or self.stop_event.is_set() or child["id"] in self.user_stopped:
                break
            if limit is not None and attempt >= limit:
                break
            if policy == "OnFailure" and phase != "Failed":
                break
            if policy in ("OnError", "OnTransientError") and phase != "Error":
                break
            if rs.get("expression"):
                outs = child.get("outputs") or {}
                t0 = _dt.datetime.strptime(child["startedAt"], "%Y-%m-%dT%H:%M:%SZ")
                t1 = _dt.datetime.strptime(child["finishedAt"] or utcnow_seconds(), "%Y-%m-%dT%H:%M:%SZ")
                env = {"lastRetry": {"exitCode": outs.get("exitCode", "-1"), "status": phase,
                                     "duration": str(int((t1 - t0).total_seconds())), "message": child.get("message", "")}}
                try:
                    if not _expr.evaluate(rs["expression"], env):
                        break
                except _expr.ExprError as exc:
                    self.finish(node, "Error", f"retryStrategy.expression: {exc}")
                    return node
            if backoff.get("duration"):
                delay = parse_duration(backoff["duration"], "retryStrategy.backoff.duration")
                delay *= float(backoff.get("factor") or 2) ** attempt if backoff.get("factor") else 1
                if backoff.get("cap"):
                    delay = min(delay, parse_duration(backoff["cap"], "retryStrategy.backoff.cap"))
                if backoff.get("maxDuration"):
                    max_d = parse_duration(backoff["maxDuration"], "retryStrategy.backoff.maxDuration")
                    if time.monotonic() - start + delay > max_d:
                        self.finish(node, phase, f"{child.get('message', '')} (backoff.maxDuration exceeded)".strip(),
                                    child.get("outputs"))
                        return node
                if self.stop_event.wait(delay):
                    break
            attempt += 1
        self.finish(node, child["phase"], child.get("message", ""), child.get("outputs"))
        return node

    # ------------------------------------------------------------------ composite helpers
    def expand(self, step: dict, scope: dict[str, Any], where: str) -> list[Any] | None:
        if step.get("withItems") is not None:
            return list(step["withItems"])
        if step.get("withParam") is not None:
            raw = render(step["withParam"], scope) if isinstance(step["withParam"], str) else step["withParam"]
            if isinstance(raw, list):
                return raw
            try:
                items = json.loads(raw)
            except ValueError as exc:
                raise WorkflowError(f"{where}: withParam is not a JSON list: {raw[:200]!r}") from exc
            if not isinstance(items, list):
                raise WorkflowError(f"{where}: withParam is not a JSON list: {raw[:200]!r}")
            return items
        seq = step.get("withSequence")
        if seq is not None:
            seq = render_obj(seq, scope)
            start = int(seq.get("start", 0))
            if seq.get("count") not in (None, ""):
                end = start + int(seq["count"]) - 1
            else:
                end = int(seq.get("end", start))
            rng = range(start, end + 1) if end >= start else range(start, end - 1, -1)
            fmt = seq.get("format")
            return [(fmt % i) if fmt else str(i) for i in rng]
        return None

    def item_scope(self, scope: dict[str, Any], item: Any) -> dict[str, Any]:
        s = dict(scope)
        s["item"] = item if not isinstance(item, (dict, list)) else _expr.to_json(item)
        if isinstance(s["item"], (int, float, bool)):
            s["item"] = _expr.format_value(item)
        if isinstance(item, dict):
            for k, v in item.items():
                s[f"item.{k}"] = v if isinstance(v, str) else _expr.format_value(v)
        return s

    def resolve_args(self, step: dict, scope: dict[str, Any]) -> dict:
        args = step.get("arguments") or {}
        out: dict[str, Any] = {}
        if args.get("parameters"):
            out["parameters"] = [dict(p, **({"value": render(_expr.format_value(p["value"]) if not isinstance(p["value"], str) else p["value"], scope)} if "value" in p else {}))
                                 for p in args["parameters"]]
        arts = []
        for a in args.get("artifacts") or []:
            a2 = dict(a)
            if a.get("from"):
                ref = a["from"].strip()
                key = ref[2:-2].strip() if ref.startswith("{{") and ref.endswith("}}") else ref
                src = scope.get(key)
                if not isinstance(src, dict):
                    raise UnresolvedTag(key, f"artifact {a['name']!r}: failed to resolve {ref}")
                a2.pop("from")
                a2.update({k: v for k, v in src.items() if k not in ("name", "path")})
            arts.append(render_obj(a2, scope))
        if arts:
            out["artifacts"] = arts
        return out

    def when_ok(self, step: dict, scope: dict[str, Any]) -> tuple[bool, str]:
        cond = step.get("when")
        if cond is None or cond == "":
            return True, ""
        text = render(str(cond), scope)
        return _expr.evaluate_when(text), text

    def skip_node(self, name: str, display: str, tmpl_name: str, boundary: str, parent: str, phase: str, msg: str) -> dict:
        # Argo publishes valueFrom.default of a skipped producer so consumers can use it
        params = [{"name": p["name"], "value": str(p["valueFrom"]["default"])}
                  for p in (self.templates[tmpl_name].get("outputs") or {}).get("parameters") or []
                  if (p.get("valueFrom") or {}).get("default") is not None]
        return self.new_node(name, display, "Skipped", tmpl_name, boundary, parent, phase, msg,
                             outputs={"parameters": params} if params else None)

    def publish(self, scope: dict[str, Any], prefix: str, node: dict, children: list[dict] | None) -> None:
        """Make a finished step/task's results visible to later ones as ``prefix.*``."""
        scope[f"{prefix}.id"] = node["id"]
        scope[f"{prefix}.status"] = node["phase"]
        scope[f"{prefix}.startedAt"] = node["startedAt"]
        scope[f"{prefix}.finishedAt"] = node.get("finishedAt") or ""
        if children is not None:  # fanned out: aggregate as JSON lists
            plist: list[dict] = []
            results: list[Any] = []
            per_name: dict[str, list[Any]] = {}
            for ch in children:
                outs = ch.get("outputs") or {}
                if outs.get("parameters"):
                    plist.append({p["name"]: p["value"] for p in outs["parameters"]})
                    for p in outs["parameters"]:
                        per_name.setdefault(p["name"], []).append(p["value"])
                if "result" in outs:
                    try:
                        results.append(json.loads(outs["result"]))
                    except ValueError:
                        results.append(outs["result"])
            scope[f"{prefix}.outputs.parameters"] = _expr.to_json(plist)
            scope[f"{prefix}.outputs.result"] = _expr.to_json(results)
            for k, v in per_name.items():
                scope[f"{prefix}.outputs.parameters.{k}"] = _expr.to_json(v)
            return
        if node.get("daemoned"):  # a daemon listens on this machine
            scope[f"{prefix}.ip"] = "127.0.0.1"
        outs = node.get("outputs") or {}
        if "exitCode" in outs:
            scope[f"{prefix}.exitCode"] = outs["exitCode"]
        if "result" in outs:
            scope[f"{prefix}.outputs.result"] = outs["result"]
        for p in outs.get("parameters") or []:
            scope[f"{prefix}.outputs.parameters.{p['name']}"] = p["value"]
        for a in outs.get("artifacts") or []:
            scope[f"{prefix}.outputs.artifacts.{a['name']}"] = a

    def run_hook(self, step: dict, node: dict, boundary: str, scope: dict[str, Any]) -> None:
        hook = (step.get("hooks") or {}).get("exit") or ({"template": step["onExit"]} if step.get("onExit") else None)
        if not hook or node["phase"] not in DONE or node["type"] == "Skipped":
            return
        hscope = dict(scope)
        hscope["status"] = node["phase"]
        try:
            args = self.resolve_args(hook, hscope)
        except (UnresolvedTag, WorkflowError) as exc:
            self.new_node(f"{node['name']}.onExit", f"{node['displayName']}.onExit", "Skipped", hook["template"],
                          boundary, node["id"], "Error", str(exc))
            return
        self.run_template(f"{node['name']}.onExit", f"{node['displayName']}.onExit", hook["template"], args,
                          boundary, node["id"], hscope)

    def run_one(self, step: dict, name: str, display: str, boundary: str, parent: str, scope: dict[str, Any]) -> dict:
        """A step/task (or one fanned-out item of it): when, arguments, then the template."""
        try:
            ok, text = self.when_ok(step, scope)
        except (UnresolvedTag, _expr.ExprError) as exc:
            return self.new_node(name, display, "Skipped", step["template"], boundary, parent, "Error", f"when: {exc}")
        if not ok:
            return self.skip_node(name, display, step["template"], boundary, parent, "Skipped", f"when '{text}' evaluated false")
        try:
            args = self.resolve_args(step, scope)
        except (UnresolvedTag, WorkflowError) as exc:
            return self.new_node(name, display, "Skipped", step["template"], boundary, parent, "Error", str(exc))
        # the step's own name, as {{steps.name}} / {{tasks.name}} inside its template
        scope = dict(scope, **{"steps.name": step["name"], "tasks.name": step["name"]})
        node = self.run_template(name, display, step["template"], args, boundary, parent, scope)
        if step.get("hooks") or step.get("onExit"):
            self.run_hook(step, node, boundary, self._with_self(scope, step["name"], node))
        return node

    def _with_self(self, scope: dict[str, Any], sname: str, node: dict) -> dict[str, Any]:
        s = dict(scope)
        self.publish(s, f"steps.{sname}", node, None)
        self.publish(s, f"tasks.{sname}", node, None)
        return s

    def fan_out(self, step: dict, name: str, display: str, boundary: str, parent: str, scope: dict[str, Any],
                items: list[Any], limit: int | None) -> list[dict]:
        results: list[dict | None] = [None] * len(items)
        sem = threading.Semaphore(limit) if limit else None

        def one(i: int, item: Any) -> None:
            if sem:
                sem.acquire()
            try:
                label = _item_label(item)
                results[i] = self.run_one(step, f"{name}({i}:{label})", f"{display}({i}:{label})", boundary, parent,
                                          self.item_scope(scope, item))
            finally:
                if sem:
                    sem.release()

        run_parallel([lambda i=i, it=it: one(i, it) for i, it in enumerate(items)])
        return [r for r in results if r is not None]

    def output_params(self, node: dict, tmpl: dict, scope: dict[str, Any]) -> None:
        """Outputs of a steps/dag template: valueFrom.parameter / expression / artifacts from."""
        spec = tmpl.get("outputs") or {}
        params, arts = [], []
        for p in spec.get("parameters") or []:
            vf = p.get("valueFrom") or {}
            value = None
            try:
                if vf.get("parameter"):
                    value = render(vf["parameter"], scope)
                elif vf.get("expression"):
                    value = _expr.format_value(_expr.evaluate(vf["expression"], nested_env(scope)))
                elif "value" in p:
                    value = render(str(p["value"]), scope)
            except (UnresolvedTag, _expr.ExprError):
                value = None
            if value is None and vf.get("default") is not None:
                value = str(vf["default"])
            if value is None:
                raise WorkflowError(f"template {tmpl['name']!r}: cannot resolve output parameter {p['name']!r}")
            entry = {"name": p["name"], "value": value}
            if p.get("globalName"):
                entry["globalName"] = p["globalName"]
            params.append(entry)
        for a in spec.get("artifacts") or []:
            if a.get("from"):
                key = a["from"].strip().strip("{}").strip()
                src = scope.get(key)
                if isinstance(src, dict):
                    arts.append(dict(src, name=a["name"]))
        if params or arts:
            node["outputs"] = {**({"parameters": params} if params else {}), **({"artifacts": arts} if arts else {})}

    def run_suspend(self, node: dict, tmpl: dict) -> None:
        """A suspend template: waits for its duration, or until ``LocalRunner.resume`` (``kiln
        resume``) writes the run's ``resume`` file after the node started; a stop fails it."""
        dur = (tmpl.get("suspend") or {}).get("duration")
        end = time.monotonic() + parse_duration(dur, f"template {tmpl['name']!r} suspend.duration") if dur not in (None, "") else None
        started = time.time_ns()
        resume = self.dir / "resume"
        while end is None or time.monotonic() < end:
            self.check_stop()
            try:
                if resume.stat().st_mtime_ns >= started:
                    break
            except FileNotFoundError:
                pass
            self.stop_event.wait(0.1)
        self.finish(node, "Succeeded")

    def refresh_globals(self, scope: dict[str, Any]) -> None:
        """Global outputs (globalName) published since ``scope`` was made, for the next steps."""
        with self.lock:
            scope.update({k: v for k, v in self.globals.items() if k.startswith("workflow.outputs.")})

    # ------------------------------------------------------------------ steps
    def run_steps(self, node: dict, tmpl: dict, local: dict[str, Any]) -> None:
        scope = dict(local)
        limit = int(tmpl["parallelism"]) if tmpl.get("parallelism") else None
        for gi, group in enumerate(tmpl["steps"]):
            self.check_stop()
            gname = f"{node['name']}[{gi}]"
            gnode = self.reuse(self.node_id(gname), node["id"])
            if gnode is None:
                gnode = self.new_node(gname, f"[{gi}]", "StepGroup", None, node["id"], node["id"])
            self.refresh_globals(scope)
            failed = self.run_group(node, gnode, tmpl, list(group or []), scope, limit)
            self.finish(gnode, "Failed" if failed else "Succeeded", failed)
            if failed:
                self.finish(node, "Error" if "error" in failed.split(":")[0] else "Failed", failed)
                return
        self.output_params(node, tmpl, scope)
        self.finish(node, "Succeeded")

    def run_group(self, node: dict, gnode: dict, tmpl: dict, steps: list[dict], scope: dict[str, Any],
                  limit: int | None) -> str:
        """Run one group of parallel steps and publish their results into ``scope``; returns why
        the group failed, or "" when it did not."""
        outcome: dict[str, tuple[dict | None, list[dict] | None]] = {}

        def run_step(step: dict) -> None:
            sname = f"{gnode['name']}.{step['name']}"
            items = self.expand(step, scope, f"template {tmpl['name']!r} step {step['name']!r}")
            if items is None:
                outcome[step["name"]] = (self.run_one(step, sname, step["name"], node["id"], gnode["id"], scope), None)
            elif not items:
                outcome[step["name"]] = (self.skip_node(sname, step["name"], step["template"], node["id"], gnode["id"],
                                                        "Skipped", "Skipped, empty params"), [])
            else:
                outcome[step["name"]] = (None, self.fan_out(step, sname, step["name"], node["id"], gnode["id"], scope, items, limit))

        def guarded(step: dict) -> None:
            try:
                run_step(step)
            except (UnresolvedTag, WorkflowError, _expr.ExprError) as exc:
                outcome[step["name"]] = (self.new_node(f"{gnode['name']}.{step['name']}", step["name"], "Skipped",
                                                       step["template"], node["id"], gnode["id"], "Error", str(exc)), None)

        if limit and len(steps) > 1:
            sem = threading.Semaphore(limit)

            def limited(step: dict) -> None:
                with sem:
                    guarded(step)
            run_parallel([lambda s=s: limited(s) for s in steps])
        else:
            run_parallel([lambda s=s: guarded(s) for s in steps])
        failed = ""
        for step in steps:
            single, many = outcome.get(step["name"], (None, None))
            nodes = [single] if single is not None else (many or [])
            self.publish(scope, f"steps.{step['name']}", single if single is not None else gnode, many if single is None else None)
            cont = step.get("continueOn") or {}
            for n in nodes:
                if n["phase"] == "Failed" and not cont.get("failed") or n["phase"] == "Error" and not cont.get("error"):
                    failed = failed or f"child '{n['id']}' {n['phase'].lower()}" + (f": {n['message']}" if n.get("message") else "")
        return failed

    # ------------------------------------------------------------------ memoize
    def _memo_path(self, memo: dict) -> tuple[Path, str, str]:
        key = str(memo.get("key", ""))
        cache = ((memo.get("cache") or {}).get("configMap") or {}).get("name") or "default"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cache):
            raise WorkflowError(f"memoize.cache.configMap.name {cache!r} is not a valid name")
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.runner.cache_dir / cache / f"{digest}.json", key, cache

    def memo_lookup(self, memo: dict, local: dict[str, Any]) -> dict | None:
        path, key, cache = self._memo_path(memo)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if entry.get("key") != key:
            return None
        if memo.get("maxAge"):
            created = _dt.datetime.fromisoformat(entry["createdAt"].replace("Z", "+00:00"))
            age = (_dt.datetime.now(_dt.UTC) - created).total_seconds()
            if age > parse_duration(memo["maxAge"], "memoize.maxAge"):
                return None
        return {"key": key, "cacheName": cache, "outputs": entry.get("outputs") or {}}

    def memo_store(self, memo: dict, node: dict) -> None:
        path, key, cache = self._memo_path(memo)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"key": key, "cacheName": cache, "nodeID": node["id"], "workflow": self.name,
                                 "outputs": node.get("outputs") or {}, "createdAt": utcnow_seconds()}, indent=1, sort_keys=False)
