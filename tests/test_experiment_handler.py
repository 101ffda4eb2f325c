"""Experiments applied for real: `kiln apply` in temp git repos runs the Experiment workflow on the
local runner (prepare-data -> train/HPO/AutoML -> select -> export-onnx -> register) with real
DVC, Optuna, scikit-learn/torch and the BentoML-backed registry; `kiln status/logs/infer` read it.

One wine Dataset is versioned once per session and copied into each test's repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import kiln, write

pytest.importorskip("dvc")
pytest.importorskip("optuna")
pytest.importorskip("bentoml")

WINE = """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: wine}
spec:
  type: tabular
  task: classification
  format: csv
  source: {sample: wine}
  label: target
  splits: {train: 0.7, validation: 0.15, test: 0.15, seed: 7}
  preprocessing:
    - {op: StandardScaler}
"""


def git_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for args in (["init", "-q"], ["config", "user.email", "kiln@example.com"], ["config", "user.name", "kiln test"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


@pytest.fixture(scope="session")
def wine_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = git_repo(tmp_path_factory.mktemp("wine") / "repo")
    write(repo, {"specs/wine.yaml": WINE})
    kiln("apply", cwd=repo, check=True, timeout=300)
    return repo


def copy_repo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def exp(name: str, spec: str) -> str:
    return (f"apiVersion: kiln.dev/v1alpha1\nkind: Experiment\nmetadata: {{name: {name}}}\nspec:\n"
            + "".join(f"  {line}\n" for line in spec.strip().splitlines()))


def record(repo: Path, name: str) -> dict:
    return json.loads(kiln("get", "experiment", name, "-o", "json", cwd=repo, check=True).stdout)


def status_row(repo: Path, name: str) -> dict:
    rows = json.loads(kiln("status", "-o", "json", cwd=repo, check=True).stdout)
    return next(r for r in rows if r["kind"] == "Experiment" and r["name"] == name)


def registry(repo: Path):
    from kiln.bento.registry import Registry, default_home

    return Registry(default_home(repo))


AUTOML = """
mode: automl
dataset: {name: wine}
automl:
  candidates:
    - {name: logistic_regression}
    - {name: naive_bayes}
    - {name: decision_tree}
    - {name: svm}
    - {name: random_forest, hyperparameters: {n_estimators: 50}}
objective: {metric: validation_accuracy, direction: maximize, additionalMetrics: [validation_f1]}
register: {model: wine-clf, aliases: [{name: production, when: always}], keepVersions: 1, export: [onnx]}
"""


def test_automl_registers_best_with_onnx_parity_then_apply_again_does_nothing(wine_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(wine_repo, tmp_path / "repo")
    write(repo, {"specs/automl.yaml": exp("wine-automl", AUTOML)})
    first = kiln("apply", cwd=repo, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    rec = record(repo, "wine-automl")
    ex = rec["extra"]
    assert ex["mode"] == "automl" and ex["trialsDone"] == ex["trialsTotal"] == 5
    board = ex["leaderboard"]
    assert {r["candidate"] for r in board} == {"logistic_regression", "naive_bayes", "decision_tree", "svm",
                                               "random_forest"}
    values = [r["objective"] for r in board]
    assert values == sorted(values, reverse=True)
    best = ex["best"]
    assert best["trial"] == board[0]["trial"] and best["value"] >= 0.95
    chosen = next(t for t in ex["trials"] if t["id"] == best["trial"])
    assert chosen["metrics"]["test_accuracy"] >= 0.95  # held-out split, not only the one it was picked on
    assert ex["registered"]["model"] == "wine-clf" and ex["registered"]["version"] == 1
    assert ex["info"].startswith("automl 5/5 trials") and ex["info"].endswith("-> wine-clf v1 (production -> v1)")
    assert {"kind": "model-version", "id": "wine-clf:v1"} in rec["inventory"]

    reg = registry(repo)
    mv = reg.describe("wine-clf", 1)
    assert mv["labels"]["experiment"] == "default.wine-automl" and mv["labels"]["framework"] == "onnx"
    assert mv["labels"]["dataset_version"] == json.loads((repo / "data/default/wine.versions.json").read_text())["current"]
    assert mv["metadata"]["metrics"]["validation_accuracy"] == best["value"]
    assert reg.aliases("wine-clf") == {"production": 1}
    assert "model.onnx" in mv["files"] and "kiln-model/meta.json" in mv["files"]
    onnx = mv["metadata"]["onnx"]
    assert onnx["checked"] and onnx["maxAbsDiff"] <= onnx["tolerance"]
    # the registered ONNX file and the native model agree on the test rows (parity checked again here)
    from kiln.algorithms.onnx import check_parity
    from kiln.algorithms.registry import get_algorithm
    from kiln.data.formats import load

    algo = get_algorithm(best_alg := json.loads((Path(mv["path"]) / "kiln-model/meta.json").read_text())["algorithm"])
    model = algo.load(Path(mv["path"]) / "kiln-model")
    rows = load(repo / "data/default/wine", "csv", "tabular").table.frame.drop(columns=["target"]).iloc[:40]
    rep = check_parity(lambda s: algo.native_outputs(model, s), Path(mv["path"]) / "model.onnx", rows,
                       onnx_samples=algo.features(model.meta, rows))
    assert rep.passed, (best_alg, rep.summary())

    # status and logs tell the story
    row = status_row(repo, "wine-automl")
    assert row["ready"] == "True" and "best validation_accuracy=" in row["info"]
    logs = kiln("logs", "Experiment/wine-automl", cwd=repo, check=True).stdout
    assert "leaderboard (validation_accuracy, maximize):" in logs and "ONNX parity passed" in logs
    assert (repo / ".kiln/workspaces/default/experiments/wine-automl").is_dir()
    assert list((repo / ".kiln/workspaces/default/experiments/wine-automl/runs").glob("*/trials/c-svm/tensorboard/events.*"))

    # the report compares the candidates in a plot (the chosen one marked) below the leaderboard
    kiln("report", "--out", "out/pr", cwd=repo, check=True, timeout=120)
    md = (repo / "out/pr/report.md").read_text()
    assert "### AutoML leaderboard" in md
    assert md.index("### AutoML leaderboard") < md.index("![AutoML candidates](default-wine-automl-automl-candidates.png)")
    assert (repo / "out/pr/default-wine-automl-automl-candidates.png").stat().st_size > 5000

    # unchanged spec: nothing runs, nothing is registered
    second = kiln("apply", cwd=repo, check=True)
    assert "0 action(s)" in second.stdout and "unchanged, skipping" in second.stdout
    assert reg.versions("wine-clf") == [1]

    # batch inference with the alias, over the test split
    inf = kiln("infer", "wine-clf@production", "wine", "--split", "test", "--out", str(tmp_path / "pred"), cwd=repo,
               check=True)
    assert "predictions ->" in inf.stdout
    preds = [json.loads(line) for line in (tmp_path / "pred/predictions.jsonl").read_text().splitlines()]
    assert preds and all(p["split"] == "test" for p in preds)
    first_pred = preds[0]["prediction"]  # the served shape: a row's best class and its probability
    assert {"score", "label"} == set(first_pred) and 0.0 <= first_pred["score"] <= 1.0

    # a changed spec: a new version takes the alias (when: always; a plain name would move only if
    # it were better, #21); keepVersions 1 deletes the old one, which nothing holds any more
    (repo / "specs/automl.yaml").write_text(exp("wine-automl", AUTOML.replace("n_estimators: 50", "n_estimators: 40")))
    kiln("apply", cwd=repo, check=True, timeout=300)
    assert reg.versions("wine-clf") == [2] and reg.aliases("wine-clf") == {"production": 2}
    actions = [a["action"] for a in reg.audit_log()]
    assert actions.count("register") == 2 and "delete" in actions


GOAL_SCRIPT = """
import argparse, json, os, time
import kiln

p = argparse.ArgumentParser()
p.add_argument("--x", type=float, required=True)
p.add_argument("--depth", type=int, default=1)
a = p.parse_args()
score = 1 - abs(a.x - 0.5)
for step in (1, 2, 3):
    kiln.report(step=step, validation_accuracy=score * step / 3, train_loss=1 - score)
    time.sleep(0.05)
out = os.environ["KILN_OUTPUT_DIR"]
open(os.path.join(out, "params.json"), "w").write(json.dumps({"x": a.x, "depth": a.depth}))
"""


def test_hpo_goal_reached_stops_before_max_trials(wine_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(wine_repo, tmp_path / "repo")
    write(repo, {"train_goal.py": GOAL_SCRIPT, "specs/hpo.yaml": exp("goal", """
mode: hpo
dataset: {name: wine}
command:
  run: python train_goal.py
  searchSpace:
    x: {type: float, low: 0.0, high: 1.0}
    depth: {type: int, low: 1, high: 4}
hpo: {maxTrials: 10, parallelTrials: 2, maxFailedTrials: 2, sampler: {type: random, seed: 3}, pruner: {type: none}}
objective: {metric: validation_accuracy, direction: maximize, goal: 0.75}
""")})
    res = kiln("apply", cwd=repo, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    ex = record(repo, "goal")["extra"]
    done = [t for t in ex["trials"] if t["state"] == "COMPLETE"]
    assert ex["trialsTotal"] == 10 and len(ex["trials"]) < 10
    assert ex["best"]["value"] >= 0.75
    # parallel workers proposed different values (per-worker seeds), all within the space
    xs = [t["params"]["x"] for t in ex["trials"]]
    assert len(set(xs)) == len(xs) and all(0 <= x <= 1 for x in xs)
    assert all(1 <= t["params"]["depth"] <= 4 for t in ex["trials"])
    # the script got its parameters as arguments and reported per step
    run = Path(ex["run"])
    best = run / "trials" / ex["best"]["trial"]
    assert json.loads((best / "model/params.json").read_text()) == {"x": ex["best"]["params"]["x"],
                                                                   "depth": ex["best"]["params"]["depth"]}
    steps = [json.loads(line)["step"] for line in (best / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert list((best / "tensorboard").glob("events.*"))
    logs = kiln("logs", "Experiment/goal", cwd=repo, check=True).stdout
    assert "goal reached: validation_accuracy=" in logs and "stopping (goal)" in logs
    # both workers really ran trials (the study is shared through its SQLite storage)
    import optuna

    study = optuna.load_study(study_name="hpo", storage=f"sqlite:///{run / 'study.db'}")
    workers = {t.user_attrs.get("worker") for t in study.trials}
    assert workers <= {"0", "1"} and len(study.trials) == len(ex["trials"])
    # both workers ran as parallel tasks (under load one may find the goal already reached)
    tasks = record(repo, "goal")["extra"]["workflow"]["tasks"]
    trial_tasks = {k: v for k, v in tasks.items() if k.startswith("trials(")}
    assert len(trial_tasks) == 2 and set(trial_tasks.values()) == {"Succeeded"}, tasks
    assert len(done) >= 1


def test_hpo_grid_sampler_tries_each_point_once_then_stops(wine_repo: Path, tmp_path: Path) -> None:
    """maxTrials above the grid's size: two workers try each of the 4 points once, then stop
    (optuna's own grid sampler raised RuntimeError from tell() after the last point, and
    per-worker seeds shuffled the grid differently per worker: points twice, others never)."""
    repo = copy_repo(wine_repo, tmp_path / "repo")
    write(repo, {"specs/grid.yaml": exp("grid", """
mode: hpo
dataset: {name: wine}
algorithm:
  name: decision_tree
  searchSpace:
    max_depth: {type: int, low: 1, high: 2}
    criterion: {type: choice, values: [gini, entropy]}
hpo: {maxTrials: 10, parallelTrials: 2, sampler: {type: grid, seed: 5}, pruner: {type: none}}
objective: {metric: validation_accuracy, direction: maximize}
""")})
    res = kiln("apply", cwd=repo, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    ex = record(repo, "grid")["extra"]
    points = sorted((t["params"]["max_depth"], t["params"]["criterion"]) for t in ex["trials"])
    assert points == [(1, "entropy"), (1, "gini"), (2, "entropy"), (2, "gini")]
    assert {t["state"] for t in ex["trials"]} == {"COMPLETE"}
    assert ex["best"]["value"] == max(t["objective"] for t in ex["trials"])
    logs = kiln("logs", "Experiment/grid", cwd=repo, check=True).stdout
    assert "stopping (grid-done)" in logs and "RuntimeError" not in logs


PRUNE_SCRIPT = """
import argparse, os, time
import kiln

p = argparse.ArgumentParser()
p.add_argument("--x", type=float, required=True)
p.add_argument("--y", type=int, required=True)
p.parse_args()
# trial order decides the score: the first two are good, every later one clearly worse
score = 0.9 if int(os.environ["KILN_TRIAL"][1:]) < 2 else 0.1
for step in range(1, 6):
    kiln.report(step=step, validation_accuracy=score)
    time.sleep(0.4)  # kiln follows the metrics every 0.2 s: time to prune between steps
open(os.path.join(os.environ["KILN_OUTPUT_DIR"], "finished"), "w").close()
"""


@pytest.mark.parametrize("pruner,sampler", [("median", "tpe"), ("asha", "cmaes"), ("hyperband", "random")])
def test_hpo_pruners_stop_trials_behind_the_others(wine_repo: Path, tmp_path: Path, pruner: str,
                                                   sampler: str) -> None:
    """Intermediate reports reach Optuna's pruner through ask/tell; a pruned trial's script is
    stopped mid-training and the trial ends PRUNED. Median and ASHA must prune every trial after
    the two good ones at its first report; Hyperband's brackets may keep some."""
    repo = copy_repo(wine_repo, tmp_path / "repo")
    write(repo, {"train_prune.py": PRUNE_SCRIPT, "specs/hpo.yaml": exp("prune", f"""
mode: hpo
dataset: {{name: wine}}
command:
  run: python train_prune.py
  searchSpace:
    x: {{type: float, low: 0.0, high: 1.0}}
    y: {{type: int, low: 1, high: 8}}
hpo: {{maxTrials: 5, parallelTrials: 1, sampler: {{type: {sampler}, seed: 1}}, pruner: {{type: {pruner}}}}}
objective: {{metric: validation_accuracy, direction: maximize}}
""")})
    res = kiln("apply", cwd=repo, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    ex = record(repo, "prune")["extra"]
    trials = sorted(ex["trials"], key=lambda t: t["number"])
    assert len(trials) == 5
    run = Path(ex["run"])
    for t in trials[:2]:
        assert t["state"] == "COMPLETE" and (run / "trials" / t["id"] / "model/finished").exists()
    later = [t["state"] for t in trials[2:]]
    assert set(later) <= {"COMPLETE", "PRUNED"}
    if pruner != "hyperband":
        assert later == ["PRUNED"] * 3
    for t in trials[2:]:
        if t["state"] != "PRUNED":
            continue
        rec = json.loads((run / "trials" / t["id"] / "trial.json").read_text())
        assert 1 <= rec["pruned_at"] < 5
        assert not (run / "trials" / t["id"] / "model/finished").exists()  # stopped, not run to the end
    assert ex["best"]["trial"] in (trials[0]["id"], trials[1]["id"])
    logs = kiln("logs", "Experiment/prune", cwd=repo, check=True).stdout
    assert "RuntimeError" not in logs and "Traceback" not in logs
    if pruner != "hyperband":
        assert "pruned at step 1: validation_accuracy=0.1 is behind the other trials" in logs


def test_hpo_always_failing_command_stops_after_max_failed_trials(wine_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(wine_repo, tmp_path / "repo")
    write(repo, {"fail.py": "import sys\nprint('loading weights...')\nsys.exit('boom: weights file is corrupt')\n",
                 "specs/hpo.yaml": exp("broken", """
mode: hpo
dataset: {name: wine}
command:
  run: python fail.py
  searchSpace: {lr: {type: float, low: 0.001, high: 0.1, log: true}}
hpo: {maxTrials: 10, parallelTrials: 2, maxFailedTrials: 3}
""")})
    res = kiln("apply", cwd=repo, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    rec = record(repo, "broken")
    ex = rec["extra"]
    failed = [t for t in ex["trials"] if t["state"] == "FAIL"]
    assert 3 <= len(failed) <= 4 and len(ex["trials"]) == len(failed)  # the other worker may have had one running
    assert "boom: weights file is corrupt" in failed[0]["error"]
    row = status_row(repo, "broken")
    assert row["ready"] == "False"
    msg = row["message"]
    assert "failed trial(s) (maxFailedTrials 3)" in msg and "boom" in msg, msg


COMMAND_TRAIN = """
import argparse, json, os
import joblib
import pandas as pd
from sklearn.linear_model import LogisticRegression
import kiln

p = argparse.ArgumentParser()
p.add_argument("--C", type=float, required=True)
p.add_argument("--max_iter", type=int, required=True)
a = p.parse_args()
data = os.environ["KILN_DATA_DIR"]
df = pd.read_csv(os.path.join(data, "data.csv"))
splits = json.load(open(os.path.join(data, ".kiln", "splits.json")))["items"]
x, y = df.drop(columns=["target"]), df["target"]
train = [int(i) for i, s in splits.items() if s == "train"]
val = [int(i) for i, s in splits.items() if s == "validation"]
m = LogisticRegression(C=a.C, max_iter=a.max_iter).fit(x.iloc[train], y.iloc[train])
kiln.report(step=1, validation_accuracy=float(m.score(x.iloc[val], y.iloc[val])))
out = os.environ["KILN_OUTPUT_DIR"]
joblib.dump(m, os.path.join(out, "model.joblib"))
json.dump({"framework": "sklearn", "task": "classification", "input": "tabular", "features": list(x.columns),
           "labels": [str(c) for c in m.classes_]}, open(os.path.join(out, "kiln-serving.json"), "w"))
json.dump(vars(a), open(os.path.join(out, "args.json"), "w"))
json.dump(sorted(os.environ), open(os.path.join(out, "env.json"), "w"))
"""


def test_run_mode_command_with_parameter_sets_one_job_each_and_registration(wine_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(wine_repo, tmp_path / "repo")
    write(repo, {"jobs/train.py": COMMAND_TRAIN, "specs/jobs.yaml": exp("jobs", """
dataset: {name: wine, version: v1}
command: {run: python train.py, workdir: jobs}
parameterSets:
  - {C: 0.0001, max_iter: 50}
  - {C: 1.0, max_iter: 500}
register: {model: wine-own, aliases: [staging]}
""")})
    # platform settings and secrets in the applier's environment must not reach the user's code
    secrets = {"KILN_STATE_URL": f"sqlite:///{repo}/.kiln/state.db", "KILN_LABELSTUDIO_TOKEN": "ls-admin-t0ken",
               "KILN_WEBHOOK_URL": "http://127.0.0.1:9/hook", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    res = kiln("apply", cwd=repo, timeout=300, env=secrets)
    assert res.returncode == 0, res.stdout + res.stderr
    ex = record(repo, "jobs")["extra"]
    assert ex["mode"] == "run" and ex["trialsDone"] == ex["trialsTotal"] == 2
    assert [t["id"] for t in ex["trials"]] == ["p0", "p1"]
    run = Path(ex["run"])
    for t, want in zip(ex["trials"], ({"C": 0.0001, "max_iter": 50}, {"C": 1.0, "max_iter": 500})):
        assert t["params"] == want
        assert json.loads((run / "trials" / t["id"] / "model/args.json").read_text()) == want
        seen = set(json.loads((run / "trials" / t["id"] / "model/env.json").read_text()))
        assert not seen & set(secrets), seen & set(secrets)
        assert {"PATH", "KILN_DATA_DIR", "KILN_OUTPUT_DIR", "KILN_METRICS_FILE", "KILN_PARAMS"} <= seen
        assert not any(k.startswith("KILN_") for k in seen - {"KILN_DATA_DIR", "KILN_OUTPUT_DIR", "KILN_METRICS_FILE",
                                                             "KILN_CHECKPOINT_DIR", "KILN_TRIAL", "KILN_PARAMS",
                                                             "KILN_RANDOM_SEED"}), seen
    assert ex["best"]["trial"] == "p1"  # the barely regularised one fits wine far better
    wf = json.loads((repo / ".kiln/runs/kiln-exp-jobs/workflow.json").read_text())
    train_pods = [n for n in wf["status"]["nodes"].values() if n["type"] == "Pod" and n["displayName"].startswith("train(")]
    assert len(train_pods) == 2
    mv = registry(repo).describe("wine-own", 1)
    assert mv["labels"]["framework"] == "sklearn" and mv["aliases"] == ["staging"]
    assert mv["labels"]["algorithm"] == "command" and mv["metadata"]["params"] == {"C": 1.0, "max_iter": 500}
    assert mv["serving"]["features"][:2] == ["alcohol", "malic_acid"] or len(mv["serving"]["features"]) == 13


# the parameter-set trial waits for the test's "go" file before it fits: one can be stopped mid-run
WAITING_TRAIN = COMMAND_TRAIN.replace("a = p.parse_args()\n", """a = p.parse_args()
import pathlib, time
marks = pathlib.Path(MARKS)
(marks / os.environ["KILN_TRIAL"]).touch()
while not (marks / "go").exists():
    time.sleep(0.05)
""")


@pytest.mark.slow  # ~25 s: three command trials, each importing scikit-learn and pandas
def test_kiln_stop_job_stops_one_trial_and_the_experiment_selects_from_the_others(wine_repo: Path,
                                                                                    tmp_path: Path) -> None:
    """#18 item 2: `kiln stop RUN --job NODE` on one trial of a parameter-set experiment. The
    trial is recorded STOPPED with the reason (not FAIL), its job ends Failed with "stopped by
    kiln stop" and is not retried (retries: 2), select ranks the other two and the experiment
    succeeds; describe lists the stopped one with why."""
    repo = copy_repo(wine_repo, tmp_path / "repo")
    marks = tmp_path / "marks"
    marks.mkdir()
    write(repo, {"jobs/train.py": WAITING_TRAIN.replace("MARKS", repr(str(marks))), "specs/sweep.yaml": exp("sweep", """
dataset: {name: wine, version: v1}
command: {run: python train.py, workdir: jobs}
parameterSets:
  - {C: 0.0001, max_iter: 50}
  - {C: 1.0, max_iter: 500}
  - {C: 0.1, max_iter: 200}
retries: 2
""")})
    apply = subprocess.Popen([sys.executable, "-m", "kiln.cli", "apply"], cwd=repo,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 120
        job = None
        while job is None:  # a trial has started: its job is in `kiln queue`
            assert time.monotonic() < end and apply.poll() is None, apply.stdout.read() if apply.stdout else ""
            started = [p.name for p in marks.iterdir()]
            if started:
                rows = json.loads(kiln("queue", "-o", "json", cwd=repo, check=True).stdout)
                job = next((r["node"] for r in rows if r["state"] == "running" and ".train(" in r["node"]), None)
            time.sleep(0.1)
        run = job.split(".", 1)[0]
        out = kiln("stop", run, "--job", job, "-m", "not this one", cwd=repo, check=True)
        assert out.stdout.strip() == f"{run}: stopping {run}/{job}", out.stdout
        (marks / "go").touch()
        stdout, _ = apply.communicate(timeout=300)
    finally:
        (marks / "go").touch()
        if apply.poll() is None:
            apply.kill()
    assert apply.returncode == 0, stdout
    ex = record(repo, "sweep")["extra"]
    states = {t["id"]: t["state"] for t in ex["trials"]}
    assert sorted(states.values()) == ["COMPLETE", "COMPLETE", "STOPPED"], ex["trials"]
    [stopped] = [t for t in ex["trials"] if t["state"] == "STOPPED"]
    assert stopped["error"] == "stopped by kiln stop: not this one"
    assert f"1 stopped ({stopped['id']})" in ex["info"], ex["info"]
    assert ex["best"]["trial"] != stopped["id"] and ex["failed"] == [
        {"trial": stopped["id"], "candidate": None, "algorithm": None, "state": "STOPPED",
         "error": "stopped by kiln stop: not this one"}]
    wf = json.loads((repo / ".kiln/runs" / run / "workflow.json").read_text())
    pods = [n for n in wf["status"]["nodes"].values() if n["type"] == "Pod" and n["displayName"].startswith("train(")]
    assert len(pods) == 3, [n["displayName"] for n in pods]  # the stopped one was not retried
    assert sorted((n["phase"], n.get("message", "")) for n in pods) == [
        ("Failed", "stopped by kiln stop: not this one"), ("Succeeded", ""), ("Succeeded", "")]
    assert wf["status"]["phase"] == "Succeeded"
    desc = kiln("describe", "experiment/sweep", cwd=repo, check=True).stdout
    assert stopped["id"] in desc and "STOPPED" in desc and "stopped by kiln stop: not this one" in desc, desc


IMAGES_DS = """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: shapes}
spec:
  type: image
  task: classification
  source: {path: raw/shapes}
"""


@pytest.mark.slow  # ~1.5 min: versions an image dataset, trains resnet18 twice (torch start-up)
def test_killed_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    from tests.data.conftest import make_image_folder

    repo = git_repo(tmp_path / "repo")
    make_image_folder(repo / "raw/shapes", n=12, splits=("train", "validation"))
    write(repo, {"specs/shapes.yaml": IMAGES_DS, "specs/exp.yaml": exp("shapes-run", """
dataset: {name: shapes}
algorithm:
  name: resnet18
  hyperparameters: {epochs: 6, input_size: 32, batch_size: 8, learning_rate: 0.02}
checkpoint: {keep: 2}
""")})
    proc = subprocess.Popen([sys.executable, "-m", "kiln.cli", "apply"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    trials = repo / ".kiln/workspaces/default/experiments/shapes-run/runs"
    deadline = time.time() + 240
    while not list(trials.glob("*/trials/run/checkpoints/epoch-0002.pt")):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    trial_json = next(trials.glob("*/trials/run/trial.json"))
    pid = json.loads(trial_json.read_text())["pid"]
    os.kill(pid, signal.SIGKILL)  # the training process itself
    proc.send_signal(signal.SIGKILL)  # and the controller
    proc.wait()
    tdir = trial_json.parent
    before = sorted(p.name for p in (tdir / "checkpoints").glob("epoch-*.pt"))
    assert before and len(before) <= 2  # retention: keep 2
    killed_at = int(before[-1][6:10])
    assert json.loads(trial_json.read_text())["state"] == "RUNNING"

    again = kiln("apply", cwd=repo, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    logs = kiln("logs", "Experiment/shapes-run", cwd=repo, check=True).stdout
    assert f"[run] resuming from checkpoint epoch-{killed_at:04d}.pt" in logs
    rec = json.loads(trial_json.read_text())
    assert rec["state"] == "COMPLETE"
    steps = [json.loads(line)["step"] for line in (tdir / "metrics.jsonl").read_text().splitlines()]
    # epochs after the checkpoint ran once more; none before it
    assert steps[-(6 - killed_at):] == list(range(killed_at + 1, 7)) and steps.count(1) == 1
    assert sorted(p.name for p in (tdir / "checkpoints").glob("epoch-*.pt")) == ["epoch-0005.pt", "epoch-0006.pt"]
    assert (tdir / "model/model.pt").is_file()
    ex = record(repo, "shapes-run")["extra"]
    assert ex["trialsDone"] == 1 and "validation_accuracy" in ex["trials"][0]["metrics"]


def test_bad_specs_fail_with_clear_messages(wine_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(wine_repo, tmp_path / "repo")
    write(repo, {"specs/bad.yaml": exp("bad", """
dataset: {name: wine}
algorithm: {name: svm, hyperparameters: {C: 1.0, kernal: rbf}}
"""), "specs/badmetric.yaml": exp("badmetric", """
mode: automl
dataset: {name: wine}
automl: {candidates: [{name: naive_bayes}, {name: decision_tree}]}
objective: {metric: validation_auc}
""")})
    # both are found by validation, from the algorithm catalogue, before anything trains (#13)
    res = kiln("apply", cwd=repo, timeout=300)
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert ("specs/bad.yaml:6:" in out and "svm has no hyperparameter 'kernal'" in out
            and "did you mean 'kernel'?" in out), out
    assert "specs/badmetric.yaml:8:" in out and "objective.metric 'validation_auc' is not reported" in out, out
    assert "Traceback" not in out
    rows = json.loads(kiln("status", "-o", "json", cwd=repo, check=True).stdout)
    assert not {"bad", "badmetric"} & {r["name"] for r in rows}  # nothing ran
    # a dataset no spec defines: validation names it before anything runs
    write(repo, {"specs/nodata.yaml": exp("nodata", "dataset: {name: missing-ds}\nalgorithm: {name: svm}")})
    res = kiln("apply", cwd=repo)
    assert res.returncode != 0 and "unknown dataset 'missing-ds'" in res.stdout + res.stderr


def test_retrain_on_new_dataset_version_registers_a_new_model_version(wine_repo: Path, tmp_path: Path) -> None:
    """The retraining trigger's run is a new run: not the old data's trial, selection and model."""
    from kiln.config import load_config
    from kiln.controller.dataset_steps import write_version
    from kiln.data import load

    repo = copy_repo(wine_repo, tmp_path / "repo")
    write(repo, {"specs/exp.yaml": exp("wine-follow", """
dataset: {name: wine, version: latest}
algorithm: {name: logistic_regression}
trigger: {onNewDatasetVersion: retrain}
register: {model: wine-follow}
""")})
    kiln("apply", cwd=repo, check=True, timeout=300)
    first = record(repo, "wine-follow")["extra"]
    assert first["registered"]["version"] == 1
    # a new version of wine: the first 120 rows of the current one
    cur = load_config(repo).repo / "data/default/wine"
    folder = tmp_path / "wine-small"
    folder.mkdir()
    csv = next(cur.glob("*.csv"))
    folder.joinpath(csv.name).write_text("".join(csv.read_text().splitlines(keepends=True)[:121]))
    content = load(folder, "csv", "tabular", label="target")
    v2 = write_version(load_config(repo), "default", "wine", folder, content, {"source": "test"}, push=False)["version"]
    out = kiln("apply", cwd=repo, timeout=300)
    assert out.returncode == 0 and "Experiment/wine-follow: update" in out.stdout, out.stdout + out.stderr
    ex = record(repo, "wine-follow")["extra"]
    assert ex["registered"]["version"] == 2 and ex["dataset"]["version"] == v2 and ex["dataset"]["number"] == "v2"
    reg = registry(repo)
    assert reg.describe("wine-follow", 2)["labels"]["dataset_version"] == v2
    assert reg.describe("wine-follow", 1)["labels"]["dataset_version"] == first["dataset"]["version"] != v2
    # the first run is kept beside the new one
    run = Path(ex["run"])
    assert (run.parent / f"{run.name}-{first['dataset']['version'][:8]}" / "registered.json").is_file()


def test_serving_and_infer_apply_the_train_fitted_transform_to_raw_rows(wine_repo: Path, tmp_path: Path) -> None:
    """A model trained on a standardised table gets raw rows from `kiln infer` (a dataset whose
    label column is in the middle) and from serving: both apply the model's copy of the fit and
    predict what the model predicts on the training-time transform of the same rows. An
    experiment that re-splits the fitted table is refused by validate, before anything runs
    (its held-out rows would have been in the fit)."""
    import numpy as np
    import pandas as pd

    from kiln.bento.runtime import load_engine
    from kiln.data.samples import materialize_sample

    repo = copy_repo(wine_repo, tmp_path / "repo")
    raw = pd.read_csv(next(materialize_sample("wine", tmp_path / "raw").glob("*.csv")))
    cols = [c for c in raw.columns if c != "target"]
    middle = raw[cols[:6] + ["target"] + cols[6:]]  # the label neither first nor last
    (repo / "raw").mkdir()
    middle.to_csv(repo / "raw/wine.csv", index=False)
    write(repo, {"specs/raw.yaml": """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: wine-raw}
spec: {type: tabular, task: classification, format: csv, source: {path: raw/wine.csv}, label: target}
""", "specs/lr.yaml": exp("wine-lr", "dataset: {name: wine}\nalgorithm: {name: logistic_regression}\n"
                                     "register: {model: wine-lr}"),
        "specs/resplit.yaml": exp("resplit", "dataset: {name: wine}\nalgorithm: {name: naive_bayes}\n"
                                             "split: {train: 0.5, validation: 0.25, test: 0.25}")})
    res = kiln("validate", cwd=repo)
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert re.search(r"specs/resplit.yaml:\d+:\d+  spec.split  Experiment/resplit: re-splits dataset 'wine', "
                     r"whose preprocessing \(StandardScaler\) is fitted", res.stderr), res.stderr
    assert "Dataset's spec.splits" in res.stderr
    (repo / "specs/resplit.yaml").unlink()
    kiln("apply", cwd=repo, timeout=300, check=True)

    def infer(ds: str) -> list[dict]:
        out = tmp_path / f"pred-{ds}"
        kiln("infer", "wine-lr", ds, "--out", str(out), cwd=repo, check=True, timeout=120)
        return [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()]

    on_raw, on_trained = infer("wine-raw"), infer("wine")  # wine: the version's own (fitted) rows
    assert len(on_raw) == len(on_trained) == 178
    assert [p["label"] for p in on_raw] == [p["label"] for p in on_trained]
    assert np.allclose([p["score"] for p in on_raw], [p["score"] for p in on_trained], atol=1e-6)
    # serving: the registered model version takes the same raw rows
    engine = load_engine(registry(repo).path("wine-lr", 1))
    for i in (0, 70, 177):
        x, meta = engine.decode({c: float(raw.at[i, c]) for c in cols}, 0)
        served = engine.format(engine.predict([x])[0], meta)
        assert served["label"] == on_trained[i]["label"]
        assert abs(served["score"] - on_trained[i]["score"]) < 1e-5, (served, on_trained[i])


def test_strings_and_missing_values_from_the_csv_to_onnx_serving_and_infer(tmp_path: Path) -> None:
    """A table as people have it (string columns, empty cells, the label first): the Experiment
    featurises it inside the model, registers ONNX with its parity check, the served version takes
    raw rows with strings and nulls, and `kiln infer` predicts on the dataset's raw rows.
    ``featurization: off`` (YAML's bare off) is refused with the column and the fix."""
    from kiln.bento.runtime import load_engine
    from tests.tables import penguins_frame

    repo = git_repo(tmp_path / "repo")
    df = penguins_frame(160)
    df["island"] = df["island"].str.replace(" ", "-").str.replace("&", "and")  # the CSV rule of today
    df["site"] = df["site"].str.replace(" ", "_")
    df["species"] = df["species"].str.replace(" ", "-")
    (repo / "raw").mkdir()
    df.to_csv(repo / "raw/penguins.csv", index=False)
    write(repo, {"specs/ds.yaml": """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: penguins}
spec: {type: tabular, task: classification, format: csv, source: {path: raw/penguins.csv}, label: species}
""", "specs/lr.yaml": exp("pen-lr", "dataset: {name: penguins}\nalgorithm: {name: logistic_regression}\n"
                                    "register: {model: pen-lr, export: [onnx]}"),
        "specs/off.yaml": exp("pen-off", "dataset: {name: penguins}\nfeaturization: off\n"
                                         "algorithm: {name: random_forest}")})
    res = kiln("apply", cwd=repo, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr  # pen-off fails, the rest is applied
    msg = status_row(repo, "pen-off")["message"]
    assert "featurization is off and column 'island' is not numeric" in msg and "factorize" in msg, msg
    assert "Traceback" not in res.stdout + res.stderr
    engine = load_engine(registry(repo).path("pen-lr", 1))
    assert engine.cfg.framework == "onnx" and engine.cfg.typed
    rows = [{"island": "Biscoe", "bill length": None, "site": "site_3", "male": True},
            {"male": None, "site": None, "bill length": 38.0, "island": "Dream-Island"},
            {"island": "Atlantis", "bill length": 45.0, "site": "site_x", "male": False}]
    out = [engine.format(y, None) for y in engine.predict([engine.decode(r, i)[0] for i, r in enumerate(rows)])]
    assert out[0]["label"] == "Adelie-penguin" and out[1]["label"] == "Gentoo"
    pred = tmp_path / "pred"
    kiln("infer", "pen-lr", "penguins", "--out", str(pred), cwd=repo, check=True, timeout=120)
    labels = [json.loads(line)["prediction"]["label"] for line in (pred / "predictions.jsonl").read_text().splitlines()]
    assert len(labels) == 160 and sum(a == b for a, b in zip(labels, df["species"])) >= 150
