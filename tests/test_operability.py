"""Operability (#25): a description on every kind; when each apply, step, workflow task and trial
started and ended; `kiln get -l/--sort-by` with owners and creation times; `kiln events`.

The slow tests share one real repository (git, DVC, the local runner) applied once: a Workspace,
two tabular Datasets and an Experiment of two quick fits."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

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
    from kiln.controller.status import SORT_FIELDS

    helptext = " ".join(kiln("get", "--help", cwd=tmp_path, check=True).stdout.split())
    assert all(f in helptext for f in SORT_FIELDS)  # the help names every field it may sort by


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


WS = """
apiVersion: kiln.dev/v1alpha1
kind: Workspace
metadata: {name: team}
spec:
  quotas: {cpu: "4"}
"""
# a header and no rows: the dataset fails to apply, with a message saying why
BROKEN = """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: broken, workspace: team}
spec: {type: tabular, task: classification, source: {path: data/empty.csv}}
"""


def _event(events: list[dict[str, Any]], obj: str, action: str) -> dict[str, Any]:
    (e,) = [e for e in events if e["object"] == obj and e["action"] == action]
    return e


@pytest.mark.slow
def test_events_say_what_changed_when_from_which_commit_by_whom_with_what_result(tmp_path: Path) -> None:
    repo = tmp_path
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "ada@example.com")
    _git(repo, "config", "user.name", "Ada Lovelace")
    write(repo, {"specs/ws.yaml": WS, "specs/broken.yaml": BROKEN, "data/empty.csv": "a,b\n"})
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "workspace and a dataset")
    first = _git(repo, "rev-parse", "HEAD")
    assert kiln("apply", cwd=repo).returncode == 1  # the dataset fails
    (repo / "specs/ws.yaml").write_text(WS.replace('"4"', '"8"'))
    _git(repo, "-c", "user.name=Bob", "-c", "user.email=bob@example.com", "commit", "-qam", "more cpu")
    second = _git(repo, "rev-parse", "HEAD")
    kiln("apply", "--target", "Workspace/team", cwd=repo, check=True)  # the dataset would fail again
    (repo / "specs/ws.yaml").write_text(WS.replace('"4"', '"16"'))  # applied before it is committed
    (repo / "specs/broken.yaml").unlink()
    kiln("apply", "--prune", cwd=repo, check=True)

    events = json.loads(kiln("events", "-o", "json", cwd=repo, check=True).stdout)
    times = [e["time"] for e in events]
    assert times == sorted(times, reverse=True) and len(events) == 5
    created = _event(events, "Workspace/team", "create")
    assert (created["result"], created["commit"], created["author"]) == ("succeeded", first, "Ada Lovelace <ada@example.com>")
    failed = _event(events, "Dataset/team/broken", "create")
    assert failed["result"] == "failed" and "the dataset is empty" in failed["message"] and failed["commit"] == first
    updates = [e for e in events if e["object"] == "Workspace/team" and e["action"] == "update"]
    assert [(u["changes"], u["commit"], u["author"]) for u in updates] == [
        (["spec.quotas.cpu"], f"{second}-dirty", "Bob <bob@example.com>"),
        (["spec.quotas.cpu"], second, "Bob <bob@example.com>")]
    deleted = _event(events, "Dataset/team/broken", "delete")  # the history outlives the object
    assert deleted["result"] == "succeeded" and deleted["commit"] == f"{second}-dirty"
    for e in events:
        assert e["seconds"] == pytest.approx((_ts(e["finishedAt"]) - _ts(e["time"])).total_seconds(), abs=1e-3)

    table = kiln("events", "-w", "team", "--since", "1h", cwd=repo, check=True).stdout.splitlines()
    assert table[0].split() == ["TIME", "OBJECT", "ACTION", "RESULT", "TOOK", "COMMIT", "AUTHOR", "WHAT"]
    assert len(table) == 6 and f"{second[:12]}-dirty" in table[1] and "Bob <bob@example.com>" in table[1]
    assert "validate: data: the dataset is empty" in next(ln for ln in table if "failed" in ln)
    since = (_ts(updates[1]["time"])).strftime("%Y-%m-%dT%H:%M:%S.%f")  # ISO, no zone: UTC
    assert [e["action"] for e in json.loads(kiln("events", "--since", since, "-o", "json", cwd=repo).stdout)] \
        == ["delete", "update", "update"]
    assert "No events recorded" in kiln("events", "--since", "2099-01-01", cwd=repo, check=True).stdout
    bad = kiln("events", "-w", "tem", cwd=repo)
    assert bad.returncode == 1 and "did you mean 'team'?" in bad.stderr and "Traceback" not in bad.stderr
    bad = kiln("events", "--since", "yesterday", cwd=repo)
    assert bad.returncode == 1 and "neither a duration nor a date" in bad.stderr and "2h" in bad.stderr
    describe = kiln("describe", "Workspace/team", cwd=repo, check=True).stdout
    assert f"update from {second[:12]} by Bob <bob@example.com>" in describe
