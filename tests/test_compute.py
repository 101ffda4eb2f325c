"""Compute as users see it (#18): plan warns when a workspace's work together exceeds its
run-time quotas (it will queue), the quotas travel in the rendered workflow for the local
runner's resource queue, and `kiln usage` adds up the run records."""

from __future__ import annotations

import json
from pathlib import Path

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
