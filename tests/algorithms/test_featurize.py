"""Automatic featurisation in tabular models: strings with spaces, missing values, unseen
categories, through real training, real ONNX export and its parity check (tiny generated tables)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.algorithms.base import AlgorithmError, TrainData
from kiln.algorithms.registry import get_algorithm
from tests.tables import penguins

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def cls_data() -> TrainData:
    return penguins()


@pytest.mark.parametrize("name", ["logistic_regression", "random_forest", "mlp"])
def test_classifier_featurises_strings_and_missing_and_exports_typed_onnx(
        name: str, cls_data: TrainData, tmp_path: Path) -> None:
    from kiln.algorithms.onnx import export_and_check

    algo = get_algorithm(name)
    model = algo.train(cls_data, {"max_iter": 500} if name == "mlp" else {})
    assert algo.evaluate(model, cls_data, "test")["test_accuracy"] >= 0.9
    schema = model.meta["schema"]["columns"]
    assert schema["island"]["encoding"] == "onehot" and "Dream Island" in schema["island"]["categories"]
    assert schema["site"]["encoding"] == "ordinal" and schema["bill length"]["type"] == "number"
    assert schema["bill length"]["missing"] > 0 and schema["male"]["type"] == "string"
    # raw rows: strings, None for missing, columns in another order, unseen categories
    rows = [{"site": "site 3", "male": True, "bill length": 50.0, "island": "Biscoe"},
            {"male": None, "island": None, "bill length": None, "site": None},
            {"island": "Atlantis", "site": "nowhere", "bill length": 40.0, "male": False}]
    preds = algo.predict(model, rows)
    assert preds[0] == "Adelie penguin" and all(p in ("Adelie penguin", "Gentoo") for p in preds)
    x, _ = cls_data.table("test")
    report = export_and_check(algo, model, tmp_path / "m.onnx", x.iloc[:20])
    assert report is not None and report.passed and report.samples == 22  # + all-missing, unseen
    import onnxruntime as ort

    types = [(i.name, i.type) for i in ort.InferenceSession(str(tmp_path / "m.onnx")).get_inputs()]
    assert types == [("island", "tensor(string)"), ("bill_length", "tensor(float)"),
                     ("site", "tensor(string)"), ("male", "tensor(string)")]


def test_regressor_featurised_and_exported(tmp_path: Path) -> None:
    from kiln.algorithms.onnx import export_and_check

    data = penguins(regression=True)
    for name in ("linear_regression", "decision_tree_regressor"):
        algo = get_algorithm(name)
        model = algo.train(data, {})
        assert algo.evaluate(model, data, "test")["test_r2"] > 0.5
        x, _ = data.table("test")
        report = export_and_check(algo, model, tmp_path / f"{name}.onnx", x)
        assert report is not None and report.passed


def test_numeric_table_with_missing_values_keeps_one_float_input(tmp_path: Path) -> None:
    from kiln.algorithms.onnx import export_and_check
    from kiln.data.model import DatasetContent, TabularData

    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 200)
    b = rng.normal(0, 1, 200)
    y = (a + b > 0).astype(int)
    a[::5] = np.nan
    df = pd.DataFrame({"a": a, "b": b, "y": y})
    data = TrainData(DatasetContent(task="tabular", table=TabularData(
        columns={"a": "numeric", "b": "numeric", "y": "numeric"}, label="y", frame=df)))
    algo = get_algorithm("svm")
    model = algo.train(data, {})
    assert model.meta["categorical"] == [] and model.meta["schema"]["columns"]["a"]["missing"] > 0
    assert algo.predict(model, [{"b": 2.0, "a": None}]) == [1]
    x, _ = data.table("test")
    report = export_and_check(algo, model, tmp_path / "m.onnx", x)
    assert report is not None and report.passed
    import onnxruntime as ort

    assert [i.name for i in ort.InferenceSession(str(tmp_path / "m.onnx")).get_inputs()] == ["X"]


def test_featurization_off_passes_columns_through(cls_data: TrainData) -> None:
    algo = get_algorithm("random_forest")
    with pytest.raises(AlgorithmError, match="featurization is off and column 'island' is not numeric"):
        algo.train(cls_data, {}, featurization=False)


def test_spec_featurization_reads_yaml_off_as_the_word() -> None:
    import yaml
    from pydantic import ValidationError

    from kiln.api.experiment import ExperimentSpec

    doc = yaml.safe_load("dataset: {name: t}\nfeaturization: off\nalgorithm: {name: svm, featurization: on}")
    spec = ExperimentSpec.model_validate(doc)
    assert spec.featurization == "off" and spec.algorithm is not None and spec.algorithm.featurization == "auto"
    assert ExperimentSpec.model_validate({"dataset": {"name": "t"}, "algorithm": {"name": "svm"}}).featurization == "auto"
    with pytest.raises(ValidationError, match="'auto' or 'off'"):
        ExperimentSpec.model_validate({**doc, "featurization": "maybe"})
