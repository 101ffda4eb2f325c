"""Control-plane edge cases (#15 item 3), each reproduced on a real repository in a tmp folder:
path scoping of --prune, any exception type in a step, damaged state files, status agreeing
with plan after a refused or killed apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.controller import handlers
from kiln.controller.handlers.base import Handler, Step
from kiln.controller.project import apply, open_state, plan
from kiln.controller.status import status_rows
from kiln.errors import StateError
from kiln.state import ObjectRecord, RepoLock
from tests.helpers import kiln, write

WS = """
apiVersion: kiln.dev/v1alpha1
kind: Workspace
metadata: {name: NAME}
spec: {}
"""

DATA = """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: wine}
spec: {type: tabular, task: classification, format: csv, source: {sample: wine}, label: target}
"""

EXP = """
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: wine-lr}
spec:
  mode: run
  dataset: {name: wine, version: latest}
  algorithm: {name: logistic_regression}
  objective: {metric: validation_accuracy, direction: maximize}
"""


@pytest.fixture()
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # sources are recorded relative to the cwd, as the CLI runs
    return tmp_path


def _record(repo: Path, key: str, source: str, spec_hash: str = "0" * 16, **kw) -> None:
    """An applied object as apply records it (Ready, in sync), in the repository's real store."""
    store = open_state(load_config(repo))
    try:
        rec = ObjectRecord(key=key, source=source, spec_hash=spec_hash, generation=1, observed_generation=1,
                           sync="Synced", health="Healthy", **kw).with_condition("Ready", "True", "Succeeded")
        store.put(rec)
    finally:
        store.close()


def test_prune_scope_compares_path_components(repo: Path) -> None:
    """`plan specs/a --prune` must not propose deleting what specs/ab/ defines."""
    write(repo, {"specs/a/ws.yaml": WS.replace("NAME", "team-a"), "specs/ab/ws.yaml": WS.replace("NAME", "team-ab")})
    _record(repo, "Workspace/default/team-ab", "specs/ab/ws.yaml:1")
    _record(repo, "Workspace/default/gone", "specs/a/old.yaml:1")  # really under specs/a: pruned
    p = plan(load_config(repo), "specs/a", prune=True)
    deletes = sorted(c.key for c in p.changes if c.action == "delete")
    assert deletes == ["Workspace/default/gone"]
    assert "Workspace/default/team-ab" not in {c.key for c in p.changes}


class _Exits(Handler):
    """A Dataset handler whose second step leaves by ``sys.exit`` (a library calling exit())."""

    kind = "Dataset"
    error: BaseException = SystemExit(0)

    def steps(self, ctx):
        def boom(ctx):
            raise type(self).error

        return [Step("fetch", "fetch", lambda ctx: {"ok": True}), Step("convert", "convert", boom)]

    def delete(self, ctx):
        return []


@pytest.mark.parametrize("error", [SystemExit(0), SystemExit(3), GeneratorExit()], ids=repr)
def test_any_exception_in_a_step_records_failure_and_plan_retries(repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   error: BaseException) -> None:
    write(repo, {"specs/d.yaml": DATA})
    monkeypatch.setitem(handlers.HANDLERS, "Dataset", type("Exits", (_Exits,), {"error": error}))
    config = load_config(repo)
    res = apply(config, echo=lambda line: None).result
    assert [r.outcome for r in res.results] == ["failed"] and res.exit_code == 1
    assert type(error).__name__ in res.results[0].message
    rec = next(r for r in status_rows(config) if r["name"] == "wine")
    assert (rec["ready"], rec["sync"], rec["health"]) == ("False", "OutOfSync", "Degraded")
    assert [c.action for c in plan(config).changes] == ["create"]  # never applied: tried again


def test_ctrl_c_in_a_step_is_recorded_interrupted_and_raised(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(repo, {"specs/d.yaml": DATA})
    monkeypatch.setitem(handlers.HANDLERS, "Dataset", type("Stops", (_Exits,), {"error": KeyboardInterrupt()}))
    config = load_config(repo)
    with pytest.raises(KeyboardInterrupt):
        apply(config, echo=lambda line: None)
    rec = next(r for r in status_rows(config) if r["name"] == "wine")
    assert (rec["ready"], rec["message"]) == ("False", "interrupted")
    assert plan(config).changes[0].action == "create"


def test_empty_state_db_is_an_error_never_a_new_store(repo: Path) -> None:
    write(repo, {"specs/ws.yaml": WS.replace("NAME", "team")})
    db = repo / ".kiln" / "state.db"
    db.parent.mkdir()
    db.write_bytes(b"")
    p = kiln("plan", cwd=repo)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert "state.db is empty (0 bytes)" in p.stderr and "to create" not in p.stdout
    with pytest.raises(StateError, match="state.db"):  # read-only verbs too (status, get, describe)
        status_rows(load_config(repo))
    assert db.stat().st_size == 0  # nothing was written into it
    db.write_bytes(b"")  # a SQLite database of another program: no kiln tables
    import sqlite3

    with sqlite3.connect(db) as other:
        other.execute("CREATE TABLE notes (x)")
    with pytest.raises(StateError, match="has no kiln tables"):
        open_state(load_config(repo))


def test_truncated_versions_log_is_an_error_in_plan_and_data_versions(repo: Path) -> None:
    write(repo, {"specs/d.yaml": DATA, "specs/e.yaml": EXP})
    config = load_config(repo)
    exp = next(s for s in plan(config).changes if s.kind == "Experiment").spec
    assert exp is not None
    log = repo / "data" / "default" / "wine.versions.json"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps({"path": "data/default/wine", "current": "a" * 32, "versions": []})[:25])
    _record(repo, exp.key, exp.location(), spec_hash=exp.spec_hash, spec=exp.doc)
    with pytest.raises(StateError, match=r"data/default/wine.versions.json is not valid JSON"):
        plan(config)
    out = kiln("data", "versions", "wine", cwd=repo)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "data/default/wine.versions.json is not valid JSON" in out.stderr
    assert "git checkout -- data/default/wine.versions.json" in out.stderr


def test_status_agrees_with_plan_after_a_refused_apply(repo: Path) -> None:
    write(repo, {"specs/ws.yaml": WS.replace("NAME", "team")})
    config = load_config(repo)
    assert apply(config, echo=lambda line: None).result.ok
    assert [r["sync"] for r in status_rows(config)] == ["Synced"]
    write(repo, {"specs/ws.yaml": WS.replace("NAME", "team").replace("spec: {}", "spec: {quotas: {cpu: '2'}}")})
    with RepoLock(repo, "kiln apply (another)"):
        refused = kiln("apply", cwd=repo)
    assert refused.returncode == 3, refused.stderr
    assert [c.action for c in plan(config).changes] == ["update"]
    row = status_rows(config)[0]
    assert (row["sync"], row["pending"]) == ("OutOfSync", "update pending (spec.quotas)")
    table = kiln("status", cwd=repo, check=True).stdout
    assert "OutOfSync" in table and "update pending (spec.quotas)" in table
    write(repo, {"specs/ws.yaml": WS.replace("NAME", "team").replace("spec: {}", "spec: {nope: 1}")})
    table = kiln("status", cwd=repo, check=True).stdout  # specs that do not validate: records still shown
    assert "Sync as last recorded: not compared with the specs: 1 error in specs" in table, table
