"""One trial's folder and record, the reporter every training run reports through (metrics
file, task log, TensorBoard, Optuna pruning, checkpoint retention), the checkpoint lookup, and
what a SIGTERM during training means (the trial was stopped)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln._util.fs import read_json
from kiln.algorithms.base import Pruned, TensorBoardCallback
from kiln.controller.experiment.home import log, write_json


class Trial:
    """One training run's folder and record (``trial.json``)."""

    def __init__(self, run: Path, tid: str, number: int, *, candidate: str | None = None) -> None:
        self.dir = run / "trials" / tid
        self.id, self.number, self.candidate = tid, number, candidate
        self.record: dict[str, Any] = read_json(self.dir / "trial.json") or {}

    @property
    def done(self) -> bool:
        return self.record.get("state") == "COMPLETE" and (self.dir / "model").is_dir()

    def save(self, **fields: Any) -> None:
        self.record.update(fields)
        self.record.setdefault("id", self.id)
        self.record.setdefault("number", self.number)
        self.record.setdefault("candidate", self.candidate)
        write_json(self.dir / "trial.json", self.record)


class TrialStopped(BaseException):
    """SIGTERM reached the trial's process while it trained (``kiln stop --job``, a stop of the
    whole run, its deadline, a deleted pod). A BaseException: the training code's own ``except
    Exception`` must not swallow it."""


@contextlib.contextmanager
def stopped_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``TrialStopped`` with why: the trial is recorded
    STOPPED with that reason, as a trial the AutoML time budget stops is, instead of dying with
    a record that still says RUNNING. The local runner writes why into the file named by
    ``KILN_STOP_REASON_FILE`` before it signals (a signal carries no text)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; elsewhere SIGTERM ends the process as before
        return

    def on_term(signum: int, frame: Any) -> None:
        why = ""
        with contextlib.suppress(OSError):
            why = Path(os.environ.get("KILN_STOP_REASON_FILE") or "/nonexistent").read_text().strip()
        raise TrialStopped(why or "stopped: its process got SIGTERM (the run was stopped, its deadline "
                                  "passed, or its pod was deleted)")

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Reporter:
    """The ``ReportCallback`` of every trial: metrics to ``metrics.jsonl``, a progress line to the
    task log, the objective to Optuna (which may prune), and checkpoint retention."""

    def __init__(self, trial: Trial, objective: Any, *, total: int | None = None, optuna_trial: Any = None,
                 keep_checkpoints: int = 2, tensorboard: bool = False) -> None:
        self.trial, self.objective, self.total, self.ot = trial, objective, total, optuna_trial
        self.keep = keep_checkpoints
        self.last: dict[str, float] = {}
        self.steps = 0
        self.tb = TensorBoardCallback(trial.dir / "tensorboard") if tensorboard else None

    def report(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.last.update(clean)
        self.steps += 1
        line = json.dumps({"step": step, "time": round(time.time(), 3), **clean})
        with open(self.trial.dir / "metrics.jsonl", "a") as f:
            f.write(line + "\n")
        if self.tb is not None:
            self.tb.report(step or 0, clean)
        where = f"epoch {step}/{self.total}" if self.total and step else (f"step {step}" if step else "fit")
        obj = self.objective.metric
        log(f"[{self.trial.id}] {where}: {_fmt_metrics(clean, [obj, *self.objective.additionalMetrics])}")
        # the epoch and how many there are: apply's progress line estimates the time left from them
        self.trial.save(metrics=dict(self.last), steps=self.steps, objective=self.last.get(obj),
                        epoch=step or None, epochs=self.total)
        self._prune_checkpoints()
        if self.ot is not None and obj in clean:
            self.ot.report(clean[obj], step or 0)
            if self.ot.should_prune():
                log(f"[{self.trial.id}] pruned at {where}: {obj}={clean[obj]:.4g} is behind the other trials")
                raise Pruned(step or 0)

    def _prune_checkpoints(self) -> None:
        for p in list_checkpoints(self.trial.dir / "checkpoints")[:-self.keep]:
            p.unlink(missing_ok=True)
            if p.suffix == ".keras":
                p.with_suffix(".json").unlink(missing_ok=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt_metrics(metrics: dict[str, Any], first: list[str]) -> str:
    keys = [k for k in first if k in metrics] + sorted(k for k in metrics if k not in first and not k.endswith("_seconds")
                                                       and k != "learning_rate")
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys[:6] if isinstance(metrics[k], (int, float)))


# what the built-in training loops write into checkpoints/ (torch epochs, Keras epochs, steps)
CHECKPOINT_GLOBS = ("epoch-*.pt", "epoch-*.keras", "step-*.pt")


def list_checkpoints(folder: Path) -> list[Path]:
    """The resumable checkpoints in ``folder``, oldest first (names sort by their number)."""
    return sorted(p for g in CHECKPOINT_GLOBS for p in folder.glob(g)) if folder.is_dir() else []


def tensorboardx_without_torch() -> None:
    """Import tensorboardX without its optional torch import (4-5 s on this class of machine,
    more than a whole scikit-learn fit): scalars do not need torch. No-op if torch is loaded."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        pass
    finally:
        del sys.modules["torch"]
