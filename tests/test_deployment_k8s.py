"""`kiln render Deployment/NAME --what k8s`: Deployment + Service (+ HPA) valid against
Kubernetes' own schemas (kubernetes-validate, strict), with no secret value in them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import kiln, write

kv = pytest.importorskip("kubernetes_validate")

def test_k8s_manifests_validate(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".kiln/bentoml/models/iris/v1").mkdir(parents=True)
    (repo / ".kiln/bentoml/models/iris/v1/model.yaml").write_text("name: iris\n")  # registered, for validation
    write(repo, {"specs/d.yaml": """
        apiVersion: kiln.dev/v1alpha1
        kind: Deployment
        metadata: {name: iris-api}
        spec:
          model: {name: iris, version: 1}
          autoscaling: {minReplicas: 2, maxReplicas: 5, targetCPUUtilization: 60}
          auth: {tokens: [{env: IRIS_TOKEN}, {secretName: iris-keys, key: k}]}
        """})
    out = kiln("render", "Deployment/iris-api", "--what", "k8s", cwd=repo, env={"IRIS_TOKEN": "sekrit-123"})
    assert out.returncode == 0, out.stdout + out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    for d in docs:
        kv.validate(d, "1.30.0", strict=True)  # raises ValidationError on a bad manifest
    dep = docs[0]
    assert dep["spec"]["replicas"] == 2
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KILN_TOKEN_1"]["valueFrom"]["secretKeyRef"] == {"name": "iris-keys", "key": "k"}
    assert "sekrit-123" not in out.stdout
    assert docs[2]["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
