"""The AutoML defaults added to the catalogue (``kiln.algorithms.tabular_more``): they train on
NaN as it is, and export to ONNX with the parity check the register step runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.algorithms.base import TrainData
from kiln.algorithms.registry import get_algorithm


@pytest.mark.parametrize("name,fixture,outputs,nan", [
    ("hist_gradient_boosting", "breast_cancer", ["label", "probabilities"], True),
    ("hist_gradient_boosting_regressor", "diabetes", ["variable"], True),
    # skl2onnx's forest converter drops a forest's learnt NaN routing (onnx/sklearn-onnx#1253), but
    # the featuriser in front of every tabular model imputes NaN first (train-fitted medians)
    ("random_forest_regressor", "diabetes", ["variable"], True),
])
def test_onnx_parity_with_nan_in_a_feature(name: str, fixture: str, outputs: list[str], nan: bool, tmp_path: Path,
                                           request: pytest.FixtureRequest) -> None:
    pytest.importorskip("skl2onnx")
    pytest.importorskip("onnxruntime")
    from kiln.algorithms.onnx import export_and_check

    data: TrainData = request.getfixturevalue(fixture)
    frame = data.content.table.frame.copy()
    col = [c for c in frame.columns if c != data.content.table.label][0]
    if nan:
        frame.loc[frame.index[::5], col] = np.nan  # every 5th row: NaN, in train and test alike
    table = data.content.table.model_copy(update={"frame": frame})
    data = TrainData(data.content.model_copy(update={"table": table}), data.row_splits)
    algo = get_algorithm(name)
    model = algo.train(data, {"n_estimators": 20} if "forest" in name else {})
    x, _ = data.table("test")
    assert x[col].isna().any() == nan
    report = export_and_check(algo, model, tmp_path / "m.onnx", x, tolerance=1e-4)
    # the parity check adds two rows of its own: every value missing, and unseen categories
    assert report is not None and report.passed and report.samples == len(x) + 2
    assert report.outputs == outputs
