"""Logs and stop for workflow runs, named by object (``Dataset/iris``) or by workflow name, on
whichever runner kiln.yaml configures."""

from __future__ import annotations

import time
from collections.abc import Iterator

from kiln.config import KilnConfig
from kiln.controller.project import find_key, read_records
from kiln.controller.render import KIND_SHORT
from kiln.controller.runner import make_runner
from kiln.errors import NotFound


def resolve_run(config: KilnConfig, name: str, workspace: str | None = None) -> str:
    """A workflow name from KIND/[WORKSPACE/]NAME (via the object's record) or a workflow name
    as is."""
    if "/" not in name:
        return name
    records = read_records(config)
    key = find_key(name, [r.key for r in records], workspace=workspace, absent="{} has not been applied")
    kind = key.split("/")[0]
    rec = next((r for r in records if r.key == key), None)
    if rec is not None:
        for item in rec.inventory:
            if item.get("kind") == "workflow":
                return str(item["id"])
        wf = rec.extra.get("workflow") or {}
        if wf.get("name"):
            return str(wf["name"])
    raise NotFound(f"{name} has no workflow run yet", hint=f"apply it first; runs are named kiln-{KIND_SHORT[kind]}-…")


def logs(config: KilnConfig, name: str, node: str | None = None, follow: bool = False,
         workspace: str | None = None) -> Iterator[str]:
    run = resolve_run(config, name, workspace)
    runner = make_runner(config)
    if runner.get(run) is None:
        raise NotFound(f"no workflow run named {run!r} on the {config.runner} runner")
    printed = 0
    while True:
        lines = list(runner.logs(run, node))
        yield from lines[printed:]
        printed = len(lines)
        wf = runner.get(run)
        if not follow or wf is None or (wf.get("status") or {}).get("phase") not in ("Running", "Pending"):
            return
        time.sleep(0.5)


def _stop_job(config: KilnConfig, runner: object, run: str, job: str, message: str) -> str:
    """One job of a run (a trial of a parameter-set experiment), through the local runner's
    resource queue: the run goes on, and what the job held goes to the next one waiting."""
    from kiln.errors import KilnError
    from kiln.runners.local import LocalRunner

    if not isinstance(runner, LocalRunner):
        raise KilnError("kiln stop --job works on the local runner",
                        hint=f"on a cluster: argo stop {run} --node-field-selector displayName=JOB")
    hit = runner.resources.stop(run, job, message)
    if not hit:
        jobs = [f"{e['node']}" for state in ("running", "waiting") for e in runner.resources.snapshot()[state]
                if e["workflow"] == run]
        raise NotFound(f"run {run} has no running or waiting job {job!r}",
                       hint=f"its jobs in `kiln queue`: {', '.join(jobs)}" if jobs else "see `kiln queue`")
    return f"{run}: stopping {', '.join(hit)}"


def stop(config: KilnConfig, name: str, message: str, timeout: float = 30.0,
         workspace: str | None = None, job: str | None = None) -> str:
    run = resolve_run(config, name, workspace)
    runner = make_runner(config)
    if runner.get(run) is None:
        raise NotFound(f"no workflow run named {run!r} on the {config.runner} runner")
    if job is not None:
        return _stop_job(config, runner, run, job, message)
    runner.stop(run, message)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wf = runner.get(run) or {}
        phase = (wf.get("status") or {}).get("phase")
        if phase not in ("Running", "Pending"):
            return f"{run}: {phase}"
        time.sleep(0.2)
    return f"{run}: stop requested, still running after {timeout:g}s"
