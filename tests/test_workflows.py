"""Every kind renders to a schema-valid Argo Workflow, and apply drives workflows through the
local runner: retries visible in status, kill -9 mid-workflow resumes without re-running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.controller.project import load_valid
from kiln.controller.render import PIPELINES, render_workflow, workflow_name
from kiln.runners.schema import validate_workflow
from tests.helpers import ROOT, kiln, write


def test_every_kind_renders_schema_valid() -> None:
    cfg = load_config(ROOT)
    specs = load_valid(cfg)
    workspaces = {s.name: s.obj.spec for s in specs.specs if s.kind == "Workspace"}
    kinds = set()
    for s in specs.specs:
        manifest = render_workflow(cfg, s, workspace=workspaces.get(s.workspace))
        assert validate_workflow(manifest) == [], s.ref
        labels = manifest["metadata"]["labels"]
        assert labels["kiln.dev/spec-hash"] == s.spec_hash and labels["kiln.dev/kind"] == s.kind
        assert manifest["metadata"]["name"] == workflow_name(s)
        for p in manifest["spec"]["arguments"]["parameters"]:
            assert isinstance(p["value"], str)
        kinds.add(s.kind)
    assert kinds == set(PIPELINES)


def test_resources_and_parallelism_come_from_the_workspace() -> None:
    cfg = load_config(ROOT)
    specs = load_valid(cfg)
    ws = next(s for s in specs.specs if s.kind == "Workspace").obj.spec
    exp = next(s for s in specs.specs if s.ref == "Experiment/vision/digits-resnet")
    m = render_workflow(cfg, exp, workspace=ws)
    trials = next(t for t in m["spec"]["templates"] if t["name"] == "trials")
    assert trials["container"]["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}  # preset cpu-large
    task = next(t for t in m["spec"]["templates"][0]["dag"]["tasks"] if t["name"] == "trials")
    assert task["withSequence"] == {"count": "2"}  # parallelTrials
    assert m["spec"]["parallelism"] == 4          # quotas.maxConcurrentJobs
    assert "memoize" in next(t for t in m["spec"]["templates"] if t["name"] == "prepare-data")


def test_render_cli_prints_spec_and_workflow() -> None:
    import yaml

    p = kiln("render", "Dataset/wine", cwd=ROOT, check=True)
    spec, wf = list(yaml.safe_load_all(p.stdout))
    assert spec["kind"] == "Dataset" and wf["kind"] == "Workflow"
    assert [t["name"] for t in wf["spec"]["templates"][0]["dag"]["tasks"]] == \
        ["fetch", "validate", "preprocess-0", "split", "version"]


def test_secrets_never_rendered() -> None:
    p = kiln("render", "Deployment/vision/digits-classifier", "--what", "workflow", cwd=ROOT,
             env={"DIGITS_API_TOKEN": "s3cr3t-token-value"}, check=True)
    assert "s3cr3t-token-value" not in p.stdout
    assert "DIGITS_API_TOKEN" in p.stdout  # only the reference


# Test steps are provided the way any package provides them: an entry point in group kiln.steps.
PLUGIN = '''
import os, time, pathlib

def _mark(name):
    d = pathlib.Path(os.environ["KILN_TEST_MARKS"])
    with open(d / name, "a") as f:
        f.write("start\\n")
    return d

def first(ctx):
    _mark("first")
    return {"ok": 1}

def flaky(ctx):
    d = _mark("flaky")
    if (d / "flaky").read_text().count("start") == 1:
        raise SystemExit(1)  # fails the first time only
    return {"ok": 2}

def slow(ctx):
    _mark("slow")
    time.sleep(float(os.environ.get("KILN_TEST_SLOW", "0")))
    return {"ok": 3}
'''

DRIVER = r'''
import os, sys
from kiln.config import load_config
from kiln.controller import handlers, render
from kiln.controller.handlers.workflow import WorkflowHandler
from kiln.controller.project import apply

class TestHandler(WorkflowHandler):
    kind = "Dataset"

def pipeline(spec):
    return [render.Task("first", "test.first"),
            render.Task("flaky", "test.flaky", depends=["first"], retries=2),
            render.Task("slow", "test.slow", depends=["flaky"])]

handlers.HANDLERS["Dataset"] = TestHandler
render.PIPELINES["Dataset"] = pipeline
os.chdir(sys.argv[1])
print(apply(load_config(sys.argv[1])).result.summary(), flush=True)
'''


def pods_of(run_dir: Path) -> list[int]:
    """Live processes started by the local runner for ``run_dir`` (their environment says so)."""
    marker = f"KILN_LOCAL_RUN={run_dir.resolve()}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.fixture()
def plugin_repo(tmp_path: Path) -> tuple[Path, dict]:
    site = tmp_path / "site"
    (site / "kiln_test_steps-0.dist-info").mkdir(parents=True)
    (site / "kiln_test_steps.py").write_text(PLUGIN)
    (site / "kiln_test_steps-0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: kiln-test-steps\nVersion: 0\n")
    (site / "kiln_test_steps-0.dist-info" / "entry_points.txt").write_text(
        "[kiln.steps]\n" + "".join(f"test.{n} = kiln_test_steps:{n}\n" for n in ("first", "flaky", "slow")))
    repo = tmp_path / "repo"
    write(repo, {"specs/d.yaml": """
        apiVersion: kiln.dev/v1alpha1
        kind: Dataset
        metadata: {name: iris}
        spec: {type: tabular, task: classification, source: {sample: iris}}
        """})
    (repo / "driver.py").write_text(DRIVER)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "KILN_TEST_MARKS": str(marks)}
    return repo, env


def test_retry_visible_and_kill_9_mid_workflow_resumes(plugin_repo: tuple[Path, dict]) -> None:
    repo, env = plugin_repo
    marks = Path(env["KILN_TEST_MARKS"])
    proc = subprocess.Popen([sys.executable, str(repo / "driver.py"), str(repo)], cwd=repo,
                            env={**env, "KILN_TEST_SLOW": "120"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 90
        while not (marks / "slow").exists():
            assert time.time() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        # While it runs, status shows the workflow's progress.
        st = json.loads(kiln("status", "-o", "json", cwd=repo, env=env, check=True).stdout)
        assert st[0]["progress"].endswith("Running"), st
        os.killpg(proc.pid, signal.SIGKILL)  # the controller, its runner and the step in flight
        proc.wait()
        again = subprocess.run([sys.executable, str(repo / "driver.py"), str(repo)], cwd=repo,
                               env={**env, "KILN_TEST_SLOW": "0"}, capture_output=True, text=True, timeout=120)
        assert "1 created" in again.stdout, again.stdout + again.stderr
        # The step that was running when the controller died was an orphan; resuming killed it
        # before running the task again (two copies of one step must never run at once).
        assert pods_of(repo / ".kiln/runs/kiln-data-iris") == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (marks / "first").read_text() == "start\n"                  # succeeded: not re-run
    assert (marks / "flaky").read_text() == "start\nstart\n"          # failed once, retried once
    assert (marks / "slow").read_text() == "start\nstart\n"           # interrupted, run again
    d = kiln("describe", "Dataset/iris", cwd=repo, env=env, check=True).stdout
    wf = json.loads(kiln("get", "dataset", "iris", "-o", "json", cwd=repo, env=env, check=True).stdout)["extra"]["workflow"]
    assert wf["phase"] == "Succeeded" and wf["failedAttempts"] == 1, wf  # the retry is visible
    assert "workflow: kiln-data-iris" in d
    logs = kiln("logs", "Dataset/iris", cwd=repo, env=env, check=True).stdout
    assert '{"ok": 3}' in logs and '{"ok": 1}' in logs
    missing = kiln("logs", "Dataset/nope", cwd=repo, env=env)
    assert missing.returncode == 1 and "Dataset/default/nope has not been applied" in missing.stderr
