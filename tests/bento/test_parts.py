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
    assert chk.check(t1) is None and chk.check(t2) is not None
    assert [r["revoked"] is not None for r in store.list("dep")] == [True, False]
    with pytest.raises(NotFound, match="no token"):
        store.revoke("dep", "deadbeef")


def _applied(repo: Path, *keys: str) -> None:
    """Record Deployments as applied in the repo's state store (what `kiln apply` leaves)."""
    from kiln.state import ObjectRecord, open_store

    store = open_store(None, repo)
    try:
        for key in keys:
            store.put(ObjectRecord(key=key, source="specs/d.yaml"))
    finally:
        store.close()


def test_tokens_belong_to_one_workspace_and_go_with_a_pruned_deployment(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    mine = store.create("default/wine-b")
    theirs = store.create("team2/wine-b")
    default = TokenChecker(tmp_path / "tokens.json", "wine-b")   # a bare name: the default workspace
    team2 = TokenChecker(tmp_path / "tokens.json", "team2/wine-b")
    assert default.check(mine) and default.check(theirs) is None
    assert team2.check(theirs) and team2.check(mine) is None
    # a file from before tokens were keyed by workspace: its entries belong to the default one
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"wine-b": json.loads((tmp_path / "tokens.json").read_text())["default/wine-b"]}))
    assert TokenChecker(old, "default/wine-b").check(mine)
    assert TokenChecker(old, "team2/wine-b").check(mine) is None
    # pruning the deployment drops its tokens: a new one of the same name starts without them
    assert store.drop("team2/wine-b") == 1
    assert team2.check(theirs) is None and default.check(mine)


def test_token_timing_does_not_tell_which_ids_exist(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    real = store.create("dep")
    for _ in range(5):
        store.create("dep")
    chk = TokenChecker(tmp_path / "tokens.json", "dep")
    known = "kiln_" + real.split("_")[1] + "_" + "x" * 43      # an existing id, a wrong secret
    unknown = "kiln_00000000_" + "x" * 43                        # an id that does not exist

    def best(token: str) -> float:
        times = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(300):
                chk.check(token)
            times.append(time.perf_counter() - t)
        return min(times) / 300

    best(known), best(unknown)  # warm up
    a, b = best(known), best(unknown)
    # the same work on both paths (the old code did a stat only for unknown ids: +12-15 us)
    assert abs(a - b) < 0.3 * max(a, b) + 2e-6, (a, b)


def test_token_cli(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "deployments", "token", "create", "web"])
    # (CliRunner calls the group itself: the CLI's entry point renders the KilnError as `error: ...`)
    assert isinstance(r.exception, NotFound) and "no applied Deployment default/web" in str(r.exception)
    assert not (tmp_path / ".kiln/serving/tokens.json").exists()
    _applied(tmp_path, "Deployment/default/web", "Deployment/team2/api")
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "deployments", "token", "create", "api"])
    assert isinstance(r.exception, NotFound) and "deployments: default/web, team2/api" in str(r.exception)
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "deployments", "token", "create", "team2/api"])
    assert r.exit_code == 0, r.output
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
    y = eng.predict([x])[0]
    out = eng.format(y, None)  # a row's answer: the best class and its probability
    assert out == {"label": "setosa", "score": float(np.max(y))} and out["score"] > 0.5
    assert eng.format(eng.predict([eng.decode(list(row.values()), 0)[0]])[0], None) == out  # the row as a list
    with pytest.raises(InstanceError, match=r"instances\[3\]\.petal_width: missing"):
        eng.decode({k: v for k, v in row.items() if k != "petal_width"}, 3)
    with pytest.raises(InstanceError, match=r"instances\[1\]: a row as a list has 4 values, in this order: "
                                            r"sepal_length, sepal_width, petal_length, petal_width; got 2"):
        eng.decode([1, 2], 1)
    with pytest.raises(InstanceError, match=r"instances\[1\]: expected an object keyed by column or a list"):
        eng.decode("5.1,3.5", 1)
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
    assert eng.format(eng.predict([x])[0], None)["label"] == "a"
    x_int, _ = eng.decode({**row, "sl": 5}, 0)  # a JSON integer is a number
    assert x_int[0] == 5.0
    for bad, why in ((True, "expected a number, got bool"), ("5", "expected a number, got str"),
                     (None, "expected a number, got NoneType"), (float("nan"), "expected a finite number"),
                     (10**39, r"10{39} is out of range for the model's 32-bit floats")):
        with pytest.raises(InstanceError, match=rf"instances\[2\]\.pw: {why}"):
            eng.decode({**row, "pw": bad}, 2)
    with pytest.raises(InstanceError, match=r"instances\[0\]\.sw: missing"):
        eng.decode({k: v for k, v in row.items() if k != "sw"}, 0)
    for edge in (float("inf"), -1e39, 3.5e38):
        with pytest.raises(InstanceError, match=r"instances\[1\]\.sl"):
            eng.decode({**row, "sl": edge}, 1)
    assert eng.decode({**row, "sl": 3.4e38}, 0)[0][0] == np.float32(3.4e38)  # the float32 range itself is fine


def test_png_text_bombs_are_refused_before_they_inflate(serving_repo: Path) -> None:
    """62 zTXt chunks of 1 MiB each in a 64 KB PNG of 8 x 8 pixels: Pillow's defaults inflate
    them all (63 MB, 0.4 s) when the file is opened; an image model's engine caps them at 1 MiB.
    166 iCCP chunks likewise: refused from the chunk headers."""
    import base64
    import struct
    import time
    import zlib

    from kiln.bento.hostile import _png_text_bomb
    from kiln.bento.registry import Registry, default_home
    from kiln.bento.runtime import InstanceError, load_engine

    img = load_engine(Registry(default_home(serving_repo)).path("digits", 1))
    bomb = _png_text_bomb()
    assert len(bomb) < 70_000
    t = time.process_time()
    with pytest.raises(InstanceError, match=r"instances\[0\]\.data: not a decodable image \(Too much memory used in text"):
        img.decode({"data": base64.b64encode(bomb).decode()}, 0)
    assert time.process_time() - t < 0.1  # one chunk inflated, not 62
    img.decode({"data": base64.b64encode(_png_text_bomb(1)).decode()}, 0)  # 1 MiB of text is still an image
    # colour profiles: Pillow inflates every iCCP chunk (no limit on their number); the standard allows one
    t = time.process_time()
    with pytest.raises(InstanceError, match=r"instances\[1\]\.data: not a decodable image \(a PNG holds at most one colour"):
        img.decode({"data": base64.b64encode(_png_text_bomb(166, b"iCCP")).decode()}, 1)
    assert time.process_time() - t < 0.05
    img.decode({"data": base64.b64encode(_png_text_bomb(1, b"iCCP")).decode()}, 0)
    # many empty chunks: Pillow walks each in Python; refused from the chunk headers after the limit
    png = _png_text_bomb(0)
    empty = struct.pack(">I", 0) + b"prVt" + struct.pack(">I", zlib.crc32(b"prVt"))
    chunky = png[:33] + empty * 200_000 + png[33:]
    t = time.process_time()
    with pytest.raises(InstanceError, match=r"instances\[2\]\.data: not a decodable image \(a PNG of 2,400,\d+ bytes with more than 1,171 chunks"):
        img.decode({"data": base64.b64encode(chunky).decode()}, 2)
    assert time.process_time() - t < 0.1
    img.decode({"data": base64.b64encode(png[:33] + empty * 1000 + png[33:]).decode()}, 0)  # a few ancillary chunks are fine


def test_a_deeply_nested_field_is_a_400_naming_it_not_a_recursion_error() -> None:
    """orjson parses JSON nested up to 1,023 levels; the error message for such a field used to
    ``str()`` it, which raised RecursionError at 1,000 levels (a 500 from the server)."""
    import orjson

    from kiln.bento.runtime import Engine, InstanceError, ServingConfig

    deep = orjson.loads(b"[" * 1000 + b"]" * 1000)
    eng = Engine(ServingConfig(framework="onnx", task="classification", input="tabular", features=["x"]),
                 run=lambda x: x, model_dir=Path("."))
    with pytest.raises(InstanceError, match=r"instances\[0\]\.x: expected a number, got list$"):
        eng.decode({"x": deep}, 0)
    eng.cfg.feature_types = {"x": "number"}
    eng.pipeline = object()  # the preprocessing path checks its fields before it transforms
    with pytest.raises(InstanceError, match=r"instances\[1\]\.x: expected a number, got list$"):
        eng.decode({"x": deep}, 1)
    with pytest.raises(InstanceError, match=r"expected a number, got str 'wide'"):
        eng.decode({"x": "wide"}, 0)


def test_predict_bodies_must_be_declared_json_or_undeclared() -> None:
    """A web page can make a browser POST a form or text/plain anywhere without a CORS preflight:
    those types are a 415 naming the fix; JSON (with a charset, or ``+json``) and no type pass."""
    from kiln.bento.fastpath import _check_content_type, _Reject

    for ok in (None, b"application/json", b"Application/JSON; charset=utf-8", b"application/vnd.api+json"):
        _check_content_type(ok)
    for bad in (b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x", b"",
                b"application/jsonx", b"text/json"):
        with pytest.raises(_Reject) as e:
            _check_content_type(bad)
        assert e.value.status == 415 and "send 'Content-Type: application/json'" in e.value.message


def test_classification_scores_match_the_numpy_reference() -> None:
    """The plain-Python path for probability rows gives what numpy's stable argsort gives (ties
    by index, top_k); logits and single outputs still go through softmax/sigmoid."""
    from kiln.bento.runtime import Engine, ServingConfig

    def ref(p: np.ndarray, top_k: int | None, labels: list[str]) -> list[dict]:
        p = np.asarray(p, np.float64)
        order = np.argsort(-p, kind="stable")[:top_k] if top_k else np.argsort(-p, kind="stable")
        return [{"score": float(p[k]), "label": labels[k] if k < len(labels) else str(k)} for k in order]

    rng = np.random.default_rng(0)
    labels = [f"c{i}" for i in range(8)]  # fewer labels than classes: the rest are named by index
    for top_k in (None, 3):
        eng = Engine(ServingConfig(framework="onnx", task="classification", input="image", image={"size": [2, 2]},
                                   labels=labels, top_k=top_k),
                     run=lambda x: x, model_dir=Path("."))
        row = Engine(ServingConfig(framework="onnx", task="classification", input="tabular", features=["x"], labels=labels),
                     run=lambda x: x, model_dir=Path("."))
        for _ in range(50):
            p = rng.dirichlet(np.ones(10)).astype(np.float32)
            if rng.random() < 0.3:  # ties
                p[[1, 4, 7]] = p[4]
                p = p / p.sum()
            assert eng.format(p, None) == ref(p, top_k, labels)
            assert row.format(p, None) == ref(p, None, labels)[0]  # a table row: the first of them
        logits = np.array([2.0, -1.0, 0.5], np.float32)
        soft = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        got = eng.format(logits, None)
        assert [g["label"] for g in got][:2] == ["c0", "c2"] and abs(got[0]["score"] - soft[0]) < 1e-6
        one = eng.format(np.array([0.25], np.float32), None)
        assert one[0] == {"score": 0.75, "label": "c0"}


def test_metric_tally_flushes_what_direct_observation_would_record() -> None:
    """Counts kept in plain ints and handed over in bulk give the same Prometheus samples as
    observing each request directly."""
    import prometheus_client as pc

    from kiln.bento.fastpath import _Tally

    def metrics(reg: pc.CollectorRegistry) -> tuple:
        return (pc.Counter("kiln_requests", "r", ["code"], registry=reg),
                pc.Histogram("kiln_request_duration_seconds", "d", buckets=(.001, .005, .01, .1, 1), registry=reg),
                pc.Histogram("kiln_batch_size", "b", buckets=(1, 2, 4, 8), registry=reg))

    direct_reg, tally_reg = pc.CollectorRegistry(), pc.CollectorRegistry()
    d_req, d_dur, d_batch = metrics(direct_reg)
    tally = _Tally(*metrics(tally_reg))
    assert tally.bulk
    rng = np.random.default_rng(1)
    for i in range(500):
        code = int(rng.choice([200, 200, 200, 400, 401, 500]))
        dt = float(rng.choice([0.001, 0.005, 2.0, rng.random() * 0.2]))  # bucket edges and beyond the last
        d_req.labels(code=str(code)).inc()
        d_dur.observe(dt)
        tally.count(code)
        tally.observe(0, dt)
        if i % 7 == 0:
            size = int(rng.integers(1, 12))
            d_batch.observe(size)
            tally.observe(1, size)
        if i % 97 == 0:
            tally.flush()  # flushing at any point loses and doubles nothing
    tally.flush()
    tally.flush()

    def samples(reg: pc.CollectorRegistry) -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): round(s.value, 9)
                for m in reg.collect() for s in m.samples if not s.name.endswith("_created")}

    assert samples(tally_reg) == samples(direct_reg)


def test_server_runs_bentoml_with_this_interpreter() -> None:
    """Not the ``bentoml`` script beside it: a copied venv's script names another interpreter."""
    import sys

    from kiln.bento.server import _bentoml_bin

    assert _bentoml_bin() == [sys.executable, "-m", "bentoml"]


def test_image_input_for_a_model_over_flat_pixel_rows(tmp_path: Path) -> None:
    """sklearn's 8x8 digits as ONNX takes 64 features a row; served with image input, the decoded
    1x8x8 images are flattened to the model's rank instead of failing every request."""
    import base64
    import io

    from PIL import Image
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from kiln.bento.registry import Registry, default_home
    from kiln.bento.runtime import load_engine

    X, y = load_digits(return_X_y=True)
    clf = LogisticRegression(max_iter=2000).fit(X.astype(np.float32), y)
    reg = Registry(default_home(tmp_path))
    v = reg.register("digits", to_onnx(clf, X[:1].astype(np.float32), options={id(clf): {"zipmap": False}}), "onnx",
                     serving={"task": "classification", "input": "image", "labels": [str(i) for i in range(10)],
                              "image": {"size": [8, 8], "mode": "L", "scale": 255 / 16}})
    eng = load_engine(reg.path("digits", v))
    xs, want = [], []
    for i in range(20):
        buf = io.BytesIO()
        Image.fromarray(np.round(X[i].reshape(8, 8) * 255 / 16).astype(np.uint8)).save(buf, format="PNG")
        xs.append(eng.decode({"data": base64.b64encode(buf.getvalue()).decode()}, i)[0])
        want.append(str(clf.predict(X[i:i + 1])[0]))
    got = [eng.format(y_, None)[0]["label"] for y_ in eng.predict(xs)]
    assert sum(g == w for g, w in zip(got, want)) >= 19  # PNG rounding may move one borderline digit
