"""README's "Calling a deployment" examples, sent as written to real servers (tests/bento/conftest.py):
each answer has the shape of the README's response, one prediction per instance. Regression has
no server among the fixtures: its example goes through the serving engine of a real ONNX model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from kiln.bento.auth import TokenStore
from tests.bento.conftest import png_b64

README = Path(__file__).resolve().parents[2] / "README.md"
B64 = re.compile(r"""'"\$\(base64 -w0 [^)]+\)"'""")


def examples() -> dict[str, tuple[dict, dict]]:
    """Task heading -> (request body, response) of the README's section."""
    text = README.read_text()
    sec = text[text.index("## Calling a deployment"):]
    sec = sec[:sec.index("\n## ", 1)]
    out = {}
    for m in re.finditer(r"#### (.+?)\n.*?```bash\n(.*?)```\n```json\n(.*?)```", sec, re.S):
        body = re.search(r"-d '(.*)'\s*$", m.group(2).strip(), re.S)
        assert body, m.group(2)
        out[m.group(1)] = (json.loads(B64.sub("IMAGE", body.group(1))), json.loads(m.group(3)))
    return out


def shape(v: Any) -> Any:
    """The structure of a JSON value: types, keys (a detection's label key is data: '<label>'),
    lists by the shape of their items."""
    if isinstance(v, dict):
        return {("<label>" if k != "score" and isinstance(x, dict) else k): shape(x) for k, x in v.items()}
    if isinstance(v, list):
        shapes = [shape(x) for x in v]
        assert all(s == shapes[0] for s in shapes), v  # one kind of item per list
        return [shapes[0]] if shapes else []
    return "int" if isinstance(v, int) and not isinstance(v, bool) else type(v).__name__


def _same_shape(got: dict, want: dict, n: int) -> None:
    assert list(got) == ["predictions"] and len(got["predictions"]) == n, got
    g, w = shape(got), shape(want)
    if g["predictions"] != [[]]:  # an image without objects: nothing to compare
        assert g == w, (g, w)


def test_readme_lists_every_task() -> None:
    assert set(examples()) == {"Tabular classification", "Tabular regression", "Tabular clustering",
                               "Image classification", "Object detection", "Segmentation"}


@pytest.mark.parametrize("task,server,image", [
    ("Tabular classification", "iris", None),
    ("Image classification", "digits", "digit"),
    ("Object detection", "boxes", "box"),
    ("Segmentation", "masks", "box"),
])
def test_readme_example_against_a_real_server(task: str, server: str, image: str | None, servers: dict,
                                              serving_repo: Path, digits_data) -> None:
    body, want = examples()[task]
    if image:  # the curl example reads a file; here a real image of what the model knows
        X, _ = digits_data
        data = png_b64(X[3].reshape(8, 8) * 15.9) if image == "digit" else \
            png_b64(np.pad(np.full((8, 8, 3), 255), ((4, 4), (2, 6), (0, 0))))
        body = json.loads(json.dumps(body).replace('"IMAGE"', json.dumps(data)))
    headers = {}
    if server == "iris":  # the one deployment with auth
        headers["authorization"] = "Bearer " + TokenStore(serving_repo / ".kiln/serving/tokens.json").create("iris-api")
    r = httpx.post(f"{servers[server].url}/predict", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    _same_shape(r.json(), want, len(body["instances"]))
    if task == "Object detection":  # the white square is found: the shapes above were compared
        assert len(r.json()["predictions"][0]) == 1
    if task == "Tabular classification":  # the README's labels are the model's answers
        assert [p["label"] for p in r.json()["predictions"]] == [p["label"] for p in want["predictions"]]


def test_readme_regression_example(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    from kiln.bento.registry import Registry, default_home
    from kiln.bento.runtime import load_engine

    body, want = examples()["Tabular regression"]
    feats = list(body["instances"][0])
    d = load_diabetes(as_frame=True)
    X = d.data[feats].to_numpy(np.float32)
    reg = Registry(default_home(tmp_path))
    v = reg.register("diabetes", to_onnx(LinearRegression().fit(X, d.target), X[:1]), "onnx",
                     serving={"task": "regression", "input": "tabular", "features": feats})
    eng = load_engine(reg.path("diabetes", v))
    xs = [eng.decode(inst, i)[0] for i, inst in enumerate(body["instances"])]
    got = {"predictions": [eng.format(y, None) for y in eng.predict(xs)]}  # the fast path's answer
    _same_shape(got, want, 2)
    assert got["predictions"][0] > got["predictions"][1]  # a high bmi and bp predict more progression


def test_readme_clustering_example(tmp_path: Path) -> None:
    """k-means on iris' petals, registered with ONNX as kiln registers it (its output is the
    distance to every centre): the README's rows fall in two clusters, each near its centre."""
    from skl2onnx import to_onnx
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_iris

    from kiln.bento.registry import Registry, default_home
    from kiln.bento.runtime import load_engine

    body, want = examples()["Tabular clustering"]
    feats = list(body["instances"][0])
    d = load_iris(as_frame=True)
    X = d.data[[f.replace("_", " ") + " (cm)" for f in feats]].to_numpy(np.float32)
    km = KMeans(3, n_init=1, random_state=0).fit(X)
    reg = Registry(default_home(tmp_path))
    v = reg.register("petals", to_onnx(km, X[:1]), "onnx",
                     serving={"task": "clustering", "input": "tabular", "features": feats})
    eng = load_engine(reg.path("petals", v))
    xs = [eng.decode(inst, i)[0] for i, inst in enumerate(body["instances"])]
    got = {"predictions": [eng.format(y, None) for y in eng.predict(xs)]}
    _same_shape(got, want, 2)
    a, b = got["predictions"]
    # a setosa and a virginica: the README's answer, as k-means with this seed numbers its clusters
    assert [p["cluster"] for p in got["predictions"]] == [p["cluster"] for p in want["predictions"]]
    assert a["distance"] < 0.5 and b["distance"] < 1.0
