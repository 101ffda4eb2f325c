"""Compute as users see it (#18): plan warns when a workspace's work together exceeds its
run-time quotas (it will queue), the quotas travel in the rendered workflow for the local
runner's resource queue, and `kiln usage` adds up the run records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.controller.plan import make_plan
from kiln.controller.project import load_valid
from kiln.controller.render import render_workflow, workspaces_of
from tests.helpers import write

WS = """apiVersion: kiln.dev/v1alpha1
kind: Workspace
metadata: {name: team}
spec:
  members: [{user: ada@example.com, role: admin}]
  presets: [{name: two, cpu: "2", memory: 1Gi}, {name: gpu, cpu: "1", memory: 1Gi, gpu: 1}]
  quotas: {cpu: "3", trainingGpus: 1}
"""
DATA = (
    "apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {name: d, workspace: team}\n"
    "spec: {type: tabular, task: classification, format: csv, source: {sample: iris}}\n"
)


def exp(name: str, preset: str) -> str:
    return (
        f"apiVersion: kiln.dev/v1alpha1\nkind: Experiment\nmetadata: {{name: {name}, workspace: team}}\n"
        f"spec: {{dataset: {{name: d}}, algorithm: {{name: logistic_regression}}, resources: {{preset: {preset}}}}}\n"
    )


def test_plan_warns_when_a_workspaces_jobs_together_exceed_its_quota_and_render_carries_it(tmp_path: Path) -> None:
    files = {"specs/ws.yaml": WS, "specs/d.yaml": DATA, "specs/a.yaml": exp("a", "two"), "specs/g1.yaml": exp("g1", "gpu")}
    write(tmp_path, files)
    config = load_config(tmp_path)
    specs = load_valid(config)
    assert not [w for w in make_plan(specs, [], config=config).warnings if "will queue" in w]  # 3 CPU, 1 GPU: no
    write(tmp_path, {"specs/b.yaml": exp("b", "two"), "specs/g2.yaml": exp("g2", "gpu")})
    specs = load_valid(config)
    warned = [w for w in make_plan(specs, [], config=config).warnings if "will queue" in w]
    assert warned == [
        "workspace team: its experiments' jobs together ask for 6 CPU (quota cpu 3), 2 GPU (quota "
        "trainingGpus 1): they will queue and run as the quota frees (see `kiln queue`); raise the "
        "Workspace's quotas to run them at once"
    ]
    s = next(x for x in specs.specs if x.name == "b")
    wf = render_workflow(config, s, workspace=workspaces_of(specs.specs)["team"])
    assert json.loads(wf["metadata"]["annotations"]["kiln.dev/quotas"]) == {"cpu": "3", "trainingGpus": 1}
    assert wf["metadata"]["labels"]["kiln.dev/workspace"] == "team"


def _pod_wf(name: str, ws: str, kind: str, requests: dict, seconds: float) -> dict:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name, "labels": {"kiln.dev/workspace": ws, "kiln.dev/kind": kind, "kiln.dev/name": name}},
        "spec": {
            "entrypoint": "main",
            "templates": [
                {"name": "main", "steps": [[{"name": "a", "template": "work"}], [{"name": "b", "template": "work"}]]},
                {
                    "name": "work",
                    "container": {"image": "busybox", "command": ["sleep", str(seconds)], "resources": {"requests": requests}},
                },
            ],
        },
    }


@pytest.mark.slow  # two runs of two 0.6 s pods and three `kiln usage` processes (~7 s)
def test_kiln_usage_adds_up_the_run_records(tmp_path: Path) -> None:
    from kiln.controller.events import _seconds
    from kiln.runners.local import LocalRunner
    from tests.helpers import kiln

    write(tmp_path, {"kiln.yaml": "capacity: {cpu: '8', memory: 16Gi, gpus: 1}\n"})
    runner = LocalRunner(tmp_path / ".kiln/runs", slots_dir=tmp_path / "slots", capacity={"gpus": 1})
    jobs = {
        "train": ("team", "Experiment", {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"}),
        "serve": ("lab", "Deployment", {"cpu": "500m", "memory": "512Mi"}),
    }
    ran = {n: runner.submit(_pod_wf(n, ws, kind, req, 0.6)) for n, (ws, kind, req) in jobs.items()}
    rows = {r["name"]: r for r in json.loads(kiln("usage", "-o", "json", cwd=tmp_path, check=True).stdout)}
    for n, (ws, kind, _req) in jobs.items():
        pods = [x for x in ran[n]["status"]["nodes"].values() if x["type"] == "Pod"]
        secs = sum(_seconds(x["startedAt"], x["finishedAt"]) or 0 for x in pods)
        r = rows[n]
        assert (r["workspace"], r["kind"], r["pods"], r["seconds"]) == (ws, kind, 2, secs)
        # each pod's record holds what it requested for as long as it ran (0.6 s and a process start)
        cpu, mem_100mi, gpu = {"train": (2, 10.24, 1), "serve": (0.5, 5.12, 0)}[n]
        for x in pods:
            rd = x["resourcesDuration"]
            assert round(cpu * 0.6) <= rd["cpu"] <= round(cpu * 3) and round(mem_100mi * 0.6) <= rd["memory"] <= round(
                mem_100mi * 3
            )
            assert (1 <= rd["nvidia.com/gpu"] <= 3) if gpu else "nvidia.com/gpu" not in rd
        total = {k: sum(x["resourcesDuration"].get(k, 0) for x in pods) for k in ("cpu", "memory", "nvidia.com/gpu")}
        expected = (total["cpu"] / 3600, total["memory"] * 100 / 1024 / 3600, total["nvidia.com/gpu"] / 3600)
        assert (r["cpuHours"], r["memoryGiBHours"], r["gpuHours"]) == pytest.approx(expected)
    only = json.loads(kiln("usage", "-o", "json", "-w", "lab", "--since", "1h", cwd=tmp_path, check=True).stdout)
    assert [r["name"] for r in only] == ["serve"]
    table = kiln("usage", cwd=tmp_path, check=True).stdout
    assert "Experiment/train" in table and "(total)" in table


@pytest.mark.slow  # three plans and an apply as subprocesses (~10 s)
def test_a_workspaces_period_ends_its_deployments_stop_runs_are_refused_and_extending_restarts(tmp_path: Path) -> None:
    """#18 item 3: plan shows and apply carries out the stop of the deployments of a workspace whose
    period ended and refuses its new runs; extending the period plans them again."""
    from kiln.loader import load_specs
    from kiln.state import ObjectRecord, open_store
    from tests.helpers import kiln

    ws = WS.replace("  quotas:", "  period: {start: '2020-01-01', end: '2099-12-31'}\n  quotas:")
    dep = (
        "apiVersion: kiln.dev/v1alpha1\nkind: Deployment\nmetadata: {name: srv, workspace: team}\n"
        "spec: {model: {name: m, alias: production}}\n"
    )
    files = {
        "specs/ws.yaml": ws,
        "specs/d.yaml": DATA,
        "specs/dep.yaml": dep,
        "specs/e.yaml": exp("e", "two").replace("resources:", "register: {model: m, aliases: [production]}, resources:"),
    }
    write(tmp_path, files)
    config = load_config(tmp_path)
    store = open_store(config.state_url(), tmp_path)
    try:  # as if applied before (a served deployment's record; its server is another test's business)
        for s in load_specs(tmp_path / "specs").specs:
            store.put(
                ObjectRecord(
                    key=s.key,
                    kind=s.kind,
                    workspace=s.workspace,
                    name=s.name,
                    spec=s.doc,
                    spec_hash=s.spec_hash,
                    generation=1,
                    observed_generation=1,
                )
            )
    finally:
        store.close()
    write(
        tmp_path,
        {
            "specs/ws.yaml": ws.replace("2099-12-31", "2021-06-30"),
            "specs/e.yaml": files["specs/e.yaml"].replace("logistic_regression", "decision_tree"),
        },
    )

    def plan() -> dict[str, dict]:
        out = json.loads(kiln("plan", "--format", "json", cwd=tmp_path, check=True).stdout)
        return {c["ref"]: c for c in out["changes"]}

    ended = "the workspace's period of use ended on 2021-06-30"
    p = plan()
    assert p["Deployment/team/srv"]["action"] == "delete" and p["Deployment/team/srv"]["note"].startswith(ended)
    assert p["Experiment/team/e"]["action"] == "update" and p["Experiment/team/e"]["reason"] == (
        f"{ended}: new runs are refused (extend the Workspace's spec.period)"
    )
    out = kiln("apply", cwd=tmp_path, timeout=120)
    assert "Deployment/team/srv" in out.stdout and "Refused" not in out.stderr, out.stdout + out.stderr
    got = json.loads(kiln("get", "deployment", "-o", "json", cwd=tmp_path, check=True).stdout)
    assert got == [] or all(r.get("name") != "srv" for r in got), got
    p = plan()
    assert p["Deployment/team/srv"]["action"] == "create" and p["Deployment/team/srv"]["reason"].startswith(ended)
    # extending the period: the deployment is planned again (restarts on apply), the run goes ahead
    write(tmp_path, {"specs/ws.yaml": ws.replace("2099-12-31", "2100-01-01")})
    p = plan()
    # (its model has no version in this repo: that reason, not the period, may remain)
    assert p["Deployment/team/srv"]["action"] == "create" and "period" not in p["Deployment/team/srv"].get("reason", "")
    assert p["Experiment/team/e"]["action"] == "update" and "reason" not in p["Experiment/team/e"]
