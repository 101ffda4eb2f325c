"""Overhead of kiln's local runner over running the same processes by hand.

A 100-task DAG (10 layers of 10 tasks; every task depends on two tasks of the layer before) of
`true` commands runs three ways, in this one process, with the same concurrency:
1. LocalRunner (state written to a temp dir as in real use),
2. a bare Python scheduler: subprocess.run + ThreadPoolExecutor, a task submitted as soon as its
   dependencies finished (the baseline),
3. kfp.local's SubprocessRunner, if kfp is importable (kiln does not depend on it).
Prints best and median wall times of --repeat interleaved runs each, and the ratios runner/baseline
(target <= 1.3x).

    python bench/runner_overhead.py [--concurrency N] [--repeat 9]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kiln.runners.local import LocalRunner

LAYERS, WIDTH = 10, 10


def deps_of(layer: int, i: int) -> list[str]:
    if layer == 0:
        return []
    return sorted({f"t{layer - 1}-{i}", f"t{layer - 1}-{(i + 1) % WIDTH}"})


def manifest() -> dict:
    tasks = []
    for layer in range(LAYERS):
        for i in range(WIDTH):
            t = {"name": f"t{layer}-{i}", "template": "noop"}
            d = deps_of(layer, i)
            if d:
                t["depends"] = " && ".join(d)
            tasks.append(t)
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "bench-overhead"},
            "spec": {"entrypoint": "main", "templates": [
                {"name": "main", "dag": {"tasks": tasks}},
                {"name": "noop", "container": {"image": "busybox", "command": ["true"]}}]}}


def run_local(concurrency: int) -> float:
    d = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    try:
        runner = LocalRunner(d / "runs", max_concurrency=concurrency)
        t0 = time.perf_counter()
        out = runner.submit(manifest())
        dt = time.perf_counter() - t0
        assert out["status"]["phase"] == "Succeeded", out["status"]["message"]
        assert sum(1 for n in out["status"]["nodes"].values() if n["type"] == "Pod") == LAYERS * WIDTH
        return dt
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_bare(concurrency: int) -> float:
    names = [f"t{l}-{i}" for l in range(LAYERS) for i in range(WIDTH)]
    deps = {f"t{l}-{i}": deps_of(l, i) for l in range(LAYERS) for i in range(WIDTH)}
    waiting = {n: set(deps[n]) for n in names}
    dependents: dict[str, list[str]] = {n: [] for n in names}
    for n, ds in deps.items():
        for x in ds:
            dependents[x].append(n)
    lock = threading.Lock()
    done = threading.Event()
    finished = [0]
    pool = ThreadPoolExecutor(max_workers=concurrency)

    def task(n: str) -> None:
        subprocess.run(["true"], check=True)
        ready = []
        with lock:
            finished[0] += 1
            for m in dependents[n]:
                waiting[m].discard(n)
                if not waiting[m]:
                    ready.append(m)
            if finished[0] == len(names):
                done.set()
        for m in ready:
            pool.submit(task, m)

    t0 = time.perf_counter()
    for n in names:
        if not deps[n]:
            pool.submit(task, n)
    done.wait()
    dt = time.perf_counter() - t0
    pool.shutdown()
    return dt


def run_kfp() -> float | None:
    try:
        from kfp import dsl, local  # type: ignore[import-not-found]
    except ImportError:
        return None
    local.init(runner=local.SubprocessRunner(use_venv=False))

    @dsl.container_component
    def noop():  # pragma: no cover - only with kfp installed
        return dsl.ContainerSpec(image="busybox", command=["true"])

    @dsl.pipeline
    def pipe():  # pragma: no cover
        prev = [noop() for _ in range(WIDTH)]
        for _ in range(LAYERS - 1):
            cur = []
            for i in range(WIDTH):
                t = noop()
                t.after(prev[i], prev[(i + 1) % WIDTH])
                cur.append(t)
            prev = cur

    t0 = time.perf_counter()
    pipe()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=9)
    a = ap.parse_args()
    run_bare(a.concurrency)  # warm-up: page cache, fork paths
    run_local(a.concurrency)
    # interleaved, so a noisy neighbour slows both sides alike
    bares, locals_ = [], []
    for _ in range(a.repeat):
        bares.append(run_bare(a.concurrency))
        locals_.append(run_local(a.concurrency))
    bare, local_t = min(bares), min(locals_)
    bare_med, local_med = statistics.median(bares), statistics.median(locals_)
    print(f"100-task DAG (10x10) of `true`, concurrency {a.concurrency}, {a.repeat} interleaved runs each")
    print(f"  bare subprocess+ThreadPoolExecutor: best {bare:.3f} s, median {bare_med:.3f} s")
    print(f"  kiln LocalRunner:                   best {local_t:.3f} s, median {local_med:.3f} s")
    print(f"  ratio runner/bare:                  best {local_t / bare:.2f}x, median {local_med / bare_med:.2f}x (target <= 1.3x)")
    try:
        k = run_kfp()
    except Exception as exc:  # kfp present but unable to run here
        print(f"  kfp.local SubprocessRunner: failed ({type(exc).__name__}: {exc})")
    else:
        print("  kfp not installed" if k is None else f"  kfp.local SubprocessRunner:         {k:.3f} s ({k / bare:.2f}x)")


if __name__ == "__main__":
    main()
