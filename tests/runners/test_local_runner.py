"""Behaviour of the local runner beyond Argo's examples: retries, resume after kill -9, stop,
memoization, fan-out/aggregation, idempotent submit, error messages, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from kiln.cli import main as kiln_main
from kiln.errors import WorkflowError
from kiln.runners.local import LocalRunner


def wf(name: str, entry: str, templates: list[dict], **spec) -> dict:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": name},
            "spec": {"entrypoint": entry, "templates": templates, **spec}}


def sh(name: str, script: str, **extra) -> dict:
    return {"name": name, "container": {"image": "busybox", "command": ["sh", "-c"], "args": [script]}, **extra}


def nodes_by_display(w: dict) -> dict[str, dict]:
    return {n["displayName"]: n for n in w["status"]["nodes"].values()}


def test_dag_middle_step_fails_once_then_succeeds_on_retry(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    manifest = wf("retry-dag", "main", [
        {"name": "main", "dag": {"tasks": [
            {"name": "a", "template": "ok"},
            {"name": "b", "template": "flaky", "depends": "a"},
            {"name": "c", "template": "ok", "depends": "b"},
        ]}},
        sh("ok", "echo ok"),
        sh("flaky", f"if [ -f {flag} ]; then echo second; exit 0; fi; touch {flag}; echo first; exit 3",
           retryStrategy={"limit": "2"}),
    ])
    out = LocalRunner(tmp_path / "runs").submit(manifest)
    assert out["status"]["phase"] == "Succeeded"
    n = nodes_by_display(out)
    assert n["b"]["type"] == "Retry" and n["b"]["phase"] == "Succeeded"
    attempts = [out["status"]["nodes"][c] for c in n["b"]["children"]]
    assert [a["phase"] for a in attempts] == ["Failed", "Succeeded"]
    assert attempts[0]["outputs"]["exitCode"] == "3"
    assert n["c"]["phase"] == "Succeeded"


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from kiln.runners.local import LocalRunner
    LocalRunner(Path(sys.argv[1])).submit(json.loads(Path(sys.argv[2]).read_text()))
""")


def test_kill_9_then_resubmit_does_not_rerun_succeeded_steps(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    go = tmp_path / "go"
    manifest = wf("resume-me", "main", [
        {"name": "main", "steps": [[{"name": "one", "template": "mark", "arguments": {"parameters": [{"name": "m", "value": "one"}]}}],
                                   [{"name": "two", "template": "mark", "arguments": {"parameters": [{"name": "m", "value": "two"}]}}],
                                   [{"name": "three", "template": "slow"}]]},
        {"name": "mark", "inputs": {"parameters": [{"name": "m"}]},
         "container": {"image": "busybox", "command": ["sh", "-c"], "args": [f"echo {{{{inputs.parameters.m}}}} >> {marks}"]}},
        sh("slow", f"echo three >> {marks}; [ -f {go} ] && exit 0; echo $$ > {tmp_path / 'orphan.pid'}; exec sleep 20"),
    ])
    mpath = tmp_path / "wf.json"
    mpath.write_text(json.dumps(manifest))
    runs = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(runs), str(mpath)], env=env)
    state = runs / "resume-me" / "workflow.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if marks.exists() and "three" in marks.read_text() and state.exists():
            st = json.loads(state.read_text())["status"]
            if any(n["displayName"] == "three" for n in st["nodes"].values()):
                break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("runner subprocess never reached step three")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # step three's `sleep` outlived its runner (as a pod outlives a crashed controller): end it
    orphan = tmp_path / "orphan.pid"
    for _ in range(100):
        if orphan.exists() and orphan.read_text().strip():
            break
        time.sleep(0.05)
    if orphan.exists() and orphan.read_text().strip():
        try:
            os.kill(int(orphan.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed = json.loads(state.read_text())
    assert killed["status"]["phase"] == "Running"
    go.touch()
    out = LocalRunner(runs).submit(manifest)
    assert out["status"]["phase"] == "Succeeded"
    assert marks.read_text().split() == ["one", "two", "three", "three"]
    # same manifest again: the finished run is returned, nothing runs
    again = LocalRunner(runs).submit(manifest)
    assert again["status"]["finishedAt"] == out["status"]["finishedAt"]
    assert marks.read_text().split() == ["one", "two", "three", "three"]


def test_changed_manifest_starts_afresh(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    r = LocalRunner(tmp_path / "runs")
    base = wf("fresh", "a", [sh("a", f"echo run >> {marks}")])
    assert r.submit(base)["status"]["phase"] == "Succeeded"
    changed = wf("fresh", "a", [sh("a", f"echo run >> {marks}; echo changed")])
    assert r.submit(changed)["status"]["phase"] == "Succeeded"
    assert marks.read_text().split() == ["run", "run"]
    assert "changed" in "\n".join(r.logs("fresh"))


def test_stop_from_another_runner_object(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    r = LocalRunner(runs)
    manifest = wf("stop-me", "main", [
        {"name": "main", "steps": [[{"name": "s", "template": "sleep"}], [{"name": "after", "template": "sleep"}]]},
        sh("sleep", "sleep 30"),
    ])
    t0 = time.monotonic()
    r.submit(manifest, wait=False)
    while not any(n["type"] == "Pod" for n in (r.get("stop-me") or {}).get("status", {}).get("nodes", {}).values()):
        time.sleep(0.05)
    other = LocalRunner(runs)  # as `kiln stop` in another process would
    other.stop("stop-me", "no longer needed")
    final = other.wait_stopped("stop-me", timeout=10)
    assert final["status"]["phase"] == "Failed"
    assert final["status"]["message"] == "no longer needed"
    assert time.monotonic() - t0 < 8
    n = nodes_by_display(final)
    assert n["s"]["phase"] == "Failed" and "after" not in n


def test_memoize_hit_reuses_outputs(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    memo_tmpl = {"name": "work", "inputs": {"parameters": [{"name": "x"}]},
                 "memoize": {"key": "work-{{inputs.parameters.x}}", "maxAge": "1h", "cache": {"configMap": {"name": "kiln-cache"}}},
                 "script": {"image": "python:3.11", "command": ["python"],
                            "source": f"open({str(marks)!r}, 'a').write('ran\\n'); print(int('{{{{inputs.parameters.x}}}}') * 2)"}}

    def manifest(name: str) -> dict:
        return wf(name, "main", [{"name": "main", "steps": [[{"name": "w", "template": "work",
                                  "arguments": {"parameters": [{"name": "x", "value": "21"}]}}]]}, memo_tmpl])

    r = LocalRunner(tmp_path / "runs")
    first = nodes_by_display(r.submit(manifest("memo-a")))["w"]
    second = nodes_by_display(r.submit(manifest("memo-b")))["w"]
    assert marks.read_text().split() == ["ran"]
    assert first["memoizationStatus"]["hit"] is False
    assert second["memoizationStatus"] == {"hit": True, "key": "work-21", "cacheName": "kiln-cache"}
    assert second["phase"] == "Succeeded" and second["outputs"]["result"] == "42"
    assert list((tmp_path / "cache" / "kiln-cache").glob("*.json"))


def test_with_param_fan_out_and_aggregation(tmp_path: Path) -> None:
    manifest = wf("agg", "main", [
        {"name": "main", "steps": [
            [{"name": "gen", "template": "gen"}],
            [{"name": "sq", "template": "square", "withParam": "{{steps.gen.outputs.result}}",
              "arguments": {"parameters": [{"name": "n", "value": "{{item.n}}"}]}}],
            [{"name": "sum", "template": "sum", "arguments": {"parameters": [
                {"name": "vals", "value": "{{steps.sq.outputs.parameters.v}}"},
                {"name": "results", "value": "{{steps.sq.outputs.result}}"}]}}],
        ], "outputs": {"parameters": [{"name": "total", "globalName": "total",
                                       "valueFrom": {"parameter": "{{steps.sum.outputs.result}}"}}]}},
        {"name": "gen", "script": {"image": "python", "command": ["python"],
                                   "source": "import json; print(json.dumps([{'n': i} for i in range(1, 5)]))"}},
        {"name": "square", "inputs": {"parameters": [{"name": "n"}]},
         "container": {"image": "alpine", "command": ["sh", "-c"], "args": ["echo $(({{inputs.parameters.n}}*{{inputs.parameters.n}})) | tee /tmp/v"]},
         "outputs": {"parameters": [{"name": "v", "valueFrom": {"path": "/tmp/v"}}]}},
        {"name": "sum", "inputs": {"parameters": [{"name": "vals"}, {"name": "results"}]},
         "script": {"image": "python", "command": ["python"],
                    "source": "import json\nv = json.loads('{{inputs.parameters.vals}}')\nr = json.loads('{{inputs.parameters.results}}')\nassert r == [1, 4, 9, 16], r\nprint(sum(int(x) for x in v))"}},
    ])
    out = LocalRunner(tmp_path / "runs", max_concurrency=4).submit(manifest)
    assert out["status"]["phase"] == "Succeeded", out["status"]["message"]
    assert out["status"]["outputs"]["parameters"] == [{"name": "total", "value": "30"}]
    fan = [n for n in out["status"]["nodes"].values() if n["displayName"].startswith("sq(")]
    assert sorted(n["displayName"] for n in fan) == ["sq(0:n:1)", "sq(1:n:2)", "sq(2:n:3)", "sq(3:n:4)"]


def test_skipped_producer_without_default_fails_consumer(tmp_path: Path) -> None:
    manifest = wf("skip-nodefault", "main", [
        {"name": "main", "dag": {"tasks": [
            {"name": "p", "template": "produce", "when": "false"},
            {"name": "c", "template": "consume", "depends": "p.Succeeded || p.Skipped",
             "arguments": {"parameters": [{"name": "in", "value": "{{tasks.p.outputs.parameters.msg}}"}]}}]}},
        {"name": "produce", "outputs": {"parameters": [{"name": "msg", "valueFrom": {"path": "/tmp/m"}}]},
         "container": {"image": "busybox", "command": ["sh", "-c"], "args": ["echo hi > /tmp/m"]}},
        {"name": "consume", "inputs": {"parameters": [{"name": "in"}]},
         "container": {"image": "busybox", "command": ["echo", "{{inputs.parameters.in}}"]}},
    ])
    out = LocalRunner(tmp_path / "runs").submit(manifest)
    assert out["status"]["phase"] in ("Error", "Failed")
    c = nodes_by_display(out)["c"]
    assert c["phase"] == "Error" and "tasks.p.outputs.parameters.msg" in c["message"]


def test_submit_time_parameters_override(tmp_path: Path) -> None:
    manifest = wf("params", "p", [{"name": "p", "container": {"image": "busybox", "command": ["echo", "{{workflow.parameters.msg}}"]}}],
                  arguments={"parameters": [{"name": "msg", "value": "default"}]})
    r = LocalRunner(tmp_path / "runs")
    r.submit(manifest, parameters={"msg": "overridden"})
    assert list(r.logs("params")) == ["p: overridden"] or list(r.logs("params")) == ["params: overridden"]


@pytest.mark.parametrize("mutate, expect", [
    (lambda m: m["spec"].pop("entrypoint"), "spec.entrypoint is missing"),
    (lambda m: m["spec"].update(entrypoint="nope"), "unknown template 'nope'"),
    (lambda m: m["spec"]["templates"][0]["steps"][0][0].update(template="missing"), "steps[0][0] ('a').template refers to unknown template 'missing'"),
    (lambda m: m["spec"]["templates"][1]["container"]["args"].append("{{= 1 + }}"), "template 'b'"),
    (lambda m: m["spec"]["templates"][1].update(retryStrategy={"expression": "lastRetry.exitCode >"}), "retryStrategy.expression"),
    (lambda m: m["spec"]["templates"][1].update(resource={"action": "create"}), "needs a resource template"),
])
def test_bad_manifests_raise_workflow_error(tmp_path: Path, mutate, expect: str) -> None:
    m = wf("bad", "main", [{"name": "main", "steps": [[{"name": "a", "template": "b"}]]},
                           {"name": "b", "container": {"image": "busybox", "command": ["echo"], "args": ["x"]}}])
    mutate(m)
    with pytest.raises(WorkflowError) as exc:
        LocalRunner(tmp_path / "runs").submit(m)
    assert expect in str(exc.value)
    assert not (tmp_path / "runs" / "bad").exists()


def test_container_without_command_fails_when_it_runs(tmp_path: Path) -> None:
    # as in Argo (an image that cannot be pulled), not refused up front: the workflow's own
    # handlers (continueOn, exit handlers) see the failure
    m = wf("nocmd", "main", [{"name": "main", "steps": [[{"name": "a", "template": "b", "continueOn": {"failed": True}}],
                                                         [{"name": "c", "template": "ok"}]]},
                             {"name": "b", "container": {"image": "nginx:1.13"}},
                             {"name": "ok", "container": {"image": "busybox", "command": ["true"]}}])
    out = LocalRunner(tmp_path / "runs").submit(m)
    nodes = {n["displayName"]: n for n in out["status"]["nodes"].values()}
    assert nodes["a"]["phase"] == "Error" and "no command and image 'nginx:1.13'" in nodes["a"]["message"]
    assert out["status"]["phase"] == "Error" and "nodes" in out["status"]


def test_bad_depends_names_the_task(tmp_path: Path) -> None:
    m = wf("bad-dep", "d", [{"name": "d", "dag": {"tasks": [{"name": "a", "template": "e"}, {"name": "b", "template": "e", "depends": "a && zz"}]}},
                            {"name": "e", "container": {"image": "busybox", "command": ["true"]}}])
    with pytest.raises(WorkflowError, match="dag task 'b': depends refers to unknown task 'zz'"):
        LocalRunner(tmp_path / "runs").submit(m)


def test_cli_run_workflow_logs_and_exit_codes(tmp_path: Path, capsys) -> None:
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump_all([{"kind": "ConfigMap"}, wf("cli-ok", "a", [sh("a", "echo from-cli")])]))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(wf("cli-bad", "a", [sh("a", "exit 4")])))
    assert kiln_main(["-C", str(tmp_path), "run-workflow", str(ok)]) == 0
    assert "cli-ok: Succeeded" in capsys.readouterr().out
    assert kiln_main(["-C", str(tmp_path), "run-workflow", str(bad), "-o", "json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"]["phase"] == "Failed"
    assert kiln_main(["-C", str(tmp_path), "logs", "cli-ok"]) == 0
    assert "from-cli" in capsys.readouterr().out
    assert (tmp_path / ".kiln" / "runs" / "cli-ok" / "workflow.json").exists()
    assert kiln_main(["-C", str(tmp_path), "run-workflow", str(ok), "-p", "nope=1"]) == 1
    assert "not declared" in capsys.readouterr().err


def test_inline_templates_and_global_output_artifacts(tmp_path: Path) -> None:
    """Inline templates in a step and a DAG task; an artifact published with globalName is read
    by a later step as {{workflow.outputs.artifacts.NAME}} and listed in status.outputs."""
    produce = {"container": {"image": "busybox", "command": ["sh", "-c", "echo shared-bytes > /tmp/g.txt"]},
               "outputs": {"artifacts": [{"name": "out", "path": "/tmp/g.txt", "globalName": "shared"}]}}
    consume = {"inputs": {"artifacts": [{"name": "in", "path": "/tmp/in.txt"}]},
               "container": {"image": "busybox", "command": ["cat", "/tmp/in.txt"]}}
    m = wf("inline-global", "main", [
        {"name": "main", "steps": [[{"name": "produce", "inline": produce}],
                                   [{"name": "consume", "inline": consume,
                                     "arguments": {"artifacts": [{"name": "in", "from": "{{workflow.outputs.artifacts.shared}}"}]}}],
                                   [{"name": "graph", "template": "graph"}]]},
        {"name": "graph", "dag": {"tasks": [{"name": "again", "inline": consume,
                                             "arguments": {"artifacts": [{"name": "in", "from": "{{workflow.outputs.artifacts.shared}}"}]}}]}}])
    r = LocalRunner(tmp_path / "runs")
    out = r.submit(m)
    assert out["status"]["phase"] == "Succeeded", out["status"]["message"]
    assert list(r.logs("inline-global", "consume")) == ["shared-bytes"]
    assert list(r.logs("inline-global", "again")) == ["shared-bytes"]
    assert [a["name"] for a in out["status"]["outputs"]["artifacts"]] == ["shared"]


def test_http_templates_against_loopback(tmp_path: Path) -> None:
    """A real HTTP server on 127.0.0.1: 2xx succeeds with the body as result, a 404 fails, a
    successCondition decides, another host is an Error that says why."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            code = 200 if self.path == "/ok" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(f"path={self.path} x={self.headers.get('X-Kiln')}".encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        def call(name: str, path: str, **extra: object) -> dict:
            return {"name": name, "http": {"url": base + path, "headers": [{"name": "X-Kiln", "value": "{{workflow.name}}"}], **extra}}
        m = wf("http-local", "main", [
            {"name": "main", "steps": [[{"name": "good", "template": "good"},
                                        {"name": "bad", "template": "bad", "continueOn": {"failed": True}},
                                        {"name": "judged", "template": "judged"},
                                        {"name": "far", "template": "far", "continueOn": {"error": True}}],
                                       [{"name": "echo", "template": "echo",
                                         "arguments": {"parameters": [{"name": "r", "value": "{{steps.good.outputs.result}}"}]}}]]},
            call("good", "/ok"), call("bad", "/missing"),
            call("judged", "/missing", successCondition="response.statusCode == 404"),
            {"name": "far", "http": {"url": "http://192.0.2.1/x", "timeoutSeconds": 1}},
            {"name": "echo", "inputs": {"parameters": [{"name": "r"}]},
             "container": {"image": "busybox", "command": ["echo", "{{inputs.parameters.r}}"]}}])
        r = LocalRunner(tmp_path / "runs")
        out = r.submit(m)
    finally:
        server.shutdown()
    nodes = {n["displayName"]: n for n in out["status"]["nodes"].values()}
    assert out["status"]["phase"] == "Succeeded", out["status"]["message"]
    assert nodes["good"]["type"] == "HTTP" and nodes["good"]["phase"] == "Succeeded"
    assert nodes["bad"]["phase"] == "Failed" and "status code 404" in nodes["bad"]["message"]
    assert nodes["judged"]["phase"] == "Succeeded"
    assert nodes["far"]["phase"] == "Error" and "only loopback" in nodes["far"]["message"]
    assert list(r.logs("http-local", "echo")) == ["path=/ok x=http-local"]


def test_synchronization_mutex_and_semaphore(tmp_path: Path) -> None:
    """Two runs holding one workflow-level mutex never overlap; a template-level semaphore (its
    limit from a ConfigMap of the objects folder) caps how many of its steps run at once."""
    import time as _time

    objs = tmp_path / "objs"
    objs.mkdir()
    (objs / "cm.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "limits"},
                                                  "data": {"work": "2"}}))
    log = tmp_path / "events.log"
    rec = f"echo start $(date +%s.%N) >> {log}; sleep 0.4; echo end $(date +%s.%N) >> {log}"
    r = LocalRunner(tmp_path / "runs", max_concurrency=8, templates_dir=objs)
    runs = []
    for name in ("mutex-a", "mutex-b"):
        m = wf(name, "a", [sh("a", rec)])
        m["spec"]["synchronization"] = {"mutexes": [{"name": "shared"}]}
        runs.append(r.submit(m, wait=False))
    for name in ("mutex-a", "mutex-b"):
        while (r.get(name) or {}).get("status", {}).get("phase") in ("Running", "Pending"):
            _time.sleep(0.05)
        assert r.get(name)["status"]["phase"] == "Succeeded", r.get(name)["status"]
    events = sorted((float(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines()))
    assert [k for _, k in events] == ["start", "end", "start", "end"], events  # one run after the other
    log.unlink()
    m = wf("sem", "main", [{"name": "main", "steps": [[{"name": "w", "template": "w", "withItems": [1, 2, 3, 4]}]]},
                           {**sh("w", rec), "synchronization": {"semaphores": [{"configMapKeyRef": {"name": "limits", "key": "work"}}]}}])
    out = r.submit(m)
    assert out["status"]["phase"] == "Succeeded", out["status"]
    depth, peak = 0, 0
    for _, kind in sorted((float(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines())):
        depth += 1 if kind == "start" else -1
        peak = max(peak, depth)
    assert 1 <= peak <= 2, log.read_text()  # never more than the limit (a loaded machine may start them apart)


def test_kiln_quota_semaphores_come_with_the_workflow(tmp_path: Path) -> None:
    """kiln's render holds a workspace's quotas as semaphores of the ConfigMap kiln-workspace-quotas
    and puts their limits in the kiln.dev/semaphores annotation; the Argo runner writes that
    ConfigMap before it creates the workflow, and the local runner sets it from the annotation, so
    the same manifest runs here with no objects folder (it was refused as needing a cluster)."""
    log = tmp_path / "events.log"
    rec = f"echo start $(date +%s.%N) >> {log}; sleep 0.3; echo end $(date +%s.%N) >> {log}"
    m = wf("quota", "main", [{"name": "main", "steps": [[{"name": "w", "template": "w", "withItems": [1, 2, 3]}]]},
                             {**sh("w", rec), "synchronization": {"semaphores": [
                                 {"configMapKeyRef": {"name": "kiln-workspace-quotas", "key": "team.jobs"}}]}}])
    m["metadata"]["annotations"] = {"kiln.dev/semaphores": json.dumps({"team.jobs": 1})}
    out = LocalRunner(tmp_path / "runs", max_concurrency=8).submit(m)
    assert out["status"]["phase"] == "Succeeded", out["status"]
    kinds = [k for _, k in sorted((float(t), k) for k, t in (line.split() for line in log.read_text().splitlines()))]
    assert kinds == ["start", "end"] * 3, kinds  # the quota of one job: never two at once


def test_daemon_step_serves_the_steps_after_it(tmp_path: Path) -> None:
    """daemon: true - a real HTTP server started in the background, ready per its readinessProbe,
    reached at {{steps.NAME.ip}} by the next step, and killed when its steps template ends."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("from-the-daemon")
    m = wf("daemon", "main", [
        {"name": "main", "steps": [[{"name": "srv", "template": "srv"}],
                                   [{"name": "client", "template": "client",
                                     "arguments": {"parameters": [{"name": "ip", "value": "{{steps.srv.ip}}"}]}}]]},
        {"name": "srv", "daemon": True,
         "container": {"image": "python:3.12", "command": ["python", "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                                           "--directory", str(tmp_path / "www")],
                       "readinessProbe": {"httpGet": {"path": "/hello.txt", "port": port}}}},
        {"name": "client", "inputs": {"parameters": [{"name": "ip"}]},
         "container": {"image": "python:3.12", "command": ["python", "-c",
                       f"import urllib.request; print(urllib.request.urlopen('http://{{{{inputs.parameters.ip}}}}:{port}/hello.txt').read().decode())"]}}])
    r = LocalRunner(tmp_path / "runs")
    out = r.submit(m)
    assert out["status"]["phase"] == "Succeeded", out["status"]["message"]
    nodes = {n["displayName"]: n for n in out["status"]["nodes"].values()}
    assert nodes["srv"].get("daemoned") is True
    assert list(r.logs("daemon", "client")) == ["from-the-daemon"]
    with pytest.raises(OSError):  # the daemon is gone with its template
        urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=2)


def test_suspend_until_kiln_resume(tmp_path: Path, capsys) -> None:
    """A suspend without a duration waits for `kiln resume`; one with a duration ends by itself."""
    import time as _time

    m = wf("approve", "main", [
        {"name": "main", "steps": [[{"name": "wait", "template": "wait"}, {"name": "pause", "template": "pause"}],
                                   [{"name": "after", "template": "after"}]]},
        {"name": "wait", "suspend": {}}, {"name": "pause", "suspend": {"duration": "1s"}},
        sh("after", "echo approved")])
    r = LocalRunner(tmp_path / ".kiln" / "runs")
    r.submit(m, wait=False)
    end = _time.monotonic() + 30
    while _time.monotonic() < end:
        nodes = {n["displayName"]: n for n in (r.get("approve") or {}).get("status", {}).get("nodes", {}).values()}
        if nodes.get("pause", {}).get("phase") == "Succeeded":
            break
        _time.sleep(0.1)
    assert nodes["wait"]["type"] == "Suspend" and nodes["wait"]["phase"] == "Running"  # still waiting
    assert kiln_main(["-C", str(tmp_path), "resume", "approve"]) == 0
    assert "approve: resumed" in capsys.readouterr().out
    while (r.get("approve") or {}).get("status", {}).get("phase") == "Running" and _time.monotonic() < end:
        _time.sleep(0.1)
    out = r.get("approve")
    assert out["status"]["phase"] == "Succeeded" and list(r.logs("approve", "after")) == ["approved"]
    assert kiln_main(["-C", str(tmp_path), "resume", "approve"]) == 1  # nothing left to resume
    err = capsys.readouterr().err  # (ended, or its last snapshot not yet on disk: no suspended step)
    assert "not running" in err or "has no suspended step" in err


def test_dag_target_from_a_parameter(tmp_path: Path) -> None:
    """dag.target given by a workflow parameter: only the targets and their ancestors run."""
    m = wf("dag-target", "d", [{"name": "d", "dag": {"target": "{{workflow.parameters.target}}", "tasks": [
        {"name": "A", "template": "e"}, {"name": "B", "template": "e", "depends": "A"},
        {"name": "C", "template": "e", "depends": "A"}]}},
        {"name": "e", "container": {"image": "busybox", "command": ["true"]}}],
        arguments={"parameters": [{"name": "target", "value": "B"}]})
    r = LocalRunner(tmp_path / "runs")
    out = r.submit(m)
    ran = {n["displayName"] for n in out["status"]["nodes"].values() if n["type"] == "Pod"}
    assert out["status"]["phase"] == "Succeeded" and ran == {"A", "B"}
    out = r.submit(m, parameters={"target": "Z"})
    assert out["status"]["phase"] == "Error" and "dag.target names unknown task 'Z'" in out["status"]["message"]


def test_cli_templates_folder_and_cluster_refusal(tmp_path: Path, capsys) -> None:
    """templateRef from --templates DIR (its ConfigMaps feed parameters); a workflow that needs a
    Kubernetes object is refused before it starts with exit code 4, not 1 (a failed run)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "objs.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate", "metadata": {"name": "lib"},
         "spec": {"templates": [{"name": "say", "inputs": {"parameters": [{"name": "m"}]},
                                 "container": {"image": "busybox", "command": ["echo", "{{inputs.parameters.m}}"]}},
                                {"name": "twice", "inputs": {"parameters": [{"name": "m"}]},
                                 "steps": [[{"name": "s", "template": "say",
                                             "arguments": {"parameters": [{"name": "m", "value": "{{inputs.parameters.m}}!"}]}}]]}]}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"greeting": "from-configmap"}}]))
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump(wf("cli-ref", "main", [
        {"name": "main", "inputs": {"parameters": [{"name": "g", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}}}]},
         "steps": [[{"name": "call", "templateRef": {"name": "lib", "template": "twice"},
                     "arguments": {"parameters": [{"name": "m", "value": "{{inputs.parameters.g}}"}]}}]]}])))
    assert kiln_main(["-C", str(tmp_path), "run-workflow", str(ref), "--templates", str(lib)]) == 0
    assert "cli-ref: Succeeded" in capsys.readouterr().out
    assert kiln_main(["-C", str(tmp_path), "logs", "cli-ref"]) == 0
    assert "from-configmap!" in capsys.readouterr().out
    # without the folder: the missing WorkflowTemplate is named, with the fix
    assert kiln_main(["-C", str(tmp_path), "run-workflow", str(ref)]) == 4
    err = capsys.readouterr().err
    assert "WorkflowTemplate 'lib' not found" in err and "--templates DIR" in err and "Traceback" not in err
    pvc = tmp_path / "pvc.yaml"
    m = wf("cli-pvc", "a", [sh("a", "echo never")])
    m["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "workdir"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]
    pvc.write_text(yaml.safe_dump(m))
    assert kiln_main(["-C", str(tmp_path), "run-workflow", str(pvc)]) == 4
    err = capsys.readouterr().err
    assert "spec.volumeClaimTemplates: needs a PersistentVolumeClaim (workdir)" in err and "Traceback" not in err
    assert not (tmp_path / ".kiln" / "runs" / "cli-pvc").exists()


CRASH_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from kiln.runners.local import LocalRunner
    LocalRunner(Path(sys.argv[1]), max_concurrency=2).submit(json.loads(Path(sys.argv[2]).read_text()))
""")


def test_kill_9_right_after_a_step_finishes_never_reruns_it(tmp_path: Path) -> None:
    """The window the coalesced workflow.json leaves open: A has just Succeeded and its dependent
    B has started, but no snapshot has been written since. The journal must cover it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for attempt in range(5):
        base = tmp_path / f"try{attempt}"
        base.mkdir()
        a_runs, b_started, go, pidfile = base / "a-runs", base / "b-started", base / "go", base / "b.pid"
        manifest = wf("crash-window", "main", [
            {"name": "main", "dag": {"tasks": [{"name": "a", "template": "a"},
                                               {"name": "b", "template": "b", "depends": "a"}]}},
            sh("a", f"echo ran >> {a_runs}"),
            sh("b", f"[ -f {go} ] && exit 0; echo $$ > {pidfile}; touch {b_started}; exec sleep 30"),
        ])
        mpath = base / "wf.json"
        mpath.write_text(json.dumps(manifest))
        runs = base / "runs"
        proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(runs), str(mpath)], env=env)
        deadline = time.monotonic() + 30
        # B starts only after the runner has recorded A's success: kill at once, no sleep
        while not b_started.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("runner subprocess never started step b")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)  # B's sleep outlived its runner
        except (ProcessLookupError, ValueError, OSError):
            pass
        assert a_runs.read_text().split() == ["ran"]
        seen = LocalRunner(runs).get("crash-window")  # snapshot + journal, as `kiln` shows it
        assert seen["status"]["phase"] in ("Pending", "Running")  # unfinished
        assert nodes_by_display(seen)["a"]["phase"] == "Succeeded"
        with open(runs / "crash-window" / "nodes.jsonl", "a") as f:  # as if power failed mid-append
            f.write('{"id": "crash-window-1", "phase": "Succ')
        go.touch()
        out = LocalRunner(runs).submit(manifest)
        assert out["status"]["phase"] == "Succeeded", out["status"]["message"]
        assert a_runs.read_text().split() == ["ran"], f"attempt {attempt}: step a ran again on resume"
        assert nodes_by_display(out)["b"]["phase"] == "Succeeded"
        assert not (runs / "crash-window" / "nodes.jsonl").exists()  # folded into the final snapshot


SLOTS_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from kiln.runners.local import LocalRunner
    runner = LocalRunner(Path(sys.argv[1]), max_concurrency=2)
    warm = {"kind": "Workflow", "metadata": {"name": "warm-up"}, "spec": {"entrypoint": "t", "templates": [
        {"name": "t", "container": {"image": "busybox", "command": ["true"]}}]}}
    assert runner.submit(warm)["status"]["phase"] == "Succeeded"  # imports, worker threads, slot files
    print("ready", flush=True)
    while not Path(sys.argv[3]).exists():  # both processes submit together, whatever their start-up time
        time.sleep(0.005)
    out = runner.submit(json.loads(Path(sys.argv[2]).read_text()))
    sys.exit(0 if out["status"]["phase"] == "Succeeded" else 1)
""")


def test_concurrency_limit_holds_across_processes(tmp_path: Path) -> None:
    """Two runner processes, each with 4 parallel sleeps and max_concurrency 2, share the
    machine's 2 slots: never more than 2 steps run at once, though each process could run 2."""
    events = tmp_path / "events"
    slots = tmp_path / "slots"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), KILN_SLOTS_DIR=str(slots))
    procs = []
    for who in ("p1", "p2"):
        manifest = wf(f"slots-{who}", "main", [
            {"name": "main", "steps": [[{"name": "s", "template": "nap", "withItems": [1, 2, 3, 4],
                                         "arguments": {"parameters": [{"name": "i", "value": "{{item}}"}]}}]]},
            {"name": "nap", "inputs": {"parameters": [{"name": "i"}]},
             "container": {"image": "busybox", "command": ["sh", "-c"], "args": [
                 f"echo start $(date +%s.%N) {who} >> {events}; sleep 0.5; echo stop $(date +%s.%N) {who} >> {events}"]}},
        ])
        mpath = tmp_path / f"{who}.json"
        mpath.write_text(json.dumps(manifest))
        procs.append(subprocess.Popen([sys.executable, "-c", SLOTS_SCRIPT, str(tmp_path / who), str(mpath), str(tmp_path / "go")],
                                      env=env, stdout=subprocess.PIPE, text=True))
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    (tmp_path / "go").touch()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    rows = [line.split() for line in events.read_text().splitlines()]
    assert len(rows) == 16
    # a stop sorts before a start at the same instant: back-to-back steps do not overlap
    timeline = sorted((float(t), 0 if kind == "stop" else 1, who) for kind, t, who in rows)
    running = peak = 0
    for _t, is_start, _who in timeline:
        running += 1 if is_start else -1
        peak = max(peak, running)
    assert peak == 2
    spans = {who: (min(float(t) for _k, t, w in rows if w == who), max(float(t) for _k, t, w in rows if w == who))
             for who in ("p1", "p2")}
    # the two runs overlapped in time, so the cap was shared, not just respected by turns
    assert spans["p1"][0] < spans["p2"][1] and spans["p2"][0] < spans["p1"][1]
    assert len(list(slots.glob("slot-*"))) == 2


def test_slots_of_a_killed_process_free_themselves(tmp_path: Path) -> None:
    from kiln.runners._slots import SlotPool

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from kiln.runners._slots import SlotPool
        pool = SlotPool(Path({str(tmp_path)!r}))
        pool.acquire(2); pool.acquire(2)
        print("held", flush=True)
        time.sleep(60)
    """)], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        pool = SlotPool(tmp_path)
        give_up = time.monotonic() + 0.3

        def check() -> None:
            if time.monotonic() > give_up:
                raise TimeoutError

        with pytest.raises(TimeoutError):
            pool.acquire(2, check)  # both held by the other process
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert sorted([pool.acquire(2), pool.acquire(2)]) == [0, 1]  # the kernel dropped its flocks
    finally:
        holder.kill()
        holder.wait()
