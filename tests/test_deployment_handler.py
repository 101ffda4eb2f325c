"""Deployments applied for real: `kiln apply` in a temp git repo with a registered scikit-learn
model starts a daemonized BentoML server (resolve-model -> build -> rollout -> smoke-test on the
local runner) that answers in the EasyMaker format; tokens, restarts, prune, and secrecy.

Every server a test starts is killed by the ``repo`` fixture's finalizer (found by the
deployment-home marker in its environment, not by name)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import deployment_server_pids as _server_pids
from tests.helpers import kiln, write

pytest.importorskip("bentoml")
pytest.importorskip("sklearn")

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ENV_TOKEN = "env-secret-token-3f9a1c77d2"


def register_iris(repo: Path) -> int:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from kiln.bento.registry import Registry, default_home

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    return Registry(default_home(repo)).register(
        "iris", model, "sklearn", labels={"experiment": "iris-exp"},
        serving={"task": "classification", "input": "tabular", "features": FEATURES,
                 "labels": ["setosa", "versicolor", "virginica"]})


def deployment(name: str, spec: str) -> str:
    return f"apiVersion: kiln.dev/v1alpha1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n" + \
        "".join(f"  {line}\n" for line in spec.strip().splitlines())


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "repo"
    root.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "kiln@example.com"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    yield root
    for pid in _server_pids(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def server(repo: Path, name: str = "iris-api") -> dict:
    return json.loads((repo / ".kiln/deployments/default" / name / "server.json").read_text())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def predict(url: str, token: str | None = None) -> tuple[int, object]:
    from kiln.controller.deployment_steps import post

    return post(url, {"instances": [dict(zip(FEATURES, [5.1, 3.5, 1.4, 0.2]))]}, token)


SPEC = """
model: {name: iris}
auth:
  tokens: [{env: IRIS_TOKEN}]
batching: {enabled: false}
"""


@pytest.mark.timeout(600)
def test_apply_serves_tokens_restart_prune(repo: Path) -> None:
    register_iris(repo)
    write(repo, {"specs/iris.yaml": deployment("iris-api", SPEC)})
    env = {"IRIS_TOKEN": ENV_TOKEN}
    t0 = time.monotonic()
    first = kiln("apply", cwd=repo, env=env, timeout=400)
    assert first.returncode == 0, first.stdout + first.stderr
    apply_s = time.monotonic() - t0
    info = server(repo)
    pid, url = info["pid"], info["url"]
    assert alive(pid) and info["model"] == "iris" and info["version"] == 1
    # the server outlived `kiln apply`; status and describe show it
    rows = json.loads(kiln("status", "-o", "json", cwd=repo, check=True).stdout)
    row = next(r for r in rows if r["kind"] == "Deployment")
    assert row["health"] == "Healthy"
    desc = kiln("describe", "Deployment/iris-api", cwd=repo, check=True).stdout
    assert url in desc

    # auth: no token 401, env token 200, created token 200, revoked 401
    code, body = predict(url)
    assert code == 401
    code, body = predict(url, ENV_TOKEN)
    assert code == 200 and body["predictions"][0]["label"] == "setosa" and body["predictions"][0]["score"] > 0.5, body
    tok = kiln("deployments", "token", "create", "iris-api", cwd=repo, check=True).stdout.strip().splitlines()[0]
    assert predict(url, tok)[0] == 200
    out = kiln("predict", "iris-api", "--json", json.dumps(dict(zip(FEATURES, [6.7, 3.0, 5.2, 2.3]))),
               cwd=repo, env={"KILN_TOKEN": tok})
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["predictions"][0]["label"] == "virginica"
    assert kiln("predict", "iris-api", "--json", "{}", cwd=repo).returncode != 0  # no token: 401
    kiln("deployments", "token", "revoke", "iris-api", tok.split("_")[1], cwd=repo, check=True)
    deadline = time.monotonic() + 5
    while predict(url, tok)[0] != 401 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert predict(url, tok)[0] == 401

    # a second apply does nothing: same server
    again = kiln("apply", cwd=repo, env=env, timeout=120)
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout
    assert server(repo)["pid"] == pid and alive(pid)

    # the tokens appear nowhere kiln writes: state, run logs, rendered manifests
    got = kiln("get", "deployment", "iris-api", "-o", "json", cwd=repo, check=True).stdout
    rendered = kiln("render", "Deployment/iris-api", cwd=repo, check=True).stdout
    k8s = kiln("render", "Deployment/iris-api", "--what", "k8s", cwd=repo, check=True).stdout
    assert "kind: Service" in k8s
    blobs = [got, rendered, k8s, first.stdout, first.stderr]
    for p in (repo / ".kiln").rglob("*"):
        if p.is_file() and "bentoml" not in p.parts and p.stat().st_size < 50_000_000:
            blobs.append(p.read_bytes().decode(errors="replace"))
    assert len(blobs) > 10
    for text in blobs:
        assert ENV_TOKEN not in text and tok not in text

    # a changed spec restarts it: new server ready before the old one stops
    write(repo, {"specs/iris.yaml": deployment("iris-api", SPEC.replace("enabled: false", "enabled: true"))})
    t0 = time.monotonic()
    third = kiln("apply", cwd=repo, env=env, timeout=400)
    restart_s = time.monotonic() - t0
    assert third.returncode == 0, third.stdout + third.stderr
    new = server(repo)
    assert new["pid"] != pid and alive(new["pid"]) and not alive(pid)
    assert predict(new["url"], ENV_TOKEN)[0] == 200

    # enabled: false stops it, health Suspended
    write(repo, {"specs/iris.yaml": deployment("iris-api", SPEC + "enabled: false\n")})
    assert kiln("apply", cwd=repo, env=env, timeout=200).returncode == 0
    assert not alive(new["pid"])
    rows = json.loads(kiln("status", "-o", "json", cwd=repo, check=True).stdout)
    assert next(r for r in rows if r["kind"] == "Deployment")["health"] == "Suspended"

    # prune stops it and drops the env token records
    write(repo, {"specs/iris.yaml": deployment("iris-api", SPEC)})
    assert kiln("apply", cwd=repo, env=env, timeout=400).returncode == 0
    last = server(repo)
    assert alive(last["pid"])
    (repo / "specs/iris.yaml").unlink()
    write(repo, {"specs/keep.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Workspace\nmetadata: {name: w}\nspec: {}\n"})
    pruned = kiln("apply", "--prune", cwd=repo, timeout=120)
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert not alive(last["pid"]) and not _server_pids(repo)
    tokens = json.loads((repo / ".kiln/serving/tokens.json").read_text())
    assert not any(k.startswith("env-") for k in tokens.get("iris-api", {}))
    print(f"\nfirst apply {apply_s:.1f}s, restart apply {restart_s:.1f}s")


def test_missing_model_and_env_token_are_clear_errors(repo: Path) -> None:
    from kiln.api.common import ModelRef
    from kiln.controller.deployment_steps import ModelNotReady, resolve_model

    # a model nothing registered yet: the step's message (the validator also refuses the spec)
    with pytest.raises(ModelNotReady, match="model nope has no version yet: apply the experiment that registers it"):
        resolve_model(repo, ModelRef(name="nope"))
    with pytest.raises(ModelNotReady, match="the model of experiment exp has no version yet"):
        resolve_model(repo, ModelRef(experiment="exp"))
    register_iris(repo)
    assert resolve_model(repo, ModelRef(experiment="iris-exp")) == ("iris", 1)
    write(repo, {"specs/d.yaml": deployment("d", "model: {name: iris}\nauth: {tokens: [{env: NOT_SET_VAR_X}]}\n")})
    out = kiln("apply", cwd=repo, timeout=120)
    assert out.returncode != 0 and "$NOT_SET_VAR_X is not set" in out.stdout + out.stderr, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert not _server_pids(repo)


@pytest.mark.timeout(300)
def test_disabling_a_token_protected_deployment_needs_no_token(repo: Path) -> None:
    """Turning a deployment off hashes no token: the variable may be unset (a CI job, another
    shell) and the server still stops."""
    register_iris(repo)
    write(repo, {"specs/iris.yaml": deployment("iris-api", SPEC)})
    assert kiln("apply", cwd=repo, env={"IRIS_TOKEN": ENV_TOKEN}, timeout=200).returncode == 0
    pid = server(repo)["pid"]
    assert alive(pid)
    write(repo, {"specs/iris.yaml": deployment("iris-api", SPEC + "enabled: false\n")})
    off = kiln("apply", cwd=repo, env={"IRIS_TOKEN": ""}, timeout=200)
    assert off.returncode == 0, off.stdout + off.stderr
    assert not alive(pid) and not _server_pids(repo)
    rows = json.loads(kiln("status", "-o", "json", cwd=repo, check=True).stdout)
    assert next(r for r in rows if r["kind"] == "Deployment")["health"] == "Suspended"


@pytest.mark.slow  # three rollouts of a real server
@pytest.mark.timeout(600)
def test_drift_is_planned_and_healed(repo: Path) -> None:
    """What changes outside git (an alias moved, the server killed, the token rotated) shows in
    `kiln plan` and the next apply heals it; then the plan is clean again."""
    from kiln.bento.registry import Registry, default_home

    reg = Registry(default_home(repo))
    reg.set_alias("iris", "prod", register_iris(repo))
    write(repo, {"specs/iris.yaml": deployment("iris-api", SPEC.replace("{name: iris}", "{name: iris, alias: prod}"))})
    env = {"IRIS_TOKEN": ENV_TOKEN}

    def plan() -> subprocess.CompletedProcess:
        return kiln("plan", "--detailed-exitcode", cwd=repo, env=env)

    assert kiln("apply", cwd=repo, env=env, timeout=400).returncode == 0
    assert plan().returncode == 0
    first = server(repo)

    # the alias moves to a new version: planned, rolled out
    reg.set_alias("iris", "prod", register_iris(repo))
    p = plan()
    assert p.returncode == 2 and "now resolves to iris v2 (serving iris v1)" in p.stdout, p.stdout
    healed = kiln("apply", cwd=repo, env=env, timeout=400)
    assert healed.returncode == 0, healed.stdout + healed.stderr
    moved = server(repo)
    assert moved["version"] == 2 and alive(moved["pid"]) and not alive(first["pid"])
    assert plan().returncode == 0

    # the server is killed outside kiln: planned, started again
    from kiln.bento.server import server_processes

    os.killpg(moved["pid"], signal.SIGKILL)  # the arbiter's group: its worker lives in a session of its own
    deadline = time.monotonic() + 10
    while alive(moved["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = server_processes(moved["serverId"])
    assert orphans  # the orphaned worker, still holding the old port
    p = plan()
    assert p.returncode == 2 and f"server pid {moved['pid']}" in p.stdout and "is not serving" in p.stdout, p.stdout
    assert kiln("apply", cwd=repo, env=env, timeout=400).returncode == 0
    again = server(repo)
    assert again["pid"] != moved["pid"] and alive(again["pid"]) and predict(again["url"], ENV_TOKEN)[0] == 200
    deadline = time.monotonic() + 10  # the heal stopped the orphan too
    while server_processes(moved["serverId"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server_processes(moved["serverId"]) == []

    # the token is rotated in the environment: planned, registered; the old one stops working
    rotated = {"IRIS_TOKEN": ENV_TOKEN + "-rotated"}
    p = kiln("plan", "--detailed-exitcode", cwd=repo, env=rotated)
    assert p.returncode == 2 and "$IRIS_TOKEN holds a different token" in p.stdout, p.stdout
    assert ENV_TOKEN not in p.stdout
    assert kiln("apply", cwd=repo, env=rotated, timeout=400).returncode == 0
    deadline = time.monotonic() + 5
    while predict(again["url"], ENV_TOKEN)[0] != 401 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert predict(again["url"], ENV_TOKEN)[0] == 401
    assert predict(again["url"], rotated["IRIS_TOKEN"])[0] == 200
    assert server(repo)["pid"] == again["pid"]  # a token needs no restart
    assert kiln("plan", "--detailed-exitcode", cwd=repo, env=rotated).returncode == 0
    # a plan where the variable is not set (a PR check without the secret) is no drift
    assert kiln("plan", "--detailed-exitcode", cwd=repo, env={"IRIS_TOKEN": ""}).returncode == 0
