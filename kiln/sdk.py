"""The small API a user's own training script (``command: {run: "python train.py"}``) talks to.

Why a file, not a socket: the script runs as a plain subprocess (a pod on Argo), and an
append-only JSON-lines file is all kiln needs to follow its progress, prune it and pick its final
metrics; it also works when the script is run by hand (then nothing is written unless
``KILN_METRICS_FILE`` is set).

What kiln sets for the script::

    KILN_DATA_DIR        the dataset version's files (read-only)
    KILN_OUTPUT_DIR      save the trained model here (model.joblib | model.pt | model.onnx,
                         optionally kiln-serving.json); it is what gets registered
    KILN_METRICS_FILE    where ``report`` appends
    KILN_CHECKPOINT_DIR  keep checkpoints here to resume after a kill
    KILN_TRIAL           the trial id (t0003, p1, c-svm ...)
    KILN_PARAMS          the trial's hyperparameters as a JSON object (also passed as --name value)

Each ``report`` call appends one line::

    {"step": 3, "time": 1718000000.12, "validation_accuracy": 0.91, "train_loss": 0.31}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["report", "params", "data_dir", "output_dir", "checkpoint_dir"]


def report(step: int | None = None, **metrics: float) -> None:
    """Record metrics (numbers) for ``step`` (an epoch or iteration; None for a final report)."""
    path = os.environ.get("KILN_METRICS_FILE")
    bad = {k: v for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
    if bad:
        raise TypeError(f"kiln.report: metrics must be numbers, got {bad}")
    if not path:
        return
    line = json.dumps({"step": step, "time": round(time.time(), 3), **{k: float(v) for k, v in metrics.items()}})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # one write() on an O_APPEND file: a reader never sees half a line followed by another
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def params() -> dict[str, Any]:
    """The trial's hyperparameters (what kiln also passed as ``--name value`` arguments)."""
    return json.loads(os.environ.get("KILN_PARAMS") or "{}")


def _dir(var: str, default: str) -> Path:
    p = Path(os.environ.get(var) or default)
    return p


def data_dir() -> Path:
    return _dir("KILN_DATA_DIR", ".")


def output_dir() -> Path:
    p = _dir("KILN_OUTPUT_DIR", "output")
    p.mkdir(parents=True, exist_ok=True)
    return p


def checkpoint_dir() -> Path:
    p = _dir("KILN_CHECKPOINT_DIR", "checkpoints")
    p.mkdir(parents=True, exist_ok=True)
    return p
