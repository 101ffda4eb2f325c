"""The Experiment JSON Schema carries each algorithm's hyperparameters (if/then on algorithm.name),
so an editor with the YAML language server flags what `kiln validate` flags; schemas/ is current."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.api.schema import schema_for, write_schemas
from tests.helpers import ROOT

jsonschema = pytest.importorskip("jsonschema")


def _experiment(algorithm: dict[str, Any], mode: str = "run") -> dict[str, Any]:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "Experiment", "metadata": {"name": "x"},
            "spec": {"mode": mode, "dataset": {"name": "wine"}, "algorithm": algorithm}}


def _errors(doc: dict[str, Any]) -> list[str]:
    """Every message, those under an anyOf (``algorithm`` may be null) included."""
    v = jsonschema.Draft202012Validator(schema_for("Experiment"))
    out, todo = [], list(v.iter_errors(doc))
    while todo:
        e = todo.pop()
        out.append(e.message)
        todo += e.context
    return sorted(out)


def test_good_hyperparameters_pass() -> None:
    assert _errors(_experiment({"name": "random_forest", "hyperparameters": {"n_estimators": 50, "max_depth": None,
                                                                             "max_features": "log2"}})) == []
    assert _errors(_experiment({"name": "random_forest_regressor", "hyperparameters": {"max_features": 0.5}})) == []
    assert _errors(_experiment({"name": "easymaker-object-detection",
                                "hyperparameters": {"num_train_epochs": 0.5, "threshold": 0.3}})) == []


@pytest.mark.parametrize(("algorithm", "words"), [
    ({"name": "random_forest", "hyperparameters": {"n_estimator": 50}}, "'n_estimator' was unexpected"),
    ({"name": "random_forest", "hyperparameters": {"n_estimators": "fifty"}}, "'fifty' is not of type 'integer'"),
    ({"name": "random_forest", "hyperparameters": {"n_estimators": 0}}, "0 is less than the minimum of 1"),
    ({"name": "svm", "hyperparameters": {"kernel": "gaussian"}}, "'gaussian' is not one of"),
    ({"name": "easymaker-image-classification", "hyperparameters": {"per_device_train_batch_size": 1}},
     "1 is less than the minimum of 2"),
    ({"name": "random_forrest"}, "'random_forrest' is not one of"),
    ({"name": "random_forest", "searchSpace": {"max_dept": {"type": "int", "low": 2, "high": 8}}},
     "'max_dept' is not one of"),
])
def test_mistakes_are_flagged(algorithm: dict[str, Any], words: str) -> None:
    mode = "hpo" if "searchSpace" in algorithm else "run"
    errors = _errors(_experiment(algorithm, mode))
    assert any(words in e for e in errors), errors


def test_automl_candidates_are_checked_too() -> None:
    doc = _experiment({"name": "x"})
    doc["spec"] = {"mode": "automl", "dataset": {"name": "wine"},
                   "automl": {"candidates": [{"name": "svm"}, {"name": "naive_bayes", "hyperparameters": {"C": 1}}]}}
    assert any("'C' was unexpected" in e for e in _errors(doc))


def test_committed_schemas_are_current(tmp_path: Path) -> None:
    for p in write_schemas(tmp_path):
        assert (ROOT / "schemas" / p.name).read_text() == p.read_text(), \
            f"schemas/{p.name} is stale: run `kiln schema` and commit schemas/"
