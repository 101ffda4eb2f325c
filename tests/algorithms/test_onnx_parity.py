"""The ONNX parity gate fails when it compared nothing (#25): Faster R-CNN's check once "passed on
0 samples" because a barely trained detector found no object, so both sides were empty lists.
Real exports, run by onnxruntime: a scikit-learn model of the catalogue, and a small torch module
that, like a detector, answers only what scores above a threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.algorithms.registry import get_algorithm

pytest.importorskip("onnxruntime")


def test_parity_on_zero_rows_fails_and_on_rows_passes(wine, tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx")
    from kiln.algorithms.onnx import ParityError, check_parity, export_and_check

    algo = get_algorithm("logistic_regression")
    model = algo.train(wine, {})
    x, _ = wine.table("test")
    report = export_and_check(algo, model, tmp_path / "m.onnx", x.iloc[:5])
    assert report is not None and report.passed
    assert report.samples == 5 + 2  # the check's own rows: every value missing, unseen categories
    assert report.compared > 0 and f"on {report.samples} samples, {report.compared} values compared" in report.summary()

    def native(s):
        return algo.native_outputs(model, s)

    with pytest.raises(ParityError, match="on 0 samples shows nothing"):
        check_parity(native, tmp_path / "m.onnx", x.iloc[:0], onnx_samples=algo.onnx_feed(model, x.iloc[:0]))
    quiet = check_parity(native, tmp_path / "m.onnx", x.iloc[:0], raise_on_failure=False)
    assert quiet.samples == 0 and not quiet.passed


def test_parity_of_a_model_that_answers_nothing_fails(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from kiln.algorithms.onnx import ParityError, check_parity

    class Finder(torch.nn.Module):
        """Boxes (here: values) scoring above 0.5, as a detector keeps those above its threshold."""

        def forward(self, x):
            keep = x > 0.5
            return x[keep], keep.nonzero()

    net = Finder().eval()
    torch.onnx.export(net, (torch.rand(3, 4),), str(tmp_path / "finder.onnx"), dynamo=False,
                      input_names=["image"], output_names=["scores", "where"],
                      dynamic_axes={"image": {0: "h", 1: "w"}}, opset_version=17)

    def native(s):
        return [t.numpy() for t in net(torch.as_tensor(np.asarray(s, dtype=np.float32)))]

    found = np.array([[0.9, 0.1], [0.7, 0.2]], dtype=np.float32)
    report = check_parity(native, tmp_path / "finder.onnx", found)
    assert report.passed and report.compared == 2 + 2 * 2  # two scores, two index pairs

    nothing = np.full((2, 2), 0.1, dtype=np.float32)  # nothing above the threshold: empty outputs
    with pytest.raises(ParityError, match="compared nothing") as exc:
        check_parity(native, tmp_path / "finder.onnx", nothing)
    assert "0 values compared" in str(exc.value) and "no output values on 2 samples" in str(exc.value)
    assert not check_parity(native, tmp_path / "finder.onnx", nothing, raise_on_failure=False).passed
