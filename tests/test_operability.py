"""Operability (#25): a description on every kind; when each apply, step, workflow task and trial
started and ended; `kiln get -l/--sort-by` with owners and creation times; `kiln events`.

The slow tests share one real repository (git, DVC, the local runner) applied once: a Workspace,
two tabular Datasets and an Experiment of two quick fits."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT, kiln, write

SPECS = """
apiVersion: kiln.dev/v1alpha1
kind: Workspace
metadata: {name: team}
spec:
  description: the team's sandbox
---
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: iris, workspace: team, labels: {tier: gold}}
spec:
  type: tabular
  task: classification
  source: {sample: iris}
  owner: zoe@example.com
  description: |
    three kinds of iris
    measured by hand
---
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: wine, workspace: team, labels: {tier: silver}}
spec: {type: tabular, task: classification, source: {sample: wine}, owner: ada@example.com}
---
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: iris-lr, workspace: team, labels: {tier: gold}}
spec:
  dataset: {name: iris}
  algorithm: {name: logistic_regression}
  parameterSets: [{C: 1.0}, {C: 0.5}]
  description: two quick fits
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("ops")
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "ada@example.com")
    _git(repo, "config", "user.name", "Ada Lovelace")
    write(repo, {"specs/all.yaml": SPECS})
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "the team's first specs")
    kiln("apply", cwd=repo, check=True, timeout=600)
    return repo


def test_every_kind_takes_a_description() -> None:
    """spec.description validates on every kind (the examples with one added) and is in the
    committed editor schemas."""
    from kiln.api import KINDS
    from kiln.loader import load_specs

    seen = set()
    for s in load_specs(ROOT / "specs").specs:
        doc = {**s.doc, "spec": {**s.doc.get("spec", {}), "description": "what it is for"}}
        assert KINDS[s.kind].model_validate(doc).spec.description == "what it is for"
        seen.add(s.kind)
    assert seen == set(KINDS)
    for kind in KINDS:
        schema = json.loads((ROOT / "schemas" / f"{kind.lower()}.schema.json").read_text())
        assert "description" in schema["$defs"][f"{kind}Spec"]["properties"], kind


def test_get_refuses_an_unknown_sort_field_and_a_bad_selector(tmp_path: Path) -> None:
    p = kiln("get", "experiment", "--sort-by", "craeted", cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "--sort-by 'craeted' is not a field kiln get sorts by; did you mean 'created'?" in p.stderr
    assert "one of: name, workspace, owner, created" in p.stderr
    p = kiln("get", "dataset", "-l", "tier gold", cwd=tmp_path)
    assert p.returncode == 1 and "'tier gold' is not a label selector" in p.stderr and "key=value" in p.stderr


@pytest.mark.slow
def test_describe_shows_description_and_when_each_part_ran(applied: Path) -> None:
    d = kiln("describe", "Dataset/team/iris", cwd=applied, check=True).stdout
    assert "Description:  three kinds of iris\n              measured by hand" in d
    d = kiln("describe", "Experiment/team/iris-lr", cwd=applied, check=True).stdout
    assert "Description:  two quick fits" in d
    assert "Run:          kiln-exp-team-iris-lr Succeeded" in d
    for task in ("prepare-data", "select"):
        line = next(ln for ln in d.splitlines() if ln.strip().startswith(task))
        assert "Succeeded" in line and "->" in line and line.rstrip().endswith("s)"), line
    trials = d.split("Trials:\n")[1].splitlines()[:2]
    assert [t.split()[:2] for t in trials] == [["p0", "COMPLETE"], ["p1", "COMPLETE"]]
    history = d.split("History (newest first):\n")[1]
    assert "gen 1  succeeded   1 action(s)  took " in history


@pytest.mark.slow
def test_get_json_times_agree_with_the_records(applied: Path) -> None:
    """Each span's seconds is its end minus its start; the trials ran inside the workflow run,
    which ran inside the apply; trial times are those trial.json recorded."""
    rec = json.loads(kiln("get", "experiment", "iris-lr", "-w", "team", "-o", "json", cwd=applied, check=True).stdout)
    times = rec["times"]
    spans = [*times["applies"], *times["steps"], times["run"], *times["run"]["tasks"], *times["trials"]]
    for sp in spans:
        assert sp["seconds"] == pytest.approx((_ts(sp["finishedAt"]) - _ts(sp["startedAt"])).total_seconds(), abs=1e-3)
        assert sp["seconds"] >= 0
    (apply_,) = times["applies"]
    run = times["run"]
    assert {t["task"] for t in run["tasks"]} >= {"prepare-data", "select"}
    # the runner stamps whole seconds (as Argo does): a second of slack at each end
    second = dt.timedelta(seconds=1)
    assert _ts(apply_["startedAt"]) - second <= _ts(run["startedAt"])
    assert _ts(run["finishedAt"]) <= _ts(apply_["finishedAt"]) + second
    trial_json = Path(rec["extra"]["run"]) / "trials"
    for t in times["trials"]:
        recorded = json.loads((trial_json / t["id"] / "trial.json").read_text())
        assert (t["startedAt"], t["finishedAt"]) == (recorded["started"], recorded["finished"])
        assert _ts(run["startedAt"]) <= _ts(t["startedAt"]) and _ts(t["finishedAt"]) <= _ts(run["finishedAt"]) + second
    assert rec["labels"] == {"tier": "gold"} and rec["owner"] is None


@pytest.mark.slow
def test_get_filters_by_label_and_sorts_with_owner_and_created(applied: Path) -> None:
    table = kiln("get", "dataset", "-w", "team", cwd=applied, check=True).stdout.splitlines()
    assert table[0].split()[:5] == ["KIND", "WORKSPACE", "NAME", "OWNER", "CREATED"]
    gold = kiln("get", "dataset", "-l", "tier=gold", cwd=applied, check=True).stdout
    assert "iris" in gold and "wine" not in gold and "zoe@example.com" in gold
    assert "wine" in kiln("get", "dataset", "-l", "tier!=gold", cwd=applied, check=True).stdout
    assert "No objects match" in kiln("get", "dataset", "-l", "tier=bronze", cwd=applied, check=True).stdout

    def names(*args: str) -> list[str]:
        out = json.loads(kiln("get", "dataset", "-o", "json", *args, cwd=applied, check=True).stdout)
        return [r["name"] for r in out]

    assert names("--sort-by", "name") == ["iris", "wine"]
    assert names("--sort-by", "owner") == ["wine", "iris"]  # ada before zoe
    by_created = json.loads(kiln("get", "dataset", "-o", "json", "--sort-by", "created", cwd=applied, check=True).stdout)
    created = [r["created_at"] for r in by_created]
    assert created == sorted(created) and len(set(created)) == 2
    assert names("-l", "tier", "--sort-by", "status") == ["iris", "wine"]  # both healthy: by name
