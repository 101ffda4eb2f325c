"""Serving throughput: a kiln deployment (BentoML + fast path) vs a bare Starlette + uvicorn +
onnxruntime app serving the same ONNX model, measured in one run, loopback only.

Cases (``--case``), one instance per request as EasyMaker JSON:

- ``digits`` (default): a digits classifier (sklearn LogisticRegression on 8x8 digits -> ONNX), no
  preprocessing: tabular (64 pixel features), or ``--image`` for base64 PNGs;
- ``wine``: the example repo's wine-classifier as kiln builds it: the wine sample versioned with
  the dataset's seed op (StandardScaler, fitted on the train split), kiln's logistic_regression
  trained on it (with its featurisation) and exported to ONNX with the parity check, registered
  with the fitted preprocessing, requests carrying raw (unscaled) rows. The bare app applies the
  same fitted scaler with numpy before the same ONNX model.

Both servers answer ``{"predictions": [...]}`` with the same per-instance entry.
Load: ``wrk`` (apt; one thread, 16 keep-alive connections) when installed, else
``kiln.bento.loadgen`` (httpx, which itself needs most of a core). All three servers run at once and
are measured in interleaved rounds after a warm-up (the median round is reported), so a busy
neighbour on this shared machine hits each alike; kiln with batching off and on.

    .venv/bin/python bench/serving.py [--case digits|wine] [--seconds 10] [--rounds 3] [--image] [--loadgen httpx]

Prints one line per server (req/s, p50, p99, server CPU microseconds per request, the median
round) and ratios vs bare. Targets: kiln >= 0.8x bare req/s;
with preprocessing (wine) also p99 <= 2x bare.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

BARE_APP = textwrap.dedent('''
    import base64, io, json, os, sys
    import numpy as np, onnxruntime as ort, orjson
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.environ["MODEL"], sess_options=so, providers=["CPUExecutionProvider"])
    INPUT = sess.get_inputs()[0].name
    OUT = next(o.name for o in sess.get_outputs() if "prob" in o.name)
    CASE = json.loads(os.environ["CASE"])  # features, labels, image, and the fitted scaler if any
    FEATS, LABELS, IMAGE = CASE["features"], CASE["labels"], CASE["image"]
    MEAN = np.asarray(CASE["mean"]) if CASE.get("mean") else None
    SCALE = np.asarray(CASE["scale"]) if CASE.get("scale") else None
    async def predict(request):
        doc = orjson.loads(await request.body())
        if IMAGE:
            rows = [np.asarray(Image.open(io.BytesIO(base64.b64decode(i["data"]))).convert("L"), np.float32).reshape(-1) / 255 * 16
                    for i in doc["instances"]]
        else:
            rows = [[i[f] for f in FEATS] for i in doc["instances"]]
        x = np.asarray(rows, np.float64)
        if MEAN is not None:  # the dataset's fitted StandardScaler, in numpy
            x = (x - MEAN) / SCALE
        p = sess.run([OUT], {INPUT: x.astype(np.float32)})[0]
        if IMAGE:  # images: every class ranked; table rows: the best class and its score
            out = [[{"score": float(r[k]), "label": LABELS[k]} for k in np.argsort(-r)] for r in p]
        else:
            out = [{"label": LABELS[int(k)], "score": float(r[k])} for r, k in zip(p, p.argmax(1))]
        return Response(orjson.dumps({"predictions": out}), media_type="application/json")
    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
''')


def _wait_port(port: int, timeout: float = 60) -> None:
    import socket

    t = time.time() + timeout
    while time.time() < t:
        with socket.socket() as so:
            if so.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} not open")


def _wrk(url: str, body: Path, seconds: float, headers: list[str]) -> dict:
    """wrk (C, one thread, 16 connections): the load generator then costs little CPU."""
    import re

    lua = body.with_suffix(f".{abs(hash(tuple(headers)))}.lua")
    hdr = "".join(f'wrk.headers["{h.split(":", 1)[0].strip()}"] = "{h.split(":", 1)[1].strip()}"\n' for h in headers)
    lua.write_text(f'wrk.method = "POST"\nwrk.body = io.open("{body}"):read("*a")\n'
                   f'wrk.headers["Content-Type"] = "application/json"\n{hdr}')
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{int(seconds)}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    n = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": ms("50%"), "p99_ms": ms("99%"), "requests": n,
            "codes": {"non-2xx": int(non2xx.group(1))} if non2xx else {}}


def _cpu_s(pid: int) -> float:
    """CPU seconds of a server: the process and every child (BentoML serves from a worker)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def _load(url: str, body: Path, args, headers: list[str]) -> dict:
    if args.loadgen == "wrk":
        return _wrk(url, body, args.seconds, headers)
    cmd = [sys.executable, "-m", "kiln.bento.loadgen", url, "--body-file", str(body), "--concurrency", "16"]
    for h in headers:
        cmd += ["--header", h]
    out = subprocess.run(cmd + ["--requests", str(args.requests), "--seconds", str(args.seconds)],
                         check=True, capture_output=True, text=True, timeout=args.seconds + 60)
    r = json.loads(out.stdout)
    r["codes"] = {k: v for k, v in r["codes"].items() if k != "200"}
    return r


def _digits(repo: Path, image: bool) -> tuple[str, int, Path, dict, dict]:
    """The digits classifier, no preprocessing: (model, version, ONNX file, instance, bare app's case)."""
    from PIL import Image
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from kiln.bento.registry import Registry, default_home

    X, y = load_digits(return_X_y=True)
    clf = LogisticRegression(max_iter=2000).fit(X.astype(np.float32), y)
    onx = to_onnx(clf, X[:1].astype(np.float32), options={id(clf): {"zipmap": False}})
    feats, labels = [f"p{i}" for i in range(64)], [str(i) for i in range(10)]
    serving = ({"task": "classification", "input": "image", "image": {"size": [8, 8], "mode": "L", "scale": 255 / 16},
                "labels": labels} if image else
               {"task": "classification", "input": "tabular", "features": feats, "labels": labels})
    reg = Registry(default_home(repo))
    v = reg.register("digits", onx, "onnx", serving=serving)
    if image:
        buf = io.BytesIO()
        Image.fromarray((X[0].reshape(8, 8) * 15.9).astype(np.uint8)).save(buf, format="PNG")
        inst: dict = {"data": base64.b64encode(buf.getvalue()).decode()}
    else:
        inst = dict(zip(feats, X[0].tolist()))
    return "digits", v, reg.path("digits", v) / "model.onnx", inst, {"features": feats, "labels": labels, "image": image}


def _wine(repo: Path, image: bool) -> tuple[str, int, Path, dict, dict]:
    """specs/datasets/wine.yaml and the wine-automl experiment's logistic regression, built with
    kiln's own steps: the sample, the StandardScaler op fitted on the train split, the algorithm
    (with its featurisation), the ONNX export with its parity check, registration with the fitted
    preprocessing as the register step does it."""
    from kiln.algorithms.base import TrainData
    from kiln.algorithms.onnx import export_and_check
    from kiln.algorithms.registry import get_algorithm
    from kiln.bento.registry import Registry, default_home
    from kiln.controller.experiment.export import _serving
    from kiln.data.formats import load
    from kiln.data.preprocess import apply_ops, load_pipeline
    from kiln.data.samples import materialize_sample

    raw = load(materialize_sample("wine", repo / "raw"), "csv", label="target")
    ds = repo / "wine-v1"
    split = {"ratios": {"train": 0.7, "validation": 0.15, "test": 0.15}, "seed": 7}
    content = apply_ops(raw, None, [{"StandardScaler": {}}], ds, split=split)
    items = json.loads((ds / ".kiln" / "splits.json").read_text())["items"]
    data = TrainData(content, {int(k): s for k, s in items.items()})
    algo = get_algorithm("logistic_regression")
    model = algo.train(data, {})
    pkg = repo / "pkg"
    algo.save(model, pkg / "kiln-model")
    report = export_and_check(algo, model, pkg / "model.onnx", data.table("test")[0])
    assert report is not None and report.passed, report
    serving = _serving(algo, model.meta, "onnx", "model.onnx")
    serving.pop("feature_types", None)  # as kiln.controller.experiment.register does with preprocessing
    reg = Registry(default_home(repo))
    v = reg.register("wine-classifier", pkg, "onnx", serving=serving, preprocess_from=ds)
    scaler = load_pipeline(ds).ops[0]
    feats = list(serving["features"])
    assert list(scaler.cols) == feats, (scaler.cols, feats)
    frame = raw.table.frame
    inst = {f: float(frame.at[0, f]) for f in feats}  # a raw row, as in the CSV
    case = {"features": feats, "labels": serving["labels"], "image": False,
            "mean": scaler.est.mean_.tolist(), "scale": scaler.est.scale_.tolist()}
    return "wine-classifier", v, reg.path("wine-classifier", v) / "model.onnx", inst, case


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--image", action="store_true", help="base64 PNG instances instead of tabular rows")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--loadgen", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
    ap.add_argument("--case", choices=["digits", "wine"], default="digits",
                    help="digits: no preprocessing; wine: the example repo's model with its fitted StandardScaler")
    args = ap.parse_args()
    if args.case == "wine" and args.image:
        ap.error("--image is for the digits case")

    from kiln.bento.auth import TokenStore
    from kiln.bento.fastpath import ServeConfig
    from kiln.bento.server import ManagedServer, free_port

    repo = Path(tempfile.mkdtemp(prefix="kiln-bench-serving-"))
    name, v, model_file, inst, case = (_wine if args.case == "wine" else _digits)(repo, args.image)
    body = repo / "body.json"
    body.write_text(json.dumps({"instances": [inst]}))

    port = free_port()
    app_py = repo / "bare_app.py"
    app_py.write_text(BARE_APP)
    env = dict(os.environ, MODEL=str(model_file), CASE=json.dumps(case), OMP_NUM_THREADS="1")
    bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--host", "127.0.0.1", "--port", str(port),
                             "--no-access-log", "--log-level", "warning"], cwd=repo, env=env)
    kilns = {label: ManagedServer(ServeConfig(deployment=f"bench-{i}", model=name, version=v, batching=b), repo)
             for i, (label, b) in enumerate((("kiln (batching off)", {"enabled": False}),
                                            ("kiln (batching on)", {"enabled": True, "maxBatchSize": 32, "maxLatencyMs": 5})))}
    runs: dict[str, list[dict]] = {}
    try:
        _wait_port(port)
        for s in kilns.values():
            s.start()
        for s in kilns.values():
            s.wait_ready()
        targets = {"bare starlette+uvicorn": (f"http://127.0.0.1:{port}/predict", [])}
        pids = {"bare starlette+uvicorn": bare.pid, **{label: s.proc.pid for label, s in kilns.items() if s.proc}}
        tokens = TokenStore(repo / ".kiln/serving/tokens.json")
        targets.update({label: (f"{s.url}/predict", [f"Authorization: Bearer {tokens.create(s.cfg.deployment)}"])
                        for label, s in kilns.items()})
        for url, hdrs in targets.values():  # warm-up
            _load(url, body, argparse.Namespace(**{**vars(args), "seconds": 2, "requests": 500}), hdrs)
        for _ in range(args.rounds):  # interleaved: a busy neighbour hits every server alike
            for label, (url, hdrs) in targets.items():
                # CPU time per request too: on a shared machine req/s is the share of the CPUs a
                # server got; its CPU microseconds per answer are the work it did
                cpu0 = _cpu_s(pids[label])
                r = _load(url, body, args, hdrs)
                r["cpu_us"] = (_cpu_s(pids[label]) - cpu0) / max(r["requests"], 1) * 1e6
                runs.setdefault(label, []).append(r)
    finally:
        bare.terminate()
        bare.wait(10)
        for s in kilns.values():
            s.stop()
    results = {label: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2] for label, rs in runs.items()}

    what = {"digits": f"{'image' if args.image else 'tabular'} digits ONNX, no preprocessing",
            "wine": "wine-classifier ONNX (kiln logistic_regression) with its fitted StandardScaler, raw rows"}[args.case]
    print(f"serving bench: {what}, 1 instance/request, 16 connections, "
          f"{args.seconds:.0f}s x {args.rounds} interleaved rounds (median), load generator {args.loadgen}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    base = "bare starlette+uvicorn"
    for label, r in results.items():
        bad = r["codes"]
        # ratios per round (same minute, same neighbours), then the median and the range
        ratios = sorted(k["rps"] / b["rps"] for k, b in zip(runs[label], runs[base]))
        p99s = sorted(k["p99_ms"] / b["p99_ms"] for k, b in zip(runs[label], runs[base]))
        cpu = sorted(k["cpu_us"] for k in runs[label])[len(runs[label]) // 2]
        print(f"  {label:24} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
              f"CPU {cpu:5.0f} us/req  "
              f"x{ratios[len(ratios) // 2]:.2f} req/s of bare (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})  "
              f"p99 x{p99s[len(p99s) // 2]:.2f} of bare  n={r['requests']}"
              f"{'  non-200: ' + str(bad) if bad else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
