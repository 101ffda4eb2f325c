"""Importing 10,000 tasks with predictions into Label Studio through kiln's client (target <= 30 s).

    python bench/labeling_import.py [--tasks 10000]

Starts a real server from the migrated template (tests/labeling/conftest.py), creates a detection
project and imports ``--tasks`` items, each with a two-box prediction. Baseline measured in the same
run: the same task JSON posted by the bare SDK call (``projects.import_tasks``) in one request, so the
ratio is what kiln adds (existing-key check, the split, building predictions, batching). A second
kiln import of the same items measures the re-import no-op (listing all keys).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kiln.labeling import server  # noqa: E402
from kiln.labeling.client import ImportItem, LabelingClient, Prediction, box_region  # noqa: E402
from tests.labeling.conftest import ensure_template  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10_000)
    n = ap.parse_args().tasks
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        docs = base / "docs" / "ds"
        docs.mkdir(parents=True)
        t0 = time.perf_counter()
        info = server.start(base / "repo" / ".kiln", data_dir=base / "data", document_root=base / "docs",
                            seed_from=ensure_template())
        print(f"server start from template: {time.perf_counter() - t0:.1f} s")
        try:
            c = LabelingClient(info.url, server.read_token(base / "repo" / ".kiln"), document_root=base / "docs")
            items = [ImportItem(key=f"{i:06d}.png", path=docs / f"{i:06d}.png", prediction=Prediction(
                [box_region("a", 3, 4, 10, 12, 64, 48), box_region("b", 20, 10, 8, 8, 64, 48)],
                score=0.5 + (i % 50) / 100, model_version="bench-v1")) for i in range(n)]
            annotators = ["a@example.com", "b@example.com", "c@example.com"]

            base_p = c.ensure_project("bench/baseline", title="bench baseline", task="detection", classes=["a", "b"])
            tasks = [{"data": {"image": c.file_url(it.path), "kiln_key": it.key},
                      "predictions": [{"result": it.prediction.result, "score": it.prediction.score,
                                       "model_version": "bench-v1"}]} for it in items]
            t = time.perf_counter()
            c.ls.projects.import_tasks(base_p.id, request=tasks, commit_to_project=True, return_task_ids=True)
            t_sdk = time.perf_counter() - t

            p = c.ensure_project("bench/kiln", title="bench kiln", task="detection", classes=["a", "b"])
            c.ensure_local_storage(p.id, docs)
            t = time.perf_counter()
            rep = c.import_items(p.id, items, annotators=annotators, threshold=0.6, task="detection")
            t_kiln = time.perf_counter() - t
            t = time.perf_counter()
            again = c.import_items(p.id, items, annotators=annotators, threshold=0.6, task="detection")
            t_again = time.perf_counter() - t
            assert rep.new == n and again.new == 0, (rep.new, again.new)
        finally:
            server.stop(base / "repo" / ".kiln")
    print(f"bare SDK import of {n} tasks with predictions: {t_sdk:.1f} s")
    print(f"kiln import_items of {n} tasks ({rep.with_predictions} with predictions, split 3 ways): "
          f"{t_kiln:.1f} s  ({t_kiln / t_sdk:.2f}x the bare SDK; target <= 30 s: "
          f"{'met' if t_kiln <= 30 else 'MISSED'})")
    print(f"re-import (no-op, lists {n} keys): {t_again:.1f} s")


if __name__ == "__main__":
    main()
