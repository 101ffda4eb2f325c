"""DAG ``failFast`` on the local runner, as Argo's controller applies it: in a DAG template with
``parallelism``, with true (the default) no new task starts once a target's branch has failed, the
running ones finish; with false, or without ``parallelism``, independent branches run to
completion. Real runs of small workflows."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.runners.local import LocalRunner


def _sh(name: str, script: str) -> dict:
    return {"name": name, "container": {"image": "busybox", "command": ["sh", "-c"], "args": [script]}}


def _run(tmp_path: Path, tasks: list[dict], templates: list[dict], parallelism: int | None = 2,
         **dag) -> tuple[str, dict[str, str]]:
    main = {"name": "main", "dag": {"tasks": tasks, **dag}, **({"parallelism": parallelism} if parallelism else {})}
    manifest = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "ff"},
                "spec": {"entrypoint": "main", "templates": [main, *templates]}}
    # own slots: pods of other test runs on this machine must not hold this run's places
    out = LocalRunner(tmp_path / "runs", max_concurrency=4, slots_dir=tmp_path / "slots").submit(manifest)
    phases = {n["displayName"]: n["phase"] for n in out["status"]["nodes"].values() if n["displayName"] != "ff"}
    return out["status"]["phase"], phases


def _independent_branch(tmp_path: Path) -> tuple[list[dict], list[dict]]:
    """``bad`` fails at once; ``slow`` is running then, and ``after`` would start when it ends."""
    failed, started = tmp_path / "bad-ran", tmp_path / "slow-started"
    tasks = [{"name": "bad", "template": "bad"}, {"name": "slow", "template": "slow"},
             {"name": "after", "template": "ok", "depends": "slow"}]
    # bad fails only once slow runs (on a loaded machine slow may start late), and slow ends well
    # after bad's failure is recorded
    templates = [_sh("bad", f"while [ ! -f {started} ]; do sleep 0.05; done; touch {failed}; exit 1"),
                 _sh("slow", f"touch {started}; while [ ! -f {failed} ]; do sleep 0.05; done; sleep 1.5"),
                 _sh("ok", "echo ok")]
    return tasks, templates


@pytest.mark.parametrize("fail_fast", [None, True])
def test_fail_fast_starts_no_new_task_once_a_target_failed(tmp_path: Path, fail_fast: bool | None) -> None:
    tasks, templates = _independent_branch(tmp_path)
    phase, nodes = _run(tmp_path, tasks, templates, **({} if fail_fast is None else {"failFast": fail_fast}))
    assert phase == "Failed"
    assert nodes["bad"] == "Failed"
    assert nodes["slow"] == "Succeeded"   # running when bad failed: it finishes
    assert "after" not in nodes           # became ready after the failure: never started


def test_fail_fast_false_runs_independent_branches_on(tmp_path: Path) -> None:
    tasks, templates = _independent_branch(tmp_path)
    phase, nodes = _run(tmp_path, tasks, templates, failFast=False)
    assert phase == "Failed"
    assert (nodes["bad"], nodes["slow"], nodes["after"]) == ("Failed", "Succeeded", "Succeeded")


def test_a_handled_failure_stops_nothing(tmp_path: Path) -> None:
    """A failure a dependent handles fails no target: the DAG goes on and succeeds."""
    tasks = [{"name": "bad", "template": "bad"}, {"name": "cleanup", "template": "ok", "depends": "bad.Failed"},
             {"name": "slow", "template": "slow"}, {"name": "after", "template": "ok", "depends": "slow"}]
    templates = [_sh("bad", "exit 1"), _sh("slow", "sleep 1"), _sh("ok", "echo ok")]
    phase, nodes = _run(tmp_path, tasks, templates)
    assert phase == "Succeeded"
    assert (nodes["bad"], nodes["cleanup"], nodes["after"]) == ("Failed", "Succeeded", "Succeeded")


def test_without_parallelism_fail_fast_starts_what_is_ready(tmp_path: Path) -> None:
    """Argo schedules the tasks whose dependencies are met before it assesses the DAG, and checks
    failFast only with a parallelism limit: ``after`` starts although ``bad`` failed (as D does in
    Argo's dag-continue-on-fail example)."""
    tasks, templates = _independent_branch(tmp_path)
    phase, nodes = _run(tmp_path, tasks, templates, parallelism=None)
    assert phase == "Failed"
    assert (nodes["bad"], nodes["slow"], nodes["after"]) == ("Failed", "Succeeded", "Succeeded")
