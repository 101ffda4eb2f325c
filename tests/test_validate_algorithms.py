"""Broken specs that only the algorithm catalogue can judge: each one a newcomer's mistake that
used to pass `kiln validate` and fail during `apply`.

Every case is a file of its own in one repository; one real `kiln validate` run over it must exit
1, print no traceback, and report each expected problem at the line that holds it, with a hint.
The same cases are then checked one by one in-process, so that each reports exactly its own
problems and nothing else.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kiln.loader import load_specs
from kiln.validate import validate
from tests.helpers import ROOT, kiln, write

DATASETS = """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: wine}
spec: {type: tabular, task: classification, source: {sample: wine}, label: target}
---
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: diabetes}
spec: {type: tabular, task: regression, source: {sample: diabetes}, label: target}
---
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: digits}
spec: {type: image, task: classification, format: image-folder, source: {sample: digits}}
---
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: shapes}
spec: {type: image, task: detection, format: coco, source: {sample: shapes}}
"""

HEAD = "apiVersion: kiln.dev/v1alpha1\nkind: Experiment\nmetadata: {name: NAME}\nspec:\n"

# file -> (spec body under `spec:`, [(text on the expected line, yaml path, words in the message)])
CASES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "unknown-algorithm": ("""
        dataset: {name: wine}
        algorithm: {name: random_forrest}
        """, [("random_forrest", "spec.algorithm.name", "unknown algorithm 'random_forrest'")]),
    "hyperparameter-typo": ("""
        dataset: {name: wine}
        algorithm:
          name: random_forest
          hyperparameters: {n_estimator: 50}
        """, [("n_estimator", "spec.algorithm.hyperparameters.n_estimator", "has no hyperparameter 'n_estimator'")]),
    "hyperparameter-typo-easymaker": ("""
        dataset: {name: digits}
        algorithm:
          name: easymaker-image-classification
          hyperparameters:
            num_train_epoch: 2
        """, [("num_train_epoch", "spec.algorithm.hyperparameters.num_train_epoch", "num_train_epoch")]),
    "hyperparameter-word-for-number": ("""
        dataset: {name: wine}
        algorithm:
          name: random_forest
          hyperparameters:
            n_estimators: fifty
        """, [("fifty", "spec.algorithm.hyperparameters.n_estimators", "expected an int in [1, 10000], got 'fifty'")]),
    "hyperparameter-list": ("""
        dataset: {name: wine}
        algorithm:
          name: random_forest
          hyperparameters:
            max_depth: [3]
        """, [("max_depth", "spec.algorithm.hyperparameters.max_depth", "got [3]")]),
    "hyperparameter-out-of-range": ("""
        dataset: {name: digits}
        algorithm:
          name: resnet18
          hyperparameters:
            momentum: 1.5
        """, [("momentum", "spec.algorithm.hyperparameters.momentum", "expected a float in [0, 1], got 1.5")]),
    "hyperparameter-bad-choice": ("""
        dataset: {name: wine}
        algorithm:
          name: svm
          hyperparameters:
            kernel: gaussian
        """, [("gaussian", "spec.algorithm.hyperparameters.kernel", "one of rbf | linear | poly | sigmoid")]),
    "hyperparameter-yaml-off": ("""
        dataset: {name: wine}
        algorithm:
          name: hist_gradient_boosting
          hyperparameters:
            early_stopping: off
        """, [("early_stopping", "spec.algorithm.hyperparameters.early_stopping", "got false")]),
    "hyperparameter-easymaker-range": ("""
        dataset: {name: digits}
        algorithm:
          name: easymaker-image-classification
          hyperparameters:
            per_device_train_batch_size: 1
        """, [("per_device_train_batch_size", "spec.algorithm.hyperparameters.per_device_train_batch_size",
               "expected an int >= 2")]),
    "parameter-set-typo": ("""
        dataset: {name: wine}
        algorithm: {name: random_forest}
        parameterSets:
          - {n_estimators: 50}
          - {n_estimators: 100, max_dept: 4}
        """, [("max_dept", "spec.parameterSets[1].max_dept", "has no hyperparameter 'max_dept'")]),
    "hyperparameter-word-for-bool": ("""
        dataset: {name: diabetes}
        algorithm:
          name: linear_regression
          hyperparameters: {fit_intercept: maybe}
        objective: {metric: validation_r2}
        """, [("maybe", "spec.algorithm.hyperparameters.fit_intercept", "expected a bool, got 'maybe'")]),
    "search-high-out-of-range": ("""
        mode: hpo
        dataset: {name: digits}
        algorithm:
          name: resnet18
          searchSpace:
            momentum: {type: float, low: 0.5, high: 1.5}
        """, [("momentum", "spec.algorithm.searchSpace.momentum.high", "high 1.5 is out of range")]),
    "search-typo": ("""
        mode: hpo
        dataset: {name: wine}
        algorithm:
          name: random_forest
          searchSpace:
            max_dept: {type: int, low: 2, high: 8}
        """, [("max_dept", "spec.algorithm.searchSpace.max_dept", "has no hyperparameter to search 'max_dept'")]),
    "search-float-for-int": ("""
        mode: hpo
        dataset: {name: wine}
        algorithm:
          name: random_forest
          searchSpace:
            n_estimators: {type: float, low: 10, high: 300}
        """, [("n_estimators", "spec.algorithm.searchSpace.n_estimators.type", "a float range for an int")]),
    "search-low-out-of-range": ("""
        mode: hpo
        dataset: {name: wine}
        algorithm:
          name: random_forest
          searchSpace:
            n_estimators: {type: int, low: 0, high: 300}
        """, [("n_estimators", "spec.algorithm.searchSpace.n_estimators.low", "low 0 is out of range")]),
    "search-bad-choice-value": ("""
        mode: hpo
        dataset: {name: wine}
        algorithm:
          name: random_forest
          searchSpace:
            criterion:
              type: choice
              values: [gini, hinge]
        """, [("values", "spec.algorithm.searchSpace.criterion.values[1]", "value 'hinge' is not one of")]),
    "search-range-for-choice": ("""
        mode: hpo
        dataset: {name: wine}
        algorithm:
          name: svm
          searchSpace:
            kernel: {type: int, low: 1, high: 3}
        """, [("kernel", "spec.algorithm.searchSpace.kernel.type", "a int range for one of rbf")]),
    "objective-not-reported": ("""
        dataset: {name: wine}
        algorithm: {name: random_forest}
        objective: {metric: val_acc, direction: maximize}
        """, [("val_acc", "spec.objective.metric", "'val_acc' is not reported by random_forest")]),
    "objective-typo-close": ("""
        dataset: {name: diabetes}
        algorithm: {name: linear_regression}
        objective: {metric: validation_rsme, direction: minimize}
        """, [("validation_rsme", "spec.objective.metric", "'validation_rsme' is not reported")]),
    "objective-goal-percent": ("""
        dataset: {name: wine}
        algorithm: {name: random_forest}
        objective:
          metric: validation_accuracy
          goal: 97
        """, [("goal", "spec.objective.goal", "goal 97 can never be reached")]),
    "objective-wrong-direction": ("""
        dataset: {name: diabetes}
        algorithm: {name: linear_regression}
        objective:
          metric: validation_rmse
          direction: maximize
        """, [("direction", "spec.objective.direction", "would select the worst trial")]),
    "image-algorithm-on-table": ("""
        dataset: {name: wine}
        algorithm: {name: resnet18}
        """, [("resnet18", "spec.algorithm.name", "trains on image data; dataset 'wine' is tabular")]),
    "table-algorithm-on-images": ("""
        dataset: {name: digits}
        algorithm: {name: random_forest}
        """, [("random_forest", "spec.algorithm.name", "trains on tabular data; dataset 'digits' is image")]),
    "detector-on-classification": ("""
        dataset: {name: digits}
        algorithm: {name: fasterrcnn_resnet50_fpn}
        """, [("fasterrcnn", "spec.algorithm.name", "is for detection; dataset 'digits' is a classification")]),
    "regressor-on-classification": ("""
        dataset: {name: wine}
        algorithm: {name: linear_regression}
        """, [("linear_regression", "spec.algorithm.name", "is for regression; dataset 'wine' is a classification")]),
    "automl-candidate-typo": ("""
        mode: automl
        dataset: {name: wine}
        automl:
          candidates:
            - {name: logistic_regression}
            - {name: xgbost}
        """, [("xgbost", "spec.automl.candidates[1].name", "unknown algorithm 'xgbost'")]),
    "automl-candidate-wrong-task": ("""
        mode: automl
        dataset: {name: wine}
        automl:
          candidates:
            - {name: logistic_regression}
            - {name: linear_regression}
        """, [("linear_regression", "spec.automl.candidates[1].name", "is for regression")]),
    "automl-candidate-hyperparameter": ("""
        mode: automl
        dataset: {name: wine}
        automl:
          candidates:
            - {name: logistic_regression}
            - name: random_forest
              hyperparameters: {n_trees: 10}
        """, [("n_trees", "spec.automl.candidates[1].hyperparameters.n_trees", "has no hyperparameter 'n_trees'")]),
    "automl-no-defaults-for-detection": ("""
        mode: automl
        dataset: {name: shapes}
        """, [("spec:", "spec.automl", "no default candidates for a detection task")]),
    "export-onnx-impossible": ("""
        dataset: {name: shapes}
        algorithm: {name: easymaker-object-detection}
        objective: {metric: validation_map}
        register:
          model: detr
          export: [onnx]
        """, [("export", "spec.register.export", "cannot export ONNX")]),
    "keras-without-onnx": ("""
        dataset: {name: digits}
        algorithm: {name: keras_small_cnn}
        register: {model: cnn}
        """, [("register", "spec.register", "served only through ONNX")]),
}

DEPLOYMENT = """
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: wine-rf}
spec:
  dataset: {name: wine}
  algorithm: {name: random_forest}
  register: {model: wine-rf}
---
apiVersion: kiln.dev/v1alpha1
kind: Deployment
metadata: {name: wine-rf}
spec:
  model: {name: wine-rf}
  runtime: onnx
"""

BY_EXPERIMENT = """
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: digits-cnn}
spec:
  dataset: {name: digits}
  algorithm: {name: resnet18}
  register: {model: digits-cnn}
---
apiVersion: kiln.dev/v1alpha1
kind: Deployment
metadata: {name: digits-cnn}
spec:
  model: {experiment: digits-cnn}
  runtime: onnx
"""

SEVERAL = """
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: several}
spec:
  mode: hpo
  dataset: {name: wine}
  algorithm:
    name: random_forest
    hyperparameters:
      n_estimator: 50
      max_depth: [3]
      criterion: ginni
    searchSpace:
      max_dept: {type: int, low: 2, high: 8}
      min_samples_leaf: {type: int, low: 0, high: 5}
  objective: {metric: val_acc}
"""


def _line(text: str, needle: str) -> int:
    """The first line holding ``needle`` below ``metadata`` (the case's name may hold it too)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("metadata:")) + 1
    return next(i for i, ln in enumerate(lines[start:], start + 1) if needle in ln)


def _case_text(name: str, body: str) -> str:
    return HEAD.replace("NAME", name) + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken-algorithms")
    files = {"specs/datasets.yaml": DATASETS, "specs/deployment.yaml": DEPLOYMENT, "specs/several.yaml": SEVERAL,
             "specs/by-experiment.yaml": BY_EXPERIMENT}
    files.update({f"specs/{n}.yaml": _case_text(n, body) for n, (body, _) in CASES.items()})
    write(root, files)
    return root


LINE = re.compile(r"^(\S+):(\d+):(\d+)  (\S+)  (.*?)(?:  \((.*)\))?$")


@pytest.fixture(scope="module")
def reported(repo: Path) -> dict[str, list[tuple[int, str, str, str | None]]]:
    p = kiln("validate", "specs", cwd=repo)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    out: dict[str, list[tuple[int, str, str, str | None]]] = {}
    for ln in p.stderr.splitlines()[:-1]:
        m = LINE.match(ln)
        assert m, ln
        out.setdefault(Path(m.group(1)).stem, []).append((int(m.group(2)), m.group(4), m.group(5), m.group(6)))
    assert p.stderr.splitlines()[-1] == f"{sum(map(len, out.values()))} errors in specs"
    return out


def test_corpus_has_one_case_per_mistake() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_reported_at_its_line_with_a_hint(case: str, repo: Path, reported: dict) -> None:
    body, expected = CASES[case]
    text = (repo / "specs" / f"{case}.yaml").read_text()
    got = reported.get(case, [])
    assert len(got) == len(expected), got
    for (needle, path, words), (line, gpath, message, hint) in zip(expected, got):
        assert (line, gpath) == (_line(text, needle), path), (line, gpath, message)
        assert words in message, message
        assert hint, f"{case}: no hint for {message}"


def test_did_you_mean_where_a_name_is_close(reported: dict) -> None:
    hints = {case: got[0][3] for case, got in reported.items()}
    assert hints["unknown-algorithm"] == "did you mean 'random_forest'?"
    assert hints["hyperparameter-typo"] == "did you mean 'n_estimators'?"
    assert hints["hyperparameter-typo-easymaker"] == "did you mean 'num_train_epochs'?"
    assert hints["search-typo"] == "did you mean 'max_depth'?"
    assert hints["automl-candidate-typo"] == "did you mean 'xgboost'?"
    assert hints["objective-typo-close"] == "did you mean 'validation_rmse'?"
    # far from any name: the valid ones instead
    assert "validation_accuracy" in hints["objective-not-reported"]
    # a misleading hint would name an image algorithm for a table
    assert hints["image-algorithm-on-table"].startswith("choose one that trains on tabular classification data: "
                                                          "naive_bayes, mlp, logistic_regression")
    assert "fasterrcnn" not in hints["table-algorithm-on-images"] and "resnet18" in hints["table-algorithm-on-images"]
    assert "quote it" in hints["hyperparameter-yaml-off"]
    assert "searchSpace" in hints["hyperparameter-list"]


def test_deployment_runtime_onnx_for_a_model_registered_without_it(repo: Path, reported: dict) -> None:
    text = (repo / "specs" / "deployment.yaml").read_text()
    ((line, path, message, hint),) = reported["deployment"]
    assert (line, path) == (_line(text, "runtime: onnx"), "spec.runtime")
    assert "registers model 'wine-rf' without ONNX" in message and "export: [onnx]" in (hint or "")
    assert "at specs/deployment.yaml:1," in (hint or "")  # where the registering Experiment is


def test_deployment_of_an_experiment_runtime_onnx(repo: Path, reported: dict) -> None:
    text = (repo / "specs" / "by-experiment.yaml").read_text()
    ((line, path, message, _),) = reported["by-experiment"]
    assert (line, path) == (_line(text, "runtime: onnx"), "spec.runtime")
    assert "Experiment 'digits-cnn' registers model 'digits-cnn' without ONNX" in message


def test_several_mistakes_in_one_spec_all_reported(repo: Path, reported: dict) -> None:
    text = (repo / "specs" / "several.yaml").read_text()
    got = [(line, path) for line, path, _, _ in reported["several"]]
    assert got == [(_line(text, "n_estimator:"), "spec.algorithm.hyperparameters.n_estimator"),
                   (_line(text, "max_depth: [3]"), "spec.algorithm.hyperparameters.max_depth"),
                   (_line(text, "ginni"), "spec.algorithm.hyperparameters.criterion"),
                   (_line(text, "max_dept:"), "spec.algorithm.searchSpace.max_dept"),
                   (_line(text, "min_samples_leaf"), "spec.algorithm.searchSpace.min_samples_leaf.low"),
                   (_line(text, "val_acc"), "spec.objective.metric")]


@pytest.mark.parametrize("case", list(CASES))
def test_each_case_alone_reports_only_its_own_problems(case: str, tmp_path: Path) -> None:
    write(tmp_path, {"specs/datasets.yaml": DATASETS, f"specs/{case}.yaml": _case_text(case, CASES[case][0])})
    issues = validate(load_specs(tmp_path / "specs"))
    assert [i.path for i in issues] == [path for _, path, _ in CASES[case][1]]


def test_good_specs_still_validate() -> None:
    assert validate(load_specs(ROOT / "specs")) == []


def test_validate_imports_no_ml_library(repo: Path) -> None:
    code = ("import sys; from kiln.cli import main; rc = main(['validate', 'specs']); "
            "print(rc, sorted(m for m in ('torch', 'sklearn', 'transformers', 'tensorflow', 'pandas', 'xgboost') "
            "if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert p.stdout.splitlines()[-1] == "1 []", p.stdout + p.stderr


@pytest.mark.parametrize("algorithm, metric", [
    ("fasterrcnn_resnet50_fpn", "validation_map"), ("deeplabv3_resnet50", "validation_mean_iou"),
    ("linear_regression", "validation_r2"), ("kmeans", "validation_silhouette"),
    ("random_forest", "validation_accuracy")])
def test_an_unwritten_objective_is_the_algorithms_tasks(algorithm: str, metric: str) -> None:
    # a detector used to be ranked by validation_accuracy, which it never reports: refused at validate
    from kiln.algorithms.catalogue import CATALOGUE
    from kiln.api.experiment import ExperimentSpec

    spec = ExperimentSpec.model_validate({"dataset": {"name": "d"}, "algorithm": {"name": algorithm}})
    assert spec.objective.metric == metric and metric in CATALOGUE[algorithm].metrics
    assert spec.objective.direction == "maximize"
    written = ExperimentSpec.model_validate({"dataset": {"name": "d"}, "algorithm": {"name": algorithm},
                                             "objective": {"metric": "train_loss", "direction": "minimize"}})
    assert written.objective.metric == "train_loss"
