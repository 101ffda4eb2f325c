"""The algorithm registry: lazy imports, errors listing valid names, described hyperparameters."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kiln.algorithms.registry import ALGORITHMS, describe, get_algorithm, get_algorithm_class
from kiln.errors import KilnError


def test_registry_import_loads_no_ml_framework() -> None:
    code = ("import sys, kiln.algorithms.registry as r; "
            "bad = [m for m in ('torch', 'sklearn', 'xgboost', 'transformers', 'torchvision', 'tensorflow', "
            "'keras') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_unknown_algorithm_lists_valid_names() -> None:
    with pytest.raises(KilnError) as e:
        get_algorithm("resnet-9000")
    msg = str(e.value)
    assert "resnet-9000" in msg and "resnet18" in msg and "xgboost" in msg and "naive_bayes" in msg


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_entry_resolves_to_its_class(name: str) -> None:
    module = ALGORITHMS[name].split(":")[0]
    if module.endswith("easymaker"):
        pytest.importorskip("transformers")
    if module.endswith("keras_vision"):
        pytest.importorskip("keras")
    cls = get_algorithm_class(name)
    assert cls.name == name
    d = describe(name)
    assert d["task"] in ("classification", "regression", "clustering", "dimension-reduction", "detection",
                         "instance-segmentation", "semantic-segmentation")
    assert d["data_type"] in ("tabular", "image") and d["framework"]
    assert "seed" in d["hyperparameters"]


def test_describe_reports_types_defaults_and_ranges() -> None:
    hp = describe("resnet18")["hyperparameters"]
    for k in ("batch_size", "epochs", "learning_rate", "momentum", "weight_decay", "input_size"):
        assert k in hp
    assert hp["batch_size"]["type"] == "int" and hp["batch_size"]["ge"] == 1
    assert hp["momentum"]["le"] == 1
    lr = describe("logistic_regression")["hyperparameters"]["C"]
    assert lr["default"] == 1.0 and lr["gt"] == 0


def test_bad_hyperparameters_name_the_field_and_the_valid_ones() -> None:
    from kiln.algorithms.base import AlgorithmError

    algo = get_algorithm("random_forest")
    with pytest.raises(AlgorithmError) as e:
        algo.hyperparameters({"n_estimators": 0})
    assert "n_estimators" in str(e.value) and "random_forest" in str(e.value)
    with pytest.raises(AlgorithmError) as e:
        algo.hyperparameters({"n_trees": 10})
    assert "n_trees" in str(e.value) and "n_estimators" in e.value.hint
    assert algo.hyperparameters({"n_estimators": "20"}).n_estimators == 20
