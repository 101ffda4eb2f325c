"""The retraining trigger on the plan side: an Experiment following a dataset (``version: latest``)
is planned again when the dataset gets a new version, as its ``trigger.onNewDatasetVersion`` says.

The Experiment handler arrives separately; the record here is what ``apply`` writes for any
object that follows a dataset (``extra.inputVersions``, see controller/apply.py), made with the
same functions apply uses."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("dvc")
pd = pytest.importorskip("pandas")


def git_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    for args in (["init", "-q"], ["config", "user.email", "kiln@example.com"], ["config", "user.name", "kiln test"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


def experiment(name: str, trigger: str) -> str:
    return f"""apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {{name: {name}}}
spec:
  dataset: {{name: wine}}
  algorithm: {{name: logistic_regression}}
  trigger: {{onNewDatasetVersion: {trigger}}}
"""


def new_version(repo: Path, rows: int) -> str:
    from kiln.config import load_config
    from kiln.controller.dataset_steps import write_version
    from kiln.data import load

    folder = repo.parent / f"wine-{rows}"
    folder.mkdir()
    pd.DataFrame({"a": range(rows), "b": [i * 0.5 for i in range(rows)],
                  "target": [i % 3 for i in range(rows)]}).to_csv(folder / "wine.csv", index=False)
    content = load(folder, "csv", "tabular", label="target")
    return write_version(load_config(repo), "default", "wine", folder, content, {"source": "test"}, push=False)["version"]


def test_followed_dataset_new_version_plans_retrain(tmp_path: Path) -> None:
    from kiln.config import load_config
    from kiln.controller.handlers.base import run_key
    from kiln.controller.plan import input_versions
    from kiln.controller.project import load_valid, open_state, plan
    from kiln.controller.render import render_workflow
    from kiln.state import ObjectRecord

    repo = git_repo(tmp_path / "repo")
    (repo / "specs").mkdir()
    (repo / "specs/wine.yaml").write_text("apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {name: wine}\n"
                                          "spec: {type: tabular, task: classification, source: {sample: wine}}\n")
    for name, trig in (("wine-retrain", "retrain"), ("wine-report", "plan-only"), ("wine-quiet", "ignore")):
        (repo / f"specs/{name}.yaml").write_text(experiment(name, trig))
    v1 = new_version(repo, 30)
    config = load_config(repo)
    specs = {s.name: s for s in load_valid(config).specs}
    store = open_state(config)
    try:  # each experiment applied with v1, as apply records it
        for name in ("wine-retrain", "wine-report", "wine-quiet"):
            s = specs[name]
            inputs = input_versions(config, s)
            assert inputs == {"default/wine": v1}
            rec = ObjectRecord(key=s.key, source=s.location()).applied(s.doc, s.spec_hash)
            rec = replace(rec, extra={"inputVersions": inputs, "runKey": run_key(s.spec_hash, inputs)})
            store.put(rec.with_condition("Ready", "True", "Succeeded", "applied"))
    finally:
        store.close()
    before = {c.ref: c for c in plan(config).changes}
    assert all(before[f"Experiment/{n}"].action == "unchanged" and not before[f"Experiment/{n}"].note
               for n in ("wine-retrain", "wine-report", "wine-quiet"))

    v2 = new_version(repo, 40)
    assert v2 != v1
    after = {c.ref: c for c in plan(config).changes}
    retrain = after["Experiment/wine-retrain"]
    assert retrain.action == "update" and "dataset wine has a new version v2" in retrain.note
    assert "retrain" in retrain.note
    report = after["Experiment/wine-report"]
    assert report.action == "unchanged" and "dataset wine has a new version v2" in report.note
    assert "plan-only" in report.note
    assert after["Experiment/wine-quiet"].action == "unchanged" and not after["Experiment/wine-quiet"].note
    text = plan(config).to_text()
    assert "~ update    Experiment/wine-retrain" in text and "dataset wine has a new version v2" in text

    # the new version makes a new run: step progress and the workflow's run identity both change
    s = specs["wine-retrain"]
    k1, k2 = run_key(s.spec_hash, {"default/wine": v1}), run_key(s.spec_hash, {"default/wine": v2})
    assert k1 != k2 and k1.startswith(s.spec_hash)
    m1 = render_workflow(config, s, workspace=None, data_version=k1[len(s.spec_hash) + 1:])
    m2 = render_workflow(config, s, workspace=None, data_version=k2[len(s.spec_hash) + 1:])
    assert m1["metadata"]["labels"]["kiln.dev/spec-hash"] != m2["metadata"]["labels"]["kiln.dev/spec-hash"]
    assert render_workflow(config, s, workspace=None)["metadata"]["labels"]["kiln.dev/spec-hash"] == s.spec_hash
