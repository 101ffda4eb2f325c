"""Issue #14: a clustering model serves, and answers the same whichever way it is asked.

k-means and a Gaussian mixture train on wine, register as ONNX (export with its parity check,
which now compares the distances / probabilities too) and natively, as ``kiln apply`` packages
them (``export._serving``); the serving engine answers each test row with ``{"cluster", "distance"}``
or ``{"cluster", "score"}``, and ``kiln infer``'s builder gives the same predictions. The real
server and ``kiln infer`` CLI run in tests/test_builtins_e2e.py (slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("skl2onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("bentoml")


def _answers(reg: Any, name: str, rows: list[dict[str, float]]) -> list[Any]:
    from kiln.bento.runtime import load_engine

    eng = load_engine(reg.path(name, 1))
    assert eng.cfg.task == "clustering"
    xs = [eng.decode(r, i)[0] for i, r in enumerate(rows)]
    return [eng.format(y, None) for y in eng.predict(xs)]


@pytest.mark.parametrize(
    "name,hp,key,output",
    [("kmeans", {"n_clusters": 3}, "distance", "scores"), ("gaussian_mixture", {"n_components": 3}, "score", "probabilities")],
)
def test_a_cluster_per_row_the_same_from_onnx_native_and_infer(
    name: str, hp: dict, key: str, output: str, wine: Any, tmp_path: Path
) -> None:
    from kiln.algorithms.onnx import export_and_check
    from kiln.algorithms.registry import get_algorithm
    from kiln.bento.registry import Registry, default_home
    from kiln.controller.experiment.export import _serving
    from kiln.controller.infer_cli import _predict_batch

    algo = get_algorithm(name)
    model = algo.train(wine, hp)
    x, _ = wine.table("test")
    report = export_and_check(algo, model, tmp_path / "model.onnx", x)
    assert report is not None and report.outputs == ["label", output] and report.mismatches == [0, 0], report.summary()
    reg = Registry(default_home(tmp_path))
    reg.register("onnx", tmp_path / "model.onnx", "onnx", serving=_serving(algo, model.meta, "onnx", "model.onnx"))
    reg.register("native", model.native, "sklearn", serving=_serving(algo, model.meta, "sklearn", "model.joblib"))
    rows = [{c: float(v) for c, v in r.items()} for r in x.to_dict("records")]
    onnx, native = _answers(reg, "onnx", rows), _answers(reg, "native", rows)
    batch, filed = _predict_batch(algo, model, x)

    want = algo.predict(model, x)
    assert [p["cluster"] for p in onnx] == [p["cluster"] for p in native] == [p["cluster"] for p in batch] == want
    assert len(set(want)) >= 2
    for a, b, c in zip(onnx, native, batch):
        assert set(a) == set(b) == set(c) == {"cluster", key}, (a, b, c)
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5) and b[key] == pytest.approx(
            c[key], rel=1e-5
        )  # served rows are float32
    measure = (
        model.native.transform(algo.features(model.meta, x)).min(axis=1)
        if key == "distance"
        else model.native.predict_proba(algo.features(model.meta, x)).max(axis=1)
    )
    assert [p[key] for p in batch] == pytest.approx(measure.tolist())
    assert filed == batch
