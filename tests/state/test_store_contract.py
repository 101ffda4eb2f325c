"""The StateStore contract, run against every backend (``store_url``: sqlite, postgresql).

optuna-style: one class, parametrised over real backends; a backend that cannot run here is an
explicit skip with the reason (see tests/_pg.py).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from kiln.errors import StateError
from kiln.state import (
    SCHEMA_VERSION,
    Attempt,
    Condition,
    ObjectRecord,
    StateStore,
    open_store,
    utcnow,
)
from tests.state.helpers import expect_line, spawn

KEY = "Experiment/vision/resnet"


@pytest.fixture
def make_store(store_url: str, tmp_path: Path) -> Iterator[Callable[..., StateStore]]:
    opened: list[StateStore] = []

    def make(**kw: object) -> StateStore:
        s = open_store(store_url, tmp_path, **kw)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(make_store: Callable[..., StateStore]) -> StateStore:
    return make_store()


def _full_record(key: str = KEY) -> ObjectRecord:
    rec = ObjectRecord(key, source="specs/exp.yaml:3", health="Progressing",
                       inventory=[{"kind": "workflow", "id": "resnet-7f3a", "namespace": "argo"},
                                  {"kind": "dvc", "id": "data/images.dvc"}],
                       extra={"trials": [{"n": 0, "lr": 0.1, "acc": 0.5}], "best": None})
    rec = rec.applied({"apiVersion": "kiln.dev/v1alpha1", "kind": "Experiment",
                       "spec": {"lr": [0.1, 0.01], "unicodé": "ü"}}, "sha256:aaa")
    return rec.with_condition("Ready", "False", "Training", "trial 1 of 8 running") \
              .with_condition("Reconciling", "True", "Progressing")


def _raw_rows(url: str) -> list[str]:
    """Every value of every kiln table, as text: what actually sits in the database."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    out: list[str] = []
    with eng.connect() as c:
        for table in ("kiln_objects", "kiln_attempts", "kiln_steps", "kiln_kv"):
            for row in c.execute(sa.text(f"SELECT * FROM {table}")):
                out.extend(str(v) for v in row)
    eng.dispose()
    return out


def _set_schema_version(url: str, value: str) -> None:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        c.execute(sa.text("UPDATE kiln_meta SET value = :v WHERE name = 'schema_version'"), {"v": value})
    eng.dispose()


class TestStateStoreContract:
    def test_put_get_round_trip(self, store: StateStore) -> None:
        assert store.get(KEY) is None
        rec = _full_record()
        stored = store.put(rec)
        got = store.get(KEY)
        assert got == stored
        assert (got.kind, got.workspace, got.name) == ("Experiment", "vision", "resnet")
        assert got.spec == rec.spec and got.inventory == rec.inventory and got.extra == rec.extra
        assert got.conditions == rec.conditions
        assert got.condition("Ready") == Condition("Ready", "False", "Training", "trial 1 of 8 running",
                                                   rec.condition("Ready").last_transition)
        assert got.created_at and got.updated_at and got.last_change == rec.last_change
        # to_dict is plain JSON and rebuilds the same record
        assert ObjectRecord.from_dict(json.loads(json.dumps(got.to_dict()))) == got

        again = store.put(replace(got, health="Healthy", created_at=""))
        assert again.created_at == got.created_at  # the store keeps the first creation time
        assert again.updated_at >= got.updated_at
        assert store.get(KEY).health == "Healthy"

    def test_generation_bump(self, store: StateStore) -> None:
        r1 = store.put(ObjectRecord(KEY).applied({"lr": 0.1}, "h1", now="2026-01-01T00:00:00.000Z"))
        assert (r1.generation, r1.observed_generation, r1.sync) == (1, 1, "Synced")
        same = store.put(store.get(KEY).applied({"lr": 0.1}, "h1", now="2026-01-02T00:00:00.000Z"))
        assert same.generation == 1 and same.last_change == "2026-01-01T00:00:00.000Z"
        changed = store.put(store.get(KEY).applied({"lr": 0.2}, "h2", now="2026-01-03T00:00:00.000Z"))
        assert (changed.generation, changed.observed_generation) == (2, 2)
        assert changed.last_change == "2026-01-03T00:00:00.000Z"
        assert store.get(KEY).spec == {"lr": 0.2} and store.get(KEY).spec_hash == "h2"

    def test_all_objects_filtering(self, store: StateStore) -> None:
        keys = ["Dataset/a/d2", "Dataset/a/d1", "Dataset/b/d1", "Experiment/a/e1", "Workspace//a"]
        for k in keys:
            store.put(ObjectRecord(k))
        assert [r.key for r in store.all_objects()] == sorted(keys)
        assert [r.key for r in store.all_objects(kind="Dataset")] == ["Dataset/a/d1", "Dataset/a/d2",
                                                                      "Dataset/b/d1"]
        assert [r.key for r in store.all_objects(workspace="a")] == ["Dataset/a/d1", "Dataset/a/d2",
                                                                     "Experiment/a/e1"]
        assert [r.key for r in store.all_objects(kind="Dataset", workspace="b")] == ["Dataset/b/d1"]
        assert store.all_objects(kind="Deployment") == []
        assert store.get("Workspace//a").workspace == ""

    def test_delete_removes_object_and_steps_keeps_attempts(self, store: StateStore) -> None:
        store.put(ObjectRecord(KEY))
        store.start_step(KEY, "h1", "train")
        store.record_attempt(Attempt(KEY, 1, "h1", utcnow(), result="succeeded"))
        store.put(ObjectRecord("Experiment/vision/other"))
        store.start_step("Experiment/vision/other", "h1", "train")
        assert store.delete(KEY) is True
        assert store.get(KEY) is None and store.steps(KEY) == []
        assert len(store.attempts(KEY)) == 1
        assert store.delete(KEY) is False
        assert store.get("Experiment/vision/other") is not None
        assert len(store.steps("Experiment/vision/other")) == 1

    def test_attempts_trimmed_to_newest_n(self, make_store: Callable[..., StateStore]) -> None:
        store = make_store(max_attempts=3)
        for g in range(1, 8):
            store.record_attempt(Attempt(KEY, g, f"h{g}", utcnow(), utcnow(),
                                         "failed" if g % 2 else "succeeded", f"attempt {g}", [f"a{g}"]))
        store.record_attempt(Attempt("Dataset/x/y", 1, "h", utcnow()))
        got = store.attempts(KEY)
        assert [a.generation for a in got] == [7, 6, 5]  # newest first, only 3 kept
        assert got[0].result == "failed" and got[0].actions == ["a7"] and got[0].message == "attempt 7"
        assert [a.generation for a in store.attempts(KEY, limit=2)] == [7, 6]
        assert len(store.attempts("Dataset/x/y")) == 1
        # an unrelated store with the default keeps 20
        default = make_store()
        for g in range(25):
            default.record_attempt(Attempt("Dataset/x/z", g, "h", utcnow()))
        assert len(default.attempts("Dataset/x/z")) == 20

    def test_steps_idempotency(self, store: StateStore) -> None:
        assert store.step(KEY, "h1", "train") is None
        s = store.start_step(KEY, "h1", "train")
        assert (s.state, s.retries, s.stopped_at) == ("started", 0, "")
        assert store.step(KEY, "h1", "train") == s
        f = store.finish_step(KEY, "h1", "train", "failed", "CUDA out of memory")
        assert f.state == "failed" and f.stopped_at and f.message == "CUDA out of memory"
        s2 = store.start_step(KEY, "h1", "train")
        assert (s2.state, s2.retries) == ("started", 1)
        ok = store.finish_step(KEY, "h1", "train", "succeeded", output={"model": "models/r.onnx"})
        assert store.step(KEY, "h1", "train") == ok and ok.succeeded and ok.retries == 1
        with pytest.raises(StateError, match="already succeeded"):
            store.start_step(KEY, "h1", "train")
        assert store.step(KEY, "h1", "train").succeeded  # the refusal changed nothing
        with pytest.raises(StateError, match="only a started step can finish"):
            store.finish_step(KEY, "h1", "train", "failed")
        with pytest.raises(StateError, match="never started"):
            store.finish_step(KEY, "h1", "export", "succeeded")
        with pytest.raises(StateError, match="succeeded or failed"):
            store.finish_step(KEY, "h1", "train", "started")
        # a new spec hash has its own progress
        store.start_step(KEY, "h2", "train")
        store.start_step(KEY, "h2", "export")
        assert [p.step for p in store.steps(KEY, "h2")] == ["train", "export"]
        assert {(p.spec_hash, p.step) for p in store.steps(KEY)} == {("h1", "train"), ("h2", "train"),
                                                                    ("h2", "export")}

    def test_forget_steps_of_some_spec_hashes(self, store: StateStore) -> None:
        """What `kiln gc` does once it removed a run: that spec's steps run again when applied."""
        for h in ("h1", "h1-aaaa", "h2"):
            store.start_step(KEY, h, "workflow")
            store.finish_step(KEY, h, "workflow", "succeeded")
        store.start_step("Experiment/vision/other", "h1", "workflow")
        assert store.forget_steps(KEY, ["h1", "h1-aaaa"]) == 2 and store.forget_steps(KEY, []) == 0
        assert store.step(KEY, "h1", "workflow") is None and store.step(KEY, "h2", "workflow").succeeded
        assert store.step("Experiment/vision/other", "h1", "workflow") is not None
        store.start_step(KEY, "h1", "workflow")  # no longer "already succeeded"

    def test_transaction_rollback_writes_nothing(self, store: StateStore) -> None:
        store.put(ObjectRecord(KEY).applied({"v": "old"}, "h-old"))
        with pytest.raises(RuntimeError, match="boom"):
            with store.transaction():
                store.put(store.get(KEY).applied({"v": "new"}, "h-new"))
                store.record_attempt(Attempt(KEY, 2, "h-new", utcnow()))
                store.start_step(KEY, "h-new", "train")
                store.put_kv("aliases", "prod", "v2")
                store.put(ObjectRecord("Dataset/x/y"))
                assert store.get(KEY).spec == {"v": "new"}  # reads inside see the writes
                raise RuntimeError("boom")
        assert store.get(KEY).spec == {"v": "old"} and store.get(KEY).generation == 1
        assert store.attempts(KEY) == [] and store.steps(KEY) == []
        assert store.get_kv("aliases", "prod") is None and store.get("Dataset/x/y") is None

    def test_transaction_commits_together_and_nested_savepoint(self, store: StateStore) -> None:
        with store.transaction():
            store.put(ObjectRecord(KEY).applied({"v": 1}, "h1"))
            store.record_attempt(Attempt(KEY, 1, "h1", utcnow()))
            with pytest.raises(ValueError):
                with store.transaction():  # inner block = savepoint
                    store.put_kv("ns", "inner", 1)
                    raise ValueError("inner only")
            store.start_step(KEY, "h1", "apply")
        assert store.get(KEY).generation == 1 and len(store.attempts(KEY)) == 1
        assert store.step(KEY, "h1", "apply") is not None
        assert store.get_kv("ns", "inner") is None

    def test_invalid_value_writes_nothing(self, store: StateStore) -> None:
        with pytest.raises(StateError, match="extra cannot be stored"):
            store.put(ObjectRecord(KEY, extra={"when": object()}))
        assert store.get(KEY) is None

    def test_kv(self, store: StateStore) -> None:
        assert store.get_kv("aliases", "prod") is None
        assert store.get_kv("aliases", "prod", default="none") == "none"
        store.put_kv("aliases", "prod", {"model": "resnet", "version": 3})
        store.put_kv("aliases", "staging", [1, 2])
        store.put_kv("other", "prod", True)
        store.put_kv("aliases", "prod", {"model": "resnet", "version": 4})
        assert store.get_kv("aliases", "prod") == {"model": "resnet", "version": 4}
        assert store.kv_items("aliases") == {"prod": {"model": "resnet", "version": 4}, "staging": [1, 2]}
        assert store.delete_kv("aliases", "staging") is True and store.delete_kv("aliases", "staging") is False
        assert store.get_kv("other", "prod") is True

    def test_redaction_nothing_secret_reaches_the_database(self, store: StateStore, store_url: str) -> None:
        secrets = ["hf_SeCrEt1", "pw-SeCrEt2", "ls-SeCrEt3", "aws-SeCrEt4", "dsn-SeCrEt5", "kv-SeCrEt6",
                   "out-SeCrEt7", "msg-SeCrEt8", "cond-SeCrEt9"]
        rec = ObjectRecord(
            KEY,
            inventory=[{"kind": "labelstudio", "id": 7, "apiKey": secrets[2]}],
            extra={"storage": {"AWS_SECRET_ACCESS_KEY": secrets[3], "bucket": "b"},
                   "db": f"postgresql://u:{secrets[4]}@db/x"},
        ).applied({"spec": {"hub": {"token": secrets[0]}, "db": {"password": secrets[1], "user": "u"},
                            "tokenizer": "bert-base", "env": [{"secretKeyRef": {"name": "hf", "key": "t"}}]}},
                  "h1")
        rec = rec.with_condition("Stalled", "True", "AuthFailed", f"https://bot:{secrets[8]}@git/x denied")
        stored = store.put(rec)
        store.put_kv("registry", "creds", {"credentials": {"user": "u", "pass": "x"}, "password": secrets[5]})
        store.start_step(KEY, "h1", "push")
        store.finish_step(KEY, "h1", "push", "failed", f"push to https://u:{secrets[7]}@h failed",
                          output={"authorization": f"Bearer {secrets[6]}"})
        store.record_attempt(Attempt(KEY, 1, "h1", utcnow(), message=f"s3://k:{secrets[3]}@bucket"))

        blob = "\n".join(_raw_rows(store_url))
        leaked = [s for s in secrets if s in blob]
        assert leaked == []
        # what is not secret survives, and the stored record says what was hidden
        assert stored.spec["spec"]["hub"]["token"] == "***"
        assert stored.spec["spec"]["tokenizer"] == "bert-base"
        assert stored.spec["spec"]["env"] == [{"secretKeyRef": {"name": "hf", "key": "t"}}]
        assert store.get(KEY).inventory == [{"kind": "labelstudio", "id": 7, "apiKey": "***"}]
        assert store.get(KEY).extra["db"] == "postgresql://u:***@db/x"
        assert store.get_kv("registry", "creds") == {"credentials": "***", "password": "***"}
        assert store.step(KEY, "h1", "push").output == {"authorization": "***"}

    def test_schema_version_newer_on_disk_is_refused(self, store: StateStore, store_url: str,
                                                     tmp_path: Path) -> None:
        store.put(ObjectRecord(KEY))
        store.close()
        _set_schema_version(store_url, str(SCHEMA_VERSION + 1))
        with pytest.raises(StateError, match="upgrade kiln") as e:
            open_store(store_url, tmp_path)
        assert f"schema version {SCHEMA_VERSION + 1}" in str(e.value)
        _set_schema_version(store_url, "0")
        with pytest.raises(StateError, match="cannot migrate"):
            open_store(store_url, tmp_path)
        _set_schema_version(store_url, str(SCHEMA_VERSION))
        with open_store(store_url, tmp_path) as again:  # data untouched by the refusals
            assert again.get(KEY) is not None

    def test_history_across_objects_newest_first_with_origin(self, store: StateStore) -> None:
        """``kiln events`` reads every object's attempts by time, deleted objects' included."""
        store.record_attempt(Attempt(KEY, 1, "h1", "2026-12-01T10:00:00.000000Z", action="create",
                                     commit="a" * 40, author="Ada <ada@example.com>"))
        store.record_attempt(Attempt("Dataset/x/y", 1, "h", "2026-12-02T10:00:00.000000Z", action="create"))
        store.record_attempt(Attempt(KEY, 2, "h2", "2026-12-03T10:00:00.000000Z", result="failed",
                                     action="update", changes=["spec.hpo.maxTrials"], message="boom"))
        store.delete(KEY)
        got = store.history()
        assert [(a.key, a.generation) for a in got] == [(KEY, 2), ("Dataset/x/y", 1), (KEY, 1)]
        assert got[0].changes == ["spec.hpo.maxTrials"] and got[0].action == "update" and got[0].result == "failed"
        assert (got[2].commit, got[2].author) == ("a" * 40, "Ada <ada@example.com>")
        assert [a.generation for a in store.history(since="2026-12-02T10:00:00.000000Z")] == [2, 1]

    def test_version_1_store_is_migrated_keeping_its_history(self, store: StateStore, store_url: str,
                                                            tmp_path: Path) -> None:
        """A store written before attempts had action/changes/commit/author (schema version 1)
        opens with them empty, and new attempts record them."""
        store.put(ObjectRecord(KEY))
        store.record_attempt(Attempt(KEY, 1, "h1", utcnow(), utcnow(), "succeeded", "", ["workflow: run"]))
        store.close()
        eng = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
        with eng.begin() as c:  # back to the version 1 table, as older kiln made it
            c.execute(sa.text("DROP INDEX ix_kiln_attempts_started"))
            for col in ("action", "changes", '"commit"', "author"):
                c.execute(sa.text(f"ALTER TABLE kiln_attempts DROP COLUMN {col}"))
        eng.dispose()
        _set_schema_version(store_url, "1")
        with open_store(store_url, tmp_path) as again:
            (old,) = again.attempts(KEY)
            assert (old.actions, old.action, old.changes, old.commit, old.author) == (["workflow: run"], "", [], "", "")
            again.record_attempt(Attempt(KEY, 2, "h2", utcnow(), action="update", changes=["spec.x"], commit="b" * 40))
            assert [(a.action, a.commit) for a in again.history()] == [("update", "b" * 40), ("", "")]
        eng = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
        with eng.connect() as c:
            assert c.execute(sa.text("SELECT value FROM kiln_meta")).scalar() == str(SCHEMA_VERSION)
        eng.dispose()

    def test_schema_created_once_and_reopen_keeps_data(self, store: StateStore, store_url: str,
                                                       tmp_path: Path) -> None:
        store.put(ObjectRecord(KEY))
        with open_store(store_url, tmp_path) as second:
            assert second.get(KEY) is not None
        eng = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
        with eng.connect() as c:
            rows = c.execute(sa.text("SELECT name, value FROM kiln_meta")).all()
        eng.dispose()
        assert rows == [("schema_version", str(SCHEMA_VERSION))]

    def test_concurrent_writers_in_two_processes(self, store: StateStore, store_url: str) -> None:
        n = 40
        procs = [spawn("write-many", store_url, ws, str(n), stdin=True) for ws in ("left", "right")]
        for p in procs:
            expect_line(p, "READY")
        for p in procs:  # release both at once so their transactions interleave
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            expect_line(p, "DONE", timeout=60)
            assert p.wait(30) == 0, p.stderr.read()
        for ws in ("left", "right"):
            recs = store.all_objects(kind="Dataset", workspace=ws)
            assert sorted(r.spec["i"] for r in recs) == list(range(n))
            assert all(len(store.attempts(r.key)) == 1 for r in recs)

    def test_crash_mid_transaction_keeps_previous_state(self, store: StateStore, store_url: str) -> None:
        old = store.put(ObjectRecord(KEY).applied({"version": "old"}, "hash-old"))
        proc = spawn("hold-tx", store_url, KEY)
        try:
            expect_line(proc, "IN-TX")
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
        got = store.get(KEY)
        assert got == old and got.spec == {"version": "old"}
        assert store.attempts(KEY) == [] and store.steps(KEY) == []
        assert store.get_kv("test", "crash") is None
        # and the killed writer left no lock behind: the same key can be written at once
        newer = store.put(got.applied({"version": "after"}, "hash-after"))
        assert store.get(KEY) == newer and newer.generation == 2


def test_sqlite_snapshot_reader_agrees_with_store(tmp_path) -> None:
    """kiln plan reads SQLite without SQLAlchemy; both readers must return the same records."""
    from kiln.state import ObjectRecord, open_store
    from kiln.state.snapshot import READS_SCHEMA, read_objects
    from kiln.state.store import SCHEMA_VERSION

    assert READS_SCHEMA == SCHEMA_VERSION
    assert read_objects(None, tmp_path) == []  # nothing applied: no database is created
    assert not (tmp_path / ".kiln" / "state.db").exists()
    store = open_store(None, tmp_path)
    for i in range(3):
        rec = ObjectRecord(key=f"Dataset/default/d{i}", spec={"a": i}, inventory=[{"kind": "x", "id": str(i)}])
        store.put(rec.applied({"a": i}, f"h{i}").with_condition("Ready", "True", "Succeeded", "ok"))
    expected = store.all_objects()
    store.close()
    assert read_objects(None, tmp_path) == expected
    assert read_objects("postgresql+psycopg2://u@h/db", tmp_path) is None
