"""Fixtures for the serving tests: tiny real models registered in a temporary repository, and real
BentoML servers (``bentoml serve`` subprocesses) serving them.

Models (all trained or built here, nothing downloaded):
* ``iris``: scikit-learn LogisticRegression on iris behind a fitted kiln StandardScaler pipeline,
  converted to ONNX (skl2onnx) — tabular classification;
* ``digits``: a small torch MLP trained on sklearn's 8x8 digits, TorchScript — image classification;
* ``boxes``: a deterministic TorchScript detector (the box around bright pixels) — the detection
  response path; ``masks``: bright pixels -> label 1 — the segmentation path.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bentoml")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from kiln.bento.registry import Registry, default_home  # noqa: E402

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_LABELS = ["setosa", "versicolor", "virginica"]


def png_b64(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class BrightBox(torch.nn.Module):
    """Detector stand-in: one box around the pixels brighter than 0.5, label 1."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out: list[dict[str, torch.Tensor]] = []
        for i in range(x.shape[0]):
            m = x[i].mean(0) > 0.5
            ys = torch.nonzero(m.any(1)).flatten()
            xs = torch.nonzero(m.any(0)).flatten()
            if ys.numel() == 0:
                out.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                            "labels": torch.zeros(0, dtype=torch.long)})
            else:
                box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
                inside = m[ys.min():ys.max() + 1, xs.min():xs.max() + 1].float().mean()
                out.append({"boxes": box[None], "scores": inside[None], "labels": torch.ones(1, dtype=torch.long)})
        return out


class BrightMask(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.mean(1, keepdim=True)
        return torch.cat([0.5 - b, b - 0.5], dim=1)


def _iris(repo: Path, reg: Registry) -> int:
    import joblib
    import pandas as pd
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from kiln.data.preprocess import Pipeline, make_op

    X, y = load_iris(return_X_y=True)
    df = pd.DataFrame(X, columns=FEATURES)
    op = make_op("StandardScaler", {"columns": FEATURES})
    pipe = Pipeline([op], None)
    op.fit(df, None)
    Xt = pipe.transform(df).to_numpy(dtype=np.float32)
    clf = LogisticRegression(max_iter=500).fit(Xt, y)
    ds = repo / "datasets" / "iris"
    (ds / ".kiln").mkdir(parents=True)
    joblib.dump(pipe, ds / ".kiln" / "preprocess.joblib")
    onx = to_onnx(clf, Xt[:1], options={id(clf): {"zipmap": False}})
    return reg.register("iris", onx, "onnx", labels={"experiment": "iris-exp", "dataset_version": "abc123"},
                        metadata={"metrics": {"accuracy": float(clf.score(Xt, y))}, "params": {"C": 1.0}},
                        serving={"task": "classification", "input": "tabular", "features": FEATURES,
                                 "feature_types": {f: "number" for f in FEATURES}, "labels": IRIS_LABELS}, preprocess_from=ds)


def _digits(reg: Registry) -> int:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    torch.manual_seed(0)
    Xt = torch.tensor(X / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    yt = torch.tensor(y)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10),
                                torch.nn.Softmax(dim=1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(model(Xt) + 1e-9), yt)
        loss.backward()
        opt.step()
    return reg.register("digits", model.eval(), "torch",
                        serving={"task": "classification", "input": "image", "labels": [str(i) for i in range(10)],
                                 "image": {"size": [8, 8], "mode": "L"}, "top_k": 3})


@pytest.fixture(scope="session")
def serving_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("serving-repo")
    reg = Registry(default_home(repo))
    _iris(repo, reg)
    _digits(reg)
    reg.register("boxes", BrightBox(), "torch", serving={
        "task": "detection", "input": "image", "labels": ["background", "balloon"],
        "image": {"size": [32, 32], "mode": "RGB"}, "threshold": 0.5})
    reg.register("masks", BrightMask(), "torch", serving={
        "task": "segmentation", "input": "image", "image": {"size": [16, 16], "mode": "RGB"}, "output_size": [16, 16]})
    return repo


@pytest.fixture(scope="session")
def digits_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X, y


@pytest.fixture(scope="session")
def servers(serving_repo: Path) -> Iterator[dict]:
    """Four real servers, started together (each ~5 s to ready)."""
    from kiln.bento.fastpath import ServeConfig
    from kiln.bento.server import ManagedServer

    cfgs = {
        "iris": ServeConfig(deployment="iris-api", model="iris", version=1,
                            batching={"enabled": True, "maxBatchSize": 32, "maxLatencyMs": 5},
                            limits={"maxPayloadBytes": 64 * 1024, "maxInstances": 8},
                            capture={"sampleRate": 1.0, "maxPerDay": 50}),
        "digits": ServeConfig(deployment="digits-api", model="digits", version=1, public=True),
        "boxes": ServeConfig(deployment="boxes-api", model="boxes", version=1, public=True,
                             batching={"enabled": True, "maxBatchSize": 8, "maxLatencyMs": 5}),
        "masks": ServeConfig(deployment="masks-api", model="masks", version=1, public=True,
                             limits={"maxImagePixels": 20_000, "maxConcurrency": 4, "timeoutSeconds": 5}),
    }
    srv = {k: ManagedServer(c, serving_repo) for k, c in cfgs.items()}
    try:
        for s in srv.values():
            s.start()
        for s in srv.values():
            s.wait_ready(180)
        yield srv
    finally:
        for s in srv.values():
            s.stop()
