"""Serving throughput: a kiln deployment (BentoML + fast path) vs a bare Starlette + uvicorn +
onnxruntime app serving the same ONNX model, measured in one run, loopback only.

Model: a digits classifier (sklearn LogisticRegression on 8x8 digits -> ONNX), one instance per
request as EasyMaker JSON: tabular (64 pixel features) by default, ``--image`` for base64 PNGs.
Load: ``wrk`` (apt; one thread, 16 keep-alive connections) when installed, else
``kiln.bento.loadgen`` (httpx, which itself needs most of a core). All three servers run at once and
are measured in interleaved rounds after a warm-up (the median round is reported), so a busy
neighbour on this shared machine hits each alike; kiln with batching off and on.

    .venv/bin/python bench/serving.py [--seconds 10] [--rounds 3] [--image] [--loadgen httpx]

Prints one line per server (req/s, p50, p99) and ratios vs bare. Target: kiln >= 0.8x bare.
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
    import base64, io, os, sys
    import numpy as np, onnxruntime as ort, orjson
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.environ["MODEL"], sess_options=so, providers=["CPUExecutionProvider"])
    FEATS = [f"p{i}" for i in range(64)]
    LABELS = [str(i) for i in range(10)]
    IMAGE = os.environ.get("IMAGE") == "1"
    async def predict(request):
        doc = orjson.loads(await request.body())
        if IMAGE:
            rows = [np.asarray(Image.open(io.BytesIO(base64.b64decode(i["data"]))).convert("L"), np.float32).reshape(-1) / 255 * 16
                    for i in doc["instances"]]
        else:
            rows = [[i[f] for f in FEATS] for i in doc["instances"]]
        p = sess.run(["probabilities"], {"X": np.asarray(rows, np.float32)})[0]
        out = [[{"score": float(r[k]), "label": LABELS[k]} for k in np.argsort(-r)] for r in p]
        return Response(orjson.dumps(out[0] if len(out) == 1 else out), media_type="application/json")
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--image", action="store_true", help="base64 PNG instances instead of tabular rows")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--loadgen", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
    args = ap.parse_args()

    from PIL import Image
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from kiln.bento.auth import TokenStore
    from kiln.bento.fastpath import ServeConfig
    from kiln.bento.registry import Registry, default_home
    from kiln.bento.server import ManagedServer, free_port

    X, y = load_digits(return_X_y=True)
    clf = LogisticRegression(max_iter=2000).fit(X.astype(np.float32), y)
    onx = to_onnx(clf, X[:1].astype(np.float32), options={id(clf): {"zipmap": False}})
    repo = Path(tempfile.mkdtemp(prefix="kiln-bench-serving-"))
    feats = [f"p{i}" for i in range(64)]
    serving = ({"task": "classification", "input": "image", "image": {"size": [8, 8], "mode": "L", "scale": 255 / 16},
                "labels": [str(i) for i in range(10)]} if args.image else
               {"task": "classification", "input": "tabular", "features": feats, "labels": [str(i) for i in range(10)]})
    reg = Registry(default_home(repo))
    v = reg.register("digits", onx, "onnx", serving=serving)
    model_file = reg.path("digits", v) / "model.onnx"
    if args.image:
        buf = io.BytesIO()
        Image.fromarray((X[0].reshape(8, 8) * 15.9).astype(np.uint8)).save(buf, format="PNG")
        inst = {"data": base64.b64encode(buf.getvalue()).decode()}
    else:
        inst = dict(zip(feats, X[0].tolist()))
    body = repo / "body.json"
    body.write_text(json.dumps({"instances": [inst]}))
    results: dict[str, dict] = {}

    port = free_port()
    app_py = repo / "bare_app.py"
    app_py.write_text(BARE_APP)
    env = dict(os.environ, MODEL=str(model_file), IMAGE="1" if args.image else "0", OMP_NUM_THREADS="1")
    bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--host", "127.0.0.1", "--port", str(port),
                             "--no-access-log", "--log-level", "warning"], cwd=repo, env=env)
    kilns = {name: ManagedServer(ServeConfig(deployment=f"bench-{i}", model="digits", version=v, batching=b), repo)
             for i, (name, b) in enumerate((("kiln (batching off)", {"enabled": False}),
                                            ("kiln (batching on)", {"enabled": True, "maxBatchSize": 32, "maxLatencyMs": 5})))}
    runs: dict[str, list[dict]] = {}
    try:
        _wait_port(port)
        for s in kilns.values():
            s.start()
        for s in kilns.values():
            s.wait_ready()
        targets = {"bare starlette+uvicorn": (f"http://127.0.0.1:{port}/predict", [])}
        tokens = TokenStore(repo / ".kiln/serving/tokens.json")
        targets.update({name: (f"{s.url}/predict", [f"Authorization: Bearer {tokens.create(s.cfg.deployment)}"])
                        for name, s in kilns.items()})
        for url, hdrs in targets.values():  # warm-up
            _load(url, body, argparse.Namespace(**{**vars(args), "seconds": 2, "requests": 500}), hdrs)
        for _ in range(args.rounds):  # interleaved: a busy neighbour hits every server alike
            for name, (url, hdrs) in targets.items():
                runs.setdefault(name, []).append(_load(url, body, args, hdrs))
    finally:
        bare.terminate()
        bare.wait(10)
        for s in kilns.values():
            s.stop()
    results = {name: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2] for name, rs in runs.items()}

    print(f"serving bench: {'image' if args.image else 'tabular'} digits ONNX, 1 instance/request, 16 connections, "
          f"{args.seconds:.0f}s x {args.rounds} interleaved rounds (median), load generator {args.loadgen}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, r in results.items():
        bad = r["codes"]
        # ratio per round (same minute, same neighbours), then the median and the range
        ratios = sorted(k["rps"] / b["rps"] for k, b in zip(runs[name], runs["bare starlette+uvicorn"]))
        print(f"  {name:24} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
              f"x{ratios[len(ratios) // 2]:.2f} of bare (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})  n={r['requests']}"
              f"{'  non-200: ' + str(bad) if bad else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
