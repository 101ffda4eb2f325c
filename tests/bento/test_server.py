"""Real BentoML servers (``bentoml serve`` subprocesses) serving registered models through the
kiln service: EasyMaker formats, fast path, auth, errors, capture, load, health, version update."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from kiln.bento.auth import TokenStore
from kiln.bento.capture import NO_CAPTURE_HEADER
from tests.bento.conftest import FEATURES, png_b64

ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
ROW_VIRGINICA = {"sepal_length": 7.7, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3}


@pytest.fixture(scope="module")
def token(serving_repo: Path) -> str:
    return TokenStore(serving_repo / ".kiln/serving/tokens.json").create("iris-api")


def _c(servers: dict, name: str, token: str | None = None) -> httpx.Client:
    h = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=servers[name].url, headers=h, timeout=30)


def test_fast_path_active_and_bentoml_endpoints_kept(servers: dict, token: str) -> None:
    c = _c(servers, "iris", token)
    r = c.post("/predict", json={"instances": [ROW]})
    assert r.status_code == 200, r.text
    assert r.headers["x-kiln-path"] == "fast"  # BentoML's own /predict would not set it
    assert len(r.headers["x-request-id"]) >= 16
    r = c.post("/predict", json={"instances": [ROW]}, headers={"x-request-id": "my-req-1"})
    assert r.headers["x-request-id"] == "my-req-1"
    bare = httpx.Client(base_url=servers["iris"].url)  # health and metrics need no token
    assert bare.get("/livez").status_code == 200 and bare.get("/readyz").status_code == 200
    metrics = bare.get("/metrics").text
    assert 'kiln_requests_total{code="200"}' in metrics and "kiln_request_duration_seconds_bucket" in metrics
    assert "kiln_batch_size_bucket" in metrics and "kiln_capture_dropped_total" in metrics
    assert servers["iris"].health() == "Healthy"


def test_tabular_classification_one_response_shape(servers: dict, token: str) -> None:
    """{"predictions": [{"label", "score"}, ...]}, one per instance, one instance or several;
    rows as objects or as lists in feature order."""
    c = _c(servers, "iris", token)
    one = c.post("/inference", json={"instances": [ROW]}).json()
    assert list(one) == ["predictions"] and len(one["predictions"]) == 1
    assert set(one["predictions"][0]) == {"label", "score"} and one["predictions"][0]["label"] == "setosa"
    two = c.post("/predict", json={"instances": [ROW, list(ROW_VIRGINICA.values())]}).json()["predictions"]
    assert [p["label"] for p in two] == ["setosa", "virginica"]
    # the fitted StandardScaler saved with the dataset is applied: raw rows in, right answers out
    assert two[1]["score"] > 0.8 and abs(two[0]["score"] - one["predictions"][0]["score"]) < 1e-6
    r = c.post("/predict", json={"instances": [[5.1, 3.5, 1.4]]})
    assert r.status_code == 400 and r.json()["errors"][0]["message"].startswith(
        "a row as a list has 4 values, in this order: sepal_length, sepal_width, petal_length, petal_width; got 3")


def test_auth_bearer_apikey_revoke_and_never_logged(servers: dict, serving_repo: Path) -> None:
    store = TokenStore(serving_repo / ".kiln/serving/tokens.json")
    tok = store.create("iris-api")
    url = servers["iris"].url
    body = {"instances": [ROW]}
    assert httpx.post(f"{url}/predict", json=body).status_code == 401
    r = httpx.post(f"{url}/predict", json=body, headers={"authorization": "Bearer kiln_00000000_wrong"})
    assert r.status_code == 401 and "token" in r.json()["error"]
    assert httpx.post(f"{url}/predict", json=body, headers={"authorization": f"Bearer {tok}"}).status_code == 200
    assert httpx.post(f"{url}/predict", json=body, headers={"x-api-key": tok}).status_code == 200
    # BentoML's own routes are behind the token too (except health, metrics, docs)
    assert httpx.get(f"{url}/schema.json").status_code == 401
    store.revoke("iris-api", tok.split("_")[1])
    time.sleep(1.3)  # servers re-read the token file at most once a second
    assert httpx.post(f"{url}/predict", json=body, headers={"x-api-key": tok}).status_code == 401
    log = servers["iris"].log_file.read_text()
    assert tok not in log and tok.split("_", 2)[2] not in log
    assert f"token={tok.split('_')[1]}" in log  # the id is logged, the secret never
    # access lines are written in batches at most 0.2 s late: the ones before the sleep are all there
    assert sum(1 for line in log.splitlines() if " access " in line and f"token={tok.split('_')[1]}" in line) >= 2
    assert sum(1 for line in log.splitlines() if " access " in line and " 401 " in line) >= 2


def test_public_deployment_needs_no_token(servers: dict, digits_data) -> None:
    X, _ = digits_data
    r = httpx.post(f"{servers['digits'].url}/predict", json={"instances": [{"data": png_b64(X[0].reshape(8, 8) * 15.9)}]})
    assert r.status_code == 200


def test_malformed_requests_are_4xx_with_messages(servers: dict, token: str) -> None:
    c = _c(servers, "iris", token)
    r = c.post("/predict", content=b"{oops")
    assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON")
    assert "request_id" in r.json()
    r = c.post("/predict", json={"rows": []})
    assert r.status_code == 400 and '"instances"' in r.json()["error"]
    bad = dict(ROW, petal_width="wide")
    r = c.post("/predict", json={"instances": [ROW, ROW, bad, {"sepal_length": 1}]})
    assert r.status_code == 400
    j = r.json()
    assert "instances[2].petal_width" in j["error"] and "expected a number" in j["error"]
    assert j["errors"][0] == {"instance": 2, "field": "petal_width", "message": "expected a number, got str 'wide'"}
    assert j["errors"][1]["instance"] == 3 and j["errors"][1]["field"] == "sepal_width"
    r = c.post("/predict", json={"instances": [ROW] * 9})  # limit: 8 per request
    assert r.status_code == 413 and "9 instances" in r.json()["error"]
    r = c.post("/predict", json={"instances": [dict(ROW, pad="x" * 70_000)]})  # limit: 64 KiB
    assert r.status_code == 413 and "limit" in r.json()["error"]
    d = _c(servers, "digits")
    r = d.post("/predict", json={"instances": [{"data": png_b64(np.zeros((8, 8)))}, {"data": "bm90IGFuIGltYWdl"}]})
    assert r.status_code == 400 and "instances[1].data: not a decodable image" in r.json()["error"]
    r = d.post("/predict", json={"instances": [{"data": 12}]})
    assert r.status_code == 400 and "instances[0].data: expected a base64 string" in r.json()["error"]


def test_bad_instance_never_fails_concurrent_batched_requests(servers: dict, token: str) -> None:
    c = _c(servers, "iris", token)

    def call(i: int) -> int:
        body = {"instances": [dict(ROW, sepal_length="x")]} if i % 4 == 0 else {"instances": [ROW, ROW_VIRGINICA]}
        return c.post("/predict", json=body).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        codes = list(ex.map(call, range(200)))
    assert codes.count(400) == 50 and codes.count(200) == 150


def test_image_classifier_torch(servers: dict, digits_data) -> None:
    X, y = digits_data
    d = _c(servers, "digits")
    idx = list(range(0, 1500, 30))  # 50 images, also from the training set: the model is tiny
    insts = [{"data": png_b64(X[i].reshape(8, 8) * 15.9)} for i in idx]
    preds = []
    for k in range(0, len(insts), 10):
        preds += d.post("/predict", json={"instances": insts[k:k + 10]}).json()["predictions"]
    assert all(len(p) == 3 for p in preds)  # top_k 3
    one = d.post("/predict", json={"instances": insts[:1]}).json()  # one instance: the same shape
    assert list(one) == ["predictions"] and len(one["predictions"]) == 1  # batch size changes float rounding only
    assert [p["label"] for p in one["predictions"][0]] == [p["label"] for p in preds[0]]
    assert np.allclose([p["score"] for p in one["predictions"][0]], [p["score"] for p in preds[0]], atol=1e-5)
    acc = np.mean([int(p[0]["label"]) == y[i] for p, i in zip(preds, idx)])
    assert acc >= 0.8, acc


def _rect_png(w: int, h: int, box: tuple[int, int, int, int]) -> str:
    a = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 255
    return png_b64(a)


def test_detection_format(servers: dict) -> None:
    d = _c(servers, "boxes")
    r = d.post("/predict", json={"instances": [{"data": _rect_png(128, 64, (32, 16, 96, 48))},
                                               {"data": _rect_png(40, 40, (0, 0, 0, 0))}]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 2 and preds[1] == []  # a black image has no objects
    (obj,) = preds[0]
    assert set(obj) == {"balloon", "score"} and obj["score"] > 0.9
    b = obj["balloon"]
    assert abs(b["xmin"] - 32) <= 4 and abs(b["ymin"] - 16) <= 2 and abs(b["xmax"] - 96) <= 4 and abs(b["ymax"] - 48) <= 2


def test_segmentation_format(servers: dict) -> None:
    d = _c(servers, "masks")
    r = d.post("/predict", json={"instances": [{"data": _rect_png(16, 16, (0, 0, 8, 16))}]})
    mask = r.json()["predictions"][0]
    assert len(mask) == 16 and all(len(row) == 16 for row in mask)
    assert all(row[:7] == [1] * 7 and row[9:] == [0] * 7 for row in mask)


def test_image_bombs_are_refused_from_the_header_before_decoding(servers: dict) -> None:
    """A 10,000 x 10,000 PNG is ~100 KB on the wire and 100 MB+ once decoded: refused from its
    header (the digits model takes 8 x 8, so its default limit is the 4,000,000-pixel floor)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 200_000
    bomb = base64.b64encode(buf.getvalue()).decode()
    d = _c(servers, "digits")
    t = time.perf_counter()
    r = d.post("/predict", json={"instances": [{"data": bomb}]})
    took = time.perf_counter() - t
    assert r.status_code == 400, r.text
    assert "image is 10000 x 10000 pixels, more than the 4,000,000 this deployment accepts" in r.json()["error"]
    print(f"bomb refused in {took * 1000:.0f} ms")
    ok = d.post("/predict", json={"instances": [{"data": png_b64(np.zeros((1000, 1000)))}]})
    assert ok.status_code == 200  # large but within the limit: resized to the model's input
    # limits.maxImagePixels, set to 20,000 for the masks deployment
    m = _c(servers, "masks")
    r = m.post("/predict", json={"instances": [{"data": _rect_png(200, 200, (0, 0, 8, 8))}]})
    assert r.status_code == 400 and "more than the 20,000 this deployment accepts" in r.json()["error"]
    assert m.post("/predict", json={"instances": [{"data": _rect_png(100, 100, (0, 0, 8, 8))}]}).status_code == 200


def _http_reply(s: Any) -> bytes:
    """One whole HTTP response from a socket: the body may come in a later segment than the
    headers (it did at load 12, and one recv() then missed it)."""
    import re

    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"content-length: *(\d+)", head, re.I)
        if sep and m and len(body) >= int(m.group(1)):
            return data
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_slow_bodies_time_out_and_do_not_lock_out_other_clients(servers: dict) -> None:
    """The masks deployment allows 4 requests in flight and 5 s per request. Eight clients that
    send their body a byte at a time must neither take those places (in-flight is counted once a
    body is in) nor hold their connection past the timeout (408)."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(servers["masks"].url)
    slow = []
    for _ in range(8):
        s = socket.create_connection((u.hostname, u.port), timeout=30)
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{")
        slow.append(s)
    try:
        m = _c(servers, "masks")
        for _ in range(3):  # while all eight are still sending
            r = m.post("/predict", json={"instances": [{"data": _rect_png(16, 16, (0, 0, 8, 16))}]})
            assert r.status_code == 200, r.text
        t = time.perf_counter()
        replies = []
        for s in slow:
            s.settimeout(30)
            replies.append(_http_reply(s))
        waited = time.perf_counter() - t
        assert all(b" 408 " in rep.split(b"\r\n", 1)[0] for rep in replies), replies[0][:200]
        assert b"did not arrive within 5s" in replies[0]
        assert waited < 20, waited
    finally:
        for s in slow:
            s.close()


def test_openapi_and_test_page(servers: dict) -> None:
    c = _c(servers, "iris")
    doc = c.get("/openapi.json").json()
    assert doc["x-kiln"]["features"] == FEATURES and doc["x-kiln"]["task"] == "classification"
    assert set(doc["paths"]) == {"/predict", "/inference"} and "bearer" in doc["components"]["securitySchemes"]
    page = c.get("/ui")
    assert page.status_code == 200 and "Service test" in page.text and "openapi.json" in page.text


def test_capture_writes_sample(servers: dict, serving_repo: Path, token: str) -> None:
    c = _c(servers, "iris", token)
    c.post("/predict", json={"instances": [ROW_VIRGINICA]})
    index = serving_repo / ".kiln" / "capture" / "iris-api" / "index.jsonl"
    deadline = time.time() + 10
    while time.time() < deadline and not index.exists():
        time.sleep(0.1)
    recs = [json.loads(x) for x in index.read_text().splitlines()]
    assert any(r["input"] == ROW_VIRGINICA and r["prediction"]["label"] == "virginica" for r in recs)
    assert all(r["deployment"] == "iris-api" and r["model"] == "iris" for r in recs)
    assert len(recs) <= 50  # maxPerDay
    # kiln's own smoke test marks its request: answered, never captured
    marked = {**ROW_VIRGINICA, "sepal_length": 7.123}
    r = c.post("/predict", json={"instances": [marked]}, headers={NO_CAPTURE_HEADER: "1"})
    assert r.status_code == 200
    c.post("/predict", json={"instances": [ROW]})  # an unmarked one after it: written once both are
    deadline = time.time() + 10
    while time.time() < deadline and not any(json.loads(x)["input"] == ROW for x in index.read_text().splitlines()):
        time.sleep(0.1)
    recs = [json.loads(x) for x in index.read_text().splitlines()]
    assert any(r["input"] == ROW for r in recs) and not any(r["input"] == marked for r in recs)


def test_load_from_second_process_no_5xx(servers: dict, token: str, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"instances": [ROW]}))
    out = subprocess.run([sys.executable, "-m", "kiln.bento.loadgen", f"{servers['iris'].url}/predict",
                          "--body-file", str(body), "--requests", "800", "--seconds", "30", "--concurrency", "16",
                          "--bad-every", "10", "--header", f"X-API-Key: {token}"],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["requests"] >= 200 and res["errors"] == 0
    assert not any(code.startswith("5") for code in res["codes"]), res
    assert res["bad_sent"] > 0 and res["bad_4xx"] == res["bad_sent"], res
    assert res["good_non200"] == 0, res


def test_update_to_new_version_and_health(serving_repo: Path) -> None:
    from kiln.bento.fastpath import ServeConfig
    from kiln.bento.registry import Registry, default_home
    from kiln.bento.server import ManagedServer, server_processes

    reg = Registry(default_home(serving_repo))
    v2 = reg.register("masks", reg.path("masks", 1), "torch")  # a copy of v1's directory
    with ManagedServer(ServeConfig(deployment="masks-upd", model="masks", version=1, public=True), serving_repo) as s:
        assert s.health() == "Healthy"
        old_port = s.port
        assert s.update(v2) is True
        assert s.port != old_port and s.health() == "Healthy"
        assert httpx.get(f"{s.url}/openapi.json").json()["x-kiln"]["version"] == v2
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{old_port}/readyz", timeout=2)
        assert json.loads((s.dir / "server.json").read_text())["version"] == v2
        assert s.update(v2) is False
        sid = s.server_id
        assert len(server_processes(sid)) >= 2  # the arbiter and its worker carry the start's id
        s.proc.kill()  # the arbiter dies (OOM, kill -9): its worker runs on in a session of its own
        s.proc.wait()
        assert s.health() == "Degraded"
        assert server_processes(sid)
    # stop() finds the orphaned worker by the start's id: nothing of either version runs on
    deadline = time.monotonic() + 10
    while server_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server_processes(sid) == []
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{s.url}/readyz", timeout=2)


def test_missing_model_fails_cleanly(serving_repo: Path) -> None:
    from kiln.bento.fastpath import ServeConfig
    from kiln.bento.server import ManagedServer
    from kiln.errors import NotFound

    with pytest.raises(NotFound, match="no version 42"):
        ManagedServer(ServeConfig(deployment="ghost", model="iris", version=42), serving_repo).start()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_test_page_screenshot(servers: dict, tmp_path: Path) -> None:
    shot = tmp_path / "ui.png"
    r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,800",
                        f"--screenshot={shot}", "--virtual-time-budget=5000", f"{servers['iris'].url}/ui"],
                       capture_output=True, text=True, timeout=60)
    assert shot.exists(), r.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (800, 1000) and img.std() > 5  # not a blank page
    out = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          "--virtual-time-budget=5000", f"{servers['iris'].url}/ui"],
                         capture_output=True, text=True, timeout=60).stdout
    assert "iris-api" in out and 'name="petal_width"' in out  # the page built its form from openapi.json


def test_broken_model_fails_fast_with_the_error(serving_repo: Path, tmp_path: Path) -> None:
    from kiln.bento.fastpath import ServeConfig
    from kiln.bento.registry import Registry, default_home
    from kiln.bento.server import ManagedServer, ServerError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    reg = Registry(default_home(serving_repo))
    v = reg.register("broken", bad, "onnx", serving={"task": "regression", "input": "tabular", "features": ["a"]})
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="failed to start: .*(ONNX|onnx|Protobuf|protobuf|INVALID)"):
        with ManagedServer(ServeConfig(deployment="broken", model="broken", version=v, public=True), serving_repo,
                           start_timeout=120):
            pass
    assert time.monotonic() - t0 < 60  # not the whole start timeout


def test_bentoml_build_offline_and_containerize_fails_cleanly(serving_repo: Path, monkeypatch) -> None:
    import os

    import yaml

    from kiln.bento.fastpath import ServeConfig
    from kiln.bento.server import ServerError, build_bento, containerize
    from kiln.errors import ConfigError

    if shutil.which("uv") is None:
        monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if shutil.which("uv") is None:
        pytest.skip("uv is not installed (pip install uv): bentoml build needs it")
    tag = build_bento(ServeConfig(deployment="masks-build", model="masks", version=1, public=True), serving_repo)
    name, _, version = tag.partition(":")
    assert name == "kiln-deployment" and version
    bento_yaml = next((serving_repo / ".kiln/serving/masks-build").glob(f"home-*/bentos/{name}/{version}/bento.yaml"))
    info = yaml.safe_load(bento_yaml.read_text())
    assert [m["tag"] for m in info["services"][0]["models"]] == ["masks:v1"]  # the service's model
    assert info["labels"]["deployment"] == "masks-build"
    with pytest.raises((ConfigError, ServerError), match="containerize|container engine"):
        containerize(tag)
