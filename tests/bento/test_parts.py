"""In-process tests of the serving parts: tokens, capture, micro-batcher, engine decode/format."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kiln.bento.auth import TokenChecker, TokenStore
from kiln.bento.capture import Capture
from kiln.bento.fastpath import MicroBatcher
from kiln.cli import cli
from kiln.errors import NotFound


def test_tokens_hashed_revocable(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    t1 = store.create("dep")
    t2 = store.create("dep")
    other = store.create("other")
    raw = (tmp_path / "tokens.json").read_text()
    assert t1 not in raw and t2 not in raw and t1.split("_", 2)[2] not in raw  # only hashes stored
    assert oct(os.stat(tmp_path / "tokens.json").st_mode & 0o777) == "0o600"
    chk = TokenChecker(tmp_path / "tokens.json", "dep")
    assert chk.check(t1) == t1.split("_")[1]
    assert chk.check(t2) is not None
    assert chk.check(other) is None  # another deployment's token
    assert chk.check(t1 + "x") is None and chk.check("") is None and chk.check(None) is None
    assert chk.check("kiln_zz_" + t1.split("_", 2)[2]) is None
    store.revoke("dep", t1.split("_")[1])
    chk._next_stat = 0  # the server re-stats once a second; do not wait for it here
    assert chk.check(t1) is None and chk.check(t2) is not None
    assert [r["revoked"] is not None for r in store.list("dep")] == [True, False]
    with pytest.raises(NotFound, match="no token"):
        store.revoke("dep", "deadbeef")


def test_token_cli(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "deployments", "token", "create", "web"])
    assert r.exit_code == 0, r.output
    tok = r.stdout.strip().splitlines()[0]
    assert tok.startswith("kiln_")
    tid = tok.split("_")[1]
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "deployments", "token", "list", "web"])
    assert tid in r.output and tok not in r.output
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "deployments", "token", "revoke", "web", tid])
    assert r.exit_code == 0
    assert TokenStore(tmp_path / ".kiln/serving/tokens.json").list("web")[0]["revoked"]


def test_capture_samples_and_drops_without_blocking(tmp_path: Path) -> None:
    cap = Capture(tmp_path / "cap", sample_rate=1.0, max_per_day=1000, deployment="d", model="m", version=2,
                  queue_size=4, seed=1)
    dropped = []
    cap.on_drop = lambda: dropped.append(1)
    from tests.bento.conftest import png_b64

    img = {"data": png_b64(np.full((4, 4), 200))}
    t0 = time.perf_counter()
    for i in range(200):
        cap.offer(img if i % 2 else {"a": i}, [{"score": 1.0, "label": "x"}])
    assert time.perf_counter() - t0 < 0.5  # offer never waits for the writer
    cap.close()
    lines = [json.loads(x) for x in (tmp_path / "cap" / "index.jsonl").read_text().splitlines()]
    assert cap.dropped > 0 and len(dropped) == cap.dropped  # queue of 4: most dropped and counted
    assert len(lines) == cap.written == 200 - cap.dropped
    for rec in lines:
        assert rec["deployment"] == "d" and rec["version"] == 2 and rec["prediction"][0]["label"] == "x"
        if rec["file"]:
            assert rec["file"].endswith(".png") and (tmp_path / "cap" / rec["file"]).stat().st_size > 0
        else:
            assert "a" in rec["input"]


def test_capture_rate_and_daily_cap(tmp_path: Path) -> None:
    cap = Capture(tmp_path / "c", sample_rate=0.5, max_per_day=30, queue_size=1000, seed=0)
    for i in range(1000):
        cap.offer({"a": i}, 1.0)
    cap.close()
    assert cap.written == 30  # the cap, reached well before 1000 * 0.5
    cap2 = Capture(tmp_path / "c2", sample_rate=0.1, max_per_day=10_000, queue_size=1000, seed=0)
    for i in range(1000):
        cap2.offer({"a": i}, 1.0)
    cap2.close()
    assert 60 <= cap2.written <= 140


def test_batcher_batches_and_isolates_failures() -> None:
    calls: list[int] = []

    def model(xs: list) -> list:
        calls.append(len(xs))
        time.sleep(0.01)
        if any(x < 0 for x in xs):
            raise ValueError("negative")
        return [x * 2 for x in xs]

    async def main():
        pool = concurrent.futures.ThreadPoolExecutor(1)
        b = MicroBatcher(model, max_batch=8, max_latency_s=0.005, executor=pool)
        reqs = [[i] for i in range(20)] + [[-1]] + [[100, 101]]
        res = await asyncio.gather(*(b.submit(r) for r in reqs), return_exceptions=True)
        pool.shutdown()
        return res

    res = asyncio.run(main())
    assert res[:20] == [[i * 2] for i in range(20)]
    assert isinstance(res[20], ValueError)  # only the bad request fails
    assert res[21] == [200, 202]
    assert max(calls) > 1 and max(calls) <= 8  # requests were batched, never beyond the max


def test_inline_batcher_batches_what_queued_without_holding() -> None:
    """A quick model runs on the event loop (no executor): requests submitted together still go
    in one call, and a lone request is not held for max_latency."""
    calls: list[int] = []

    def model(xs: list) -> list:
        calls.append(len(xs))
        return [x + 1 for x in xs]

    async def main():
        b = MicroBatcher(model, max_batch=8, max_latency_s=0.5, executor=None)
        burst = await asyncio.gather(*(b.submit([i]) for i in range(20)))
        t0 = time.perf_counter()
        lone = await b.submit([7])
        return burst, lone, time.perf_counter() - t0

    burst, lone, waited = asyncio.run(main())
    assert burst == [[i + 1] for i in range(20)] and lone == [8]
    assert calls[:3] == [8, 8, 4] and calls[3] == 1  # batched up to the max, in order
    assert waited < 0.25  # not held for the 0.5 s max latency


def test_engine_decode_errors_name_instance_and_field(serving_repo: Path) -> None:
    from kiln.bento.registry import Registry, default_home
    from kiln.bento.runtime import InstanceError, load_engine

    reg = Registry(default_home(serving_repo))
    eng = load_engine(reg.path("iris", 1))
    row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    x, _ = eng.decode(row, 0)
    out = eng.format(eng.predict([x])[0], None)
    assert out[0]["label"] == "setosa" and out[0]["score"] > out[1]["score"] >= out[2]["score"]
    assert abs(sum(p["score"] for p in out) - 1) < 1e-4
    with pytest.raises(InstanceError, match=r"instances\[3\]\.petal_width: missing"):
        eng.decode({k: v for k, v in row.items() if k != "petal_width"}, 3)
    with pytest.raises(InstanceError, match=r"instances\[1\]: expected an object"):
        eng.decode([1, 2], 1)
    img = load_engine(reg.path("digits", 1))
    with pytest.raises(InstanceError, match=r"instances\[0\]\.data: not valid base64"):
        img.decode({"data": "%%%"}, 0)
    with pytest.raises(InstanceError, match=r"instances\[2\]\.data: not a decodable image"):
        img.decode({"data": "aGVsbG8="}, 2)
    with pytest.raises(InstanceError, match=r"instances\[0\]\.data: missing"):
        img.decode({"image": "x"}, 0)


def test_plain_tabular_decode_fast_path_and_its_errors(tmp_path: Path) -> None:
    """A model without a preprocessing pipeline: plain JSON numbers go through in one pass; every
    other value leaves that path and gets the error naming its instance and field."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from kiln.bento.registry import Registry, default_home
    from kiln.bento.runtime import InstanceError, load_engine

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(X, y)
    feats = ["sl", "sw", "pl", "pw"]
    reg = Registry(default_home(tmp_path))
    v = reg.register("plain", to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}}), "onnx",
                     serving={"task": "classification", "input": "tabular", "features": feats, "labels": ["a", "b", "c"]})
    eng = load_engine(reg.path("plain", v))
    assert eng.pipeline is None
    row = dict(zip(feats, X[0].tolist()))
    x, _ = eng.decode(row, 0)
    assert x.dtype == np.float32 and np.array_equal(x, X[0])
    assert eng.format(eng.predict([x])[0], None)[0]["label"] == "a"
    x_int, _ = eng.decode({**row, "sl": 5}, 0)  # a JSON integer is a number
    assert x_int[0] == 5.0
    for bad, why in ((True, "expected a number, got bool"), ("5", "expected a number, got str"),
                     (None, "expected a number, got NoneType"), (float("nan"), "expected a finite number"),
                     (10**39, r"10{39} is out of range for the model's 32-bit floats")):
        with pytest.raises(InstanceError, match=rf"instances\[2\]\.pw: {why}"):
            eng.decode({**row, "pw": bad}, 2)
    with pytest.raises(InstanceError, match=r"instances\[0\]\.sw: missing"):
        eng.decode({k: v for k, v in row.items() if k != "sw"}, 0)


def test_server_runs_bentoml_with_this_interpreter() -> None:
    """Not the ``bentoml`` script beside it: a copied venv's script names another interpreter."""
    import sys

    from kiln.bento.server import _bentoml_bin

    assert _bentoml_bin() == [sys.executable, "-m", "bentoml"]
