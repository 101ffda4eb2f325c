"""The first run's output (#23): short prediction summaries, apply's progress lines."""

from __future__ import annotations

import pytest

from kiln.controller.deployment_cli import summarize_answer


def test_a_detection_answer_is_summarised_as_its_number_of_boxes_and_the_best_ones() -> None:
    boxes = [{"circle": {"xmin": i, "ymin": 2, "xmax": 30, "ymax": 40}, "score": 0.9 - i / 100} for i in range(40)]
    assert summarize_answer({"predictions": [boxes]}) == [
        "40 boxes; best: circle 0.90 at (0,2)-(30,40), circle 0.89 at (1,2)-(30,40), circle 0.88 at (2,2)-(30,40)"]
    assert summarize_answer({"predictions": [[]]}) == ["0 boxes"]


def test_a_classification_answer_is_summarised_as_its_best_labels() -> None:
    one = [{"score": 0.97, "label": "7"}, {"score": 0.02, "label": "1"}, {"score": 0.006, "label": "2"},
           {"score": 0.004, "label": "3"}]
    assert summarize_answer(one) == ["7 (0.970), 1 (0.020), 2 (0.006)"]
    assert summarize_answer([one[:1], one[1:2]]) == ["[0] 7 (0.970)", "[1] 1 (0.020)"]


def test_other_answers_stay_short() -> None:
    assert summarize_answer({"predictions": [[[0, 1], [2, 2]]]}) == ["mask 2x2, classes [0, 1, 2]"]
    assert summarize_answer({"predictions": [3.25]}) == ["3.25"]
    assert summarize_answer({"predictions": [{"cluster": 2, "distance": 0.31}, {"cluster": 0, "score": 0.9}]}) == [
        "[0] cluster 2 (distance 0.310)", "[1] cluster 0 (score 0.900)"]
    long = summarize_answer({"predictions": [{"x": "y" * 500}]})[0]
    assert len(long) == 200 and long.endswith("...")


# -- apply's progress ---------------------------------------------------------------------------

def _console(terminal: bool = False, every: float = 10.0):
    from kiln.controller.events import Console

    lines: list[str] = []
    written: list[str] = []
    clock = [0.0]
    con = Console(lines.append, terminal=terminal, write=written.append if terminal else None, every=every,
                  clock=lambda: clock[0], width=120)
    return con, lines, written, clock


def test_plain_progress_shows_each_stage_at_once_then_at_most_every_few_seconds() -> None:
    from kiln.controller import events as ev

    con, lines, _, clock = _console(every=10.0)
    key, ref = "Experiment/default/a", "Experiment/a"
    for t, text, fraction, stage in [(0, "running prepare-data", None, "tasks"), (2, "running train", None, "tasks"),
                                     (4, "epoch 1/6 validation_accuracy=0.6", 1 / 6, "metrics"),
                                     (6, "epoch 2/6 validation_accuracy=0.7", 2 / 6, "metrics"),
                                     (14, "epoch 5/6 validation_accuracy=0.9", 5 / 6, "metrics"),
                                     (25, "epoch 5/6 validation_accuracy=0.9", 5 / 6, "metrics"),
                                     (30, "running register", None, "tasks"), (45, "running register", None, "tasks"),
                                     (70, "running register", None, "tasks"), (71, "running select", None, "tasks")]:
        clock[0] = t
        con(ev.Progress(key, ref, text, fraction, float(t), stage, left=60.0 - t if stage == "metrics" else None))
    con(ev.ObjectFinished(key, ref, "created", 75.25))
    # tasks alone: at most every 30 s and only when they changed; a new stage at once
    # the estimate alone (t=25) is no news
    assert lines == ["    > 0.0s running prepare-data", "    > 4.0s epoch 1/6 validation_accuracy=0.6, about 56.0s left",
                     "    > 14.0s epoch 5/6 validation_accuracy=0.9, about 46.0s left", "    > 30.0s running register",
                     "    > 1m11s running select", "  Experiment/a: created in 1m15s"]


def test_plain_progress_of_a_long_training_thins_out() -> None:
    """An epoch every 10 s for 10 minutes (a one-minute training on a machine ten times busier):
    every epoch's line in the first minute, then at most every sixth of the time so far."""
    from kiln.controller import events as ev

    con, lines, _, clock = _console(every=10.0)
    for epoch in range(1, 61):
        clock[0] = t = 10.0 * epoch
        con(ev.Progress("k", "Experiment/a", f"epoch {epoch}/60", epoch / 60, t, "metrics", left=600.0 - t))
    shown = [float(line.split()[1].rstrip("s")) for line in lines if "m" not in line.split()[1]]
    assert shown == [10.0, 20.0, 30.0, 40.0, 50.0], lines  # the first minute: every epoch
    assert 12 <= len(lines) <= 20, lines


def test_terminal_progress_is_one_line_rewritten_in_place_with_a_bar() -> None:
    from kiln.controller import events as ev

    con, lines, written, _ = _console(terminal=True)
    con(ev.Progress("k", "Experiment/a", "epoch 3/6", 0.5, 3.0, "metrics"))
    con(ev.Progress("k", "Experiment/a", "epoch 4/6", 4 / 6, 4.0, "metrics", left=2.0))
    assert written == ["\r\033[K  Experiment/a [##########..........] 3.0s epoch 3/6",
                       "\r\033[K  Experiment/a [#############.......] 4.0s (2.0s left) epoch 4/6"]
    con(ev.ObjectFinished("k", "Experiment/a", "failed", 75.0))
    assert written[-1] == "\r\033[K" and lines == ["  Experiment/a: failed after 1m15s"]


def test_experiment_progress_reads_the_trials_and_estimates_the_time_left(tmp_path) -> None:
    """Two of four trials done in 40 s, the third half way: 2.5/4 done, so about 24 s left."""
    import json

    from kiln._util.clock import parse_utc
    from kiln.api.experiment import ExperimentSpec
    from kiln.controller.experiment.progress import progress

    spec = ExperimentSpec.model_validate({"mode": "hpo", "dataset": {"name": "d"},
                                          "algorithm": {"name": "resnet18", "searchSpace": {"lr": {
                                              "type": "float", "low": 0.001, "high": 0.1}}},
                                          "hpo": {"maxTrials": 4},
                                          "objective": {"metric": "validation_accuracy", "direction": "maximize"}})
    start = "2026-12-07T10:00:00.000000Z"
    trials = {"t0000": {"state": "COMPLETE", "started": start, "metrics": {"validation_accuracy": 0.8}},
              "t0001": {"state": "PRUNED", "started": "2026-12-07T10:00:20.000000Z"},
              "t0002": {"state": "RUNNING", "started": "2026-12-07T10:00:40.000000Z", "epoch": 3, "epochs": 6,
                        "metrics": {"validation_accuracy": 0.85, "train_loss": 0.3}},
              "t0003": {"state": "RUNNING", "started": "2026-12-07T10:00:45.000000Z"}}
    for tid, rec in trials.items():
        (tmp_path / "trials" / tid).mkdir(parents=True)
        (tmp_path / "trials" / tid / "trial.json").write_text(json.dumps({"id": tid, "number": int(tid[1:]), **rec}))
    live = {"trialsTotal": 4, "best": {"value": 0.8}}
    now = parse_utc(start) + 40.0
    shown = progress(spec, tmp_path, live, now=now)
    assert shown is not None
    assert shown.text == ("trial 2/4 done (2 running), t0002 epoch 3/6 validation_accuracy=0.85, "
                          "best validation_accuracy=0.8")
    assert shown.fraction == 2.5 / 4 and shown.stage == "metrics" and shown.left == 24.0
    assert progress(spec, tmp_path / "nothing", live) is None
    for tid in ("t0002", "t0003"):  # no trial runs: selection, export, registration (the tasks say so)
        (tmp_path / "trials" / tid / "trial.json").write_text(json.dumps({"id": tid, "state": "COMPLETE"}))
    assert progress(spec, tmp_path, live) is None


EPOCHS_SCRIPT = """
import argparse, time
import kiln

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, required=True)
a = p.parse_args()
for epoch in range(1, a.epochs + 1):
    time.sleep(1.0)  # an epoch's work; apply polls every 2 s
    kiln.report(step=epoch, validation_accuracy=0.5 + epoch / 20)
"""


@pytest.mark.slow
def test_apply_shows_a_trainings_progress_in_plain_lines(tmp_path) -> None:
    """`kiln apply` piped (not a terminal): a line when the experiment starts, progress lines with
    the epoch, the metric and the time left while it trains, and one when it ends with how long
    it took (#23)."""
    import re
    import subprocess

    from tests.helpers import kiln, write

    pytest.importorskip("dvc")
    pytest.importorskip("optuna")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    write(repo, {"train.py": EPOCHS_SCRIPT, "specs/wine.yaml": """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: wine}
spec:
  type: tabular
  task: classification
  format: csv
  source: {sample: wine}
  label: target
---
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: epochs}
spec:
  dataset: {name: wine}
  command: {run: python train.py}
  parameterSets: [{epochs: 6}]
  objective: {metric: validation_accuracy, direction: maximize}
"""})
    res = kiln("apply", cwd=repo, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith("~ Experiment/epochs: create")))
    end = lines.index(next(ln for ln in lines if ln.startswith("  Experiment/epochs: created in ")))
    assert re.fullmatch(r"  Experiment/epochs: created in \d+\.\ds", lines[end])
    progress = [ln for ln in lines[start:end] if ln.startswith("    > ")]
    trained = [ln for ln in progress if re.search(r"epoch [1-6]/6 validation_accuracy=0\.\d+", ln)]
    assert trained, res.stdout
    assert re.search(r", about \d+\.\ds left$", trained[0]), trained[0]
    assert any(re.match(r"  Dataset/wine: created in \d+\.\ds$", ln) for ln in lines), res.stdout
    # plain output stays short: a new stage at once, else at most every 10 s (6 s of training)
    assert len(progress) <= 4, progress


# -- the summary at the end of an apply --------------------------------------------------------

def test_the_summary_gives_each_deployment_a_curl_and_three_commands_to_try(tmp_path) -> None:
    """Records as apply writes them and the registered models' kiln-serving.json: a token-protected
    image deployment gets a curl with its token's variable and base64 of an image; a public
    tabular one a curl with a row of its features; never a token's value."""
    import json
    import shlex

    from kiln.config import load_config
    from kiln.controller.summary import next_steps
    from kiln.state import ObjectRecord

    config = load_config(tmp_path)
    models = config.kiln_dir() / "bentoml" / "models"
    for name, serving in (("digits", {"input": "image", "task": "classification"}),
                          ("wine", {"input": "tabular", "task": "classification", "features": ["alcohol", "ash"]})):
        (models / name / "v2").mkdir(parents=True)
        (models / name / "v2" / "kiln-serving.json").write_text(json.dumps(serving))
    dep = {"apiVersion": "kiln.dev/v1alpha1", "kind": "Deployment"}
    records = [
        ObjectRecord(key="Deployment/vision/digits", health="Healthy",
                     spec={**dep, "spec": {"auth": {"tokens": [{"env": "DIGITS_TOKEN"}]}}},
                     extra={"url": "http://127.0.0.1:4001", "model": "digits", "version": 2}),
        ObjectRecord(key="Deployment/default/wine", health="Healthy", spec={**dep, "spec": {"auth": {"public": True}}},
                     extra={"url": "http://127.0.0.1:4002", "model": "wine", "version": 2}),
        ObjectRecord(key="Deployment/default/down", health="Degraded", spec=dep, extra={"url": None}),
        ObjectRecord(key="Experiment/vision/digits-resnet", health="Healthy"),
    ]
    lines = next_steps(config, records)
    assert lines == [
        "What runs where:",
        "  Deployment/wine  http://127.0.0.1:4002  test page http://127.0.0.1:4002/ui",
        "    curl -s http://127.0.0.1:4002/predict -H 'Content-Type: application/json' -d "
        + shlex.quote('{"instances": [{"alcohol": 0, "ash": 0}]}'),
        "  Deployment/vision/digits  http://127.0.0.1:4001  (token: $DIGITS_TOKEN)  test page http://127.0.0.1:4001/ui",
        "    curl -s http://127.0.0.1:4001/predict -H 'Content-Type: application/json' -H \"Authorization: Bearer "
        "$DIGITS_TOKEN\" -d \"{\\\"instances\\\": [{\\\"data\\\": \\\"$(base64 -w0 IMAGE.png)\\\"}]}\"",
        "Try next:",
        "  kiln status",
        "  kiln describe Experiment/vision/digits-resnet      # its trials, leaderboard and registered model",
        "  kiln predict Deployment/vision/digits -o summary --file IMAGE.png --token $DIGITS_TOKEN",
    ]
    # a table's deployment alone: its command sends a row of the features
    assert next_steps(config, records[1:2])[-1] == "  kiln predict Deployment/wine -o summary --json " + shlex.quote(
        '{"alcohol": 0, "ash": 0}')
    # the curl is valid shell: bash reads the image deployment's body as one JSON argument
    import subprocess

    body = subprocess.run(["bash", "-c", "base64() { echo QUJD; }; printf %s " + lines[4].split(" -d ", 1)[1]],
                          capture_output=True, text=True, check=True).stdout
    assert json.loads(body) == {"instances": [{"data": "QUJD"}]}


def test_an_algorithm_whose_package_is_missing_names_the_extra_to_install(monkeypatch) -> None:
    """Found, not imported: a package that is not installed names its extra (here a made-up one
    stands in for TensorFlow on a machine installed without kiln[tf])."""
    from kiln.algorithms import registry

    assert registry.missing_extra("svm") is None and registry.missing_extra("no-such-algorithm") is None
    monkeypatch.setitem(registry.NEEDS_BY_MODULE, "kiln.algorithms.keras_vision", ("kiln_absent_tensorflow", "tf"))
    assert registry.missing_extra("keras_small_cnn") == ("kiln_absent_tensorflow", "tf")
    monkeypatch.setitem(registry.NEEDS_BY_NAME, "xgboost", ("kiln_absent_xgboost", "ml"))
    assert registry.missing_extra("xgboost") == ("kiln_absent_xgboost", "ml")


def test_validate_names_the_extra_an_experiments_algorithm_needs(tmp_path, monkeypatch) -> None:
    """On the local runner, an Experiment whose algorithm's package is missing fails validation at
    its spec's line, naming the extra; on a cluster (runner: argo) kiln's image trains, so no issue."""
    from kiln.algorithms import registry
    from kiln.config import load_config
    from kiln.controller.project import load_valid
    from kiln.errors import SpecErrors
    from tests.helpers import write

    write(tmp_path, {"specs/exp.yaml": """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: pics}
spec: {type: image, task: classification, source: {path: pics}}
---
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: cnn}
spec:
  dataset: {name: pics}
  algorithm: {name: keras_small_cnn}
"""})
    (tmp_path / "pics").mkdir()  # validate checks that a source inside the repository exists
    load_valid(load_config(tmp_path))  # everything installed here
    monkeypatch.setitem(registry.NEEDS_BY_MODULE, "kiln.algorithms.keras_vision", ("kiln_absent_tensorflow", "tf"))
    with pytest.raises(SpecErrors) as err:
        load_valid(load_config(tmp_path))
    text = str(err.value)
    assert "exp.yaml:11:15" in text and "algorithm 'keras_small_cnn' needs kiln_absent_tensorflow" in text, text
    assert "pip install 'kiln[tf]'" in text, text
    (tmp_path / "kiln.yaml").write_text("runner: argo\n")
    load_valid(load_config(tmp_path))


def test_summary_of_table_rows_is_one_line_per_row() -> None:
    # the serving contract: one entry per instance; a table row answers {label, score} (or a value)
    assert summarize_answer({"predictions": [{"label": "yes", "score": 0.91}, {"label": "no"}]}) == [
        "[0] yes (0.910)", "[1] no"]
    assert summarize_answer({"predictions": [[{"label": "7", "score": 0.99}, {"label": "1", "score": 0.01}]]}) == [
        "7 (0.990), 1 (0.010)"]
    assert summarize_answer({"predictions": [3.25, 4.5]}) == ["[0] 3.25", "[1] 4.5"]
