"""The local runner's resource queue (#18): pods that ask for CPU, memory and GPUs wait for the
machine's capacity and their workspace's run-time quotas, first come first served within a
workspace, fair between workspaces; GPUs go by index, never shared; `kiln queue` says why."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import WorkflowError
from kiln.runners._resources import QUOTA_ANNOTATION, Capacity, Request, ResourceQueue
from kiln.runners.local import LocalRunner
from tests.helpers import kiln, write

GI = 2**30


def req(ws: str, name: str, size: float = 1, gpu: int = 0, **quotas: Any) -> Request:
    return Request(workspace=ws, workflow=name, node=name, cpu=size, memory=GI, gpu=gpu, quotas=quotas)


def never() -> None:
    return None


class Waiter:
    """``queue.acquire`` on a thread, so a test can watch the entry wait and then start."""

    def __init__(self, queue: ResourceQueue, r: Request) -> None:
        self.entry: dict[str, Any] | None = None
        self.stop = False

        def check() -> None:
            if self.stop:
                raise RuntimeError("stopped")

        def run() -> None:
            try:
                self.entry = queue.acquire(r, check)
            except RuntimeError:
                pass

        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()

    def started(self, timeout: float = 5) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while self.entry is None and time.monotonic() < end:
            time.sleep(0.02)
        assert self.entry is not None, "never started"
        return self.entry


def waiting(queue: ResourceQueue, n: int, timeout: float = 5) -> list[dict[str, Any]]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        snap = queue.snapshot()["waiting"]
        if len(snap) >= n:
            return snap
        time.sleep(0.02)
    raise AssertionError(f"expected {n} waiting, got {queue.snapshot()}")


def test_workspace_cpu_quota_holds_across_jobs_in_order(tmp_path: Path) -> None:
    q = ResourceQueue(tmp_path, Capacity(cpu=16, memory=64 * GI, gpus=0))
    a = q.acquire(req("team", "a", 2, cpu="2"), never)
    b = Waiter(q, req("team", "b", 2, cpu="2"))
    waiting(q, 1)
    c = Waiter(q, req("team", "c", 2, cpu="2"))
    snap = waiting(q, 2)
    assert [(e["workflow"], e["position"]) for e in snap] == [("b", 1), ("c", 2)]
    assert snap[0]["reason"] == "workspace team quota cpu: 2 of 2 CPU in use, needs 2"
    assert snap[1]["reason"].startswith("queued behind b/b of workspace team")
    # another workspace is not held up by this one's quota
    other = q.acquire(req("lab", "x", 2, cpu="4"), never)
    q.release(a["id"])
    b.started()
    time.sleep(0.3)
    assert c.entry is None  # b holds the quota now
    q.release(b.entry["id"])  # type: ignore[index]
    c.started()
    q.release(c.entry["id"])  # type: ignore[index]
    q.release(other["id"])
    assert q.snapshot() == {"running": [], "waiting": []}


def test_gpus_by_index_never_shared_and_fair_between_workspaces(tmp_path: Path) -> None:
    q = ResourceQueue(tmp_path, Capacity(cpu=16, memory=64 * GI, gpus=2))
    g0 = q.acquire(req("a", "a1", gpu=1), never)
    g1 = q.acquire(req("a", "a2", gpu=1), never)
    assert (g0["gpus"], g1["gpus"]) == ([0], [1])
    a3 = Waiter(q, req("a", "a3", gpu=1))
    waiting(q, 1)
    b1 = Waiter(q, req("b", "b1", gpu=1))
    snap = waiting(q, 2)
    assert snap[0]["reason"] == "machine GPUs: 2 of 2 in use, needs 1"
    q.release(g1["id"])
    # b runs nothing, a runs one: b's job gets the freed GPU although a3 came first
    assert b1.started()["gpus"] == [1]
    assert a3.entry is None
    q.release(g0["id"])
    assert a3.started()["gpus"] == [0]
    # more GPUs than the machine has: a clear error, not a wait forever
    with pytest.raises(WorkflowError, match="asks for 3 GPU; this machine has 2"):
        q.acquire(req("a", "big", gpu=3), never)
    # a stopped waiter leaves the queue
    w = Waiter(q, req("a", "a4", gpu=1, trainingGpus=1))
    waiting(q, 1)
    w.stop = True
    w.t.join(5)
    assert q.snapshot()["waiting"] == []


def _job(name: str, ws: str, quotas: dict, requests: dict, marks: Path) -> dict:
    # each job runs until the test has looked at the queue (the go file), then 0.2 s more
    script = (
        f"echo start $(date +%s.%N) $CUDA_VISIBLE_DEVICES >> {marks}/{name}; "
        f"while [ ! -f {marks}/go ]; do sleep 0.05; done; sleep 0.2; "
        f"echo stop $(date +%s.%N) >> {marks}/{name}"
    )
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "name": name,
            "labels": {"kiln.dev/workspace": ws, "kiln.dev/kind": "Experiment"},
            "annotations": {QUOTA_ANNOTATION: json.dumps(quotas)},
        },
        "spec": {
            "entrypoint": "train",
            "templates": [
                {
                    "name": "train",
                    "container": {
                        "image": "busybox",
                        "command": ["sh", "-c"],
                        "args": [script],
                        "resources": {"requests": requests},
                    },
                }
            ],
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", ["cpu", "gpu"])
def test_three_jobs_over_the_quota_run_one_at_a_time_and_kiln_queue_says_why(tmp_path: Path, case: str) -> None:
    """The issue's acceptance, on the real runner and the real `kiln queue` in another process:
    quota cpu 2 with three 2-CPU jobs; trainingGpus 1 with 1-GPU jobs on a machine overridden to one GPU."""
    slots, marks, repo = tmp_path / "slots", tmp_path / "marks", tmp_path / "repo"
    marks.mkdir()
    capacity = {"cpu": "8", "memory": "16Gi", "gpus": 1}
    write(repo, {"kiln.yaml": "capacity: {cpu: '8', memory: 16Gi, gpus: 1}\n"})
    if case == "cpu":
        quotas, requests = {"cpu": "2"}, {"cpu": "2", "memory": "1Gi"}
        reason = "workspace team quota cpu: 2 of 2 CPU in use, needs 2"
    else:
        quotas, requests = {"trainingGpus": 1}, {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}
        reason = "workspace team quota trainingGpus: 1 of 1 GPU in use, needs 1"
    runner = LocalRunner(tmp_path / "runs", slots_dir=slots, capacity=capacity)
    names = ["job-a", "job-b", "job-c"]
    for i, n in enumerate(names):
        runner.submit(_job(n, "team", quotas, requests, marks), wait=False)
        end = time.monotonic() + 10  # submitted in order: each is in the queue before the next
        while len(runner.resources.snapshot()["running"]) + len(runner.resources.snapshot()["waiting"]) < i + 1:
            assert time.monotonic() < end
            time.sleep(0.02)
    out = kiln("queue", "-o", "json", cwd=repo, env={"KILN_SLOTS_DIR": str(slots)}, check=True)
    rows = json.loads(out.stdout)
    waits = [r for r in rows if r["state"] == "waiting"]
    assert len(waits) == 2 and waits[0]["reason"] == reason, rows
    assert waits[1]["reason"].startswith("queued behind"), rows
    assert [r["workflow"] for r in rows] == names
    (marks / "go").write_text("")
    for n in names:
        end = time.monotonic() + 30
        while (runner.get(n) or {}).get("status", {}).get("phase") in (None, "Running", "Pending"):
            assert time.monotonic() < end
            time.sleep(0.05)
        assert runner.get(n)["status"]["phase"] == "Succeeded"  # type: ignore[index]
    spans = []
    for n in names:
        start, stop = (marks / n).read_text().splitlines()
        spans.append((float(start.split()[1]), float(stop.split()[1]), start.split()[2:]))
    for (_s0, e0, _), (s1, _e1, _) in zip(spans, spans[1:]):
        assert e0 <= s1, spans  # one at a time, in order of submission
    # GPU 0 by index when the machine has one; none when a pod asked for none
    assert all(s[2] == (["0"] if case == "gpu" else []) for s in spans), spans
    assert runner.resources.snapshot() == {"running": [], "waiting": []}


def test_capacity_is_detected_and_kiln_yaml_overrides_it(tmp_path: Path) -> None:
    import os

    from kiln.config import load_config
    from kiln.runners._resources import nvml_gpu_count

    found = Capacity.detect()
    assert found.cpu == len(os.sched_getaffinity(0)) and found.gpus == nvml_gpu_count() and found.memory > 0
    write(tmp_path, {"kiln.yaml": "capacity: {cpu: 500m, gpus: 2}\n"})
    over = Capacity.detect(load_config(tmp_path).capacity.model_dump(exclude_none=True))
    assert (over.cpu, over.gpus, over.memory) == (0.5, 2, found.memory)
    write(tmp_path, {"kiln.yaml": "capacity: {cpu: lots}\n"})
    bad = kiln("queue", cwd=tmp_path)
    assert bad.returncode != 0 and "capacity" in bad.stdout + bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.skipif(not __import__("kiln.runners._resources", fromlist=["x"]).nvml_gpu_count(), reason="no GPU here")
def test_a_pod_on_a_real_gpu_sees_only_its_own(tmp_path: Path) -> None:
    runner = LocalRunner(tmp_path / "runs", slots_dir=tmp_path / "slots")  # capacity detected through NVML
    script = "echo $CUDA_VISIBLE_DEVICES; nvidia-smi -L | wc -l"
    wf = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "gpu"},
        "spec": {
            "entrypoint": "g",
            "templates": [
                {
                    "name": "g",
                    "container": {
                        "image": "busybox",
                        "command": ["sh", "-c"],
                        "args": [script],
                        "resources": {"requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}},
                    },
                }
            ],
        },
    }
    out = runner.submit(wf)
    [pod] = [n for n in out["status"]["nodes"].values() if n["type"] == "Pod"]
    assert pod["phase"] == "Succeeded" and pod["outputs"]["result"].split()[0] == "0", pod


def test_kiln_stop_job_ends_one_trial_and_the_next_one_starts(tmp_path: Path) -> None:
    """`kiln stop RUN --job NODE` on a parameter-set run whose trials queue for their workspace's
    quota: that trial's process ends, the next waiting trial starts, the others go on."""
    repo, marks = tmp_path / "repo", tmp_path / "marks"
    marks.mkdir()
    write(repo, {"kiln.yaml": "capacity: {cpu: '8', memory: 16Gi, gpus: 0}\n"})
    env = {"KILN_SLOTS_DIR": str(tmp_path / "slots")}
    runner = LocalRunner(repo / ".kiln/runs", slots_dir=tmp_path / "slots", capacity={"cpu": "8", "memory": "16Gi", "gpus": 0})
    script = f"touch {marks}/{{{{inputs.parameters.p}}}}; while [ ! -f {marks}/go ]; do sleep 0.05; done"
    wf = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "name": "sweep",
            "labels": {"kiln.dev/workspace": "team"},
            "annotations": {QUOTA_ANNOTATION: json.dumps({"cpu": "2"})},
        },
        "spec": {
            "entrypoint": "main",
            "templates": [
                {
                    "name": "main",
                    "dag": {
                        "tasks": [
                            {
                                "name": "train",
                                "template": "trial",
                                "withItems": ["a", "b", "c"],
                                "arguments": {"parameters": [{"name": "p", "value": "{{item}}"}]},
                            }
                        ]
                    },
                },
                {
                    "name": "trial",
                    "inputs": {"parameters": [{"name": "p"}]},
                    "container": {
                        "image": "busybox",
                        "command": ["sh", "-c"],
                        "args": [script],
                        "resources": {"requests": {"cpu": "2", "memory": "1Gi"}},
                    },
                },
            ],
        },
    }
    runner.submit(wf, wait=False)

    def started() -> list[str]:
        return sorted(p.name for p in marks.iterdir() if p.name != "go")

    end = time.monotonic() + 20
    while not started() or len(runner.resources.snapshot()["waiting"]) < 2:
        assert time.monotonic() < end, (started(), runner.resources.snapshot())
        time.sleep(0.05)
    assert len(started()) == 1
    [running] = runner.resources.snapshot()["running"]
    job = running["node"].split(".", 1)[1]
    out = kiln("stop", "sweep", "--job", job, "-m", "not this one", cwd=repo, env=env, check=True)
    assert out.stdout.strip() == f"sweep: stopping sweep/{running['node']}"
    end = time.monotonic() + 20
    while len(started()) < 2:  # the next one got the quota
        assert time.monotonic() < end
        time.sleep(0.05)
    (marks / "go").write_text("")
    wf_done = runner.wait_stopped("sweep", timeout=30)
    assert wf_done is not None
    pods = {n["displayName"]: n["phase"] for n in wf_done["status"]["nodes"].values() if n["type"] == "Pod"}
    assert sorted(pods.values()) == ["Failed", "Succeeded", "Succeeded"] and started() == ["a", "b", "c"], pods
    bad = kiln("stop", "sweep", "--job", "nope", cwd=repo, env=env)
    assert bad.returncode != 0 and "no running or waiting job 'nope'" in bad.stdout + bad.stderr


def test_kiln_stop_job_is_not_retried_and_says_so_running_or_waiting(tmp_path: Path) -> None:
    """A job `kiln stop --job` ends, running or still waiting, ends Failed with "stopped by kiln
    stop" (and the message), is not retried although its template has a retryStrategy, and the
    running one's process finds the reason in the file its environment names (#18)."""
    repo, marks = tmp_path / "repo", tmp_path / "marks"
    marks.mkdir()
    write(repo, {"kiln.yaml": "capacity: {cpu: '8', memory: 16Gi, gpus: 0}\n"})
    env = {"KILN_SLOTS_DIR": str(tmp_path / "slots")}
    runner = LocalRunner(repo / ".kiln/runs", slots_dir=tmp_path / "slots", capacity={"cpu": "8", "memory": "16Gi", "gpus": 0})
    # on SIGTERM the job copies the reason file into marks/: what a trial records as its error
    script = (f"trap 'cat \"$KILN_STOP_REASON_FILE\" > {marks}/why-{{{{inputs.parameters.p}}}}; exit 143' TERM; "
              f"touch {marks}/{{{{inputs.parameters.p}}}}; while true; do sleep 0.05; done")
    wf = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "sweep2", "labels": {"kiln.dev/workspace": "team"},
                     "annotations": {QUOTA_ANNOTATION: json.dumps({"cpu": "2"})}},
        "spec": {"entrypoint": "main", "templates": [
            {"name": "main", "dag": {"tasks": [{"name": "train", "template": "trial", "withItems": ["a", "b"],
                                                "arguments": {"parameters": [{"name": "p", "value": "{{item}}"}]}}]}},
            {"name": "trial", "inputs": {"parameters": [{"name": "p"}]}, "retryStrategy": {"limit": "2"},
             "container": {"image": "busybox", "command": ["sh", "-c"], "args": [script],
                           "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}},
        ]},
    }
    runner.submit(wf, wait=False)
    end = time.monotonic() + 20
    while not any(p.name in "ab" for p in marks.iterdir()) or len(runner.resources.snapshot()["waiting"]) < 1:
        assert time.monotonic() < end, runner.resources.snapshot()
        time.sleep(0.05)
    [running] = runner.resources.snapshot()["running"]
    [waiting] = runner.resources.snapshot()["waiting"]
    kiln("stop", "sweep2", "--job", waiting["node"], cwd=repo, env=env, check=True)
    kiln("stop", "sweep2", "--job", running["node"], "-m", "enough", cwd=repo, env=env, check=True)
    done = runner.wait_stopped("sweep2", timeout=30)
    assert done is not None and done["status"]["phase"] == "Failed"
    nodes = done["status"]["nodes"].values()
    pods = {n["name"]: (n["phase"], n["message"]) for n in nodes if n["type"] == "Pod"}
    assert pods == {running["node"]: ("Failed", "stopped by kiln stop: enough"),
                    waiting["node"]: ("Failed", "stopped by kiln stop")}, pods
    ran = [p.name for p in marks.iterdir() if not p.name.startswith("why-")]
    assert len(ran) == 1  # the waiting one never started, the running one was not started again
    assert (marks / f"why-{ran[0]}").read_text() == "stopped by kiln stop: enough"
