"""The local runner's gate: DAG tasks that are plain pods wait for a place as queued callables
(not a parked thread each); the cap holds, places are never leaked, stop drains the queue."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kiln.runners.local import LocalRunner


def wf(name: str, tasks: list[dict], templates: list[dict], **spec) -> dict:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": name},
            "spec": {"entrypoint": "main", "templates": [{"name": "main", "dag": {"tasks": tasks}}, *templates], **spec}}


def logged(name: str, events: Path, body: str = "sleep 0.05", **extra) -> dict:
    """A pod that appends `start <t>` / `stop <t>` lines around ``body``."""
    script = f"echo start $(date +%s.%N) >> {events}; {body}; rc=$?; echo stop $(date +%s.%N) >> {events}; exit $rc"
    return {"name": name, "container": {"image": "busybox", "command": ["sh", "-c"], "args": [script]}, **extra}


def peak_running(events: Path) -> tuple[int, int]:
    rows = [line.split() for line in events.read_text().splitlines()]
    timeline = sorted((float(t), 0 if kind == "stop" else 1) for kind, t in rows)
    running = peak = 0
    for _t, is_start in timeline:
        running += 1 if is_start else -1
        peak = max(peak, running)
    return peak, sum(1 for kind, _t in rows if kind == "start")


def phases(out: dict) -> dict[str, str]:
    return {n["displayName"]: n["phase"] for n in out["status"]["nodes"].values()}


@pytest.mark.parametrize("cap", [1, 2])
def test_mixed_dag_never_exceeds_the_cap_and_nothing_leaks_a_place(tmp_path: Path, cap: int) -> None:
    """Plain pods wait in the gate as callables; a retried pod, a fanned-out task and a nested
    DAG wait as threads; a task skipped by `when` and one that fails before its pod starts must
    hand their place back, or with cap 1 the rest would hang."""
    events = tmp_path / "events"
    flaky = tmp_path / "flaky"
    tasks = [{"name": f"p{i}", "template": "pod"} for i in range(6)]
    tasks += [
        {"name": "retried", "template": "flaky"},
        {"name": "fan", "template": "pod", "withItems": [1, 2, 3]},
        {"name": "nested", "template": "inner"},
        {"name": "skipped", "template": "pod", "when": "1 == 2"},
        {"name": "no-input", "template": "needs-artifact"},
        {"name": "after", "template": "pod", "depends": "p0 && retried && skipped.Skipped"},
    ]
    templates = [
        logged("pod", events),
        logged("flaky", events, f"test -e {flaky} || {{ touch {flaky}; false; }}", retryStrategy={"limit": 2}),
        {"name": "inner", "dag": {"tasks": [{"name": "a", "template": "pod"}, {"name": "b", "template": "pod", "depends": "a"}]}},
        {"name": "needs-artifact", "inputs": {"artifacts": [{"name": "x", "path": "/tmp/x"}]},
         "container": {"image": "busybox", "command": ["true"]}},
    ]
    manifest = wf(f"gate-mixed-{cap}", tasks, templates)
    t0 = time.monotonic()
    out = LocalRunner(tmp_path / "runs", max_concurrency=cap, slots_dir=tmp_path / "slots").submit(manifest)
    assert time.monotonic() - t0 < 60
    ph = phases(out)
    assert all(ph[f"p{i}"] == "Succeeded" for i in range(6))
    assert ph["retried"] == "Succeeded" and ph["after"] == "Succeeded" and ph["skipped"] == "Skipped"
    assert ph["nested"] == "Succeeded" and ph["fan"] == "Succeeded"
    assert ph["no-input"] == "Error"  # no source for its input artifact: an error before its pod
    peak, starts = peak_running(events)
    # 6 plain + 2 attempts + 3 fanned out + 2 nested + after
    assert starts == 14
    assert peak <= cap
    if cap == 2:
        assert peak == 2  # the cap is used, not just respected


def test_stop_while_tasks_wait_for_a_place(tmp_path: Path) -> None:
    """Tasks queued in the gate never start after a stop, and the run ends promptly."""
    events = tmp_path / "events"
    manifest = wf("gate-stop", [{"name": f"s{i}", "template": "nap"} for i in range(6)],
                  [logged("nap", events, "sleep 30")])
    runner = LocalRunner(tmp_path / "runs", max_concurrency=1, slots_dir=tmp_path / "slots")
    runner.submit(manifest, wait=False)
    deadline = time.monotonic() + 20
    while not events.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    runner.stop("gate-stop", "enough")
    final = runner.wait_stopped("gate-stop", timeout=20)
    assert final is not None and final["status"]["phase"] == "Failed"
    assert time.monotonic() - t0 < 10
    assert peak_running(events)[1] == 1  # only the first ever started
    tasks = [n for n in final["status"]["nodes"].values() if n["displayName"].startswith("s")]
    assert len(tasks) == 6 and all(n["phase"] == "Failed" and n["message"] == "enough" for n in tasks)
    assert sum(1 for n in tasks if n["type"] == "Pod") == 1  # the others never became pods


def test_two_runs_in_one_process_share_the_gate(tmp_path: Path) -> None:
    """A place freed by one run's pod may go to the other run's waiting task, on this thread."""
    events = tmp_path / "events"
    runner = LocalRunner(tmp_path / "runs", max_concurrency=2, slots_dir=tmp_path / "slots")
    outs: dict[str, dict] = {}

    def go(name: str) -> None:
        outs[name] = runner.submit(wf(name, [{"name": f"t{i}", "template": "pod"} for i in range(8)],
                                      [logged("pod", events)]))

    threads = [threading.Thread(target=go, args=(n,)) for n in ("run-a", "run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {n: o["status"]["phase"] for n, o in outs.items()} == {"run-a": "Succeeded", "run-b": "Succeeded"}
    peak, starts = peak_running(events)
    assert starts == 16 and peak <= 2
