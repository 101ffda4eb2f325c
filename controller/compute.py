"""Compute as users see it: ``kiln queue`` (what runs and what waits for resources, and why)
and ``kiln usage`` (CPU-, GPU- and memory-hours per workspace and object, from the run records).

The queue is the local runner's machine-wide resource ledger (``kiln.runners._resources``), so
it lists the jobs of every kiln process on this machine, not only this one's.
"""

from __future__ import annotations

import time
from typing import Any

from kiln.config import KilnConfig
from kiln.errors import KilnError


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows])


def _resources(e: dict[str, Any]) -> str:
    out = f"{e['cpu']:g} CPU {e['memory'] / 2**30:.3g}Gi"
    if e.get("gpu"):
        out += f" {e['gpu']} GPU" + (f" ({','.join(map(str, e['gpus']))})" if e.get("gpus") else "")
    return out


def queue_rows(config: KilnConfig, workspace: str | None = None) -> list[dict[str, Any]]:
    """Running jobs, then waiting ones in order, each with workspace, resources, position and reason."""
    if config.runner != "local":
        raise KilnError(
            "kiln queue lists the local runner's jobs", hint="on a cluster, Argo queues them: `argo list -n NAMESPACE --running`"
        )
    from kiln.controller.runner import make_runner
    from kiln.runners.local import LocalRunner

    runner = make_runner(config)
    assert isinstance(runner, LocalRunner)
    snap = runner.resources.snapshot()
    now = time.time()
    rows = []
    for state in ("running", "waiting"):
        for e in snap[state]:
            if workspace is not None and e["workspace"] != workspace:
                continue
            rows.append(
                {
                    "state": state,
                    "workspace": e["workspace"],
                    "workflow": e["workflow"],
                    "node": e["node"],
                    "cpu": e["cpu"],
                    "memory": e["memory"],
                    "gpu": e["gpu"],
                    "gpus": e.get("gpus") or [],
                    "position": e.get("position"),
                    "reason": e.get("reason", ""),
                    "seconds": round(now - (e.get("started") or e["since"]), 1),
                    "pid": e["pid"],
                }
            )
    return rows


def queue_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No jobs running or waiting."
    header = ["STATE", "POS", "WORKSPACE", "JOB", "RESOURCES", "FOR", "REASON"]
    return _table(
        header,
        [
            [
                r["state"],
                str(r["position"] or "-"),
                r["workspace"],
                f"{r['workflow']}/{r['node']}",
                _resources(r),
                f"{r['seconds']:.0f}s",
                r["reason"] or "-",
            ]
            for r in rows
        ],
    )
