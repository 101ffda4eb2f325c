"""What ``kiln apply`` shows while an experiment trains: the trials done, the running trial's
epoch, the current metric, the best so far and an estimate of the time left, from the run folder's
``trial.json`` files (``Reporter`` writes the epoch and the number of epochs at each report).
Reads files only, like ``results``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kiln._util.clock import parse_utc
from kiln.api.experiment import ExperimentSpec
from kiln.controller.events import Shown
from kiln.controller.experiment.home import TERMINAL
from kiln.controller.experiment.results import trials

# below this share done an estimate of the time left is mostly noise (the first epoch of the
# first trial also pays for imports and data loading)
MIN_FRACTION = 0.05


def progress(spec: ExperimentSpec, run: Path, live: dict[str, Any],
             now: float | None = None) -> Shown | None:
    """What to show of the run folder ``run``; ``live``: ``results.summarize``'s output (trials
    done and in all, the best so far). None while no trial runs (before the first, after the
    last: selection, export and registration). The stage is ``metrics`` once a trial has
    reported, else ``training``."""
    recs = trials(run)
    if not any(r.get("state") == "RUNNING" for r in recs):
        return None
    total = max(int(live.get("trialsTotal") or 0), len(recs), 1)
    finished = [r for r in recs if r.get("state") in (*TERMINAL, "SKIPPED")]
    running = [r for r in recs if r.get("state") == "RUNNING"]
    metric = spec.objective.metric
    parts = [f"trial {len(finished)}/{total} done" + (f" ({len(running)} running)" if len(running) > 1 else "")
             if total > 1 else ""]
    share = float(len(finished))
    # parallel trials: the one furthest on speaks for them (one line stays readable)
    for r in sorted(running, key=lambda r: -(r.get("epoch") or 0))[:1]:
        epoch, epochs = r.get("epoch"), r.get("epochs")
        where = f"epoch {epoch}/{epochs}" if epoch and epochs else (f"step {epoch}" if epoch else "no metrics yet")
        value = (r.get("metrics") or {}).get(metric)
        parts.append(" ".join(x for x in (r.get("id") if total > 1 else "", where,
                                          f"{metric}={value:.4g}" if isinstance(value, (int, float)) else "") if x))
    for r in running:
        epoch, epochs = r.get("epoch"), r.get("epochs")
        if epoch and epochs:
            share += min(1.0, epoch / epochs)
    best = (live.get("best") or {}).get("value")
    if total > 1 and isinstance(best, (int, float)):
        parts.append(f"best {metric}={best:.4g}")
    fraction = min(1.0, share / total)
    starts = [t for r in recs if (t := parse_utc(r.get("started"))) is not None]
    left = None
    if starts and MIN_FRACTION <= fraction < 1.0:
        elapsed = (now if now is not None else time.time()) - min(starts)
        left = elapsed * (1 - fraction) / fraction
    text = ", ".join(p for p in parts if p)
    reported = any((r.get("metrics") or {}) for r in recs)  # stays so: one stage change per training
    return Shown(text, fraction, "metrics" if reported else "training", left) if text else None
