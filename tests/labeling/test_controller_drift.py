"""`kiln controller` heals drift against the real Label Studio (session fixture): the daemon
applies a LabelingJob from a bare git remote; the project is deleted by hand in Label Studio;
within the next interval the daemon logs the drift with its reason and recreates the project."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tests.daemon_util import Daemon, Remote, state
from tests.labeling.test_handler import TOKEN_ENV, draw, spec

pytest.importorskip("dvc")

JOB = """
dataset: {name: shapes}
task: detection
labels: [red, green, blue]
annotators: [cy@example.com]
completion: {rule: all-annotated}
"""


INTERVAL = 4  # a pass (poll of the job) takes ~2 s here


def _ts(e: dict) -> float:
    return dt.datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()


def test_project_deleted_by_hand_is_recreated_by_the_daemon(label_studio) -> None:
    from kiln.controller.labeling_steps import kiln_id
    from kiln.labeling.client import LabelingClient

    fx = label_studio
    root = fx.repos / "daemon-drift"  # outside documentRoot: kiln exports the items there
    root.mkdir()
    remote = Remote(root)
    draw(remote.work / "raw" / "shapes", 6)
    head = remote.push({
        "kiln.yaml": f"labelStudio: {{url: '{fx.url}', tokenEnv: {TOKEN_ENV}, documentRoot: '{fx.document_root}'}}\n",
        "specs/shapes.yaml": spec("Dataset", "shapes", "type: image\ntask: detection\nformat: coco\n"
                                                       "source: {path: raw/shapes}"),
        "specs/boxes.yaml": spec("LabelingJob", "boxes", JOB)}, "labelling job")
    admin = LabelingClient(fx.url, fx.token)
    d = Daemon(remote.bare, root / "wd", env={TOKEN_ENV: fx.token}, interval=f"{INTERVAL}s",
               args=("--log-level", "debug"))
    clone = d.workdir / "repo"
    try:
        d.start()
        assert d.applied(head, timeout=240)["event"] == "applied", d.tail()
        records, _ = state(clone)
        pid = records["LabelingJob/default/boxes"].extra["project"]
        assert admin.find_project(kiln_id(clone, "default", "boxes")).id == pid
        assert len(admin.export_tasks(pid)) == 6

        # every pass re-runs the job's steps (labelling in progress), which would quietly recreate a
        # project deleted mid-pass; delete right after a pass ends, as a person between passes would
        n = len(d.events())
        d.wait_for(lambda e: e.get("event") == "reconciled", timeout=30, after=n)
        admin.ls.projects.delete(pid)  # by hand, behind kiln's back
        deleted_at = time.time()
        n = len(d.events())
        drift = d.wait_for(lambda e: e.get("event") == "drift" and e.get("object") == "LabelingJob/default/boxes",
                           timeout=30, after=n)
        assert f"Label Studio project {pid} is gone" in drift["message"] and drift["level"] == "warning"
        assert _ts(drift) - deleted_at < INTERVAL + 5.0  # within the next interval (+ the time to plan)
        healed = d.wait_for(lambda e: e.get("event") in ("applied", "apply-failed"), timeout=60,
                            after=d.events().index(drift))
        assert healed["event"] == "applied", d.tail()
        again = admin.find_project(kiln_id(clone, "default", "boxes"))
        assert again is not None and again.id != pid and len(admin.export_tasks(again.id)) == 6
        records, ctl = state(clone)
        rec = records["LabelingJob/default/boxes"]
        assert rec.extra["project"] == again.id and rec.sync == "Synced"
        assert rec.condition("Ready").status == "True" and ctl["sync"] == "Synced"
        assert ctl["lastApplied"]["commit"] == head  # healing is no new commit
        assert fx.token not in d.log_path.read_text()  # the token is an env reference, never logged
        print(f"drift seen {_ts(drift) - deleted_at:.1f}s after the delete")
    finally:
        d.kill()
