"""AutoML on a raw 50k-row table within its time budget, and serving its raw rows: kiln vs bare.

1. A generated table as people have it (50,000 rows: an identifier, strings with spaces and
   symbols, empty cells in numbers and strings, a yes/no label not in the last column; or a
   numeric target with ``--task regression``) goes through ``kiln apply`` in a temp git repo: a
   Dataset naming the file and the label, an ``automl`` Experiment with no candidates,
   ``timeBudget: 60`` and ONNX export. Printed: the search's time (first candidate start to last
   candidate end, from the run folder) and the whole apply's, each over the budget (target <= 1.3),
   and each candidate's state.
2. The registered ONNX model served by kiln (BentoML + fast path, batching off, as
   ``bench/serving.py``) and by a bare Starlette + uvicorn + onnxruntime app with the same raw-row
   handling (columns by name, null -> NaN or '' per the model's typed inputs), one raw row with
   strings and a null per request, 16 connections, interleaved rounds (median): req/s, p50, p99,
   each server's CPU microseconds per request (its processes and children: on a shared machine
   the steadier measure of its work) and kiln/bare (target >= 0.8).

    .venv/bin/python bench/tabular_automl.py [--task classification|regression] [--rows 50000]
        [--budget 60] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from serving import _cpu_s, _load, _wait_port  # noqa: E402 - the serving bench's load generator, CPU, port wait

KILN = [sys.executable, "-m", "kiln.cli"]

# the bare stack: the ONNX model's typed inputs (one per column) filled from the raw row by name,
# null as NaN (numbers) or '' (strings: the featuriser's missing value), as kiln's runtime does
BARE_APP = textwrap.dedent('''
    import math, os
    import numpy as np, onnxruntime as ort, orjson
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.environ["MODEL"], sess_options=so, providers=["CPUExecutionProvider"])
    INPUTS = [(i.name, i.type) for i in sess.get_inputs()]
    LABELS = orjson.loads(os.environ["LABELS"])
    OUT = [o.name for o in sess.get_outputs()]
    def col(name, kind, rows):
        if kind == "tensor(string)":
            return np.array([["" if r[name] is None else str(r[name])] for r in rows], dtype=object)
        dt = np.float64 if kind == "tensor(double)" else np.float32
        return np.array([[math.nan if r[name] is None else float(r[name])] for r in rows], dtype=dt)
    async def predict(request):
        rows = orjson.loads(await request.body())["instances"]
        res = sess.run(None, {n: col(n, k, rows) for n, k in INPUTS})
        if LABELS:
            p = res[OUT.index("probabilities")] if "probabilities" in OUT else res[-1]
            out = [[{"score": float(r[k]), "label": LABELS[k]} for k in np.argsort(-r)] for r in p]
            doc = out[0] if len(out) == 1 else out
        else:
            doc = {"predictions": [float(v) for v in np.asarray(res[0]).reshape(-1)]}  # kiln's shape
        return Response(orjson.dumps(doc), media_type="application/json")
    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
''')


def make_table(path: Path, rows: int, regression: bool, seed: int = 0) -> dict:
    """The CSV, and one raw row of it (strings, a null) for the serving load."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    region = rng.choice(["North East", "South & West", "Central", "Île-de-France", "Greater London"], rows)
    plan = rng.choice(["basic", "Premium Plus", "family (4)"], rows, p=[0.5, 0.3, 0.2])
    age = rng.integers(18, 80, rows).astype(float)
    income = rng.lognormal(10, 0.5, rows)
    visits = rng.poisson(3, rows)
    score = rng.normal(0, 1, rows)
    signal = (0.04 * (age - 50) + 1.5 * (plan == "Premium Plus") - 0.8 * (region == "Central")
              + 0.3 * visits - 0.5 * score + rng.normal(0, 1, rows))
    df = pd.DataFrame({
        "spend" if regression else "churned": np.round(signal * 10 + 100, 2) if regression
        else np.where(signal > np.median(signal), "yes", "no"),
        "customer id": [f"C-{100000 + i}" for i in range(rows)],
        "region": region, "plan": plan, "age": age, "income": np.round(income, 2), "visits": visits,
        "score": np.round(score, 4)})
    df.loc[rng.random(rows) < 0.05, "age"] = np.nan
    df.loc[rng.random(rows) < 0.03, "region"] = None
    df.loc[rng.random(rows) < 0.02, "score"] = np.nan
    df.to_csv(path, index=False)
    row = {k: (None if isinstance(v, float) and np.isnan(v) else v.item() if hasattr(v, "item") else v)
           for k, v in df.iloc[7].to_dict().items() if k not in ("spend", "churned", "customer id")}
    row["age"] = None  # a null in every request: the model imputes it
    return row


def kiln(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*KILN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def automl(repo: Path, task: str, rows: int, budget: int) -> tuple[dict, dict]:
    for args in (["init", "-q"], ["config", "user.email", "bench@example.com"], ["config", "user.name", "bench"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (repo / "raw").mkdir()
    (repo / "specs").mkdir()
    row = make_table(repo / "raw/customers.csv", rows, task == "regression")
    label = "spend" if task == "regression" else "churned"
    metric = "validation_r2" if task == "regression" else "validation_accuracy"
    (repo / "specs/ds.yaml").write_text(
        "apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {name: customers}\n"
        f"spec: {{type: tabular, task: {task}, source: {{path: raw/customers.csv}}, label: {label}}}\n")
    (repo / "specs/e.yaml").write_text(
        "apiVersion: kiln.dev/v1alpha1\nkind: Experiment\nmetadata: {name: e}\nspec:\n"
        f"  mode: automl\n  dataset: {{name: customers}}\n  objective: {{metric: {metric}}}\n"
        f"  automl: {{timeBudget: {budget}}}\n  register: {{model: customers, export: [onnx]}}\n")
    # the dataset version first: the budget is the experiment's, not the table's import
    t0 = time.time()
    out = kiln("apply", "--target", "Dataset/customers", cwd=repo)
    if out.returncode:
        sys.exit(f"dataset apply failed:\n{out.stdout}\n{out.stderr}")
    t_data = time.time() - t0
    t0 = time.time()
    out = kiln("apply", cwd=repo)
    t_apply = time.time() - t0
    if out.returncode:
        sys.exit(f"apply failed:\n{out.stdout}\n{out.stderr}")
    extra = json.loads(kiln("get", "experiment", "e", "-o", "json", cwd=repo).stdout)["extra"]
    run = Path(extra["run"])
    start = json.loads((run / "automl-start.json").read_text())["started"]
    recs = [json.loads(p.read_text()) for p in (run / "trials").glob("*/trial.json")]
    end = max(datetime.fromisoformat(r["finished"]).timestamp() for r in recs if r.get("finished"))
    timing = {"data": t_data, "apply": t_apply, "search": end - start, "row": row, "recs": recs}
    return extra, timing


def serve(repo: Path, extra: dict, row: dict, args: argparse.Namespace) -> dict[str, dict]:
    from kiln.bento.auth import TokenStore
    from kiln.bento.config import ServeConfig
    from kiln.bento.registry import Registry, default_home
    from kiln.bento.server import ManagedServer, free_port

    reg = Registry(default_home(repo))
    model, version = extra["registered"]["model"], extra["registered"]["version"]
    desc = reg.describe(model, version)
    serving = desc["serving"]
    model_file = desc.path / serving.get("file", "model.onnx")
    labels = serving.get("labels") or []
    body = repo / "body.json"
    body.write_text(json.dumps({"instances": [row]}))
    (repo / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    env = dict(os.environ, MODEL=str(model_file), LABELS=json.dumps(labels), OMP_NUM_THREADS="1")
    bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--host", "127.0.0.1", "--port",
                             str(port), "--no-access-log", "--log-level", "warning"], cwd=repo, env=env)
    # batching on is a Deployment's default; off is one request per model call, as the bare app
    servers = {name: ManagedServer(ServeConfig(deployment=f"bench-tab-{i}", model=model, version=version,
                                               batching=b), repo)
               for i, (name, b) in enumerate((("kiln (batching off)", {"enabled": False}),
                                              ("kiln (batching on)", {"enabled": True, "maxBatchSize": 32,
                                                                      "maxLatencyMs": 5})))}
    runs: dict[str, list[dict]] = {}
    try:
        _wait_port(port)
        for s in servers.values():
            s.start()
        for s in servers.values():
            s.wait_ready()
        tokens = TokenStore(repo / ".kiln/serving/tokens.json")
        targets = {"bare starlette+uvicorn": (f"http://127.0.0.1:{port}/predict", [])}
        targets.update({name: (f"{s.url}/predict", [f"Authorization: Bearer {tokens.create(s.cfg.deployment)}"])
                        for name, s in servers.items()})
        pids = {"bare starlette+uvicorn": bare.pid}
        pids.update({name: s.proc.pid for name, s in servers.items() if s.proc is not None})
        import httpx

        for name, (url, hdrs) in targets.items():  # both answer the raw row, alike
            h = dict(x.split(": ", 1) for x in hdrs)
            r = httpx.post(url, content=body.read_bytes(), headers={"Content-Type": "application/json", **h})
            r.raise_for_status()
            print(f"  {name} answers: {json.dumps(r.json())[:160]}")
        for url, hdrs in targets.values():  # warm-up
            _load(url, body, argparse.Namespace(**{**vars(args), "seconds": 2, "requests": 500}), hdrs)
        for _ in range(args.rounds):
            for name, (url, hdrs) in targets.items():
                # CPU time per request too: on a shared machine req/s is the share of the CPUs a
                # server got; its CPU microseconds per answer are the work it did
                cpu0 = _cpu_s(pids[name])
                r = _load(url, body, args, hdrs)
                r["cpu_us"] = (_cpu_s(pids[name]) - cpu0) / max(r["requests"], 1) * 1e6
                runs.setdefault(name, []).append(r)
    finally:
        bare.terminate()
        bare.wait(10)
        for s in servers.values():
            s.stop()
    return runs


def main() -> int:
    import shutil

    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["classification", "regression"], default="classification")
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--loadgen", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
    ap.add_argument("--keep", action="store_true", help="keep the temp repo (its path is printed)")
    args = ap.parse_args()

    repo = Path(tempfile.mkdtemp(prefix="kiln-bench-tabular-"))
    extra, t = automl(repo, args.task, args.rows, args.budget)
    print(f"tabular automl bench: {args.rows} rows ({args.task}), timeBudget {args.budget} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"  dataset version: {t['data']:.1f} s (before the experiment)")
    print(f"  search (first candidate start -> last candidate end): {t['search']:.1f} s = "
          f"{t['search'] / args.budget:.2f}x budget")
    print(f"  whole experiment apply (prepare, search, select, ONNX export + parity, register): "
          f"{t['apply']:.1f} s = {t['apply'] / args.budget:.2f}x budget (target <= 1.3)")
    for r in sorted(t["recs"], key=lambda r: r.get("number", 0)):
        took = (datetime.fromisoformat(r["finished"]) - datetime.fromisoformat(r["started"])).total_seconds() \
            if r.get("started") and r.get("finished") else None
        print(f"    {r['candidate']:34} {r['state']:9} {'' if took is None else f'{took:6.1f} s'}  "
              f"{r.get('objective') if r.get('objective') is not None else r.get('error', '')}")
    print(f"  {extra['info']}")

    runs = serve(repo, extra, t["row"], args)
    med = {name: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2] for name, rs in runs.items()}
    print(f"  serving one raw row per request, 16 connections, {args.seconds:.0f}s x {args.rounds} rounds "
          f"(median), {args.loadgen}; load average {os.getloadavg()[0]:.1f}")
    for name, r in med.items():
        ratios = sorted(k["rps"] / b["rps"] for k, b in zip(runs[name], runs["bare starlette+uvicorn"]))
        cpu = sorted(k["cpu_us"] for k in runs[name])[len(runs[name]) // 2]
        cpu_ratio = sorted(b["cpu_us"] / k["cpu_us"] for k, b in zip(runs[name], runs["bare starlette+uvicorn"]))
        print(f"    {name:24} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
              f"CPU {cpu:5.0f} us/req (bare's CPU/req over this: {cpu_ratio[len(cpu_ratio) // 2]:.2f})  "
              f"x{ratios[len(ratios) // 2]:.2f} of bare (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"
              f"{'  non-200: ' + str(r['codes']) if r['codes'] else ''}")
    if args.keep:
        print(f"  repo kept: {repo}")
    else:
        shutil.rmtree(repo, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
