"""The Helm chart (charts/kiln) renders with Helm's own engine and every object it renders is valid
Kubernetes (strict schemas of ``kubernetes-validate``), for the default values and for a values
file with PostgreSQL, secrets and namespaced RBAC. Also a minimal parse of the Dockerfile.

Helm comes from the ``helm-python-sdk`` wheel (Helm's Go SDK as a shared library; no ``helm``
binary, no Go toolchain), or from a ``helm`` binary on PATH. Without either the chart tests skip.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

CHART = ROOT / "charts" / "kiln"
K8S_VERSION = "1.30.0"
REPO = {"git": {"repo": "https://git.example.com/ml/specs.git"}}

FULL = {
    "git": {"repo": "", "existingSecret": "kiln-git", "branch": "prod", "interval": "5m"},
    "image": {"repository": "registry.example.com/kiln", "tag": "1.2.3"},
    "controller": {"prune": True, "stuckAfter": "30m", "extraArgs": ["--log-level", "debug"]},
    "config": {"dvcRemote": "s3://ml-data/dvc", "labelStudioUrl": "http://label-studio.ls:8080"},
    "argo": {"namespace": "argo", "workflowServiceAccount": "kiln-wf"},
    "labelStudio": {"existingSecret": "label-studio", "existingSecretKey": "api-token"},
    "notifications": {"existingSecret": "kiln-webhook"},
    "postgresql": {"enabled": True, "password": "s3cretpw"},
    "rbac": {"clusterWide": False, "namespaces": ["vision", "argo"]},
    "persistence": {"enabled": True, "storageClass": "standard"},
    "extraEnvFrom": [{"secretRef": {"name": "dvc-aws"}}],
    "imagePullSecrets": [{"name": "regcred"}],
}


def _render(values: dict[str, Any], namespace: str = "ml") -> list[dict[str, Any]]:
    """Every object the chart renders for ``values`` (release name ``kiln``)."""
    try:
        import helm_python
    except ImportError:
        helm_python = None
    if helm_python is not None:
        with helm_python.Chart.load(str(CHART)) as chart:
            files = chart.render(values, name="kiln", namespace=namespace)
        text = "\n---\n".join(v for k, v in sorted(files.items()) if k.endswith((".yaml", ".yml")))
    elif shutil.which("helm"):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(values, f)
            f.flush()
            p = subprocess.run(["helm", "template", "kiln", str(CHART), "-n", namespace, "-f", f.name],
                               capture_output=True, text=True)
        if p.returncode != 0:
            raise RenderError(p.stderr)
        text = p.stdout
    else:
        pytest.skip("no Helm: pip install helm-python-sdk (Helm's Go SDK in a wheel) or put `helm` on PATH")
    return [d for d in yaml.safe_load_all(text) if d]


class RenderError(Exception):
    pass


def _valid(docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    for d in docs:
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{d['kind']}/{d['metadata']['name']}: {exc.message} at {list(exc.path)}") from None


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, (kind, name, [d["metadata"]["name"] for d in hits])
    return hits[0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _covers(rules: list[dict[str, Any]], group: str, resource: str, verbs: set[str]) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verbs <= set(r["verbs"]) for r in rules)


def test_default_values_render_valid_objects() -> None:
    docs = _render(REPO)
    _valid(docs)
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
                                         "Service", "Deployment"}
    dep = _one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "ghcr.io/kiln-dev/kiln:0.1.0"  # the chart's appVersion
    assert c["args"][:7] == ["controller", "--repo", "$(KILN_GIT_URL)", "--branch", "$(KILN_GIT_BRANCH)",
                             "--interval", "$(KILN_SYNC_INTERVAL)"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["args"][c["args"].index("--host") + 1] == "0.0.0.0" and "--metrics-public" in c["args"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "kiln"
    cm = _one(docs, "ConfigMap")["data"]
    assert cm["KILN_GIT_URL"] == REPO["git"]["repo"] and cm["KILN_RUNNER"] == "argo"
    assert cm["KILN_ARGO_NAMESPACE"] == "ml" and cm["KILN_ARGO_IN_CLUSTER"] == "true"
    assert "KILN_STATE_URL" not in _env(c)  # no state store configured: SQLite in the work dir
    svc = _one(docs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "http" and svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    rules = _one(docs, "ClusterRole")["rules"]
    assert _covers(rules, "argoproj.io", "workflows", {"create", "get", "watch", "patch", "delete"})
    assert _covers(rules, "", "pods/log", {"get"})
    assert _covers(rules, "apps", "deployments", {"create", "get", "patch", "delete"})
    assert _covers(rules, "", "services", {"create", "get", "patch", "delete"})
    assert _covers(rules, "", "configmaps", {"create", "get", "patch"})  # the workspaces' semaphores (#18)
    binding = _one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kiln", "namespace": "ml"}]


def test_full_values_postgres_secrets_and_namespaced_rbac() -> None:
    docs = _render(FULL)
    _valid(docs)
    c = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = _env(c)
    assert env["KILN_GIT_URL"] == {"secretKeyRef": {"name": "kiln-git", "key": "url"}}
    assert env["LABEL_STUDIO_TOKEN"] == {"secretKeyRef": {"name": "label-studio", "key": "api-token"}}
    assert env["KILN_WEBHOOK_URL"] == {"secretKeyRef": {"name": "kiln-webhook", "key": "url"}}
    # The state URL is assembled from the password Secret by Kubernetes ($(VAR) expansion of an
    # earlier variable), so the password is in no ConfigMap and no pod spec.
    names = [e["name"] for e in c["env"]]
    assert names.index("KILN_PG_PASSWORD") < names.index("KILN_STATE_URL")
    assert env["KILN_STATE_URL"] == "postgresql+psycopg2://kiln:$(KILN_PG_PASSWORD)@kiln-postgresql:5432/kiln"
    sts = _one(docs, "StatefulSet", "kiln-postgresql")
    assert _one(docs, "Service", "kiln-postgresql")["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    secret = _one(docs, "Secret", "kiln-postgresql")
    rendered = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
    assert "s3cretpw" not in rendered and "s3cretpw" not in str(secret)  # only base64 in the Secret
    cm = _one(docs, "ConfigMap")["data"]
    assert "KILN_GIT_URL" not in cm  # the URL (with its token) comes from the Secret only
    assert (cm["KILN_DVC_REMOTE"], cm["KILN_LABEL_STUDIO_URL"]) == ("s3://ml-data/dvc", "http://label-studio.ls:8080")
    assert (cm["KILN_ARGO_NAMESPACE"], cm["KILN_ARGO_SERVICE_ACCOUNT"]) == ("argo", "kiln-wf")
    assert cm["KILN_IMAGE"] == "registry.example.com/kiln:1.2.3"
    assert {"--prune", "--stuck-after", "30m"} <= set(c["args"])
    assert _one(docs, "PersistentVolumeClaim")["spec"]["storageClassName"] == "standard"
    # Namespaced RBAC: one Role + RoleBinding per namespace (argo listed twice -> once).
    assert not [d for d in docs if d["kind"].startswith("Cluster")]
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    assert set(roles) == {"argo", "vision"}
    assert all(_covers(r["rules"], "argoproj.io", "workflows", {"create", "watch"}) for r in roles.values())
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding"} == {"argo", "vision"}


def test_config_matches_what_kiln_reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every KILN_* variable the ConfigMap sets is one kiln reads, and loads into the config."""
    from kiln.config import ENV_OVERRIDES, load_config

    cm = _one(_render(FULL), "ConfigMap")["data"]
    daemon_args = {"KILN_GIT_URL", "KILN_GIT_BRANCH", "KILN_SYNC_INTERVAL"}  # used in the container args
    assert set(cm) - daemon_args <= set(ENV_OVERRIDES)
    for k, v in cm.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(tmp_path)
    assert cfg.runner == "argo" and cfg.argo["inCluster"] is True and cfg.dvc.remote == "s3://ml-data/dvc"


def test_missing_required_values_fail_with_the_key() -> None:
    with pytest.raises(Exception, match="git.repo is required"):
        _render({})
    with pytest.raises(Exception, match="postgresql.password"):
        _render({**REPO, "postgresql": {"enabled": True}})


def test_chart_files_present() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "kiln"
    assert (CHART / "templates" / "NOTES.txt").is_file() and (CHART / "README.md").is_file()
    values = (CHART / "values.yaml").read_text()
    # Documented: every top-level key has a comment above it or on its first line.
    lines = values.splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            assert "#" in line or lines[i - 1].startswith("#") or lines[i - 1].strip() == "", line


def test_dockerfile_parses() -> None:
    """No Docker engine here: parse the instructions and check the essentials."""
    text = (ROOT / "Dockerfile").read_text()
    logical, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(buf)
            buf = ""
    assert not buf, "a continuation line at the end"
    instr = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in logical]
    known = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "USER", "EXPOSE", "ENTRYPOINT", "CMD",
             "LABEL", "HEALTHCHECK", "VOLUME", "SHELL", "STOPSIGNAL", "ONBUILD"}
    assert all(i in known for i, _ in instr), [i for i, _ in instr if i not in known]
    first = next(i for i in instr if i[0] != "ARG")
    assert first == ("FROM", "python:3.11-slim")
    users = [a for i, a in instr if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["kiln"]') in instr
    runs = " ".join(a for i, a in instr if i == "RUN")
    assert "git" in runs and "pip install" in runs
    for i, a in instr:  # everything COPYed exists in the repository
        if i == "COPY":
            for src in a.split()[:-1]:
                assert (ROOT / src).exists(), src
