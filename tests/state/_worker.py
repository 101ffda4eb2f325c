"""Child processes for the state and lock tests (run as a script: they must be real processes,
so that SIGKILL and concurrent writers are real).

    _worker.py hold-tx URL KEY          write a new spec for KEY inside a transaction, print
                                        IN-TX, then sleep without committing (to be SIGKILLed)
    _worker.py write-many URL PREFIX N  N transactions, each a record + an attempt
    _worker.py hold-lock REPO COMMAND SECONDS      hold RepoLock, print HELD, sleep
    _worker.py hold-object-lock REPO KEY SECONDS  hold ObjectLock, print HELD, sleep
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kiln.state import Attempt, ObjectLock, ObjectRecord, RepoLock, open_store, utcnow


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "hold-tx":
        url, key = argv[1], argv[2]
        store = open_store(url, Path("."))
        with store.transaction():
            old = store.get(key)
            store.put(old.applied({"version": "new"}, "hash-new"))
            store.record_attempt(Attempt(key, old.generation + 1, "hash-new", utcnow(), result="failed"))
            store.start_step(key, "hash-new", "train")
            store.put_kv("test", "crash", "written")
            print("IN-TX", flush=True)
            time.sleep(120)
    elif cmd == "write-many":
        url, prefix, n = argv[1], argv[2], int(argv[3])
        store = open_store(url, Path("."))
        print("READY", flush=True)
        sys.stdin.readline()  # start together with the other writer
        for i in range(n):
            key = f"Dataset/{prefix}/d{i}"
            with store.transaction():
                store.put(ObjectRecord(key).applied({"i": i}, f"h{i}"))
                store.record_attempt(Attempt(key, 1, f"h{i}", utcnow(), utcnow(), actions=[f"write {i}"]))
        store.close()
        print("DONE", flush=True)
    elif cmd in ("hold-lock", "hold-object-lock"):
        repo, what, seconds = Path(argv[1]), argv[2], float(argv[3])
        lock = RepoLock(repo, what) if cmd == "hold-lock" else ObjectLock(repo, what, "kiln train")
        with lock:
            print("HELD", flush=True)
            time.sleep(seconds)
    else:
        raise SystemExit(f"unknown worker command {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
