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


@pytest.mark.parametrize("strategy", ["canary", "shadow"])
def test_rollout_renders_two_tracks_behind_one_service(tmp_path: Path, strategy: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".kiln/bentoml/models/iris/v2").mkdir(parents=True)
    (repo / ".kiln/bentoml/models/iris/v2/model.yaml").write_text("name: iris\n")
    # the version served here: the stable track's image
    (repo / ".kiln/deployments/default/iris-api").mkdir(parents=True)
    (repo / ".kiln/deployments/default/iris-api/server.json").write_text('{"model": "iris", "version": 1}')
    write(repo, {"specs/d.yaml": f"""
        apiVersion: kiln.dev/v1alpha1
        kind: Deployment
        metadata: {{name: iris-api}}
        spec:
          model: {{name: iris, version: 2}}
          replicas: 4
          rollout: {{strategy: {strategy}, steps: [20, 50, 100], interval: 300, maxErrorRate: 0.02}}
        """})
    out = kiln("render", "Deployment/iris-api", "--what", "k8s", cwd=repo)
    assert out.returncode == 0, out.stdout + out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    for d in docs:
        kv.validate(d, "1.30.0", strict=True)
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    image = {n: d["spec"]["template"]["spec"]["containers"][0]["image"] for n, d in deps.items()}
    assert image["iris-api"].endswith(":iris-v1")
    track = {n: d["spec"]["template"]["metadata"]["labels"]["kiln.dev/track"] for n, d in deps.items()}
    for d in deps.values():  # each Deployment owns its pods only
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    selector = services["iris-api"]["spec"]["selector"]
    if strategy == "canary":
        assert track == {"iris-api": "stable", "iris-api-canary": "canary"}
        assert image["iris-api-canary"].endswith(":iris-v2")
        # one Service over both tracks; 20%: 1 canary pod beside 4 stable ones
        assert "kiln.dev/track" not in selector
        assert deps["iris-api"]["spec"]["replicas"] == 4 and deps["iris-api-canary"]["spec"]["replicas"] == 1
        notes = deps["iris-api-canary"]["metadata"]["annotations"]
        assert notes["kiln.dev/canary-share"] == "20%" and notes["kiln.dev/rollout-steps"] == "20,50,100"
    else:
        assert track == {"iris-api": "stable", "iris-api-shadow": "shadow"}
        assert selector["kiln.dev/track"] == "stable"  # clients are answered by the stable pods only
        assert services["iris-api-shadow"]["spec"]["selector"]["kiln.dev/track"] == "shadow"
        assert "mirror" in services["iris-api"]["metadata"]["annotations"]["kiln.dev/shadow"]
