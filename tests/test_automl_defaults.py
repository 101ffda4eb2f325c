"""AutoML without a candidate list (the catalogue's defaults for the dataset's task), its time
budget, and failed candidates shown with their reasons: `kiln apply` for real in temp git repos
(DVC, the local runner, scikit-learn) on tiny generated tables with NaN in a feature."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import kiln, write
from tests.test_experiment_handler import exp, git_repo, record

pytest.importorskip("dvc")
pytest.importorskip("sklearn")


def table(rows: int, regression: bool, seed: int = 0) -> str:
    """x1 has NaN every 7th row (linear models refuse it; HistGradientBoosting handles it)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    y = x[:, 0] * 2 + x[:, 1] + rng.normal(scale=0.1, size=rows)
    x[::7, 0] = np.nan
    lines = ["x1,x2,x3,x4,y"]
    for r, v in zip(x, y):
        cells = ["" if np.isnan(c) else f"{c:.4f}" for c in r]
        lines.append(",".join([*cells, f"{v:.4f}" if regression else ("yes" if v > 0 else "no")]))
    return "\n".join(lines) + "\n"


def dataset(task: str) -> str:
    return ("apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {name: t}\nspec:\n"
            f"  type: tabular\n  task: {task}\n  source: {{path: raw/t.csv}}\n  label: y\n"
            "  splits: {train: 0.7, validation: 0.15, test: 0.15, seed: 3}\n")


def repo_with(tmp: Path, task: str, experiment: str, rows: int = 140) -> Path:
    repo = git_repo(tmp / "repo")
    write(repo, {"raw/t.csv": table(rows, task == "regression"), "specs/t.yaml": dataset(task),
                 "specs/e.yaml": exp("e", experiment)})
    return repo


@pytest.mark.parametrize("task,metric,hgb,linear", [
    ("classification", "validation_accuracy", "hist_gradient_boosting", "logistic_regression"),
    ("regression", "validation_r2", "hist_gradient_boosting_regressor", "linear_regression"),
])
def test_automl_without_candidates_uses_catalogue_and_lists_failures(tmp_path: Path, task: str, metric: str,
                                                                     hgb: str, linear: str) -> None:
    # featurization off: the models see the NaN as it is (featurisation would impute it for all of them)
    repo = repo_with(tmp_path, task, f"mode: automl\ndataset: {{name: t}}\nobjective: {{metric: {metric}}}\n"
                                     "featurization: off")
    assert kiln("validate", cwd=repo).returncode == 0
    out = kiln("apply", cwd=repo, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ex = record(repo, "e")["extra"]
    board = {r["candidate"] for r in ex["leaderboard"]}
    assert hgb in board and linear not in board
    failed = {f["candidate"]: f for f in ex["failed"]}
    assert set(failed) == {linear}
    assert failed[linear]["state"] == "FAIL" and "NaN" in failed[linear]["error"]
    assert "\n" not in failed[linear]["error"]  # one line: scikit-learn's paragraphs of advice left out
    assert f"1 candidate(s) failed ({linear})" in ex["info"] and "skipped" not in ex["info"]
    # apply's output and describe show the failure and its reason
    text = out.stdout + out.stderr
    assert linear in text and "Input X contains NaN" in text
    desc = kiln("describe", "experiment/e", cwd=repo, check=True).stdout
    assert linear in desc and "Input X contains NaN" in desc
    logs = kiln("logs", "Experiment/e", cwd=repo, check=True).stdout
    assert f"FAIL    {linear}: ValueError: Input X contains NaN." in logs
    if task == "classification":  # the report's leaderboard lists it, unranked, with its reason
        kiln("report", "--out", "out/pr", cwd=repo, check=True, timeout=120)
        md = (repo / "out/pr/report.md").read_text()
        assert f"| - | c-{linear} | {linear} |  | fail: ValueError: Input X contains NaN. |" in md


def test_every_candidate_failing_fails_the_experiment_with_each_reason(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, "classification", """
mode: automl
dataset: {name: t}
featurization: off
automl: {candidates: [{name: logistic_regression}, {name: svm}]}
""")
    out = kiln("apply", cwd=repo, timeout=300)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "every automl candidate failed (2): logistic_regression: ValueError: Input X contains NaN" in text
    assert "svm: ValueError: Input X contains NaN" in text
    assert "Traceback" not in text


def test_time_budget_stops_starting_candidates(tmp_path: Path) -> None:
    # 6,000 rows: the first candidate takes about the budget (finishing or stopped), the rest never start
    repo = repo_with(tmp_path, "classification", """
mode: automl
dataset: {name: t}
automl: {timeBudget: 1}
""", rows=6000)
    out = kiln("apply", cwd=repo, timeout=300)
    ex = record(repo, "e")["extra"]
    run = Path(ex["run"])
    start = json.loads((run / "automl-start.json").read_text())["started"]
    recs = {r["candidate"]: r for p in (run / "trials").glob("*/trial.json") if (r := json.loads(p.read_text()))}
    started = {c: datetime.fromisoformat(r["started"]).timestamp() for c, r in recs.items() if "started" in r}
    assert "hist_gradient_boosting" in started and all(t - start <= 1.0 for t in started.values()), started
    skipped = [f for f in ex["failed"] if f["state"] == "SKIPPED"]
    assert skipped and all("time budget (1 s) was spent" in f["error"] for f in skipped)
    assert "skipped by the time budget" in ex["info"]
    hgb = recs["hist_gradient_boosting"]
    assert hgb["state"] in ("COMPLETE", "STOPPED"), hgb
    assert datetime.fromisoformat(hgb["finished"]).timestamp() - start <= 1.3 or hgb["state"] == "COMPLETE"
    # registered only when a candidate finished; else a clear failure with each reason
    assert (out.returncode == 0) == (hgb["state"] == "COMPLETE"), out.stdout + out.stderr
    if out.returncode:
        assert "no automl candidate finished within the time budget (1 s)" in out.stdout + out.stderr


def test_the_search_deadline_keeps_the_tail_of_the_budget(tmp_path: Path) -> None:
    """budget_left counts from the experiment's start and keeps ``reserve`` seconds for export
    and registration, but leaves the search at least half the budget from its first candidate;
    the reserve grows with the measured start-up and the leading model's fit time."""
    import time

    from kiln.config import KilnConfig
    from kiln.controller.experiment import automl
    from kiln.controller.experiment.home import run_folder
    from kiln.controller.steps import StepContext

    doc = {"apiVersion": "kiln.dev/v1alpha1", "kind": "Experiment", "metadata": {"name": "e"},
           "spec": {"mode": "automl", "dataset": {"name": "t"}, "automl": {"timeBudget": 60}}}
    ctx = StepContext(KilnConfig(repo=tmp_path), "Experiment/default/e", doc, "h")
    spec = ctx.model(automl.Experiment).spec
    run = run_folder(ctx)
    now = time.time()
    # the experiment started 10 s ago and the search now: 60 - 10 - 8 = 42 s of search left
    (run / "automl-start.json").write_text(json.dumps({"experiment": now - 10}))
    left = automl.budget_left(ctx, spec, reserve=8)
    assert left is not None and 41 <= left <= 42
    assert json.loads((run / "automl-start.json").read_text())["started"] >= now  # the search's start stamped
    # a reserve larger than the budget's rest: the search still gets a quarter of it from its start
    left = automl.budget_left(ctx, spec, reserve=45)
    assert left is not None and 14 <= left <= 15
    assert automl.budget_left(ctx, spec.model_copy(update={"automl": spec.automl.model_copy(
        update={"timeBudget": None})})) is None
    # the estimate: 3 short processes of the measured start-up, the export's share of the fit time
    assert automl.tail_reserve(0.1, 0.5, 0.0, export=False, exported_here=False) == automl.TAIL_MIN_S
    assert automl.tail_reserve(2.0, 1.5, 10.0, export=False, exported_here=False) == 6.0
    assert automl.tail_reserve(2.0, 1.5, 10.0, export=True, exported_here=True) == 6.0 + 1.5 + 3.0
    assert automl.tail_reserve(2.0, 1.5, 10.0, export=True, exported_here=False) == 6.0 + 3.0 + 3.0


def test_validate_without_candidates_has_no_cascade(tmp_path: Path) -> None:
    """A spec that fails its own validation is not also reported as dangling from a deployment."""
    repo = repo_with(tmp_path, "classification", "mode: automl\ndataset: {name: t}\nregister: {model: m}")
    dep = ("apiVersion: kiln.dev/v1alpha1\nkind: Deployment\nmetadata: {name: d}\n"
           "spec: {model: {name: m, alias: production}}\n")
    write(repo, {"specs/d.yaml": dep})
    ok = kiln("validate", cwd=repo)
    assert "automl" not in ok.stdout + ok.stderr
    # now break the experiment: its own error only, no "dangling model reference" for the deployment
    write(repo, {"specs/e.yaml": exp("e", "mode: automl\ndataset: {name: t}\nautoml: {timeBudget: 0}\n"
                                          "register: {model: m, aliases: [production]}")})
    bad = kiln("validate", cwd=repo)
    text = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "timeBudget" in text
    assert "dangling" not in text and "Traceback" not in text


def test_validate_capture_of_an_invalid_deployment_has_no_cascade(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    write(repo, {
        "specs/d.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Deployment\nmetadata: {name: d}\n"
                        "spec: {model: {name: m}, replicas: -1, capture: {dataset: c}}\n",
        "specs/c.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {name: c}\n"
                        "spec: {type: tabular, task: classification, source: {capture: d}, label: y}\n"})
    bad = kiln("validate", cwd=repo)
    text = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "replicas" in text
    assert "unknown deployment" not in text and "Traceback" not in text


def test_render_defaults_as_one_task_and_max_candidates_cuts_the_list(tmp_path: Path) -> None:
    from kiln.config import load_config
    from kiln.controller.project import load_valid
    from kiln.controller.render import render_workflow
    from kiln.runners.schema import validate_workflow

    repo = repo_with(tmp_path, "classification", "mode: automl\ndataset: {name: t}\nautoml: {maxCandidates: 2}")
    write(repo, {"specs/e2.yaml": exp("e2", """
mode: automl
dataset: {name: t}
automl: {maxCandidates: 2, candidates: [{name: svm}, {name: naive_bayes}, {name: decision_tree}]}
""")})
    specs = {s.name: s for s in load_valid(load_config(repo)).specs}

    def dag(name: str) -> dict:
        manifest = render_workflow(load_config(repo), specs[name], workspace=None)
        assert validate_workflow(manifest) == []
        tmpl = next(t for t in manifest["spec"]["templates"] if "dag" in t)
        return next(t for t in tmpl["dag"]["tasks"] if t["name"] == "candidates")

    auto = dag("e")
    assert "withItems" not in auto and {"name": "candidate", "value": "auto"} in auto["arguments"]["parameters"]
    assert dag("e2")["withItems"] == ["svm", "naive_bayes"]


@pytest.mark.slow
def test_time_budget_stops_a_fit_in_progress_and_registers_the_finished_candidate(tmp_path: Path) -> None:
    # a 10,000-tree forest on 6,000 rows fits for minutes: killed when the search's share of the
    # 15 s budget runs out, which keeps time for the ONNX export and registration after it
    # (15 s: on a loaded machine the logistic regression's child takes seconds to import and load)
    repo = repo_with(tmp_path, "classification", """
mode: automl
dataset: {name: t}
automl:
  timeBudget: 15
  candidates: [{name: logistic_regression}, {name: random_forest, hyperparameters: {n_estimators: 10000}}]
register: {model: m, export: [onnx]}
""", rows=6000)
    out = kiln("apply", cwd=repo, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ex = record(repo, "e")["extra"]
    run = Path(ex["run"])
    stamp = json.loads((run / "automl-start.json").read_text())
    start, experiment = stamp["started"], stamp["experiment"]
    assert experiment <= start  # the clock starts with the experiment (prepare-data), not the search
    forest = json.loads((run / "trials/c-random_forest/trial.json").read_text())
    assert forest["state"] == "STOPPED", forest
    assert forest["error"].startswith("the time budget (15 s) ran out while it was fitting")
    assert "s kept for export and registration" in forest["error"]
    reserve = float(re.search(r"; (\d+) s kept for export", forest["error"]).group(1))
    assert reserve >= 3
    ended = datetime.fromisoformat(forest["finished"]).timestamp()
    # stopped when the budget less the reserve ran out, but not before the search had a quarter of it
    end = max(experiment + 15 - reserve, start + 15 / 4)
    assert end - 0.5 - 1 <= ended <= end + 1.0, (ended - start, ended - experiment, reserve)
    # the reserve was an honest estimate: export (parity included) and registration took about that
    registered = (run / "registered.json").stat().st_mtime
    assert registered - ended <= 1.5 * reserve + 2, (registered - ended, reserve)
    # the candidate task that finished last exported the leader; export-onnx did not again
    logs = kiln("logs", "Experiment/e", cwd=repo, check=True).stdout
    assert "[c-logistic_regression] exported to ONNX (parity checked)" in logs
    assert "ONNX parity passed (exported by the candidates task)" in logs
    assert not (run / "trials/c-random_forest/model").exists()
    assert ex["best"]["trial"] == "c-logistic_regression" and ex["registered"]["model"] == "m"
    assert "1 candidate(s) stopped by the time budget (random_forest)" in ex["info"]
    text = out.stdout + out.stderr
    assert "candidate random_forest stopped: the time budget (15 s) ran out" in text
    desc = kiln("describe", "experiment/e", cwd=repo, check=True).stdout
    assert "random_forest" in desc and "ran out while it was fitting" in desc


@pytest.mark.slow
def test_no_candidate_finishing_within_the_budget_fails_with_why(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, "classification", """
mode: automl
dataset: {name: t}
automl:
  timeBudget: 2
  candidates:
  - {name: hist_gradient_boosting, hyperparameters: {max_iter: 100000, early_stopping: "off"}}
  - {name: random_forest, hyperparameters: {n_estimators: 10000}}
""", rows=3000)
    out = kiln("apply", cwd=repo, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "no automl candidate finished within the time budget (2 s): hist_gradient_boosting: the time budget" in text
    assert "random_forest: " in text
    assert "raise automl.timeBudget" in text and "Traceback" not in text


@pytest.mark.slow
def test_a_candidates_study_runs_in_the_budgets_child_process(tmp_path: Path) -> None:
    # trialsPerCandidate: each candidate's Optuna study (SQLite) runs in the forked child too
    repo = repo_with(tmp_path, "classification", """
mode: automl
dataset: {name: t}
automl:
  timeBudget: 120
  trialsPerCandidate: 2
  candidates:
  - {name: decision_tree, searchSpace: {max_depth: {type: int, low: 1, high: 4}}}
  - {name: logistic_regression}
register: {model: m}
""")
    out = kiln("apply", cwd=repo, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ex = record(repo, "e")["extra"]
    trees = [t for t in ex["trials"] if t["candidate"] == "decision_tree"]
    assert len(trees) == 2 and all(t["state"] == "COMPLETE" for t in trees), ex["trials"]
    assert ex["registered"]["model"] == "m" and not ex["failed"]


@pytest.mark.slow
def test_the_ensemble_of_the_top_candidates_competes_registers_with_onnx_and_serves_raw_rows(tmp_path: Path) -> None:
    from kiln.algorithms.registry import get_algorithm
    from kiln.bento.runtime import load_engine
    from kiln.controller.experiment.ensemble import ENSEMBLE_NUMBER
    from tests.test_experiment_handler import registry

    body = "mode: automl\ndataset: {name: t}\n"
    reg = "register: {model: m, export: [onnx]}\n"
    repo = repo_with(tmp_path, "classification", body + reg)
    out = kiln("apply", cwd=repo, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    ex = record(repo, "e")["extra"]
    ens = next(t for t in ex["trials"] if t["candidate"] == "ensemble")
    assert ens["state"] == "COMPLETE" and ens["number"] == ENSEMBLE_NUMBER, ens
    # ranked with the candidates on validation (cross-validated here, as they were: 140 rows),
    # so it is selected only when it beats the best single candidate
    board = ex["leaderboard"]
    singles = [b for b in board if b["candidate"] != "ensemble"]
    assert any(b["candidate"] == "ensemble" for b in board) and len(singles) >= 2
    assert (ex["best"]["trial"] == "c-ensemble") == (ens["objective"] > singles[0]["objective"]), board
    assert ex["trialsDone"] == ex["trialsTotal"] == len(singles) + 1
    assert "ensemble (" in kiln("describe", "experiment/e", cwd=repo, check=True).stdout

    # pinned (selectTrial: no training again): registered as ONNX with its parity check, and it
    # answers raw rows (a null, a number as a string) as the native ensemble does
    write(repo, {"specs/e.yaml": exp("e", f"{body}selectTrial: {ENSEMBLE_NUMBER}\n{reg}")})
    out = kiln("apply", cwd=repo, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    ex = record(repo, "e")["extra"]
    assert ex["registered"]["trial"] == "c-ensemble", ex["registered"]
    path = registry(repo).path("m", ex["registered"]["version"])
    engine = load_engine(path)
    assert engine.cfg.framework == "onnx"
    rows = [{"x1": None, "x2": "0.5", "x3": 1.25, "x4": -1.0}, {"x1": 2.0, "x2": -1.5, "x3": None, "x4": 0.3},
            {"x1": -2.5, "x2": 0.1, "x3": 0.0, "x4": 2.0}]
    served = [engine.format(y, None) for y in engine.predict([engine.decode(r, i)[0] for i, r in enumerate(rows)])]
    meta = json.loads((path / "kiln-model" / "meta.json").read_text())
    assert len(meta["ensemble"]) >= 2
    algo = get_algorithm(meta["algorithm"])
    native = algo.predict(algo.load(path / "kiln-model"), [{k: (np.nan if v is None else float(v)) for k, v in r.items()}
                                                            for r in rows])
    assert [s["label"] for s in served] == [str(n) for n in native]
