"""ArgoRunner against a real HTTP server speaking the Kubernetes API (tests/fake_kube_api.py).

The client side is entirely real: kubernetes.client.ApiClient, urllib3, kubeconfig loading.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from kiln.errors import ConfigError, WorkflowError
from kiln.runners.argo import (
    SPEC_HASH_LABEL,
    STOP_MESSAGE_ANNOTATION,
    ArgoConfig,
    ArgoRunner,
    fnv32a,
    pod_name,
)
from kiln.runners.base import Runner
from tests.fake_kube_api import FakeKube

TOKEN = "s3cret-token"
EXAMPLES = next((p for p in ([Path(os.environ["KILN_ARGO_EXAMPLES"])] if os.environ.get("KILN_ARGO_EXAMPLES") else
                             [Path(__file__).resolve().parents[n] / "shared" / "argo" / "examples" for n in (2, 3)])
                 if p.is_dir()), None)


@pytest.fixture
def kube():
    fake = FakeKube(token=TOKEN, step_delay=0.02)
    fake.url = fake.start()
    yield fake
    fake.close()
    assert fake.invalid_bodies == [], "the client or the fake produced schema-invalid workflows"


def api_client(url: str, token: str = TOKEN) -> k8s.ApiClient:
    cfg = k8s.Configuration()
    cfg.host = url
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return k8s.ApiClient(cfg)


def runner(kube: FakeKube, **kw) -> ArgoRunner:
    kw.setdefault("poll_interval", 0.02)
    return ArgoRunner(ArgoConfig(api_client=api_client(kube.url), **kw))


def manifest(name: str = "kiln-train", *, hash_: str = "abc123", dag: bool = False) -> dict:
    echo = {"name": "echo", "inputs": {"parameters": [{"name": "m"}]},
            "container": {"image": "busybox", "command": ["echo"], "args": ["{{inputs.parameters.m}}"]}}
    if dag:
        main = {"name": "main", "dag": {"tasks": [
            {"name": "prep", "template": "echo", "arguments": {"parameters": [{"name": "m", "value": "p"}]}},
            {"name": "fit", "template": "echo", "depends": "prep",
             "arguments": {"parameters": [{"name": "m", "value": "{{workflow.parameters.lr}}"}]}}]}}
    else:
        main = {"name": "main", "steps": [
            [{"name": "prep", "template": "echo", "arguments": {"parameters": [{"name": "m", "value": "p"}]}}],
            [{"name": "fit", "template": "echo",
              "arguments": {"parameters": [{"name": "m", "value": "{{workflow.parameters.lr}}"}]}}]]}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name, "labels": {SPEC_HASH_LABEL: hash_}},
        "spec": {"entrypoint": "main", "arguments": {"parameters": [{"name": "lr", "value": "0.1"}]},
                 "templates": [main, echo]},
    }


def posts(kube: FakeKube) -> int:
    return sum(1 for m, path, _ in kube.requests if m == "POST")


def wait_for(pred, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not reached")


# -- submit / wait / get ---------------------------------------------------------------------------


def test_is_a_runner() -> None:
    assert issubclass(ArgoRunner, Runner) and ArgoRunner.name == "argo"


@pytest.mark.parametrize("dag", [False, True], ids=["steps", "dag"])
def test_submit_waits_until_succeeded_and_reports_updates(kube: FakeKube, dag: bool) -> None:
    r = runner(kube, service_account="kiln-runner")
    updates: list[dict] = []
    wf = r.submit(manifest(dag=dag), parameters={"lr": "0.5", "epochs": "3"}, on_update=updates.append)
    status = wf["status"]
    assert status["phase"] == "Succeeded"
    pods = {n["displayName"]: n for n in status["nodes"].values() if n["type"] == "Pod"}
    assert set(pods) == {"prep", "fit"} and all(n["phase"] == "Succeeded" for n in pods.values())
    phases = [u["status"]["phase"] for u in updates]
    assert phases[0] in ("Pending", "Running") and phases[-1] == "Succeeded" and "Running" in phases
    # what the server stored is what the client sent: parameters applied, SA set, label kept
    stored = kube.workflows[("argo", "kiln-train")]
    assert stored["spec"]["serviceAccountName"] == "kiln-runner"
    assert stored["spec"]["arguments"]["parameters"] == [{"name": "lr", "value": "0.5"}, {"name": "epochs", "value": "3"}]
    assert stored["metadata"]["labels"][SPEC_HASH_LABEL] == "abc123"
    assert kube.invalid_bodies == []
    got = r.get("kiln-train")
    assert got["status"]["phase"] == "Succeeded" and got["metadata"]["uid"] == wf["metadata"]["uid"]


def test_non_string_parameters_are_rendered_as_strings(kube: FakeKube) -> None:
    r = runner(kube)
    r.submit(manifest(), parameters={"lr": 0.25, "flag": True, "n": 3}, wait=False)  # type: ignore[dict-item]
    params = kube.workflows[("argo", "kiln-train")]["spec"]["arguments"]["parameters"]
    assert params == [{"name": "lr", "value": "0.25"}, {"name": "flag", "value": "true"}, {"name": "n", "value": "3"}]


def test_submit_without_wait_returns_created_object(kube: FakeKube) -> None:
    kube.gate.clear()
    seen: list[dict] = []
    wf = runner(kube).submit(manifest(), wait=False, on_update=seen.append)
    assert wf["metadata"]["name"] == "kiln-train" and wf["status"]["phase"] == "Pending"
    assert seen == [wf]


def test_label_is_added_when_missing(kube: FakeKube) -> None:
    m = manifest()
    del m["metadata"]["labels"]
    runner(kube).submit(m, wait=False)
    label = kube.workflows[("argo", "kiln-train")]["metadata"]["labels"][SPEC_HASH_LABEL]
    assert len(label) == 16 and int(label, 16) >= 0


def test_generate_name_manifests_are_created(kube: FakeKube) -> None:
    m = manifest()
    m["metadata"] = {"generateName": "kiln-train-"}
    wf = runner(kube).submit(m)
    assert wf["metadata"]["name"].startswith("kiln-train-") and wf["status"]["phase"] == "Succeeded"


def test_failed_run_is_returned_not_raised(kube: FakeKube) -> None:
    kube.fail_nodes = {"prep"}
    wf = runner(kube).submit(manifest())
    assert wf["status"]["phase"] == "Failed" and "prep" in wf["status"]["message"]
    fit = [n for n in wf["status"]["nodes"].values() if n["displayName"] == "fit"]
    assert fit == []  # the fake's controller stops at the first failure, as a steps template does


@pytest.mark.skipif(EXAMPLES is None, reason="Argo examples not found (KILN_ARGO_EXAMPLES or ../shared/argo/examples)")
def test_every_example_is_accepted_and_sent_schema_valid(kube: FakeKube) -> None:
    r = runner(kube, service_account="kiln")
    files = sorted(EXAMPLES.rglob("*.yaml"))
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            r.submit(doc, wait=False)
    assert posts(kube) >= len(files)
    assert kube.invalid_bodies == []


# -- idempotency ------------------------------------------------------------------------------------


def test_same_hash_returns_existing_run(kube: FakeKube) -> None:
    r = runner(kube)
    first = r.submit(manifest())
    again = r.submit(manifest())
    assert posts(kube) == 1
    assert again["metadata"]["uid"] == first["metadata"]["uid"] and again["status"]["phase"] == "Succeeded"


def test_same_hash_while_running_attaches_to_it(kube: FakeKube) -> None:
    kube.gate.clear()
    r = runner(kube)
    first = r.submit(manifest(), wait=False)
    threading.Timer(0.2, kube.gate.set).start()
    done = r.submit(manifest())
    assert posts(kube) == 1 and done["metadata"]["uid"] == first["metadata"]["uid"]
    assert done["status"]["phase"] == "Succeeded"


def test_changed_hash_replaces_run_after_deletion_completes(kube: FakeKube) -> None:
    r = runner(kube)
    first = r.submit(manifest(hash_="v1"))
    kube.delete_delay = 0.3  # finalizers: the old object lingers with a deletionTimestamp
    second = r.submit(manifest(hash_="v2"))
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert second["metadata"]["labels"][SPEC_HASH_LABEL] == "v2" and second["status"]["phase"] == "Succeeded"
    assert [m for m, p, _ in kube.requests if m in ("POST", "DELETE")] == ["POST", "DELETE", "POST"]


def test_failed_run_with_same_hash_is_rerun(kube: FakeKube) -> None:
    kube.fail_nodes = {"fit"}
    r = runner(kube)
    first = r.submit(manifest())
    assert first["status"]["phase"] == "Failed"
    kube.fail_nodes = set()
    second = r.submit(manifest())
    assert second["status"]["phase"] == "Succeeded" and second["metadata"]["uid"] != first["metadata"]["uid"]


def test_different_parameters_are_a_different_run(kube: FakeKube) -> None:
    r = runner(kube)
    first = r.submit(manifest(), parameters={"lr": "0.1"})
    second = r.submit(manifest(), parameters={"lr": "0.2"})
    assert second["metadata"]["uid"] != first["metadata"]["uid"]


# -- get / logs / stop / delete ---------------------------------------------------------------------


def test_get_unknown_is_none(kube: FakeKube) -> None:
    assert runner(kube).get("nope") is None


def test_get_decompresses_compressed_nodes(kube: FakeKube) -> None:
    r = runner(kube)
    r.submit(manifest())
    with kube.lock:
        st = kube.workflows[("argo", "kiln-train")]["status"]
        nodes = st.pop("nodes")
        st["compressedNodes"] = base64.b64encode(gzip.compress(json.dumps(nodes).encode())).decode()
    assert r.get("kiln-train")["status"]["nodes"] == nodes


def test_logs_all_nodes_in_start_order_and_one_node(kube: FakeKube) -> None:
    r = runner(kube)
    wf = r.submit(manifest(), parameters={"lr": "0.7"})
    lines = list(r.logs("kiln-train"))
    params = json.dumps({"lr": "0.7"})
    assert lines == ["prep: start prep", f"prep: params {params}", "prep: end prep Succeeded",
                     "fit: start fit", f"fit: params {params}", "fit: end fit Succeeded"]
    assert list(r.logs("kiln-train", node="fit")) == ["start fit", f"params {params}", "end fit Succeeded"]
    fit_id = next(i for i, n in wf["status"]["nodes"].items() if n["displayName"] == "fit")
    assert list(r.logs("kiln-train", node=fit_id))[0] == "start fit"
    assert list(r.logs("kiln-train", node="kiln-train[1].fit"))[0] == "start fit"
    # pod names requested follow Argo's v2 rule
    log_paths = {p for m, p, _ in kube.requests if p.endswith("/log")}
    assert f"/api/v1/namespaces/argo/pods/kiln-train-echo-{fnv32a('kiln-train[1].fit')}/log" in log_paths


def test_logs_single_pod_workflow_uses_workflow_name(kube: FakeKube) -> None:
    m = manifest()
    m["spec"]["entrypoint"] = "echo"
    m["spec"]["templates"][1]["inputs"]["parameters"][0]["value"] = "x"
    runner(kube).submit(m)
    assert list(runner(kube).logs("kiln-train", node="kiln-train"))[0] == "start kiln-train"


def test_logs_errors(kube: FakeKube) -> None:
    r = runner(kube)
    with pytest.raises(WorkflowError, match="no workflow 'ghost' in namespace 'argo'"):
        list(r.logs("ghost"))
    r.submit(manifest())
    with pytest.raises(WorkflowError) as err:
        list(r.logs("kiln-train", node="trian"))
    assert "has no node 'trian'" in str(err.value) and "valid nodes: fit, prep" in str(err.value)
    # podGC deleted one pod: the all-nodes view says so instead of failing
    with kube.lock:
        del kube.pods[("argo", f"kiln-train-echo-{fnv32a('kiln-train[0].prep')}")]
    lines = list(r.logs("kiln-train"))
    assert lines[0].startswith("prep: (logs of node 'prep' of workflow 'kiln-train' unavailable")
    assert lines[1] == "fit: start fit"
    with pytest.raises(WorkflowError, match="unavailable"):
        list(r.logs("kiln-train", node="prep"))


def test_stop_terminates_and_records_message(kube: FakeKube) -> None:
    kube.gate.clear()
    r = runner(kube)
    r.submit(manifest(), wait=False)
    wait_for(lambda: (r.get("kiln-train") or {}).get("status", {}).get("phase") == "Running")
    r.stop("kiln-train", "cancelled by alice")
    patches = [(p, ct) for m, p, ct in kube.requests if m == "PATCH"]
    assert patches == [("/apis/argoproj.io/v1alpha1/namespaces/argo/workflows/kiln-train", "application/merge-patch+json")]
    stored = kube.workflows[("argo", "kiln-train")]
    assert stored["spec"]["shutdown"] == "Terminate"
    assert stored["metadata"]["annotations"][STOP_MESSAGE_ANNOTATION] == "cancelled by alice"
    final = wait_for(lambda: (lambda w: w if w["status"]["phase"] == "Failed" else None)(r.get("kiln-train")))
    assert final["status"]["message"] == "cancelled by alice"
    assert all(n["phase"] in ("Failed", "Succeeded") for n in final["status"]["nodes"].values())


def test_stop_finished_or_missing(kube: FakeKube) -> None:
    r = runner(kube)
    r.submit(manifest())
    r.stop("kiln-train")
    assert not any(m == "PATCH" for m, _, _ in kube.requests)
    with pytest.raises(WorkflowError, match="no workflow 'ghost'"):
        r.stop("ghost")


def test_delete_is_idempotent(kube: FakeKube) -> None:
    r = runner(kube)
    r.submit(manifest())
    r.delete("kiln-train")
    assert r.get("kiln-train") is None and ("argo", "kiln-train") not in kube.workflows
    r.delete("kiln-train")  # already gone: no error


def test_wait_notices_deletion(kube: FakeKube) -> None:
    kube.gate.clear()
    r = runner(kube)
    r.submit(manifest(), wait=False)
    threading.Timer(0.2, lambda: kube.delete("argo", "kiln-train")).start()
    with pytest.raises(WorkflowError, match="disappeared from namespace 'argo'"):
        r.submit(manifest())


# -- errors --------------------------------------------------------------------------------------------


def _one_line_error(err: pytest.ExceptionInfo) -> str:
    msg = err.value.message
    assert "\n" not in msg and "Traceback" not in str(err.value) and "urllib3" not in str(err.value)
    return msg


def test_invalid_manifest_is_rejected_before_any_request(kube: FakeKube) -> None:
    m = manifest()
    m["spec"]["templates"][1]["container"]["comand"] = m["spec"]["templates"][1]["container"].pop("command")
    with pytest.raises(WorkflowError, match=r"spec\.templates\[1\]\.container\.comand: unknown field"):
        runner(kube).submit(m)
    assert kube.requests == []


def test_wrong_kind_and_namespace_mismatch(kube: FakeKube) -> None:
    m = manifest()
    m["kind"] = "WorkflowTemplate"
    with pytest.raises(WorkflowError, match="submits kind Workflow"):
        runner(kube).submit(m)
    m = manifest()
    m["metadata"]["namespace"] = "prod"
    with pytest.raises(WorkflowError, match="names namespace 'prod'"):
        runner(kube).submit(m)
    assert kube.requests == []


def test_401_bad_credentials(kube: FakeKube) -> None:
    r = ArgoRunner(ArgoConfig(api_client=api_client(kube.url, token="wrong")))
    with pytest.raises(WorkflowError) as err:
        r.submit(manifest())
    msg = _one_line_error(err)
    assert "rejected kiln's credentials (401 Unauthorized)" in msg and kube.url in msg
    assert "log in again" in err.value.hint


def test_403_forbidden_names_namespace_and_rbac(kube: FakeKube) -> None:
    kube.force(403, body={"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
                          "message": 'workflows.argoproj.io is forbidden: User "bob" cannot create resource "workflows"'})
    with pytest.raises(WorkflowError) as err:
        runner(kube).submit(manifest())
    msg = _one_line_error(err)
    assert "namespace 'argo'" in msg and "403 Forbidden" in msg and 'User "bob"' in msg
    assert "workflows.argoproj.io" in err.value.hint and "pods/log" in err.value.hint
    with pytest.raises(WorkflowError, match="403"):
        runner(kube).get("x")


def test_404_crd_missing(kube: FakeKube) -> None:
    kube.crd_installed = False
    for call in (lambda r: r.submit(manifest()), lambda r: r.get("x"), lambda r: r.delete("x")):
        with pytest.raises(WorkflowError) as err:
            call(runner(kube))
        msg = _one_line_error(err)
        assert msg.startswith(f"Argo Workflows CRD not found in cluster {kube.url}")
        assert "kubectl apply -n argo -f" in err.value.hint


def test_404_namespace_missing(kube: FakeKube) -> None:
    with pytest.raises(WorkflowError) as err:
        runner(kube, namespace="ml").submit(manifest())
    assert _one_line_error(err) == f"namespace 'ml' does not exist in {kube.url}"
    assert "kubectl create namespace ml" in err.value.hint


def test_422_invalid_from_api_server(kube: FakeKube) -> None:
    kube.force(422, method="POST", body={
        "kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422,
        "message": 'Workflow.argoproj.io "kiln-train" is invalid: metadata.name: Invalid value',
        "details": {"name": "kiln-train", "kind": "Workflow", "causes": [
            {"reason": "FieldValueInvalid", "field": "metadata.name", "message": "Invalid value: \"Kiln_Train\""}]}})
    with pytest.raises(WorkflowError) as err:
        runner(kube).submit(manifest())
    msg = _one_line_error(err)
    assert "(422 Invalid): metadata.name: Invalid value" in msg


def test_other_http_errors(kube: FakeKube) -> None:
    kube.force(500)
    with pytest.raises(WorkflowError) as err:
        runner(kube).get("x")
    assert "answered 500" in _one_line_error(err)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_fails_fast() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    r = ArgoRunner(ArgoConfig(api_client=api_client(url), request_timeout=2))
    start = time.monotonic()
    with pytest.raises(WorkflowError) as err:
        r.submit(manifest())
    assert time.monotonic() - start < 5
    msg = _one_line_error(err)
    assert msg.startswith(f"cannot reach the Kubernetes API at {url} while reading workflow 'kiln-train'")
    assert "kubectl cluster-info" in err.value.hint


def test_unresponsive_server_times_out() -> None:
    with socket.socket() as srv:  # accepts TCP connections (backlog) but never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        r = ArgoRunner(ArgoConfig(api_client=api_client(url), request_timeout=0.3))
        start = time.monotonic()
        with pytest.raises(WorkflowError, match="cannot reach the Kubernetes API"):
            r.get("x")
        assert time.monotonic() - start < 5


# -- kubeconfig / config ---------------------------------------------------------------------------------


def write_kubeconfig(path: Path, url: str, token: str = TOKEN) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "me", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": "argo"}}],
    }))
    return path


def test_kubeconfig_from_kiln_yaml_mapping(kube: FakeKube, tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "config", kube.url)
    cfg = ArgoConfig.from_mapping({"namespace": "argo", "kubeconfig": str(kc), "context": "fake",
                                   "serviceAccount": "kiln"})
    cfg.poll_interval = 0.02
    wf = ArgoRunner(cfg).submit(manifest())
    assert wf["status"]["phase"] == "Succeeded" and wf["spec"]["serviceAccountName"] == "kiln"


def test_kubeconfig_dead_server_fails_fast(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    r = ArgoRunner(kubeconfig=str(write_kubeconfig(tmp_path / "config", url)))
    start = time.monotonic()
    with pytest.raises(WorkflowError, match=f"cannot reach the Kubernetes API at {url}"):
        r.get("x")
    assert time.monotonic() - start < 5


def test_missing_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    r = ArgoRunner(kubeconfig=str(tmp_path / "nope"))
    with pytest.raises(WorkflowError) as err:
        r.get("x")
    assert _one_line_error(err) == f"no kubeconfig found at {tmp_path / 'nope'} for the Argo runner"


def test_unknown_context(tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "config", "http://127.0.0.1:1")
    with pytest.raises(WorkflowError, match="context 'prod' not found in kubeconfig"):
        ArgoRunner(kubeconfig=str(kc), context="prod").get("x")


def test_in_cluster_outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(WorkflowError, match="not running in a Kubernetes pod"):
        ArgoRunner(in_cluster=True).get("x")


def test_from_mapping_validation() -> None:
    cfg = ArgoConfig.from_mapping({"namespace": "ml", "inCluster": True, "serviceAccount": "runner"})
    assert (cfg.namespace, cfg.in_cluster, cfg.service_account) == ("ml", True, "runner")
    assert ArgoConfig.from_mapping(None) == ArgoConfig()
    assert ArgoConfig.from_mapping({"kubeconfig": "~/kc"}).kubeconfig == os.path.expanduser("~/kc")
    with pytest.raises(ConfigError) as err:
        ArgoConfig.from_mapping({"namspace": "x", "bogus": 1})
    assert "'namspace' (did you mean 'namespace'?)" in str(err.value) and "'bogus'" in str(err.value)
    assert "namespace, serviceAccount, kubeconfig, context, inCluster" in err.value.hint
    with pytest.raises(ConfigError, match="inCluster must be true or false"):
        ArgoConfig.from_mapping({"inCluster": "yes"})
    with pytest.raises(ConfigError, match="namespace must be a non-empty string"):
        ArgoConfig.from_mapping({"namespace": ""})
    with pytest.raises(ConfigError, match="cannot be combined"):
        ArgoConfig.from_mapping({"inCluster": True, "kubeconfig": "/x"})


# -- pod names -----------------------------------------------------------------------------------------


def test_fnv32a_matches_argo_vectors() -> None:
    # vectors from Argo's ui/src/shared/pod-name.test.ts
    assert fnv32a("hello") == 1335831723
    assert fnv32a("world") == 933488787
    assert fnv32a("You cannot alter your fate. However, you can rise to meet it.") == 827171719


def test_pod_name_rules() -> None:
    wf = {"metadata": {"name": "wf"}}
    node = {"id": "wf-123", "name": "wf[0].step", "templateName": "tmpl", "type": "Pod"}
    assert pod_name(wf, node) == f"wf-tmpl-{fnv32a('wf[0].step')}"
    assert pod_name(wf, {"id": "wf", "name": "wf", "templateName": "main"}) == "wf"
    ref = {"id": "wf-1", "name": "wf.a", "templateRef": {"name": "lib", "template": "train"}}
    assert pod_name(wf, ref) == f"wf-train-{fnv32a('wf.a')}"
    assert pod_name(wf, {"id": "wf-1", "name": "wf.a"}) == f"wf-{fnv32a('wf.a')}"
    v1 = {"metadata": {"name": "wf", "annotations": {"workflows.argoproj.io/pod-name-format": "v1"}}}
    assert pod_name(v1, node) == "wf-123"
    long = {"metadata": {"name": "w" * 200}}
    name = pod_name(long, {"id": "x", "name": "n", "templateName": "t" * 100})
    prefix, _, suffix = name.rpartition("-")
    assert len(prefix) == 253 - 10 - 1 and suffix == str(fnv32a("n"))


def test_manifest_is_not_mutated(kube: FakeKube) -> None:
    m = manifest()
    before = copy.deepcopy(m)
    runner(kube, service_account="sa").submit(m, parameters={"lr": "9"}, wait=False)
    assert m == before


def test_same_hash_but_being_deleted_is_recreated(kube: FakeKube) -> None:
    r = runner(kube)
    first = r.submit(manifest())
    kube.delete_delay = 0.3
    kube.delete("argo", "kiln-train")  # someone else (prune) started deleting it
    second = r.submit(manifest())
    assert second["metadata"]["uid"] != first["metadata"]["uid"] and second["status"]["phase"] == "Succeeded"


@pytest.mark.slow  # loads and validates specs (~5 s under load)
def test_workspace_quotas_become_argo_semaphores_set_before_the_workflow(kube: FakeKube, tmp_path: Path) -> None:
    """#18 item 6: on a cluster a workspace's maxConcurrentJobs and GPU quota are Argo semaphores
    on the compute templates (schema-valid), and the runner writes their limits into the
    ConfigMap they name before it creates the workflow; a changed quota updates it."""
    from kiln.config import load_config
    from kiln.controller.project import load_valid
    from kiln.controller.render import render_workflow, workspaces_of
    from kiln.runners.schema import validate_workflow
    from tests.helpers import write

    ws = ("apiVersion: kiln.dev/v1alpha1\nkind: Workspace\nmetadata: {name: team}\nspec:\n"
          "  presets: [{name: g2, cpu: '1', memory: 1Gi, gpu: 2, gpuModel: nvidia-a100}]\n"
          "  quotas: {trainingGpus: 4, maxConcurrentJobs: 3}\n")
    write(tmp_path, {"specs/ws.yaml": ws,
                     "specs/d.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {name: d, workspace: team}\n"
                                     "spec: {type: tabular, task: classification, format: csv, source: {sample: iris}}\n",
                     "specs/e.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Experiment\nmetadata: {name: e, workspace: team}\n"
                                     "spec: {dataset: {name: d}, algorithm: {name: logistic_regression}, resources: {preset: g2}}\n"})

    def rendered() -> dict:
        config = load_config(tmp_path)
        specs = load_valid(config)
        s = next(x for x in specs.specs if x.kind == "Experiment")
        return render_workflow(config, s, workspace=workspaces_of(specs.specs)["team"])

    wf = rendered()
    assert validate_workflow(wf) == []
    train = next(t for t in wf["spec"]["templates"] if t["name"] == "train")
    keys = [x["configMapKeyRef"]["key"] for x in train["synchronization"]["semaphores"]]
    assert keys == ["team.jobs", "team.training-gpus-x2"] and train["nodeSelector"] == {"nvidia.com/gpu.product": "nvidia-a100"}
    assert all("synchronization" not in t for t in wf["spec"]["templates"] if t["name"] in ("prepare-data", "select"))
    r = runner(kube)
    r.submit(wf, wait=False)
    assert kube.configmaps[("argo", "kiln-workspace-quotas")]["data"] == {"team.jobs": "3", "team.training-gpus-x2": "2"}
    write(tmp_path, {"specs/ws.yaml": ws.replace("maxConcurrentJobs: 3", "maxConcurrentJobs: 1")})
    r.stop(wf["metadata"]["name"])
    r.submit(rendered(), wait=False)
    assert kube.configmaps[("argo", "kiln-workspace-quotas")]["data"]["team.jobs"] == "1"
