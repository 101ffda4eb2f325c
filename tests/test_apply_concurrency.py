"""Real `kiln apply` processes side by side on one repository: while an Experiment's training
runs (a `command.run` that waits for a file the test creates), applies of other objects go on,
an apply of the same object (or of one that depends on it) is refused naming the holder, or
waits for it with --wait-lock and then finds it applied."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import KILN, kiln, write
from tests.test_experiment_handler import WINE, exp, git_repo

pytest.importorskip("dvc")

WAIT_FOR_GO = """
import json, os, pathlib, sys, time
import kiln

started, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with open(started, "a") as f:
    f.write(f"{os.getpid()}\\n")
while not go.exists():  # the test says when training may finish
    time.sleep(0.05)
kiln.report(step=1, validation_accuracy=0.5)
json.dump({"ok": True}, open(os.path.join(os.environ["KILN_OUTPUT_DIR"], "out.json"), "w"))
"""

IRIS = """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: iris}
spec: {type: tabular, task: classification, source: {sample: iris}}
"""

API = """
apiVersion: kiln.dev/v1alpha1
kind: Deployment
metadata: {name: api}
spec:
  model: {experiment: slow}
  runtime: native
  auth: {public: true}
"""


def _start(repo: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("KILN_DEBUG", None)
    return subprocess.Popen([*KILN, *args], cwd=repo, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _until(cond, proc: subprocess.Popen[str], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"{what}: the apply ended early:\n{proc.communicate()[0]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _readline_with(proc: subprocess.Popen[str], text: str) -> list[str]:
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never printed:\n{''.join(seen)}")


def _ready(repo: Path, kind: str, name: str) -> bool:
    rec = json.loads(kiln("get", kind, name, "-o", "json", cwd=repo, check=True).stdout)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in rec["conditions"])


@pytest.mark.slow  # ~40 s: a dataset, an experiment and four applies beside it
def test_other_objects_apply_while_one_trains_and_the_same_one_is_refused_or_waits(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    started, go = tmp_path / "started", tmp_path / "go"
    write(repo, {"specs/wine.yaml": WINE, "jobs/wait.py": WAIT_FOR_GO,
                 "specs/slow.yaml": exp("slow", f"dataset: {{name: wine}}\n"
                                                f"command: {{run: python wait.py {started} {go}, workdir: jobs}}")})
    kiln("apply", "--target", "Dataset/wine", cwd=repo, check=True, timeout=300)
    first = _start(repo, "apply")
    waiter: subprocess.Popen[str] | None = None
    try:
        _until(started.exists, first, "the training to start")
        # another object, applied start to finish while the training runs
        write(repo, {"specs/iris.yaml": IRIS, "specs/api.yaml": API})
        other = kiln("apply", "--target", "Dataset/iris", cwd=repo, timeout=300)
        assert other.returncode == 0, other.stdout + other.stderr
        assert "Apply: 1 created" in other.stdout and _ready(repo, "dataset", "iris")
        # the same object: refused at once, naming the apply that holds it; nothing is written
        same = kiln("apply", "--target", "Experiment/slow", cwd=repo)
        assert same.returncode == 3, same.stdout + same.stderr
        assert f"! Experiment/slow: busy: kiln apply (pid {first.pid} on " in same.stdout
        assert "1 busy" in same.stdout and "Traceback" not in same.stdout + same.stderr
        # an object that depends on it: refused too, rather than served from a model being trained
        dep = kiln("apply", "--target", "Deployment/api", cwd=repo)
        assert dep.returncode == 3, dep.stdout + dep.stderr
        assert ("! Deployment/api: busy: it depends on Experiment/default/slow, which kiln apply "
                f"(pid {first.pid}) is applying now") in dep.stdout
        assert "2 busy" in dep.stdout
        assert first.poll() is None and started.read_text().count("\n") == 1
        # with --wait-lock it waits for the holder, then finds the object applied: not trained twice
        waiter = _start(repo, "apply", "--target", "Experiment/slow", "--wait-lock", "240")
        _readline_with(waiter, "Experiment/slow: waiting up to 240s: kiln apply (pid")
        go.touch()
        out = first.communicate(timeout=300)[0]
        assert first.returncode == 0, out
        rest = waiter.communicate(timeout=120)[0]
        assert waiter.returncode == 0, rest
        assert "Experiment/slow: unchanged, skipping" in rest and "0 action(s)" in rest
    finally:
        go.touch()  # a training left behind (its step runs in its own session) ends too
        for p in (first, waiter):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert started.read_text().count("\n") == 1  # one training in all
    assert _ready(repo, "experiment", "slow")
