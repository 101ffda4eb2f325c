"""The configured workflow runner, and how the controller drives a workflow for an object."""

from __future__ import annotations

import re
import sys
import time
from typing import TYPE_CHECKING, Any

from kiln.errors import WorkflowError

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.runners.base import Runner, Workflow


def make_runner(config: KilnConfig) -> Runner:
    from kiln.runners.registry import get_runner

    if config.runner == "argo":
        from kiln.runners.argo import ArgoConfig

        return get_runner("argo", config=ArgoConfig.from_mapping(config.argo))
    return get_runner("local", workdir=config.kiln_dir() / "runs", max_concurrency=config.concurrency,
                      capacity=config.capacity.model_dump(exclude_none=True), env={"KILN_REPO": str(config.repo)})


def summarize(wf: Workflow) -> dict[str, Any]:
    """Phase and per-task phases, as kept in the object's record while it runs."""
    st = wf.get("status") or {}
    nodes = st.get("nodes") or {}
    # A task with a retryStrategy is a Retry node whose attempts are Pods named "task(0)", "task(1)"…
    retried = {n.get("displayName") for n in nodes.values() if n.get("type") == "Retry"}
    shown = [n for n in nodes.values() if n.get("type") in ("Retry", "Skipped")
             or (n.get("type") == "Pod" and re.sub(r"\(\d+\)$", "", n.get("displayName") or "") not in retried)]
    tasks = {n.get("displayName") or n.get("name"): n.get("phase") for n in shown}
    retries = sum(1 for n in nodes.values() if n.get("type") == "Pod" and n.get("phase") in ("Failed", "Error"))
    # when each task ran, for `kiln describe` and `kiln get -o json` (#25); a separate map so that
    # readers of ``tasks`` (task -> phase) stay as they are
    times = {n.get("displayName") or n.get("name"): [n.get("startedAt"), n.get("finishedAt")] for n in shown}
    return {"name": wf["metadata"]["name"], "phase": st.get("phase", "Pending"),
            "message": st.get("message", ""), "tasks": tasks, "taskTimes": times, "failedAttempts": retries,
            "startedAt": st.get("startedAt"), "finishedAt": st.get("finishedAt")}


def run_workflow(config: KilnConfig, manifest: Workflow, on_progress=None, min_interval: float = 0.5) -> Workflow:
    """Submit (or resume) and wait; raise WorkflowError unless it Succeeded."""
    if config.runner == "local" and config.localRunner.foreignImages == "host":
        from kiln.controller.render import on_host

        manifest, moved = on_host(manifest, config.image)
        for name in moved:
            # stderr, not the run's state: a warning about this machine, not about the object
            print(f"warning: task {name!r} runs in kiln's own environment, not in its command.image "
                  "(localRunner.foreignImages: host); its dependencies must be installed here", file=sys.stderr)
    runner = make_runner(config)
    last = [0.0]

    def update(wf: Workflow) -> None:
        now = time.monotonic()
        if on_progress is not None and now - last[0] >= min_interval:
            last[0] = now
            on_progress(summarize(wf))

    wf = runner.submit(manifest, wait=True, on_update=update)
    if on_progress is not None:
        on_progress(summarize(wf))
    phase = (wf.get("status") or {}).get("phase")
    if phase != "Succeeded":
        msg = (wf.get("status") or {}).get("message") or ""
        failed = [n.get("displayName") for n in (wf.get("status") or {}).get("nodes", {}).values()
                  if n.get("type") == "Pod" and n.get("phase") in ("Failed", "Error")]
        raise WorkflowError(
            f"workflow {manifest['metadata']['name']} ended {phase}" + (f": {msg}" if msg else "")
            + (f" (failed: {', '.join(sorted(set(failed)))})" if failed else ""),
            hint=f"see `kiln logs {manifest['metadata']['name']}`")
    return wf
