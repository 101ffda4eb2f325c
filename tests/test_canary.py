"""Canary and shadow rollouts on the local runtime, for real: BentoML servers of tiny scikit-learn
models behind kiln's router on loopback, under a bounded load from two client threads, driven by
the Deployment's own rollout step (kiln.controller.deployment_rollout).

One test walks one deployment through v1 -> v2 (healthy: promoted through 20/60/100%) -> v3 (its
preprocessing fails on every request: rolled back at 20%, its failures no more than its share)
-> v4 (shadow: every answer from v2, both outputs recorded) -> v4 as a canary (the shadow's
server reused, promoted) -> the router killed and started again on the same URL. Intervals of 1 s
keep it short.
Every server is killed by the ``repo`` fixture (tests/test_deployment_handler.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.test_deployment_handler import FEATURES, alive, repo  # noqa: F401 - repo is a fixture

pytest.importorskip("bentoml")
pytest.importorskip("sklearn")

SERVING = {"task": "classification", "input": "tabular", "features": FEATURES, "labels": ["setosa", "versicolor", "virginica"]}
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.0, 2.7, 5.1, 1.6]]


def register(root: Path, kind: str) -> int:
    """A real model: ``good`` and ``other`` predict iris; ``broken`` is a pipeline whose first
    step selects a column ("petal_ratio") that requests do not carry, so it fails on each one."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.tree import DecisionTreeClassifier

    from kiln.bento.registry import Registry, default_home

    X, y = load_iris(return_X_y=True, as_frame=True)
    X.columns = FEATURES
    model: Any
    if kind == "broken":
        X = X.assign(petal_ratio=X.petal_length / X.petal_width)
        model = Pipeline(
            [
                ("select", ColumnTransformer([("r", "passthrough", ["petal_ratio", *FEATURES])])),
                ("clf", LogisticRegression(max_iter=500)),
            ]
        ).fit(X, y)
    elif kind == "other":
        model = DecisionTreeClassifier(max_depth=1, random_state=0).fit(pd.DataFrame(X), y)
    else:
        model = LogisticRegression(max_iter=500).fit(X, y)
    return Registry(default_home(root)).register("iris", model, "sklearn", labels={"experiment": "iris-exp"}, serving=SERVING)


def rollout(root: Path, version: int, rollout: dict[str, Any] | None) -> dict[str, Any]:
    """The Deployment's resolve-model and rollout steps, as the workflow runs them."""
    from kiln.config import load_config
    from kiln.controller.deployment_steps import deployment_resolve_model, deployment_rollout
    from kiln.controller.steps import StepContext

    spec: dict[str, Any] = {
        "model": {"name": "iris", "version": version},
        "auth": {"public": True},
        "batching": {"enabled": False},
    }
    if rollout:
        spec["rollout"] = rollout
    doc = {"apiVersion": "kiln.dev/v1alpha1", "kind": "Deployment", "metadata": {"name": "iris-api"}, "spec": spec}
    h = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    ctx = StepContext(load_config(root), "Deployment/default/iris-api", doc, h)
    deployment_resolve_model(ctx)
    return deployment_rollout(ctx)


class Load:
    """Two clients posting to the deployment's URL until stopped; each answer's status and the
    version that gave it (the router's x-kiln-model-version header)."""

    def __init__(self, url: str) -> None:
        self.url, self.stop, self.seen = url, threading.Event(), []  # type: list[tuple[int, str]]
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(2)]

    def client(self, i: int) -> None:
        n = i
        while not self.stop.is_set():
            body = json.dumps({"instances": [dict(zip(FEATURES, ROWS[n % len(ROWS)], strict=True))]}).encode()
            n += 1
            req = urllib.request.Request(f"{self.url}/predict", data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    self.seen.append((r.status, r.headers.get("x-kiln-model-version", "")))
            except urllib.error.HTTPError as e:
                self.seen.append((e.code, e.headers.get("x-kiln-model-version", "")))
            except OSError:
                self.seen.append((0, ""))  # no answer at all: a dropped request

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


@pytest.mark.slow  # four real servers and three rollouts of 1 s steps
@pytest.mark.timeout(600)
def test_canary_promotes_rolls_back_and_shadows(repo: Path) -> None:  # noqa: F811 - the fixture
    from kiln.controller.deployment_rollout import RolledBack, describe_rollout, router_stats

    home = repo / ".kiln/deployments/default/iris-api"
    canary = {"strategy": "canary", "steps": [20, 60, 100], "interval": 1, "maxErrorRate": 0.05, "minRequests": 5}
    for kind in ("good", "good", "broken", "other"):
        register(repo, kind)

    t0 = time.monotonic()
    first = rollout(repo, 1, canary)  # nothing to compare with: v1 serves behind the router
    url = first["url"]
    info = json.loads((home / "server.json").read_text())
    assert info["router"] and info["version"] == 1 and alive(info["backends"]["stable"]["pid"])
    v1_pid = info["backends"]["stable"]["pid"]

    # v2 is healthy: 20% -> 60% -> 100%, then v1 stops; the URL never changes, no request fails
    with Load(url) as load:
        out = rollout(repo, 2, canary)
    assert out["url"] == url and out["version"] == 2 and out["rollout"]["phase"] == "Promoted"
    assert [s["weight"] for s in out["rollout"]["steps"]] == [20, 60, 100]
    assert all(s["requests"] >= 5 and s["errors"] == 0 for s in out["rollout"]["steps"])
    assert load.seen and all(code == 200 for code, _ in load.seen), {c for c, _ in load.seen}
    assert {v for _, v in load.seen} == {"1", "2"}
    assert not alive(v1_pid)
    promote_s = time.monotonic() - t0

    # v3 fails on every request: rolled back at its first step; only its share failed
    with Load(url) as load:
        with pytest.raises(RolledBack, match=r"rolled back at 20%: error rate .* > maxErrorRate"):
            rollout(repo, 3, canary)
        time.sleep(1.0)  # v2 answers everything again
    info = json.loads((home / "server.json").read_text())
    assert info["version"] == 2 and "canary" not in info["backends"]
    assert info["rollout"]["phase"] == "RolledBack" and "error rate" in info["rollout"]["reason"]
    failed = [v for code, v in load.seen if code != 200]
    assert failed and set(failed) == {"3"}  # every failure is v3's: none of v2's, none dropped
    # the canary got its 20% (the router spreads it evenly), and no more than that failed
    assert len(failed) <= 0.2 * len(load.seen) + 2, (len(failed), len(load.seen))
    assert all(code == 200 for code, _ in load.seen[-20:])  # after the rollback: all v2 again
    # the same version under the same spec is not tried again (no traffic to it), with the reason
    with pytest.raises(RolledBack, match=r"rolled back at 20%.*\(not tried again\)"):
        rollout(repo, 3, canary)
    routed = describe_rollout(home, info)
    assert routed is not None and routed["rollout"]["phase"] == "RolledBack"
    assert routed["requests"]["v3"]["errors"] == len(failed)
    # `kiln describe` reads it live (the failed apply's record keeps the last success's status)
    from types import SimpleNamespace

    from kiln.config import load_config
    from kiln.controller.status import _rollout_lines

    lines = _rollout_lines(load_config(repo), SimpleNamespace(workspace="default", name="iris-api"))
    assert "  canary v2 -> v3: RolledBack: error rate" in "\n".join(lines), lines

    # v4 shadows v2: every answer is v2's, each request is also sent to v4, both outputs recorded
    shadow = {**canary, "strategy": "shadow", "steps": [1, 1]}
    with Load(url) as load:
        out = rollout(repo, 4, shadow)
        time.sleep(0.5)
    assert out["version"] == 2 and out["rollout"]["phase"] == "Shadowing"
    assert {v for _, v in load.seen} == {"2"} and all(code == 200 for code, _ in load.seen)
    time.sleep(0.5)  # the last mirrored requests
    lines = [json.loads(x) for x in (home / "shadow.jsonl").read_text().splitlines()]
    assert len(lines) >= 10
    assert {x["stable"]["version"] for x in lines} == {2} and {x["shadow"]["version"] for x in lines} == {4}
    assert all(x["stable"]["predictions"] and x["shadow"]["predictions"] for x in lines)
    agreed = sum(x["agree"] for x in lines)
    assert 0 < agreed < len(lines)  # a one-split tree disagrees with the logistic model on some rows
    stats = router_stats(url)
    assert stats is not None and stats["shadow"]["compared"] == len(lines)
    routed = describe_rollout(home, json.loads((home / "server.json").read_text()))
    assert routed is not None and routed["shadow"]["agreementRate"] == round(agreed / len(lines), 4)
    blob = (home / "shadow.jsonl").read_text() + json.dumps(routed)
    assert "Authorization" not in blob and "sepal_length" not in blob  # outputs only, no request
    # /metrics: per-version counts in Prometheus text
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert f'kiln_router_errors_total{{version="3"}} {len(failed)}' in metrics
    assert 'kiln_router_requests_total{version="2"}' in metrics
    # the same spec again keeps shadowing the same server: nothing restarts
    again = rollout(repo, 4, shadow)
    assert again["restarted"] is False and again["rollout"]["phase"] == "Shadowing"
    # shadow -> canary: v4's server (shadowing) becomes the canary, not started again
    shadow_pid = json.loads((home / "server.json").read_text())["backends"]["canary"]["pid"]
    with Load(url) as load:
        promoted = rollout(repo, 4, canary)
    assert promoted["version"] == 4 and promoted["rollout"]["phase"] == "Promoted" and promoted["url"] == url
    info = json.loads((home / "server.json").read_text())
    assert info["backends"]["stable"]["pid"] == shadow_pid and "canary" not in info["backends"]
    assert {c for c, _ in load.seen} == {200} and {v for _, v in load.seen} == {"2", "4"}

    # the router dies: the next rollout starts it again on the same URL, in front of the same v4
    os.killpg(info["pid"], signal.SIGKILL)
    back = rollout(repo, 4, canary)
    assert back["url"] == url and back["version"] == 4 and back["pid"] != info["pid"]
    after = json.loads((home / "server.json").read_text())
    assert after["backends"]["stable"]["pid"] == shadow_pid and alive(shadow_pid)
    with Load(url) as load:
        time.sleep(1.0)
    assert load.seen and {c for c, _ in load.seen} == {200} and {v for _, v in load.seen} == {"4"}
    print(f"\nv1 start + v2 canary {promote_s:.1f}s, whole test {time.monotonic() - t0:.1f}s")
