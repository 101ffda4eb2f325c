"""The TensorBoard event files kiln writes read back with TensorFlow's own event reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.algorithms.base import TensorBoardCallback


def test_event_file_reads_back_with_tensorflow(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    cb = TensorBoardCallback(tmp_path / "tb")
    cb.report(1, {"train_loss": 0.5, "validation_accuracy": 0.75})
    cb.report(2, {"train_loss": 0.25, "validation_accuracy": 0.875})
    cb.close()
    (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    seen: dict[str, list[tuple[int, float]]] = {}
    versions = []
    for ev in tf.compat.v1.train.summary_iterator(str(path)):  # checks every record's CRCs
        if ev.file_version:
            versions.append(ev.file_version)
        for v in ev.summary.value:
            seen.setdefault(v.tag, []).append((ev.step, v.simple_value))
    assert versions == ["brain.Event:2"]
    # "train_loss" -> "train/loss": TensorBoard groups the scalars by split
    assert seen == {"train/loss": [(1, 0.5), (2, 0.25)], "validation/accuracy": [(1, 0.75), (2, 0.875)]}
