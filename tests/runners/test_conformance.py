"""Argo's own examples, run through the local runner, must end as Argo's CI expects.

The examples and their expectations come from /work/shared/argo/examples/EXPECTED.tsv (override
the folder with KILN_ARGO_EXAMPLES). Each row checks the final phase and, where the notes name
them, node phases and outputs (``CHECKS`` below).

Randomness (coinflip, scripts-python, retry-container, retry-backoff, retry-conditional): the
runner is given ``KILN_RANDOM_SEED``; the ``python`` interpreter mapping puts a sitecustomize on
PYTHONPATH that seeds ``random`` with ``<seed>/<node name>``, so every attempt of a retried step
draws differently but every run of the test draws the same. ``test_retry_container_many_seeds``
also runs retry-container under several seeds and requires all to succeed (p ~ 0.988 each).

Run-time shrink (documented, applied only in the default fast run): three examples sleep for a
long time. Their fast variants scale the sleeps/timeouts down keeping the order of events:
- loops-param-result: the generated list range(20, 31) -> range(1, 4) (sleeps 1..3 s),
- dag-task-level-timeout: sleep 15s -> 3s, timeouts 20s -> 6s and 10s -> 1s,
- timeouts-step: activeDeadlineSeconds 10 -> 2.
The unmodified examples run too, marked ``slow``.
"""

from __future__ import annotations

import copy
import csv
import os
import re
from pathlib import Path

import pytest
import yaml

from kiln.runners.local import LocalRunner

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = Path(os.environ.get("KILN_ARGO_EXAMPLES") or REPO.parent / "shared" / "argo" / "examples")
if not (EXAMPLES / "EXPECTED.tsv").exists():
    EXAMPLES = Path("/work/shared/argo/examples")

ROWS = list(csv.DictReader(open(EXAMPLES / "EXPECTED.tsv"), delimiter="\t")) if (EXAMPLES / "EXPECTED.tsv").exists() else []
pytestmark = pytest.mark.skipif(not ROWS, reason=f"Argo examples not found (set KILN_ARGO_EXAMPLES; looked in {EXAMPLES})")

SEED = "kiln-conformance"


def _load(file: str) -> dict:
    with open(EXAMPLES / file) as f:
        return next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "Workflow")


def _shrink(file: str, wf: dict) -> dict:
    wf = copy.deepcopy(wf)
    text = yaml.safe_dump(wf)
    if file == "loops-param-result.yaml":
        text = text.replace("range(20, 31)", "range(1, 4)")
    elif file == "dag-task-level-timeout.yaml":
        text = text.replace("15s", "3s").replace("20s", "6s").replace("10s", "1s")
    elif file == "timeouts-step.yaml":
        text = re.sub(r"activeDeadlineSeconds: 10\b", "activeDeadlineSeconds: 2", text)
    return yaml.safe_load(text)


SHRUNK = {"loops-param-result.yaml", "dag-task-level-timeout.yaml", "timeouts-step.yaml"}


def _by_display(wf: dict) -> dict[str, dict]:
    return {n["displayName"]: n for n in wf["status"]["nodes"].values()}


def _log(runner: LocalRunner, wf: dict, display: str) -> str:
    return "\n".join(runner.logs(wf["metadata"]["name"], display))


def _param(node: dict, name: str) -> str:
    return next(p["value"] for p in node["outputs"]["parameters"] if p["name"] == name)


def check_enhanced_depends(r, wf):
    n = _by_display(wf)
    assert n["C"]["phase"] == "Failed"
    assert n["should-not-execute"]["phase"] == "Omitted"
    for t in ("should-execute-1", "should-execute-2", "should-execute-3"):
        assert n[t]["phase"] == "Succeeded"


def check_dag_continue_on_fail(r, wf):
    n = _by_display(wf)
    assert n["D"]["phase"] == "Succeeded" and n["G"]["phase"] == "Omitted" and n["E"]["phase"] == "Failed"


def check_continue_on_fail(r, wf):
    n = _by_display(wf)
    assert n["C"]["phase"] == "Failed" and n["D"]["phase"] == "Succeeded"


def check_exit_code(r, wf):
    assert _by_display(wf)["failing-container"]["outputs"]["exitCode"] == "123"
    assert "Exit code was: 123" in _log(r, wf, "echo-container")


def check_output_parameter(r, wf):
    assert _log(r, wf, "consume-parameter").strip() == "hello world"


def check_aggregation(r, wf):
    n = _by_display(wf)
    assert _log(r, wf, "print-nums").strip() == '["1","2","3","4"]'
    divides = [x for x in n if x.startswith("divide-by-2(")]
    assert len([x for x in divides if n[x]["phase"] == "Succeeded"]) == 2
    prints = sorted(_log(r, wf, x).strip() for x in n if x.startswith("print(") and n[x]["type"] == "Pod")
    assert prints == ["1", "2"]


def check_coinflip(r, wf):
    n = _by_display(wf)
    assert sorted([n["heads"]["phase"], n["tails"]["phase"]]) == ["Skipped", "Succeeded"]


def check_scripts_python(r, wf):
    n = _by_display(wf)
    value = n["generate"]["outputs"]["result"]
    assert 1 <= int(value) <= 100
    assert _log(r, wf, "print").strip() == f"result was: {value}"


def check_retry_container(r, wf):
    retry = next(x for x in wf["status"]["nodes"].values() if x["type"] == "Retry")
    attempts = [wf["status"]["nodes"][c] for c in retry["children"]]
    assert attempts[-1]["phase"] == "Succeeded"
    assert all(a["phase"] == "Failed" for a in attempts[:-1])


def check_retry_conditional(r, wf):
    retry = next(x for x in wf["status"]["nodes"].values() if x["type"] == "Retry")
    attempts = [wf["status"]["nodes"][c] for c in retry["children"]]
    # retried while the exit code was 2, stopped at the first 1 (or after 11 attempts)
    assert all(a["outputs"]["exitCode"] == "2" for a in attempts[:-1])
    assert attempts[-1]["outputs"]["exitCode"] == "1" or len(attempts) == 11


def check_exit_handlers(r, wf):
    n = _by_display(wf)
    assert n["notify"]["phase"] == "Succeeded" and n["cry"]["phase"] == "Succeeded"
    assert n["celebrate"]["phase"] == "Skipped"
    log = _log(r, wf, "notify")
    assert "Failed steps [{displayName:" in log and "templateName:intentional-fail" in log


def check_step_hooks(r, wf):
    hooks = [x for x in wf["status"]["nodes"].values() if x["name"].endswith(".onExit")]
    assert len(hooks) == 3 and all(h["phase"] == "Succeeded" for h in hooks)


def check_exit_with_param(r, wf):
    hook = next(x for x in wf["status"]["nodes"].values() if x["name"].endswith(".onExit"))
    assert "\n".join(r.logs(wf["metadata"]["name"], hook["id"])).strip() == "hello world"


def check_skipped_default(r, wf):
    n = _by_display(wf)
    assert n["producer"]["phase"] == "Skipped"
    assert "consumer got: [hello-from-producer]" in _log(r, wf, "consumer")


def check_expression_tag(r, wf):
    pods = [x for x in wf["status"]["nodes"].values() if x["type"] == "Pod"]
    assert len(pods) == 1  # filter([1, 3], {# > 1}) keeps only 3
    assert re.fullmatch(r"hello 30 @ \d{4}\s*", _param(pods[0], "output"))


def check_artifacts(r, wf):
    assert _log(r, wf, "consume-artifact").strip() == "hello world"


def check_task_timeout(r, wf):
    n = _by_display(wf)
    assert n["A"]["phase"] == "Succeeded" and n["C"]["phase"] == "Succeeded"
    assert n["B"]["phase"] == "Failed" and "deadline" in n["B"]["message"]


def check_timeouts_step(r, wf):
    assert "deadline" in wf["status"]["message"]


def check_loops_param_result(r, wf):
    sleeps = [x for x in wf["status"]["nodes"].values() if x["displayName"].startswith("sleep(")]
    assert sleeps and all(x["phase"] == "Succeeded" for x in sleeps)


def check_dag_diamond_steps(r, wf):
    pods = [x for x in wf["status"]["nodes"].values() if x["type"] == "Pod"]
    assert len(pods) == 12


CHECKS = {
    "dag-enhanced-depends.yaml": check_enhanced_depends,
    "dag-continue-on-fail.yaml": check_dag_continue_on_fail,
    "continue-on-fail.yaml": check_continue_on_fail,
    "exit-code-output-variable.yaml": check_exit_code,
    "output-parameter.yaml": check_output_parameter,
    "parameter-aggregation.yaml": check_aggregation,
    "parameter-aggregation-dag.yaml": check_aggregation,
    "coinflip.yaml": check_coinflip,
    "scripts-python.yaml": check_scripts_python,
    "retry-container.yaml": check_retry_container,
    "retry-backoff.yaml": check_retry_container,
    "retry-conditional.yaml": check_retry_conditional,
    "exit-handlers.yaml": check_exit_handlers,
    "exit-handler-step-level.yaml": check_step_hooks,
    "exit-handler-with-param.yaml": check_exit_with_param,
    "skipped-output-defaults/producer-output-default.yaml": check_skipped_default,
    "expression-tag-template-workflow.yaml": check_expression_tag,
    "artifact-passing.yaml": check_artifacts,
    "dag-task-level-timeout.yaml": check_task_timeout,
    "timeouts-step.yaml": check_timeouts_step,
    "loops-param-result.yaml": check_loops_param_result,
    "dag-diamond-steps.yaml": check_dag_diamond_steps,
}


def _expected_phase(row: dict) -> str:
    return row["expected"].split()[0]


def _run(tmp_path: Path, row: dict, shrink: bool, seed: str = SEED) -> None:
    wf = _load(row["file"])
    if shrink:
        wf = _shrink(row["file"], wf)
    runner = LocalRunner(tmp_path / "runs", max_concurrency=16, env={"KILN_RANDOM_SEED": seed})
    out = runner.submit(wf)
    st = out["status"]
    assert st["phase"] == _expected_phase(row), f"{row['file']}: {st['phase']} ({st.get('message')})"
    assert st["finishedAt"] and st["startedAt"]
    for n in st["nodes"].values():
        assert n["phase"] in ("Succeeded", "Failed", "Error", "Skipped", "Omitted"), n
    check = CHECKS.get(row["file"])
    if check:
        check(runner, out)


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_example(tmp_path: Path, row: dict) -> None:
    _run(tmp_path, row, shrink=row["file"] in SHRUNK)


@pytest.mark.slow
@pytest.mark.parametrize("row", [r for r in ROWS if r["file"] in SHRUNK], ids=lambda r: r["file"])
def test_example_full_duration(tmp_path: Path, row: dict) -> None:
    _run(tmp_path, row, shrink=False)


def test_retry_container_many_seeds(tmp_path: Path) -> None:
    row = next(r for r in ROWS if r["file"] == "retry-container.yaml")
    attempts = []
    for i in range(5):
        _run(tmp_path / str(i), row, shrink=False, seed=f"seed-{i}")
        wf = LocalRunner(tmp_path / str(i) / "runs").get("retry-container-" + next(p.name for p in (tmp_path / str(i) / "runs").iterdir()).split("-")[-1])
        retry = next(x for x in wf["status"]["nodes"].values() if x["type"] == "Retry")
        attempts.append(len(retry["children"]))
    # different seeds draw differently: not every run needs the same number of attempts
    assert len(set(attempts)) > 1, attempts


# ---------------------------------------------------------------------------------------- corpus
# The rest of Argo's runnable workflows (/work/shared/argo/corpus, override with KILN_ARGO_CORPUS):
# every example Argo's CI submits (expected Succeeded) and its e2e expected failures (expected not
# to succeed). What needs a Kubernetes object is refused before it starts (NeedsCluster); the
# (Cluster)WorkflowTemplates and ConfigMaps Argo's CI applies first come from _cluster-objects/.
# The whole corpus runs once per session, concurrently (``corpus_results``); docs/argo-conformance.md
# is the table of what it observed, and ``test_conformance_table_is_current`` keeps it true:
# regenerate it with ``python tests/runners/test_conformance.py --write-table``.

CORPUS = Path(os.environ.get("KILN_ARGO_CORPUS") or REPO.parent / "shared" / "argo" / "corpus")
if not (CORPUS / "EXPECTED.tsv").exists():
    CORPUS = Path("/work/shared/argo/corpus")
CORPUS_ROWS = list(csv.DictReader(open(CORPUS / "EXPECTED.tsv"), delimiter="\t")) if (CORPUS / "EXPECTED.tsv").exists() else []
TABLE = REPO / "docs" / "argo-conformance.md"

# long sleeps scaled down in the fast run (the order of events is kept); the unmodified files run
# in test_corpus_full_duration (slow)
CORPUS_SHRINK: dict[str, list[tuple[str, str]]] = {
    "default-pdb-support.yaml": [(r"sleep 10\b", "sleep 1")],
    "pod-resources-template-override.yaml": [(r"sleep 5;", "sleep 1;"), (r"sleep 10\b", "sleep 1")],
    "expectedfailures/timeouts-step.yaml": [(r"activeDeadlineSeconds: 10\b", "activeDeadlineSeconds: 2")],
    "expectedfailures/timeouts-step-plugin.yaml": [(r"activeDeadlineSeconds: 10\b", "activeDeadlineSeconds: 2")],
    "expectedfailures/parallelism-step-fail-fast.yaml": [(r"- sleep\n(\s*)- '5'", r"- sleep\n\1- '1'")],
}

# rows that do not reach Argo's expected phase yet, and why (the test fails once one does: then
# remove it from here and regenerate the table)
CORPUS_GAPS: dict[str, str] = {
    "conditionals.yaml": "its steps run `cowsay` (in the argoproj/argosay:v1 image), a program this host does not have (exit 127)",
    "http-hello-world.yaml": "its http template calls raw.githubusercontent.com: the local runner calls only loopback addresses",
    "sidecar-nginx.yaml": "its sidecar runs nginx (the nginx image's program), which this host does not have: the pod ends Error",
    "sidecar.yaml": "it runs `apk add curl` and influxd (alpine's and influxdb's images), which this host does not have",
    "variables-showcase.yaml": "some global variables ({{workflow.priority}} ...) are not provided yet, and its service step needs nc",
    "volumes-emptydir.yaml": "it looks for its volume in /proc/mounts: a local emptyDir is a private folder, not a mount",
    "expectedfailures/pns/pns-quick-exit-output-art.yaml": "Argo cannot save an output artifact whose path (/mnt) holds a "
                                                           "volume mount (/mnt/workdir); the local runner copies the folder",
}


# rows that reach the expected phase with a caveat worth reading in the table
CORPUS_NOTES: dict[str, str] = {
    "life-cycle-hooks-tmpl-level.yaml": "Succeeded because hooks with an expression (running/succeeded) are not run by the local "
                                        "runner; their http calls to a non-loopback host would end Error",
    "life-cycle-hooks-wf-level.yaml": "Succeeded because workflow-level spec.hooks are not run by the local runner; their http "
                                      "calls to a non-loopback host would end Error",
}


def _corpus_load(file: str, shrink: bool) -> dict:
    with open(CORPUS / file) as f:
        wf = next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "Workflow")
    if shrink and file in CORPUS_SHRINK:
        text = yaml.safe_dump(wf)
        for pat, rep in CORPUS_SHRINK[file]:
            text = re.sub(pat, rep, text)
        wf = yaml.safe_load(text)
    return wf


def run_corpus_row(workdir: Path, row: dict, shrink: bool = True) -> dict:
    """Run one corpus file; what was observed: phase (or "refused"), message, exit code class."""
    from kiln.errors import NeedsCluster, WorkflowError

    runner = LocalRunner(workdir / "runs", max_concurrency=16, env={"KILN_RANDOM_SEED": SEED},
                         templates_dir=CORPUS / "_cluster-objects")
    try:
        out = runner.submit(_corpus_load(row["file"], shrink))
    except NeedsCluster as exc:
        return {"phase": "refused", "message": exc.message, "needs_cluster": True}
    except WorkflowError as exc:
        return {"phase": "rejected", "message": exc.message, "needs_cluster": False}
    st = out["status"]
    return {"phase": st["phase"], "message": st.get("message") or "", "needs_cluster": False, "wf": out}


def corpus_ok(row: dict, obs: dict) -> bool:
    if row["expected"].startswith("Succeeded"):
        return obs["phase"] == "Succeeded"
    return obs["phase"] != "Succeeded"  # Failed, Error, or refused (Argo's lint refuses some too)


def run_corpus(workdir: Path, shrink: bool = True) -> dict[str, dict]:
    from concurrent.futures import ThreadPoolExecutor

    def one(i_row: tuple[int, dict]) -> tuple[str, dict]:
        i, row = i_row
        return row["file"], run_corpus_row(workdir / str(i), row, shrink)

    with ThreadPoolExecutor(12) as ex:
        return dict(ex.map(one, enumerate(CORPUS_ROWS)))


def render_table(results: dict[str, dict]) -> str:
    ok = sum(corpus_ok(r, results[r["file"]]) for r in CORPUS_ROWS)
    refused = [r for r in CORPUS_ROWS if results[r["file"]]["needs_cluster"]]
    lines = [
        "# Argo conformance of the local runner, on Argo's corpus",
        "",
        "Generated by `python tests/runners/test_conformance.py --write-table` from a run of every file of",
        "`shared/argo/corpus/` (Argo v4.1.2: the examples Argo's CI submits, and its e2e expected failures) through",
        "`kiln.runners.local.LocalRunner`, with `_cluster-objects/` as the folder of WorkflowTemplates and ConfigMaps.",
        "`tests/runners/test_conformance.py` checks this file is current.",
        "",
        f"**{ok} of {len(CORPUS_ROWS)} reach Argo's expected phase**; {len(refused)} are refused before they start because they",
        "need a Kubernetes object (exit code 4 from `kiln run-workflow`, `NeedsCluster` from the API).",
        "",
        "| file | expected | observed | result | note |",
        "|---|---|---|---|---|",
    ]
    for r in CORPUS_ROWS:
        obs = results[r["file"]]
        expected = "Succeeded" if r["expected"].startswith("Succeeded") else "not Succeeded"
        if corpus_ok(r, obs):
            verdict = "as expected"
        elif obs["needs_cluster"]:
            verdict = "skipped: needs a cluster"
        else:
            verdict = "differs"
        note = CORPUS_GAPS.get(r["file"]) or CORPUS_NOTES.get(r["file"]) or (obs["message"] if obs["phase"] in ("refused", "rejected") or not corpus_ok(r, obs) else "")
        note = re.sub(r"\s+", " ", note).replace("|", "\\|")[:220]
        lines.append(f"| {r['file']} | {expected} | {obs['phase']} | {verdict} | {note} |")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    if not CORPUS_ROWS:
        pytest.skip(f"Argo corpus not found (set KILN_ARGO_CORPUS; looked in {CORPUS})")
    return run_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("row", CORPUS_ROWS, ids=[r["file"] for r in CORPUS_ROWS])
def test_corpus(corpus_results: dict[str, dict], row: dict) -> None:
    obs = corpus_results[row["file"]]
    ok = corpus_ok(row, obs)
    if row["file"] in CORPUS_GAPS:
        assert not ok, f"{row['file']} now reaches {obs['phase']}: remove it from CORPUS_GAPS and regenerate the table"
        pytest.xfail(CORPUS_GAPS[row["file"]])
    if obs["needs_cluster"] and row["expected"].startswith("Succeeded"):
        # refused before it started, naming the feature and where: the skip is the reason
        assert "needs " in obs["message"] and obs["message"].split(":")[0], obs
        pytest.skip(obs["message"])
    assert ok, f"{row['file']}: expected {row['expected'].split('(')[0].strip()}, got {obs['phase']} ({obs['message']})"
    if "wf" in obs:
        for n in obs["wf"]["status"]["nodes"].values():
            assert n["phase"] in ("Succeeded", "Failed", "Error", "Skipped", "Omitted"), n


def test_conformance_table_is_current(corpus_results: dict[str, dict]) -> None:
    assert TABLE.exists(), f"{TABLE} is missing: python tests/runners/test_conformance.py --write-table"
    assert TABLE.read_text() == render_table(corpus_results), \
        f"{TABLE} is out of date: python tests/runners/test_conformance.py --write-table"


@pytest.mark.slow
def test_corpus_full_duration(tmp_path: Path) -> None:
    """The files whose sleeps the fast run scales down, unmodified (concurrently: ~10 s)."""
    from concurrent.futures import ThreadPoolExecutor

    rows = [r for r in CORPUS_ROWS if r["file"] in CORPUS_SHRINK]
    with ThreadPoolExecutor(len(rows) or 1) as ex:
        obs = list(ex.map(lambda ir: run_corpus_row(tmp_path / str(ir[0]), ir[1], shrink=False), enumerate(rows)))
    for row, o in zip(rows, obs, strict=True):
        assert corpus_ok(row, o), (row["file"], o["phase"], o["message"])


if __name__ == "__main__":  # python tests/runners/test_conformance.py --write-table
    import sys
    import tempfile

    if "--write-table" not in sys.argv:
        sys.exit("usage: python tests/runners/test_conformance.py --write-table")
    with tempfile.TemporaryDirectory(prefix="kiln-corpus-") as d:
        TABLE.write_text(render_table(run_corpus(Path(d))))
    print(f"wrote {TABLE}")
