"""One `kiln apply` at scale (#16): independent objects' workflows overlap (real local runner, real
`kiln step` subprocesses, times written by the steps themselves), a dependant waits for what it
depends on, a failure stops nothing independent, and the output stays one start and one end
line per object. Bookkeeping (Workspaces) is reconciled in-process: no subprocess, no workflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import ROOT, kiln, write

# A step provided the way any package provides one: an entry point in group kiln.steps. It
# records when it ran (wall clock, shared by the processes) and fails for the object "broken".
PLUGIN = """
import os, pathlib, time
from kiln.errors import KilnError

def span(ctx):
    marks = pathlib.Path(os.environ["KILN_TEST_MARKS"])
    started = time.time()
    time.sleep(float(os.environ["KILN_TEST_SLEEP"]))
    if ctx.name == "broken":
        raise KilnError("broken on purpose")
    (marks / ctx.name).write_text(f"{started} {time.time()}")
    return {"ok": ctx.name}
"""

# Datasets, each made by a one-task workflow of the test step, through the real apply
DRIVER = r"""
import os, sys
from kiln.config import load_config
from kiln.controller import handlers, render
from kiln.controller.handlers.workflow import WorkflowHandler
from kiln.controller.project import apply

class Spans(WorkflowHandler):
    kind = "Dataset"

handlers.HANDLERS["Dataset"] = Spans
render.PIPELINES["Dataset"] = lambda spec: [render.Task("span", "test.span")]
os.chdir(sys.argv[1])
res = apply(load_config(sys.argv[1])).result
print(res.summary())
sys.exit(res.exit_code)
"""

WS = """
apiVersion: kiln.dev/v1alpha1
kind: Workspace
metadata: {{name: {name}}}
spec:
  members: [{{user: ada@example.com, role: admin}}]
  quotas: {{cpu: "4"}}
"""


def dataset(name: str, source: str) -> str:
    return (
        f"apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {{name: {name}, workspace: team}}\n"
        f"spec: {{type: tabular, task: classification, format: csv, label: y, source: {source}}}\n"
    )


def plugin_site(root: Path) -> Path:
    site = root / "site"
    (site / "kiln_test_spans-0.dist-info").mkdir(parents=True)
    (site / "kiln_test_spans.py").write_text(PLUGIN)
    (site / "kiln_test_spans-0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: kiln-test-spans\nVersion: 0\n")
    (site / "kiln_test_spans-0.dist-info" / "entry_points.txt").write_text("[kiln.steps]\ntest.span = kiln_test_spans:span\n")
    return site


def test_independent_objects_overlap_a_dependant_waits_and_a_failure_stops_nothing_else(tmp_path: Path) -> None:
    site, marks, repo = plugin_site(tmp_path), tmp_path / "marks", tmp_path / "repo"
    marks.mkdir()
    write(
        repo,
        {
            "kiln.yaml": "concurrency: 3\n",
            "data/rows.csv": "x,y\n1,a\n2,b\n",
            "specs/ws.yaml": WS.format(name="team"),
            "specs/a.yaml": dataset("a", "{path: data/rows.csv}"),
            "specs/b.yaml": dataset("b", "{path: data/rows.csv}"),
            "specs/broken.yaml": dataset("broken", "{path: data/rows.csv}"),
            "specs/c.yaml": dataset("c", "{dataset: {name: a}}"),
        },
    )  # derived from a: waits for it
    (repo / "driver.py").write_text(DRIVER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "KILN_TEST_MARKS": str(marks),
        "KILN_TEST_SLEEP": "1.0",
    }
    env.pop("KILN_DEBUG", None)
    p = subprocess.run(
        [sys.executable, str(repo / "driver.py"), str(repo)], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    out = p.stdout
    assert p.returncode == 1, out + p.stderr  # one object failed
    span = {n: tuple(map(float, (marks / n).read_text().split())) for n in ("a", "b", "c")}
    # a and b ran at the same time (the step itself wrote when it ran)
    assert max(span["a"][0], span["b"][0]) < min(span["a"][1], span["b"][1]), span
    # c, derived from a, started only once a's workflow had finished
    assert span["c"][0] >= span["a"][1], span
    # the failure is reported and recorded; the independent objects and the dependant applied
    assert "x Dataset/team/broken: span: broken on purpose" in out, out
    assert "Apply: 4 created" in out and "1 failed" in out
    rows = {r["name"]: r for r in json.loads(kiln("status", "-o", "json", cwd=repo, env=env, check=True).stdout)}
    assert {n: rows[n]["ready"] for n in ("team", "a", "b", "c", "broken")} == {
        "team": "True",
        "a": "True",
        "b": "True",
        "c": "True",
        "broken": "False",
    }
    # readable: one start and one end line per object; a step line sits right above its object's end line
    lines = out.splitlines()
    for name in ("a", "b", "c", "broken"):
        ref = f"Dataset/team/{name}"
        assert sum(ln.startswith(f"~ {ref}: create") for ln in lines) == 1, out
        end = [i for i, ln in enumerate(lines) if ln.startswith(f"  {ref}: ")]
        assert len(end) == 1 and (" created in " in lines[end[0]] or " failed after " in lines[end[0]]), out
        if name != "broken":
            assert lines[end[0] - 1] == f"    + workflow: run workflow kiln-data-team-{name} (local runner)", out


# a driver that records every subprocess and fork the apply makes (Python's audit hooks)
AUDIT = r"""
import os, sys, time
spawned = []
sys.addaudithook(lambda event, args: spawned.append(event) if event in (
    "subprocess.Popen", "os.posix_spawn", "os.fork", "os.forkpty", "os.exec", "os.system") else None)
from kiln.config import load_config
from kiln.controller.project import apply
os.chdir(sys.argv[1])
t = time.monotonic()
res = apply(load_config(sys.argv[1]), echo=lambda line: None).result
print(res.summary(), f"{time.monotonic() - t:.2f}", len(spawned))
"""


def test_workspaces_are_reconciled_in_process_without_a_workflow(tmp_path: Path) -> None:
    """200 Workspaces (the example one, renamed) in one apply: no subprocess, no workflow run,
    each recorded as before (Ready, members kept, storage made), in a few seconds."""
    text = (ROOT / "specs/workspaces/vision-team.yaml").read_text()
    write(tmp_path, {f"specs/ws-{i}.yaml": text.replace("  name: vision\n", f"  name: ws-{i}\n") for i in range(200)})
    (tmp_path / "audit.py").write_text(AUDIT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.monotonic()
    p = subprocess.run(
        [sys.executable, str(tmp_path / "audit.py"), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - t
    assert p.returncode == 0, p.stdout + p.stderr
    summary, seconds, spawned = p.stdout.strip().rsplit(" ", 2)
    assert summary == "Apply: 200 created, 0 updated, 0 deleted, 0 unchanged; 400 action(s)."
    assert spawned == "0"  # not one subprocess: nothing ran as a workflow
    assert not (tmp_path / ".kiln/runs").exists()
    assert float(seconds) < 20 and took < 30  # ~2 s here on 2 shared cores; a workflow each took ~0.5 s
    from kiln.config import load_config
    from kiln.controller.project import open_state

    store = open_state(load_config(tmp_path))
    try:
        records = store.all_objects()
        assert len(records) == 200
        assert {(r.condition("Ready").status, r.health, r.sync) for r in records} == {("True", "Healthy", "Synced")}
        rec = store.get("Workspace/default/ws-7")
        assert rec.inventory == [{"kind": "directory", "id": ".kiln/workspaces/ws-7"}, {"kind": "kv", "id": "workspace/ws-7"}]
        assert rec.extra["roles"] == {"admin": 1, "developer": 1, "annotator": 3}
        assert store.get_kv("workspace", "ws-7")["members"]["cy@example.com"] == "annotator"
        assert [a.result for a in store.attempts("Workspace/default/ws-7")] == ["succeeded"]
    finally:
        store.close()
    assert (tmp_path / ".kiln/workspaces/ws-199").is_dir()


def test_the_example_repos_trainings_wait_only_for_their_data(tmp_path: Path) -> None:
    """What one apply of the example repo runs side by side: each training waits for its own
    dataset (and workspace) only, so the three overlap where cores allow; a deployment waits
    for the experiment it serves; the relabelling job for the model that pre-annotates."""
    import shutil

    from kiln.config import load_config
    from kiln.controller.apply import _waits_for
    from kiln.controller.plan import make_plan
    from kiln.controller.project import load_valid

    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    config = load_config(tmp_path)
    changes = make_plan(load_valid(config), [], config=config).changes
    waits = _waits_for(changes)
    after = {c.key.split("/", 1)[1]: {changes[j].key.split("/", 1)[1] for j in waits[i] or ()} for i, c in enumerate(changes)}
    assert after["vision/digits-resnet"] == {"default/vision", "vision/digits"}
    assert after["vision/shapes-centernet"] == {"default/vision", "vision/shapes"}
    assert after["default/wine-automl"] == {"default/wine"}
    assert after["vision/digits-classifier"] == {"default/vision", "vision/digits-resnet"}
    assert "vision/digits-resnet" in after["vision/digits-relabel"]
