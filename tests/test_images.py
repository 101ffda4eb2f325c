"""Your own images (#28): ``command.image`` runs the training steps in the user's image with kiln's
step runner copied in by an init container; ``Deployment.spec.image`` is the serving image; pull
secrets by name. The manifests validate against Argo's and Kubernetes' schemas; the local runner
refuses a foreign image in one line, or runs it on the host with ``localRunner.foreignImages: host``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.controller.project import load_valid
from kiln.controller.render import RUNNER_INIT, on_host, render_workflow, workspaces_of
from kiln.errors import WorkflowError
from kiln.runners.local.validation import validate
from kiln.runners.schema import validate_workflow
from tests.helpers import kiln, write

IMAGE = "nvcr.io/nvidia/pytorch:24.01-py3"

SPECS = f"""
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {{name: wine}}
spec: {{type: tabular, task: classification, format: csv, source: {{sample: wine}}, label: target}}
---
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {{name: own}}
spec:
  dataset: {{name: wine}}
  command: {{run: python train.py, image: "{IMAGE}", imagePullSecrets: [ngc-pull]}}
  objective: {{metric: validation_accuracy, direction: maximize}}
"""

TRAIN = """
import kiln
kiln.report(step=1, validation_accuracy=0.75)
"""


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    write(repo, {"specs/own.yaml": SPECS, "train.py": TRAIN})
    return repo


def test_command_image_runs_the_training_step_in_it_and_validates(tmp_path: Path) -> None:
    cfg = load_config(_repo(tmp_path))
    specs = load_valid(cfg)
    exp = next(s for s in specs.specs if s.kind == "Experiment")
    m = render_workflow(cfg, exp, workspace=workspaces_of(specs.specs).get(exp.workspace))
    assert validate_workflow(m) == []
    by_name = {t["name"]: t for t in m["spec"]["templates"]}
    train = by_name["train"]
    assert train["container"]["image"] == IMAGE
    assert train["container"]["command"] == ["python", "-m", "kiln.cli"]
    assert train["container"]["args"][:2] == ["step", "experiment.train"]
    init = train["initContainers"][0]
    assert init["name"] == RUNNER_INIT and init["image"] == cfg.image  # kiln's runner comes from kiln's image
    mount = train["container"]["volumeMounts"][0]
    assert init["volumeMounts"][0]["mountPath"] == mount["mountPath"] and mount["readOnly"] is True
    assert train["volumes"] == [{"name": mount["name"], "emptyDir": {}}]
    # the steps around the training stay in kiln's own image
    assert by_name["prepare-data"]["container"]["image"] == cfg.image and "initContainers" not in by_name["select"]
    assert m["spec"]["imagePullSecrets"] == [{"name": "ngc-pull"}]

    # the local runner refuses it in one line that names the setting to change
    with pytest.raises(WorkflowError) as exc:
        validate(m)
    assert "\n" not in str(exc.value)
    assert IMAGE in str(exc.value) and "`runner: argo`" in str(exc.value) and "localRunner.foreignImages" in str(exc.value)
    # ... or runs it in kiln's own environment: the same step, back in kiln's image
    host, moved = on_host(m, cfg.image)
    assert moved == ["train"]
    validate(host)
    c = {t["name"]: t for t in host["spec"]["templates"]}["train"]["container"]
    assert (c["image"], c["command"], c["args"]) == (cfg.image, ["kiln"], train["container"]["args"])
    assert "PYTHONPATH" not in {e["name"] for e in c["env"]}
    assert by_name["train"]["initContainers"] == [init]  # the cluster's manifest is untouched


def test_an_image_that_is_not_an_address_is_a_spec_error(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "specs/own.yaml").write_text(SPECS.replace(IMAGE, "My Image:latest"))
    out = kiln("validate", cwd=repo)
    assert out.returncode != 0
    assert "own.yaml:" in out.stdout + out.stderr and "command.image" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_deployment_image_and_pull_secrets_in_the_k8s_manifests(tmp_path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".kiln/bentoml/models/iris/v1").mkdir(parents=True)
    (repo / ".kiln/bentoml/models/iris/v1/model.yaml").write_text("name: iris\n")
    write(
        repo,
        {
            "specs/d.yaml": """
        apiVersion: kiln.dev/v1alpha1
        kind: Deployment
        metadata: {name: iris-api}
        spec:
          model: {name: iris, version: 1}
          image: registry.example.com/ml/iris-serving:3f2a9c1
          imagePullSecrets: [regcred]
        """
        },
    )
    from kiln.controller.deployment_k8s import render_k8s

    cfg = load_config(repo)
    specs = load_valid(cfg)
    dep = next(s for s in specs.specs if s.kind == "Deployment")
    docs = render_k8s(cfg, dep, workspace=None)
    for d in docs:
        kv.validate(d, "1.30.0", strict=True)
    pod = docs[0]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example.com/ml/iris-serving:3f2a9c1"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


@pytest.mark.slow
def test_local_apply_refuses_a_foreign_image_or_runs_it_on_the_host(tmp_path: Path) -> None:
    pytest.importorskip("dvc")
    repo = _repo(tmp_path)
    out = kiln("apply", cwd=repo, timeout=300)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    line = next(ln for ln in text.splitlines() if "cannot run" in ln)
    assert IMAGE in line and "`runner: argo`" in line, text
    assert "Traceback" not in text

    (repo / "kiln.yaml").write_text("localRunner: {foreignImages: host}\n")
    out = kiln("apply", cwd=repo, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning: task 'train' runs in kiln's own environment" in out.stderr


def test_the_users_command_gets_kilns_packages_last_on_its_path() -> None:
    """In the user's image the step runs with kiln's packages first; the command it starts gets
    them last, so the image's own numpy/torch win and ``import kiln`` still works."""
    from kiln.controller.experiment.command import _runner_last

    assert _runner_last({"PYTHONPATH": "/x"}) == {}  # not in a user's image: untouched
    env = {"PYTHONPATH": "/opt/kiln-runner:/app/lib", "KILN_RUNNER_PATH": "/opt/kiln-runner"}
    assert _runner_last(env) == {"PYTHONPATH": "/app/lib:/opt/kiln-runner"}
