"""Change only what changed (#25): each spec field has an update class (``kiln.api.kinds``), `kiln
plan` names it and `kiln apply` does exactly that work, for real: experiments in temp git repos on
the tiny wine table (real DVC, scikit-learn, the BentoML registry), a real BentoML server for the
deployment. No training where none is needed is checked on the files training writes (each
trial's ``trial.json``), on the registry's versions and on the workflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import kiln, write
from tests.test_experiment_handler import copy_repo, exp, record, registry, wine_repo  # noqa: F401 - fixture

pytest.importorskip("dvc")
pytest.importorskip("bentoml")


def plan_json(repo: Path) -> dict:
    out = kiln("plan", "--format", "json", cwd=repo, check=True)
    return {c["ref"]: c for c in json.loads(out.stdout)["changes"]}


def trial_files(repo: Path, name: str) -> dict[str, bytes]:
    """Every trial record of every run of experiment ``name``: training rewrites them."""
    home = repo / ".kiln/workspaces/default/experiments" / name / "runs"
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.glob("*/trials/*/trial.json"))}


def workflow_runs(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / ".kiln/runs").glob("*")) if (repo / ".kiln/runs").is_dir() else []


RUN = """
dataset: {name: wine}
algorithm: {name: logistic_regression, hyperparameters: {C: 1.0}}
register: {model: wine-lr, tags: {team: a}}
"""


def test_experiment_register_fields_update_in_place_and_a_hyperparameter_retrains(wine_repo: Path,  # noqa: F811
                                                                                   tmp_path: Path) -> None:
    repo = copy_repo(wine_repo, tmp_path / "repo")
    spec = repo / "specs/lr.yaml"
    write(repo, {"specs/lr.yaml": exp("wine-lr", RUN)})
    kiln("apply", cwd=repo, check=True, timeout=300)
    reg = registry(repo)
    assert reg.versions("wine-lr") == [1]
    trials, runs = trial_files(repo, "wine-lr"), workflow_runs(repo)
    assert len(trials) == 1

    # tags, description and an alias: plan says so, apply re-tags v1, nothing trains
    spec.write_text(exp("wine-lr", RUN.replace("tags: {team: a}", "tags: {team: b}, description: tuned by hand, "
                                                                  "aliases: [staging]")))
    change = plan_json(repo)["Experiment/wine-lr"]
    assert change["action"] == "update" and change["update"] == "re-register"
    assert {f["path"]: f["update"] for f in change["fields"]} == {
        "spec.register.aliases": "re-register", "spec.register.description": "re-register",
        "spec.register.tags.team": "re-register"}
    text = kiln("plan", cwd=repo, check=True).stdout
    assert "=> re-register: register.aliases, register.description, register.tags.team" in text
    assert "~ spec.register.tags.team: 'a' -> 'b'  (re-register, no training)" in text
    md = kiln("plan", "--format", "markdown", cwd=repo, check=True).stdout
    assert "**re-register: register.aliases, register.description, register.tags.team**" in md
    out = kiln("apply", cwd=repo, check=True, timeout=120)
    assert "run workflow" not in out.stdout and "re-register" in out.stdout, out.stdout
    assert reg.versions("wine-lr") == [1] and reg.aliases("wine-lr") == {"staging": 1}
    mv = reg.describe("wine-lr", 1)
    assert mv["metadata"]["tags"] == ["team=b"] and mv["metadata"]["description"] == "tuned by hand"
    assert trial_files(repo, "wine-lr") == trials and workflow_runs(repo) == runs
    rec = record(repo, "wine-lr")
    assert rec["extra"]["lastUpdate"]["class"] == "re-register"
    assert rec["extra"]["registered"]["version"] == 1 and rec["extra"]["registered"]["aliases"] == ["staging"]
    desc = kiln("describe", "Experiment/wine-lr", cwd=repo, check=True).stdout
    assert "lastUpdate" in desc and "re-register" in desc
    assert "0 action(s)" in kiln("apply", cwd=repo, check=True).stdout  # and it is applied

    # adding the ONNX export converts v1 (parity checked) and adds it to the same version
    spec.write_text(spec.read_text().replace("aliases: [staging]", "aliases: [staging], export: [onnx]"))
    assert plan_json(repo)["Experiment/wine-lr"]["update"] == "re-register"
    out = kiln("apply", cwd=repo, check=True, timeout=180)
    assert "run workflow" not in out.stdout, out.stdout
    mv = reg.describe("wine-lr", 1)
    assert "model.onnx" in mv["files"] and mv["metadata"]["onnx"]["checked"] is True
    assert mv["metadata"]["onnx"]["samples"] > 0 and mv["metadata"]["onnx"]["maxAbsDiff"] <= 1e-4
    assert mv["serving"]["framework"] == "sklearn"  # it keeps serving as it was registered
    assert reg.versions("wine-lr") == [1] and trial_files(repo, "wine-lr") == trials

    # a metadata change records the spec and runs nothing
    spec.write_text(spec.read_text().replace("metadata: {name: wine-lr}", "metadata: {name: wine-lr, labels: {team: x}}"))
    change = plan_json(repo)["Experiment/wine-lr"]
    assert change["update"] == "metadata" and change["work"] == "in place: metadata.labels"
    out = kiln("apply", cwd=repo, check=True)
    assert "~ Experiment/wine-lr: update, in place: metadata.labels (specs/lr.yaml:1)" in out.stdout
    assert "1 updated, 0 deleted, 1 unchanged; 0 action(s)" in out.stdout, out.stdout

    # a hyperparameter changes the result: retrain, a new version
    spec.write_text(spec.read_text().replace("C: 1.0", "C: 0.5"))
    change = plan_json(repo)["Experiment/wine-lr"]
    assert change["update"] == "re-run" and change["work"] == "retrain: algorithm.hyperparameters.C"
    assert "(retrain)" in kiln("plan", cwd=repo, check=True).stdout
    out = kiln("apply", cwd=repo, check=True, timeout=300)
    assert "run workflow" in out.stdout
    assert reg.versions("wine-lr") == [1, 2] and len(trial_files(repo, "wine-lr")) == 2

    # in place only when nothing outside the spec asks for a run: with the retraining trigger on,
    # a new version of the dataset turns even a tag change into a retraining
    spec.write_text(spec.read_text() + "  trigger: {onNewDatasetVersion: retrain}\n")
    assert plan_json(repo)["Experiment/wine-lr"]["update"] == "metadata"
    kiln("apply", cwd=repo, check=True)
    wine = repo / "specs/wine.yaml"
    wine.write_text(wine.read_text().replace("seed: 7", "seed: 8"))
    kiln("apply", "--target", "Dataset/wine", cwd=repo, check=True, timeout=120)
    spec.write_text(spec.read_text().replace("team: b", "team: c"))
    change = plan_json(repo)["Experiment/wine-lr"]
    assert change["update"] == "re-run" and "dataset wine has a new version v2" in change["note"], change
    assert change["work"] == "retrain: register.tags.team" and change["fields"][0]["update"] == "re-run"


AUTOML = """
mode: automl
dataset: {name: wine}
automl:
  candidates:
    - {name: logistic_regression}
    - {name: naive_bayes}
    - {name: decision_tree}
register: {model: wine-auto}
"""


def test_automl_select_trial_registers_the_chosen_trial_without_rerunning_candidates(
        wine_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    repo = copy_repo(wine_repo, tmp_path / "repo")
    spec = repo / "specs/auto.yaml"
    write(repo, {"specs/auto.yaml": exp("wine-auto", AUTOML)})
    kiln("apply", cwd=repo, check=True, timeout=300)
    ex = record(repo, "wine-auto")["extra"]
    other = next(t for t in ex["trials"] if t["id"] != ex["best"]["trial"] and t["state"] == "COMPLETE")
    trials = trial_files(repo, "wine-auto")
    assert len(trials) == 3

    spec.write_text(exp("wine-auto", AUTOML + f"selectTrial: {other['number']}\n"))
    change = plan_json(repo)["Experiment/wine-auto"]
    assert change["update"] == "re-select" and change["work"] == "re-select a finished trial: selectTrial"
    out = kiln("apply", cwd=repo, check=True, timeout=180)
    assert "run workflow" not in out.stdout and "select:" in out.stdout, out.stdout
    assert trial_files(repo, "wine-auto") == trials  # no candidate trained again
    reg = registry(repo)
    assert reg.versions("wine-auto") == [1, 2]
    assert reg.describe("wine-auto", 2)["labels"]["trial"] == other["id"]
    ex = record(repo, "wine-auto")["extra"]
    assert ex["best"]["trial"] == other["id"] and ex["registered"]["version"] == 2
    assert ex["lastUpdate"]["class"] == "re-select"
    results = json.loads((repo / "metrics/default/wine-auto.json").read_text())
    assert results["best"]["trial"] == other["id"] and results["registered"]["version"] == 2


def test_adding_register_to_a_finished_run_registers_its_trial_without_training(
        wine_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    repo = copy_repo(wine_repo, tmp_path / "repo")
    body = "dataset: {name: wine}\nalgorithm: {name: naive_bayes}\n"
    write(repo, {"specs/nb.yaml": exp("wine-nb", body)})
    kiln("apply", cwd=repo, check=True, timeout=300)
    trials, runs = trial_files(repo, "wine-nb"), workflow_runs(repo)
    assert record(repo, "wine-nb")["extra"]["registered"] is None  # no register: nothing registered

    (repo / "specs/nb.yaml").write_text(exp("wine-nb", body + "register: {model: wine-nb, tags: {stage: late}}\n"))
    change = plan_json(repo)["Experiment/wine-nb"]
    assert change["update"] == "re-select" and change["work"] == "re-select a finished trial: register"
    out = kiln("apply", cwd=repo, check=True, timeout=180)
    assert "+ register: register the selected trial as wine-nb" in out.stdout and "run workflow" not in out.stdout
    reg = registry(repo)
    assert reg.versions("wine-nb") == [1] and reg.describe("wine-nb", 1)["metadata"]["tags"] == ["stage=late"]
    assert trial_files(repo, "wine-nb") == trials and workflow_runs(repo) == runs


def test_dataset_and_workspace_metadata_changes_do_no_work(wine_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    repo = copy_repo(wine_repo, tmp_path / "repo")
    write(repo, {"specs/ws.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Workspace\nmetadata: {name: default}\n"
                                  "spec: {description: first}\n"})
    kiln("apply", cwd=repo, check=True, timeout=120)
    log = (repo / "data/default/wine.versions.json").read_bytes()
    wine = repo / "specs/wine.yaml"
    wine.write_text(wine.read_text().replace("metadata: {name: wine}", "metadata: {name: wine, labels: {team: a}}")
                    .replace("  task: classification", "  task: classification\n  description: the wine table"))
    (repo / "specs/ws.yaml").write_text((repo / "specs/ws.yaml").read_text().replace("first", "second"))
    changes = plan_json(repo)
    assert changes["Dataset/wine"]["update"] == "metadata"
    assert changes["Dataset/wine"]["work"] == "in place: metadata.labels, description"
    assert changes["Workspace/default"]["update"] == "metadata"
    out = kiln("apply", cwd=repo, check=True, timeout=120)
    assert "2 updated, 0 deleted, 0 unchanged; 0 action(s)" in out.stdout, out.stdout
    assert (repo / "data/default/wine.versions.json").read_bytes() == log  # no new version, nothing re-read
    assert kiln("plan", "--detailed-exitcode", cwd=repo).returncode == 0
    got = json.loads(kiln("get", "dataset", "wine", "-o", "json", cwd=repo, check=True).stdout)
    assert got["extra"]["lastUpdate"]["fields"] == ["metadata.labels", "spec.description"]


@pytest.mark.slow  # two real server starts
@pytest.mark.timeout(600)
def test_deployment_workers_and_resources_restart_the_server_only(tmp_path: Path) -> None:
    from tests.helpers import kill_deployment_servers
    from tests.test_deployment_handler import deployment, predict, register_iris, server
    from tests.test_experiment_handler import git_repo

    repo = git_repo(tmp_path / "repo")
    try:
        register_iris(repo)
        spec = "model: {name: iris}\nauth: {public: true}\nbatching: {enabled: false}\n"
        write(repo, {"specs/iris.yaml": deployment("iris-api", spec)})
        kiln("apply", cwd=repo, check=True, timeout=400)
        before, runs = server(repo), workflow_runs(repo)
        build = (repo / ".kiln/deployments/default/iris-api/build.json").read_bytes()

        (repo / "specs/iris.yaml").write_text(deployment("iris-api", spec.replace(
            "batching: {enabled: false}", "batching: {enabled: true, maxBatchSize: 8}\nworkers: 2\n"
                                          "resources: {cpu: 500m}")))
        change = plan_json(repo)["Deployment/iris-api"]
        assert change["update"] == "restart"
        assert change["work"] == "restart only: batching.enabled, batching.maxBatchSize, resources, workers"
        out = kiln("apply", cwd=repo, check=True, timeout=300)
        assert "+ rollout: restart the server" in out.stdout and "+ build:" not in out.stdout, out.stdout
        after = server(repo)
        assert after["pid"] != before["pid"] and (after["model"], after["version"]) == ("iris", 1)
        assert workflow_runs(repo) == runs  # no workflow: resolve-model and build were not redone
        assert (repo / ".kiln/deployments/default/iris-api/build.json").read_bytes() == build
        code, body = predict(after["url"])
        assert code == 200 and body["predictions"][0]["label"] == "setosa", body
        cfg = json.loads(kiln("get", "deployment", "iris-api", "-o", "json", cwd=repo, check=True).stdout)
        assert cfg["extra"]["lastUpdate"]["class"] == "restart" and cfg["health"] == "Healthy"
    finally:
        kill_deployment_servers(repo)
