"""Promotion you can trust (#21), for real: an experiment whose model a deployment serves by its
`production` alias, in a temp git repo with the versioned wine Dataset; every step is a commit.

A worse retrain registers v2 without moving `production` (the deployment keeps serving v1); a
better one moves it and the same apply rolls it out; an alias pinned in the spec rolls back.
`kiln plan` shows the whole cascade of each change (markdown and JSON), `kiln models history`
every alias move with its commit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import deployment_server_pids, kiln, write
from tests.test_experiment_handler import WINE, copy_repo, exp, wine_repo  # noqa: F401 - a session fixture

pytest.importorskip("bentoml")
pytest.importorskip("sklearn")

DEPLOY = """apiVersion: kiln.dev/v1alpha1
kind: Deployment
metadata: {name: wine-api}
spec:
  model: {name: wine-clf, alias: production}
  auth: {public: true}
"""


def tree(depth: int, aliases: str = "[production]") -> str:
    return exp(
        "wine-tree",
        f"""
dataset: {{name: wine}}
algorithm: {{name: decision_tree, hyperparameters: {{max_depth: {depth}, seed: 3}}}}
trigger: {{onNewDatasetVersion: retrain}}
register: {{model: wine-clf, aliases: {aliases}}}
""",
    )


def logistic() -> str:
    return exp(
        "wine-tree",
        """
dataset: {name: wine}
algorithm: {name: logistic_regression}
trigger: {onNewDatasetVersion: retrain}
register: {model: wine-clf, aliases: [production]}
""",
    )


def commit(repo: Path, message: str) -> str:
    subprocess.run(["git", "add", "-A", "specs"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", message], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(wine_repo: Path, tmp_path: Path) -> Iterator[Path]:  # noqa: F811 - the imported fixture
    root = copy_repo(wine_repo, tmp_path / "repo")
    (root / ".gitignore").write_text(".kiln/\n")
    yield root
    for pid in deployment_server_pids(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def serving(repo: Path) -> dict:
    return json.loads((repo / ".kiln/deployments/default/wine-api/server.json").read_text())


def registered(repo: Path) -> dict:
    rec = json.loads(kiln("get", "experiment", "wine-tree", "-o", "json", cwd=repo, check=True).stdout)
    return rec["extra"]["registered"]


def aliases(repo: Path) -> dict[str, int]:
    from kiln.bento.registry import Registry, default_home

    return Registry(default_home(repo)).aliases("wine-clf")


def plan_json(repo: Path) -> dict[str, dict]:
    doc = json.loads(kiln("plan", "--format", "json", cwd=repo, check=True).stdout)
    return {c["ref"]: c for c in doc["changes"]}


@pytest.mark.slow
def test_worse_retrain_keeps_production_better_moves_and_rolls_out_pin_rolls_back(repo: Path) -> None:
    write(repo, {"specs/tree.yaml": tree(2), "specs/deploy.yaml": DEPLOY})
    c1 = commit(repo, "v1: a depth-2 tree")
    kiln("apply", cwd=repo, check=True, timeout=300)
    assert aliases(repo) == {"production": 1} and serving(repo)["version"] == 1
    first = registered(repo)["promotion"]
    assert first[0]["moved"] and first[0]["reason"] == "the alias is new"

    # a Dataset change lists its dependants: the experiment retrains (its trigger), then the model
    # version, the alias under its rule and the deployment that serves it
    write(repo, {"specs/wine.yaml": WINE.replace("seed: 7", "seed: 8")})
    ds = plan_json(repo)["Dataset/wine"]["cascade"]
    assert [(e["step"], e["depth"]) for e in ds] == [("retrains", 1), ("registers", 2), ("alias", 3), ("rollout", 4)]
    assert ds[0]["ref"] == "Experiment/wine-tree" and "Deployment/wine-api" in ds[3]["text"]
    write(repo, {"specs/wine.yaml": WINE})

    # a worse model: plan says what may follow (markdown and JSON), apply keeps production at v1
    (repo / "specs/tree.yaml").write_text(tree(1))
    commit(repo, "v2: a stump")
    md = kiln("plan", "--format", "markdown", cwd=repo, check=True).stdout
    follows = md[md.index("#### What follows in this apply") :]
    assert "- `Experiment/wine-tree` (update)" in follows
    assert "  - registers model wine-clf v2" in follows
    assert "    - alias production: may move to v2 (better on test_accuracy; now v1)" in follows
    assert "      - Deployment/wine-api rolls out wine-clf v2 if production moves (serves wine-clf@production)" in follows
    cascade = plan_json(repo)["Experiment/wine-tree"]["cascade"]
    assert [(e["step"], e["ref"]) for e in cascade] == [
        ("registers", "model wine-clf"),
        ("alias", "model wine-clf@production"),
        ("rollout", "Deployment/wine-api"),
    ]
    pid = serving(repo)["pid"]
    kiln("apply", cwd=repo, check=True, timeout=300)
    reg = registered(repo)
    decision = reg["promotion"][0]
    assert reg["version"] == 2 and reg["aliases"] == [] and not decision["moved"]
    assert decision["metric"] == "test_accuracy" and decision["challenger"] < decision["champion"]
    assert decision["reason"].startswith("v2 test_accuracy") and "is not better than v1's" in decision["reason"]
    assert aliases(repo) == {"production": 1}
    assert serving(repo)["version"] == 1 and serving(repo)["pid"] == pid  # not even restarted
    row = next(r for r in json.loads(kiln("status", "-o", "json", cwd=repo, check=True).stdout) if r["name"] == "wine-tree")
    assert "-> wine-clf v2 (production kept at v1 (not better))" in row["info"]
    described = kiln("describe", "Experiment/wine-tree", cwd=repo, check=True).stdout
    assert "Aliases (for wine-clf v2):" in described and "  production   kept at v1" in described
    kiln("report", "--out", "out/pr", cwd=repo, check=True, timeout=120)
    assert (
        "- alias `production` (better on test_accuracy): **kept at v1**: v2 test_accuracy"
        in (repo / "out/pr/report.md").read_text()
    )

    # a better model: it moves production, and the same apply rolls it out
    (repo / "specs/tree.yaml").write_text(logistic())
    c3 = commit(repo, "v3: logistic regression")
    kiln("apply", cwd=repo, check=True, timeout=300)
    decision = registered(repo)["promotion"][0]
    assert decision["moved"] and decision["to"] == 3 and decision["challenger"] > decision["champion"]
    assert aliases(repo) == {"production": 3} and serving(repo)["version"] == 3

    # pinned to a version that does not exist: the plan warns before apply would refuse it
    (repo / "specs/tree.yaml").write_text(
        logistic().replace("aliases: [production]", "aliases: [{name: production, version: 9}]")
    )
    warned = kiln("plan", cwd=repo, check=True).stdout
    assert (
        "warning: Experiment/wine-tree (specs/tree.yaml:1): register.aliases: production is pinned to v9, but "
        "model wine-clf has no version 9 (versions: v1, v2, v3)" in warned
    )

    # pinned in the spec: a rollback through a pull request; plan says so, apply rolls v1 out
    (repo / "specs/tree.yaml").write_text(
        logistic().replace("aliases: [production]", "aliases: [{name: production, version: 1}]")
    )
    c4 = commit(repo, "roll production back to v1")
    cascade = plan_json(repo)["Experiment/wine-tree"]["cascade"]
    assert [e["text"] for e in cascade] == [
        "alias production: moves to v1 (pinned; now v3)",
        "Deployment/wine-api rolls out wine-clf v1 (serves wine-clf@production)",
    ]
    kiln("apply", cwd=repo, check=True, timeout=300)
    assert aliases(repo) == {"production": 1} and serving(repo)["version"] == 1

    hist = json.loads(kiln("models", "history", "wine-clf", "-o", "json", cwd=repo, check=True).stdout)
    moves = [(h.get("previous"), h["version"], h["commit"]) for h in hist]
    assert moves == [(None, 1, c1), (1, 3, c3), (3, 1, c4)]
    table = kiln("models", "history", "wine-clf", cwd=repo, check=True).stdout
    assert "v3 -> v1" in table and c4[:12] in table and "pinned to v1 in the spec" in table
