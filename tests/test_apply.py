"""plan -> apply -> status on real repos in tmp dirs, through the CLI as users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, example_repo, kill_deployment_servers, kiln, write

WS = """
apiVersion: kiln.dev/v1alpha1
kind: Workspace
metadata: {name: team}
spec:
  members:
    - {user: ada@example.com, role: admin}
  quotas: {cpu: "4"}
"""


@pytest.mark.slow  # the example repo end to end: versions data, trains three experiments, starts three servers
def test_apply_twice_second_does_nothing(tmp_path: Path) -> None:
    """The example repo end to end: datasets, training, registration, serving; then nothing."""
    repo = example_repo(tmp_path)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)  # datasets are versioned with DVC in git
    env = {"DIGITS_API_TOKEN": "example-token-for-the-test"}
    try:
        first = kiln("apply", cwd=repo, env=env, timeout=1500)
        assert "Workspace/vision: create" in first.stdout
        # Each object's work runs as its rendered workflow, through the local runner; a
        # Workspace's is bookkeeping, done in-process (#16).
        assert "+ members: record members, roles, quotas and presets" in first.stdout
        assert "+ workflow: run workflow kiln-data-wine (local runner)" in first.stdout
        # What cannot be applied yet is reported, never pretended applied: exit 2.
        assert first.returncode == 2, first.stdout + first.stderr
        assert "Dataset/vision/digits-captured: not applied: source.capture 'digits-classifier'" in first.stdout
        assert "LabelingJob/vision/digits-relabel: not applied: dataset 'digits-captured' has no version yet" \
            in first.stdout
        second = kiln("apply", cwd=repo, env=env)
        assert "Workspace/vision: unchanged, skipping" in second.stdout
        assert "Dataset/vision/digits: unchanged, skipping" in second.stdout
        assert "Experiment/wine-automl: unchanged, skipping" in second.stdout
        assert "0 action(s)" in second.stdout
        assert "+ " not in second.stdout
        st = json.loads(kiln("status", "-o", "json", cwd=repo, check=True).stdout)
        ws = next(r for r in st if r["kind"] == "Workspace")
        assert (ws["sync"], ws["health"], ws["ready"], ws["generation"]) == ("Synced", "Healthy", "True", 1)
        rows = {r["name"]: r for r in st}
        for name in ("wine", "digits", "wine-automl", "digits-resnet", "wine-classifier", "digits-classifier",
                     "shapes", "shapes-centernet", "shapes-detector"):
            assert rows[name]["ready"] == "True", rows[name]
        assert (rows["digits-captured"]["ready"], rows["digits-captured"]["reason"]) == ("False", "NotAvailableYet")
        assert (rows["digits-relabel"]["ready"], rows["digits-relabel"]["reason"]) == ("False", "NotAvailableYet")
        digits = json.loads((repo / "data/vision/digits.versions.json").read_text())["versions"]
        assert len(digits) == 1 and digits[0]["files"] == 1797 + 2  # images + lineage and split manifest
        assert sum(digits[0]["per_class_counts"].values()) == 1797
        assert rows["digits"]["info"].startswith(f"v1 {digits[0]['id'][:12]} 1799 files")
        assert "example-token-for-the-test" not in json.dumps(st) + first.stdout + second.stdout
        _detect_shapes(repo)
    finally:
        kill_deployment_servers(repo)


def _detect_shapes(repo: Path) -> None:
    """A real detection request to the running shapes-detector, answered in EasyMaker's format."""
    import base64
    import io
    import urllib.request

    from PIL import Image

    from kiln.data.samples import SHAPES, draw_shapes

    url = json.loads(kiln("get", "deployment", "shapes-detector", "-o", "json", cwd=repo, check=True).stdout)["extra"]["url"]
    instances = []
    for seed, size in ((1000, 64), (1001, 96)):  # images it never saw; any size (the server resizes)
        buf = io.BytesIO()
        Image.fromarray(draw_shapes(seed, size)[0]).save(buf, format="PNG")
        instances.append({"data": base64.b64encode(buf.getvalue()).decode()})
    req = urllib.request.Request(f"{url}/predict", data=json.dumps({"instances": instances}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        body = json.loads(r.read())
    preds = body["predictions"]
    assert len(preds) == 2 and all(isinstance(p, list) for p in preds), body
    assert any(preds), body  # something above the experiment's threshold
    hits = 0
    for p, (seed, size) in zip(preds, ((1000, 64), (1001, 96))):
        scores = [d["score"] for d in p]
        assert scores == sorted(scores, reverse=True), p  # best first
        truth = draw_shapes(seed, size)[1]
        for d in p:
            (label,) = set(d) - {"score"}
            assert label in SHAPES and 0.3 <= d["score"] <= 1.0, d  # the experiment's threshold: 0.3
            box = d[label]
            assert set(box) == {"xmin", "ymin", "xmax", "ymax"} and all(isinstance(v, int) for v in box.values())
            # the image's own pixels (the model's 64 x 64 frame scaled back), clipped to the image
            assert 0 <= box["xmin"] <= box["xmax"] <= size and 0 <= box["ymin"] <= box["ymax"] <= size, box
            hits += any(o["shape"] == label and _iou(box, o["bbox"]) >= 0.5 for o in truth)
    assert hits >= 1, (preds, [draw_shapes(s, z)[1] for s, z in ((1000, 64), (1001, 96))])  # it detects


def _iou(box: dict[str, int], xywh: list[int]) -> float:
    x, y, w, h = xywh
    ix = max(0, min(box["xmax"], x + w) - max(box["xmin"], x))
    iy = max(0, min(box["ymax"], y + h) - max(box["ymin"], y))
    union = (box["xmax"] - box["xmin"]) * (box["ymax"] - box["ymin"]) + w * h - ix * iy
    return ix * iy / union if union else 0.0


def test_plan_update_lists_changed_fields_and_exit_codes(tmp_path: Path) -> None:
    write(tmp_path, {"specs/ws.yaml": WS})
    p = kiln("plan", "--detailed-exitcode", cwd=tmp_path)
    assert p.returncode == 2 and "+ create    Workspace/team" in p.stdout
    kiln("apply", cwd=tmp_path, check=True)
    assert kiln("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0
    (tmp_path / "specs/ws.yaml").write_text(WS.replace('cpu: "4"', 'cpu: "8"'))
    p = kiln("plan", "--detailed-exitcode", cwd=tmp_path)
    assert p.returncode == 2
    assert "~ update    Workspace/team" in p.stdout
    assert "~ spec.quotas.cpu: '4' -> '8'" in p.stdout
    md = kiln("plan", "--format", "markdown", cwd=tmp_path, check=True).stdout
    assert "| 🟡 update | `Workspace/team` |" in md
    js = json.loads(kiln("plan", "--format", "json", cwd=tmp_path, check=True).stdout)
    assert js["summary"]["update"] == 1
    assert js["changes"][0]["fields"] == [{"path": "spec.quotas.cpu", "op": "~", "old": "4", "new": "8", "update": "re-run"}]
    assert js["changes"][0]["update"] == "re-run" and js["changes"][0]["work"] == "re-run: quotas.cpu"
    out = kiln("apply", cwd=tmp_path, check=True).stdout
    assert "Workspace/team: update" in out
    rec = json.loads(kiln("get", "workspace", "team", "-o", "json", cwd=tmp_path, check=True).stdout)
    assert rec["generation"] == 2 and rec["spec"]["spec"]["quotas"]["cpu"] == "8"


def test_workspace_period_with_unquoted_yaml_dates_applies(tmp_path: Path) -> None:
    """YAML reads an unquoted 2026-01-01 as a date, which the state store (JSON) could not hold:
    "Object of type date is not JSON serializable" (#25). A spec date stays the text written."""
    period = "  period: {start: 2020-01-01, end: 2099-12-31}\n"
    write(tmp_path, {"specs/ws.yaml": WS + period})
    out = kiln("apply", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rec = json.loads(kiln("get", "workspace", "team", "-o", "json", cwd=tmp_path, check=True).stdout)
    assert rec["spec"]["spec"]["period"] == {"start": "2020-01-01", "end": "2099-12-31"}
    # quoting the dates makes the same document: nothing to apply
    (tmp_path / "specs/ws.yaml").write_text(WS + "  period: {start: '2020-01-01', end: \"2099-12-31\"}\n")
    assert kiln("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0
    # and the dates are still dates where the model needs them: a period that ended is refused
    write(tmp_path, {"specs/ws.yaml": WS + "  period: {start: 2020-01-01, end: 2021-06-30}\n",
                     "specs/data.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {name: d, workspace: team}\n"
                                        "spec: {type: tabular, format: csv, source: {sample: iris}}\n"})
    bad = kiln("plan", cwd=tmp_path)
    assert "period of use ended on 2021-06-30: new runs are refused" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


@pytest.mark.slow  # versions iris and trains one logistic regression (~40 s)
def test_render_shows_the_resources_apply_runs_with(tmp_path: Path) -> None:
    """`kiln render` printed the default resources where apply used the workspace's preset (#25):
    both now resolve the workspace from the specs in one place (``render.workspaces_of``)."""
    import yaml

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    write(tmp_path, {"specs/ws.yaml": WS + "  presets: [{name: small, cpu: 500m, memory: 1Gi}]\n",
                     "specs/data.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {name: d, workspace: team}\n"
                                        "spec: {type: tabular, task: classification, format: csv, source: {sample: iris}}\n",
                     "specs/exp.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Experiment\nmetadata: {name: e, workspace: team}\n"
                                       "spec: {dataset: {name: d}, algorithm: {name: logistic_regression}, "
                                       "resources: {preset: small}}\n"})
    rendered = yaml.safe_load(kiln("render", "Experiment/team/e", "--what", "workflow", cwd=tmp_path, check=True).stdout)

    def sizes(manifest: dict) -> dict[str, dict]:
        return {t["name"]: t["container"]["resources"] for t in manifest["spec"]["templates"] if "container" in t}

    assert sizes(rendered)["train"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    kiln("apply", cwd=tmp_path, check=True, timeout=300)
    [ran] = [json.loads(p.read_text()) for p in (tmp_path / ".kiln/runs").glob("kiln-exp-team-e*/workflow.json")]
    assert sizes(ran) == sizes(rendered)


def test_prune_only_when_asked_and_opt_out(tmp_path: Path) -> None:
    write(tmp_path, {"specs/ws.yaml": WS,
                     "specs/keep.yaml": WS.replace("team", "keeper").replace(
                         "metadata: {name: keeper}", "metadata: {name: keeper, annotations: {kiln.dev/prune: disabled}}")})
    kiln("apply", cwd=tmp_path, check=True)
    assert (tmp_path / ".kiln/workspaces/team").is_dir()
    (tmp_path / "specs/ws.yaml").unlink()
    (tmp_path / "specs/keep.yaml").unlink()
    p = kiln("plan", cwd=tmp_path, check=True)
    assert "kept until you apply with --prune" in p.stdout
    out = kiln("apply", cwd=tmp_path, check=True).stdout
    assert "0 deleted" in out and (tmp_path / ".kiln/workspaces/team").is_dir()
    out = kiln("apply", "--prune", cwd=tmp_path, check=True).stdout
    assert "- Workspace/team: delete" in out and "1 deleted" in out
    assert not (tmp_path / ".kiln/workspaces/team").exists()
    assert "kiln.dev/prune: disabled" in out
    names = [r["name"] for r in json.loads(kiln("status", "-o", "json", cwd=tmp_path).stdout)]
    assert names == ["keeper"]


def test_describe_shows_conditions_history_inventory(tmp_path: Path) -> None:
    write(tmp_path, {"specs/ws.yaml": WS})
    kiln("apply", cwd=tmp_path, check=True)
    d = kiln("describe", "Workspace/team", cwd=tmp_path, check=True).stdout
    assert "Ready        True" in d
    assert "directory: .kiln/workspaces/team" in d
    assert "gen 1  succeeded   2 action(s)" in d
    assert "storage              succeeded" in d and "members              succeeded" in d
    missing = kiln("describe", "Workspace/nope", cwd=tmp_path)
    assert missing.returncode == 1 and "has not been applied" in missing.stderr and "Traceback" not in missing.stderr


def test_invalid_specs_touch_nothing(tmp_path: Path) -> None:
    write(tmp_path, {"specs/ws.yaml": WS, "specs/bad.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {name: X}\n"})
    p = kiln("apply", cwd=tmp_path)
    assert p.returncode == 1 and "bad.yaml:3:" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / ".kiln/state.db").exists()


# A handler whose middle step is slow, installed into a real `apply` run in a subprocess so that
# the test can kill -9 that process mid-step.
SLOW_APPLY = r"""
import sys, time, pathlib, os
from kiln.config import load_config
from kiln.controller import handlers
from kiln.controller.handlers.base import Handler, Step
from kiln.controller.project import apply

marks = pathlib.Path(sys.argv[2]); delay = float(sys.argv[3])

def step(name, sleep):
    def run(ctx):
        with open(marks / name, "a") as f: f.write("start\n")
        time.sleep(sleep)
        with open(marks / name, "a") as f: f.write("done\n")
        return {"step": name}
    return Step(name, name, run)

class Slow(Handler):
    kind = "Dataset"
    def steps(self, ctx):
        return [step("fetch", 0), step("convert", delay), step("version", 0)]
    def delete(self, ctx):
        return []

handlers.HANDLERS["Dataset"] = Slow
os.chdir(sys.argv[1])
res = apply(load_config(sys.argv[1])).result
print(res.summary())
"""


def test_kill_9_mid_apply_then_apply_again(tmp_path: Path) -> None:
    write(tmp_path, {"specs/d.yaml": """
        apiVersion: kiln.dev/v1alpha1
        kind: Dataset
        metadata: {name: iris}
        spec: {type: tabular, task: classification, source: {sample: iris}}
        """})
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "slow_apply.py"
    script.write_text(SLOW_APPLY)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(marks), "60"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (marks / "convert").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # While killed: the record says Reconciling, never Ready with half the work.
    rec = json.loads(kiln("get", "dataset", "iris", "-o", "json", cwd=tmp_path, check=True).stdout)
    assert rec["generation"] == 0
    assert {c["type"]: c["status"] for c in rec["conditions"]}.get("Ready") != "True"
    again = subprocess.run([sys.executable, str(script), str(tmp_path), str(marks), "0"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (marks / "fetch").read_text() == "start\ndone\n"            # not run twice
    assert (marks / "convert").read_text() == "start\nstart\ndone\n"   # interrupted, then resumed
    assert (marks / "version").read_text() == "start\ndone\n"
    rec = json.loads(kiln("get", "dataset", "iris", "-o", "json", cwd=tmp_path, check=True).stdout)
    assert rec["generation"] == 1 and rec["sync"] == "Synced"
    third = subprocess.run([sys.executable, str(script), str(tmp_path), str(marks), "0"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert "0 action(s)" in third.stdout
    assert (marks / "fetch").read_text() == "start\ndone\n"


def test_concurrent_apply_of_the_same_object_is_refused_naming_the_holder(tmp_path: Path) -> None:
    write(tmp_path, {"specs/d.yaml": """
        apiVersion: kiln.dev/v1alpha1
        kind: Dataset
        metadata: {name: iris}
        spec: {type: tabular, task: classification, source: {sample: iris}}
        """})
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "slow_apply.py"
    script.write_text(SLOW_APPLY)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(marks), "30"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (marks / "convert").exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        p = kiln("apply", cwd=tmp_path)
        assert p.returncode == 3, p.stdout + p.stderr
        # the second apply plans (the repository lock is free) and leaves the object to its holder
        assert f"! Dataset/iris: busy: kiln apply (pid {proc.pid} on " in p.stdout
        assert "holds the lock on Dataset/default/iris; wait for it or stop it (--wait-lock SECONDS waits for it)" in p.stdout
        assert "1 busy" in p.stdout
    finally:
        proc.kill()
        proc.wait()
    # The holder died: its lock is gone with it.
    p = kiln("apply", cwd=tmp_path)
    assert "holds the lock" not in p.stdout + p.stderr


def test_render_composes_templates() -> None:
    p = kiln("render", "Experiment/vision/digits-resnet", "--what", "spec", cwd=ROOT, check=True)
    import yaml

    doc = yaml.safe_load(p.stdout)
    hp = doc["spec"]["algorithm"]["hyperparameters"]
    assert hp["epochs"] == 3            # the override
    assert hp["input_size"] == 32       # an override adding a key (+path=value)
    assert hp["momentum"] == 0.9        # from the template
    assert doc["spec"]["mode"] == "hpo"  # the document wins over the template
    assert "defaults" not in doc and "overrides" not in doc


def test_schema_written_per_kind(tmp_path: Path) -> None:
    kiln("schema", "--out", str(tmp_path / "schemas"), cwd=ROOT, check=True)
    import jsonschema

    for kind in ("workspace", "dataset", "labelingjob", "experiment", "deployment"):
        schema = json.loads((tmp_path / "schemas" / f"{kind}.schema.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        assert "spec" in schema["properties"]


def test_committed_schemas_are_current_and_accept_the_examples(tmp_path: Path) -> None:
    """The editor schemas in schemas/ match the models, and every example validates against them."""
    import jsonschema

    from kiln.api.schema import schema_for
    from kiln.loader import load_specs

    for s in load_specs(ROOT / "specs").specs:
        committed = json.loads((ROOT / "schemas" / f"{s.kind.lower()}.schema.json").read_text())
        assert committed == schema_for(s.kind), "run `kiln schema` and commit schemas/"
        jsonschema.Draft202012Validator(committed).validate(s.doc)
