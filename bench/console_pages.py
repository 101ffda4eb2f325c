"""How long each console page takes to render with 1,000 objects and an experiment of 200 trials
(#17: target <= 300 ms each).

The records are written straight into a state store (no apply): 1,000 objects over 10 workspaces
(Workspaces with members and quotas, Datasets, Experiments, Deployments, LabelingJobs), one
Experiment with 200 trials (run folder with ``trial.json``, 20 steps of ``metrics.jsonl`` each,
``selected.json`` leaderboard, ``eval.json``), a shapes Dataset (images with boxes, 6 versions
with class counts) and 20 registered model versions with an audit log. Each page is rendered
through the Starlette app (``kiln ui``'s) in-process, ``--rounds`` times; the median and the worst
are reported. Deployments are recorded without a URL: the page's time is kiln's, not a network's.

Run: ``python bench/console_pages.py [--objects 1000] [--trials 200] [--rounds 7] [--shots DIR]``
(``--shots``: screenshots of the overview, experiment and dataset pages through headless Chromium,
as in the README).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

KINDS = ("Dataset", "Experiment", "Deployment", "LabelingJob")


def fill(repo: Path, objects: int, trials: int) -> None:
    from kiln.config import load_config
    from kiln.controller.experiment.home import run_dir
    from kiln.data.samples import materialize_sample
    from kiln.state import ObjectRecord, open_store

    rng = random.Random(7)
    config = load_config(repo)
    store = open_store(None, repo)
    workspaces = [f"team{i}" for i in range(10)]
    wf = {"name": "kiln-x", "phase": "Succeeded", "tasks": {"fetch": "Succeeded", "version": "Succeeded"}}
    with store.transaction():
        for ws in workspaces:
            store.put(
                ObjectRecord(
                    key=f"Workspace/default/{ws}",
                    sync="Synced",
                    health="Healthy",
                    spec={
                        "spec": {
                            "members": [{"user": f"u{j}@example.com", "role": "developer"} for j in range(8)],
                            "period": {"start": "2026-01-01", "end": "2027-06-30"},
                            "quotas": {"cpu": "16", "maxConcurrentJobs": 4, "maxDeployments": 5},
                        }
                    },
                )
            )
        for i in range(objects - len(workspaces) - 2):
            kind, ws = KINDS[i % len(KINDS)], workspaces[i % len(workspaces)]
            store.put(
                ObjectRecord(
                    key=f"{kind}/{ws}/obj-{i:04d}",
                    sync="Synced",
                    health="Healthy",
                    extra={"workflow": wf, "info": f"object {i}", "model": "m0", "version": 1}
                    if kind == "Deployment"
                    else {"workflow": wf, "info": f"object {i}"},
                )
            )
        # the experiment of many trials
        spec_hash = "f" * 16
        run = run_dir(config, "default", "big-hpo", spec_hash)
        recs = []
        for t in range(trials):
            tid = f"t{t:04d}"
            d = run / "trials" / tid
            d.mkdir(parents=True)
            value = 0.6 + 0.35 * rng.random()
            rec = {
                "id": tid,
                "number": t,
                "state": "COMPLETE",
                "params": {"max_depth": rng.randint(1, 12), "min_samples_leaf": rng.randint(1, 30)},
                "objective": value,
                "metrics": {"validation_accuracy": value, "validation_f1": value - 0.02},
                "started": "2026-12-07T10:00:00Z",
                "finished": "2026-12-07T10:00:05Z",
            }
            (d / "trial.json").write_text(json.dumps(rec))
            (d / "metrics.jsonl").write_text(
                "".join(
                    json.dumps({"step": s, "validation_accuracy": value * s / 20, "train_loss": 1 / s}) + "\n"
                    for s in range(1, 21)
                )
            )
            recs.append(rec)
        board = sorted(recs, key=lambda r: -r["objective"])
        (run / "selected.json").write_text(
            json.dumps({"leaderboard": [{**r, "rank": i + 1, "trial": r["id"]} for i, r in enumerate(board)]})
        )
        y = [rng.randrange(3) for _ in range(300)]
        (run / "eval.json").write_text(
            json.dumps(
                {
                    "split": "validation",
                    "classes": ["a", "b", "c"],
                    "y_true": y,
                    "scores": [[0.8 if j == (c if rng.random() < 0.85 else (c + 1) % 3) else 0.1 for j in range(3)] for c in y],
                }
            )
        )
        best = board[0]
        store.put(
            ObjectRecord(
                key="Experiment/default/big-hpo",
                spec_hash=spec_hash,
                sync="Synced",
                health="Healthy",
                spec={"spec": {"mode": "hpo", "objective": {"metric": "validation_accuracy", "direction": "maximize"}}},
                extra={
                    "mode": "hpo",
                    "trials": recs,
                    "workflow": {**wf, "name": "kiln-exp-big-hpo"},
                    "best": {"trial": best["id"], "value": best["objective"], "params": best["params"]},
                    "registered": {"model": "m0", "version": 20},
                    "dataset": {"dataset": "default/shapes", "number": "v6"},
                },
            )
        )
        # a detection dataset: images with boxes, versions with class counts
        data = repo / "data/default/shapes"
        materialize_sample("shapes", data)
        ids = [hashlib.md5(f"shapes-{v}".encode()).hexdigest() for v in range(6)]  # noqa: S324 - ids, not security
        versions = [
            {
                "id": ids[v],
                "created": f"2026-12-0{v + 1}T10:00:00+00:00",
                "files": 61 + v,
                "out": {"size": 120_000 + 900 * v},
                "per_class_counts": {"circle": 40 + v, "square": 45 + 2 * v, "triangle": 38 + 3 * v},
                "lineage": {
                    "source": "sample:shapes",
                    "parent": ids[v - 1] if v else None,
                    "ops": [{"op": "Resize"}] if v % 2 else [],
                },
            }
            for v in range(6)
        ]
        (repo / "data/default/shapes.versions.json").write_text(
            json.dumps({"current": versions[-1]["id"], "path": "data/default/shapes", "versions": versions})
        )
        store.put(
            ObjectRecord(
                key="Dataset/default/shapes",
                sync="Synced",
                health="Healthy",
                spec={"spec": {"type": "image", "task": "detection"}},
                extra={"number": "v6", "files": 66, "size": 124_500, "classes": versions[-1]["per_class_counts"]},
            )
        )
    store.close()
    models = config.kiln_dir() / "bentoml"
    for v in range(1, 21):
        d = models / "models" / "m0" / f"v{v}"
        d.mkdir(parents=True)
        (d / "model.yaml").write_text(
            json.dumps(
                {  # YAML is a superset of JSON
                    "name": "m0",
                    "version": f"v{v}",
                    "creation_time": "2026-12-07T10:00:00+00:00",
                    "labels": {"experiment": "default.big-hpo"},
                    "metadata": {
                        "metrics": {"validation_accuracy": 0.8 + v / 200},
                        "tags": ["nightly"] if v % 3 == 0 else [],
                        "objective": {"metric": "validation_accuracy", "value": 0.8 + v / 200},
                    },
                }
            )
        )
    (models / "kiln-registry.json").write_text(json.dumps({"aliases": {"m0": {"production": 20}}, "last_version": {"m0": 20}}))
    (models / "kiln-audit.jsonl").write_text(
        "".join(
            json.dumps(
                {"time": "2026-12-07T10:00:00Z", "who": "ci@example.com", "action": "register", "model": "m0", "version": v}
            )
            + "\n"
            for v in range(1, 21)
        )
    )


PAGES = [
    "/",
    "/datasets/default/shapes",
    "/experiments/default/big-hpo",
    "/experiments/default/big-hpo/curves.json",
    "/models",
    "/labeling",
    "/deployments",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--shots", type=Path, default=None, help="write overview/experiment/dataset screenshots here")
    a = ap.parse_args()
    from starlette.testclient import TestClient

    from kiln.config import load_config
    from kiln.controller.console.app import create_app

    with tempfile.TemporaryDirectory(prefix="kiln-console-bench-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        t0 = time.perf_counter()
        fill(repo, a.objects, a.trials)
        print(
            f"wrote {a.objects} objects, an experiment of {a.trials} trials in {time.perf_counter() - t0:.1f}s "
            f"(load average {os.getloadavg()[0]:.1f})"
        )
        client = TestClient(create_app(load_config(repo)), base_url="http://127.0.0.1")
        print(f"{'page':<46} {'median':>9} {'worst':>9} {'bytes':>9}")
        worst_all = 0.0
        for page in PAGES:
            times = []
            for _ in range(a.rounds):
                t = time.perf_counter()
                r = client.get(page)
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, (page, r.status_code, r.text[:300])
            worst_all = max(worst_all, statistics.median(times))
            print(f"{page:<46} {1000 * statistics.median(times):>7.0f}ms {1000 * max(times):>7.0f}ms {len(r.content):>9}")
        print(f"slowest median {1000 * worst_all:.0f} ms (target <= 300 ms); load average {os.getloadavg()[0]:.1f}")
        if a.shots:
            shots(repo, a.shots)


def shots(repo: Path, out: Path) -> None:
    """Screenshots through Debian's chromium (the pages' charts are drawn by the browser)."""
    import socket
    import threading

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from kiln.config import load_config
    from kiln.controller.console.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(load_config(repo)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1500", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name, page in (
            ("console-overview", "/"),
            ("console-experiment", "/experiments/default/big-hpo"),
            ("console-dataset", "/datasets/default/shapes?a=v5&b=v6"),
        ):
            driver.get(f"http://127.0.0.1:{port}{page}")
            time.sleep(1.5)  # the charts are drawn after the page's JSON is read
            driver.save_screenshot(str(out / f"{name}.png"))
            print(f"screenshot {out / f'{name}.png'}")
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
