"""kiln apply with `runner: argo`: the same rendered manifest goes to a cluster through the real
Kubernetes client. No cluster runs here, so the API server is tests/fake_kube_api.py: a real HTTP
server that validates every body against Argo's strict schema and advances workflows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.fake_kube_api import FakeKube
from tests.helpers import kiln, write
from tests.test_argo_runner import TOKEN, write_kubeconfig

WS = """
apiVersion: kiln.dev/v1alpha1
kind: Workspace
metadata: {name: team}
spec:
  members: [{user: ada@example.com, role: admin}]
  presets: [{name: small, cpu: "1", memory: 1Gi}]
  quotas: {maxConcurrentJobs: 3}
"""
# the object that runs as a workflow on the cluster (a Workspace is bookkeeping, done in-process)
DATA = """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: rows, workspace: team}
spec: {type: tabular, task: classification, format: csv, source: {path: data/rows.csv}, label: y}
"""


@pytest.fixture()
def kube():
    k = FakeKube(token=TOKEN, step_delay=0.01)
    k.url = k.start()
    yield k
    k.close()


def test_apply_and_prune_on_argo(kube: FakeKube, tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kubeconfig", kube.url)
    write(tmp_path, {"specs/ws.yaml": WS, "specs/data.yaml": DATA, "data/rows.csv": "x,y\n1,a\n2,b\n",
                     "kiln.yaml": yaml.safe_dump({"runner": "argo", "argo": {
                         "namespace": "argo", "kubeconfig": str(kc), "context": "fake",
                         "serviceAccount": "kiln-runner"}})})
    out = kiln("apply", cwd=tmp_path, check=True).stdout
    assert "run workflow kiln-data-team-rows (argo runner)" in out
    # the workspace is recorded by the controller itself: nothing of it goes to the cluster
    assert "+ members: record members" in out
    assert not any("kiln-ws-" in name for _, name in kube.workflows)
    wf = kube.workflows[("argo", "kiln-data-team-rows")]
    assert wf["spec"]["serviceAccountName"] == "kiln-runner"
    assert wf["metadata"]["labels"]["kiln.dev/kind"] == "Dataset"
    assert wf["spec"]["parallelism"] == 3  # the workspace's maxConcurrentJobs
    assert kube.invalid_bodies == []   # every body the client sent is schema-valid
    rec = json.loads(kiln("get", "dataset", "team/rows", "-o", "json", cwd=tmp_path, check=True).stdout)
    assert rec["extra"]["workflow"]["phase"] == "Succeeded"
    assert {"kind": "workflow", "id": "kiln-data-team-rows", "runner": "argo"} in rec["inventory"]
    # A second apply submits nothing.
    posts = sum(1 for r in kube.requests if r[0] == "POST")
    assert "0 action(s)" in kiln("apply", cwd=tmp_path, check=True).stdout
    assert sum(1 for r in kube.requests if r[0] == "POST") == posts
    # Prune deletes the workflow in the cluster.
    (tmp_path / "specs/data.yaml").unlink()
    out = kiln("apply", "--prune", cwd=tmp_path, check=True).stdout
    assert "delete workflow kiln-data-team-rows" in out
    assert ("argo", "kiln-data-team-rows") not in kube.workflows


def test_unreachable_cluster_is_a_clear_failure(tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")
    write(tmp_path, {"specs/data.yaml": DATA.replace(", workspace: team", ""), "data/rows.csv": "x,y\n1,a\n",
                     "kiln.yaml": yaml.safe_dump({"runner": "argo", "argo": {"kubeconfig": str(kc)}})})
    p = kiln("apply", cwd=tmp_path)
    assert p.returncode == 1
    assert "cannot reach the Kubernetes API" in p.stdout and "Traceback" not in p.stdout + p.stderr
    st = json.loads(kiln("status", "-o", "json", cwd=tmp_path, check=True).stdout)
    assert st[0]["ready"] == "False" and "Kubernetes" in st[0]["message"]
