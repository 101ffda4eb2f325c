"""Raw rows as in the CSV (strings, null, any order) served by a model kiln featurised: the real
serving engine in-process over ONNX and scikit-learn, and one real HTTP server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.bento.runtime import InstanceError, load_engine

pytest.importorskip("skl2onnx")

ROW = {"island": "Dream Island", "bill length": 41.0, "site": "site 4", "male": True}


def _register(tmp_path: Path, framework: str, regression: bool = False) -> Path:
    """Train, export (ONNX + parity) and register as the experiment steps do; the version's dir."""
    from kiln.algorithms.onnx import export_and_check
    from kiln.algorithms.registry import get_algorithm
    from kiln.bento.registry import Registry, default_home
    from kiln.controller.experiment.export import _serving
    from tests.tables import penguins

    data = penguins(regression=regression)
    algo = get_algorithm("decision_tree_regressor" if regression else "logistic_regression")
    model = algo.train(data, {})
    pkg = tmp_path / "pkg"
    algo.save(model, pkg / "kiln-model")
    if framework == "onnx":
        report = export_and_check(algo, model, pkg / "model.onnx", data.table("test")[0])
        assert report is not None and report.passed
        file = "model.onnx"
    else:
        (pkg / "model.joblib").hardlink_to(pkg / "kiln-model" / "model.joblib")
        file = "model.joblib"
    reg = Registry(default_home(tmp_path / "repo"))
    v = reg.register("penguins", pkg, framework, serving=_serving(algo, model.meta, framework, file))
    return reg.path("penguins", v)


@pytest.mark.parametrize("framework", ["onnx", "sklearn"])
def test_engine_takes_raw_rows_with_strings_nulls_any_order(framework: str, tmp_path: Path) -> None:
    eng = load_engine(_register(tmp_path, framework))
    assert eng.cfg.schema["columns"]["island"]["type"] == "string"
    rows = [dict(reversed(list(ROW.items()))),                                   # another order
            {"island": "Biscoe", "bill length": None, "site": None, "male": None},  # nulls
            {"island": "Atlantis", "bill length": "52.5", "site": "site 99", "male": "no"}]  # unseen
    xs = [eng.decode(r, i)[0] for i, r in enumerate(rows)]
    out = [eng.format(y, None) for y in eng.predict(xs)]
    assert [o["label"] for o in out][:2] == ["Gentoo", "Adelie penguin"]
    assert all(set(o) == {"label", "score"} and 0.5 <= o["score"] <= 1 for o in out)
    with pytest.raises(InstanceError, match=r"instances\[1\]\.site: missing; the model needs island, bill length"):
        eng.decode({k: v for k, v in ROW.items() if k != "site"}, 1)
    with pytest.raises(InstanceError, match=r"instances\[0\]\.colour: not a column of the model"):
        eng.decode({**ROW, "colour": "red"}, 0)
    with pytest.raises(InstanceError, match=r"instances\[0\]\.bill length: expected a number, got str 'long'"):
        eng.decode({**ROW, "bill length": "long"}, 0)
    with pytest.raises(InstanceError, match=r"instances\[0\]\.island: expected a string, a number or null"):
        eng.decode({**ROW, "island": ["Biscoe"]}, 0)


def test_models_describe_shows_the_input_schema(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kiln.bento.cli import models

    _register(tmp_path, "sklearn")
    r = CliRunner().invoke(models, ["describe", "penguins"], obj={"repo": str(tmp_path / "repo")})
    assert r.exit_code == 0, r.output
    cols = json.loads(r.output)["serving"]["schema"]["columns"]
    assert cols["island"]["encoding"] == "onehot" and cols["site"]["encoding"] == "ordinal"
    assert cols["bill length"] == {"type": "number", "missing": cols["bill length"]["missing"]}


def test_engine_regression_raw_rows(tmp_path: Path) -> None:
    eng = load_engine(_register(tmp_path, "onnx", regression=True))
    x, _ = eng.decode({**ROW, "bill length": None}, 0)
    y = eng.format(eng.predict([x])[0], None)
    assert isinstance(y, float) and 30 < y < 70


def test_served_raw_rows_over_http_and_schema_published(tmp_path: Path) -> None:
    """One real server: raw rows answer; a missing column is a 400 naming it; /openapi.json
    publishes the input schema."""
    import httpx

    from kiln.bento.fastpath import ServeConfig
    from kiln.bento.server import ManagedServer

    pytest.importorskip("bentoml")
    _register(tmp_path, "onnx")
    srv = ManagedServer(ServeConfig(deployment="penguins-api", model="penguins", version=1, public=True),
                        tmp_path / "repo")
    try:
        srv.start()
        srv.wait_ready(180)
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            r = c.post("/predict", json={"instances": [ROW, {**ROW, "island": None, "male": "maybe"}]})
            assert r.status_code == 200, r.text
            assert [set(p) for p in r.json()["predictions"]] == [{"label", "score"}] * 2
            r = c.post("/predict", json={"instances": [{k: v for k, v in ROW.items() if k != "island"}]})
            assert r.status_code == 400 and "instances[0].island: missing" in r.json()["error"]
            doc = c.get("/openapi.json").json()
            schema = doc["x-kiln"]["schema"]["columns"]
            assert "Dream Island" in schema["island"]["categories"] and schema["bill length"]["type"] == "number"
            item = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            items = item["properties"]["instances"]["items"]["oneOf"]  # an object by column, or a list in feature order
            assert items[0]["properties"]["island"]["type"] == ["string", "null"] and items[1]["type"] == "array"
    finally:
        srv.stop()


def test_numeric_model_keeps_one_float_row_and_takes_nulls(tmp_path: Path) -> None:
    """A table of numbers only: the fast path for plain numbers, null imputed by the model,
    numbers written as strings parsed, and an extra field a 400 naming it."""
    import numpy as np

    from kiln.algorithms.onnx import export_and_check
    from kiln.algorithms.registry import get_algorithm
    from kiln.bento.registry import Registry, default_home
    from kiln.controller.experiment.export import _serving
    from tests.tables import penguins

    data = penguins()
    frame = data.content.table.frame[["species", "bill length"]]
    data = type(data)(data.content.model_copy(update={"table": data.content.table.model_copy(
        update={"frame": frame, "columns": {"species": "categorical", "bill length": "numeric"}})}))
    algo = get_algorithm("logistic_regression")
    model = algo.train(data, {})
    pkg = tmp_path / "pkg"
    assert export_and_check(algo, model, pkg / "model.onnx", data.table("test")[0]).passed
    reg = Registry(default_home(tmp_path / "repo"))
    eng = load_engine(reg.path("num", reg.register("num", pkg, "onnx",
                                                   serving=_serving(algo, model.meta, "onnx", "model.onnx"))))
    assert not eng.cfg.typed
    for v in (55.0, None, "55.0", ""):
        x, _ = eng.decode({"bill length": v}, 0)
        assert x.dtype == np.float32 and x.shape == (1,)
        assert eng.format(eng.predict([x])[0], None)["label"] in ("Adelie penguin", "Gentoo")
    with pytest.raises(InstanceError, match=r"instances\[0\]\.island: not a column of the model; it takes bill length"):
        eng.decode({"bill length": 40.0, "island": "Biscoe"}, 0)
