"""How much the state store costs ``kiln plan``: imports, opening, and reading 1,000 records.

    python bench/state_store.py [--records 1000] [--repeat 7] [--pg]

Each measurement runs in a fresh interpreter (cold imports, as a CLI call would) and is the
median of ``--repeat`` runs. Baselines measured in the same run:

* ``python -c pass``: the interpreter start every kiln command pays anyway;
* raw ``sqlite3`` + ``json.loads`` of the same 1,000 rows: the floor for reading them.

``--pg`` also times PostgreSQL (``KILN_TEST_POSTGRES_URL`` or a throwaway server, tests/_pg.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

POPULATE = r"""
import sys
from pathlib import Path
from kiln.state import open_store, ObjectRecord, Attempt, utcnow
url, repo, n = sys.argv[1] if sys.argv[1] != "-" else None, Path(sys.argv[2]), int(sys.argv[3])
store = open_store(url, repo)
with store.transaction():
    for i in range(n):
        kind = ("Dataset", "Experiment", "LabelingJob", "Deployment")[i % 4]
        spec = {"apiVersion": "kiln.dev/v1alpha1", "kind": kind,
                "metadata": {"name": f"obj-{i}", "workspace": f"ws{i % 10}", "labels": {"team": "vision"}},
                "spec": {"source": f"s3://bucket/data/{i}", "params": {f"p{j}": j * 0.5 for j in range(20)},
                         "steps": [{"name": f"step{j}", "image": "python:3.11"} for j in range(5)]}}
        rec = ObjectRecord(f"{kind}/ws{i % 10}/obj-{i}", source=f"specs/{i}.yaml:1", health="Healthy",
                           inventory=[{"kind": "workflow", "id": f"wf-{i}"}, {"kind": "dvc", "id": f"d/{i}.dvc"}],
                           extra={"version": i, "trials": [{"n": t, "acc": 0.9} for t in range(3)]})
        rec = rec.applied(spec, f"sha256:{i:064x}").with_condition("Ready", "True", "Applied")
        store.put(rec)
        store.record_attempt(Attempt(rec.key, 1, rec.spec_hash, utcnow(), utcnow(), actions=["apply"]))
store.close()
"""

# Prints: import seconds, open seconds, all_objects seconds, record count.
OPEN_READ = r"""
import sys, time
t0 = time.perf_counter()
from kiln.state import open_store
t1 = time.perf_counter()
from pathlib import Path
url = sys.argv[1] if sys.argv[1] != "-" else None
store = open_store(url, Path(sys.argv[2]))
t2 = time.perf_counter()
recs = store.all_objects()
t3 = time.perf_counter()
store.close()
print(t1 - t0, t2 - t1, t3 - t2, len(recs))
"""

IMPORT_ONLY = r"""
import sys, time, importlib
t0 = time.perf_counter()
importlib.import_module(sys.argv[1])
print(time.perf_counter() - t0)
"""

RAW_SQLITE = r"""
import sys, time
t0 = time.perf_counter()
import json, sqlite3
con = sqlite3.connect(sys.argv[1])
rows = con.execute("SELECT * FROM kiln_objects ORDER BY key").fetchall()
out = [(r[0], json.loads(r[5]), json.loads(r[8]), json.loads(r[11]), json.loads(r[16])) for r in rows]
print(time.perf_counter() - t0, len(out))
"""


def py(code: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{r.stderr}")
    return r.stdout


def wall(code: str, *args: str) -> float:
    import time

    t0 = time.perf_counter()
    py(code, *args)
    return time.perf_counter() - t0


def median(f, repeat: int) -> float:
    return statistics.median(f() for _ in range(repeat))


def importtime_total(module: str) -> float:
    """Cumulative self-reported import time of ``module`` (python -X importtime), seconds."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                       capture_output=True, text=True, cwd=ROOT)
    for line in reversed(r.stderr.splitlines()):
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1]) / 1e6
    raise SystemExit(f"no importtime line for {module}:\n{r.stderr[-2000:]}")


def bench_backend(label: str, url: str | None, repo: Path, n: int, repeat: int) -> dict[str, float]:
    arg = url or "-"
    py(POPULATE, arg, str(repo), str(n))
    runs = [py(OPEN_READ, arg, str(repo)).split() for _ in range(repeat)]
    assert all(int(r[3]) == n for r in runs), runs
    imp, opn, read = (statistics.median(float(r[i]) for r in runs) for i in range(3))
    total = median(lambda: wall(OPEN_READ, arg, str(repo)), repeat)
    print(f"[{label}] import kiln.state + sqlalchemy (in-process)  {imp * 1e3:7.1f} ms")
    print(f"[{label}] open_store (engine, pragmas, schema check)   {opn * 1e3:7.1f} ms")
    print(f"[{label}] all_objects() -> {n} ObjectRecords         {read * 1e3:7.1f} ms")
    print(f"[{label}] whole child process (python start .. close)  {total * 1e3:7.1f} ms")
    return {"import": imp, "open": opn, "read": read, "total": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--pg", action="store_true", help="also time PostgreSQL")
    a = ap.parse_args()

    startup = median(lambda: wall("pass"), a.repeat)
    print(f"baseline: python -c pass                            {startup * 1e3:7.1f} ms")
    light = median(lambda: float(py(IMPORT_ONLY, "kiln.state")), a.repeat)
    heavy = median(lambda: float(py(IMPORT_ONLY, "kiln.state.store")), a.repeat)
    print(f"import kiln.state (records, locks; store is lazy)   {light * 1e3:7.1f} ms"
          f"   (-X importtime: {importtime_total('kiln.state') * 1e3:.1f} ms)")
    print(f"import kiln.state.store (SQLAlchemy Core)           {heavy * 1e3:7.1f} ms"
          f"   (-X importtime: {importtime_total('kiln.state.store') * 1e3:.1f} ms)")

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        res = bench_backend("sqlite", None, repo, a.records, a.repeat)
        db = repo / ".kiln" / "state.db"
        raw = statistics.median(float(py(RAW_SQLITE, str(db)).split()[0]) for _ in range(a.repeat))
        print(f"baseline: raw sqlite3 + json.loads of {a.records} rows     {raw * 1e3:7.1f} ms")
        print(f"ratio: open+all_objects / raw sqlite3 read          {(res['open'] + res['read']) / raw:7.2f}x")
        print(f"ratio: whole child / python startup                 {res['total'] / startup:7.2f}x")
        summary = {"startup": startup, "import_kiln_state": light, "import_store": heavy,
                   "sqlite": res, "raw_sqlite_read": raw}

    if a.pg:
        sys.path.insert(0, str(ROOT))
        from tests._pg import PgUnavailable, fresh_schema, postgres_server

        try:
            with postgres_server() as server, fresh_schema(server) as url, \
                    tempfile.TemporaryDirectory() as tmp:
                summary["postgresql"] = bench_backend("postgresql", url, Path(tmp), a.records, a.repeat)
        except PgUnavailable as e:
            print(f"[postgresql] skipped: {e}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
