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


def usage_rows(config: KilnConfig, workspace: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
    """CPU-, GPU- and memory-hours per workspace and object, from the local runner's run records:
    each pod node's ``resourcesDuration`` (Argo's field: what it requested, for as long as its
    process ran, not while it queued). ``since``:
    the UTC timestamp text of ``events.parse_since``; pods that started before it are left out."""
    from kiln.api.common import cpu_cores, memory_bytes
    from kiln.controller.events import _seconds
    from kiln.runners._resources import MEMORY_UNIT

    if config.runner != "local":
        raise KilnError("kiln usage reads the local runner's run records",
                        hint="on a cluster, use the cluster's metrics (e.g. Prometheus' container_cpu_usage_seconds_total)")
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    runs = config.kiln_dir() / "runs"
    for path in sorted(runs.glob("*/workflow.json")) if runs.is_dir() else []:
        from kiln.runners.local import LocalRunner

        wf = LocalRunner(runs).get(path.parent.name)  # with its journal replayed
        if wf is None:
            continue
        labels = (wf.get("metadata") or {}).get("labels") or {}
        ws = labels.get("kiln.dev/workspace", "default")
        if workspace is not None and ws != workspace:
            continue
        requests = {t["name"]: ((t.get("container") or t.get("script") or {}).get("resources") or {}).get("requests") or {}
                    for t in (wf.get("spec") or {}).get("templates") or []}
        key = (ws, labels.get("kiln.dev/kind", "Workflow"), labels.get("kiln.dev/name", wf["metadata"]["name"]))
        for n in ((wf.get("status") or {}).get("nodes") or {}).values():
            if n.get("type") != "Pod" or not n.get("startedAt") or not n.get("finishedAt"):
                continue
            if since is not None and n["startedAt"] < since[:19]:
                continue
            secs = _seconds(n["startedAt"], n["finishedAt"]) or 0.0
            rd = n.get("resourcesDuration")
            if rd is None:  # a run from before the resource queue: its requests times the node's span
                req = requests.get(n.get("templateName") or "", {})
                rd = {"cpu": cpu_cores(req.get("cpu", 0)) * secs,
                      "memory": memory_bytes(str(req.get("memory", 0))) / MEMORY_UNIT * secs,
                      "nvidia.com/gpu": int(req.get("nvidia.com/gpu", 0)) * secs}
            row = rows.setdefault(key, {"workspace": key[0], "kind": key[1], "name": key[2], "pods": 0, "seconds": 0.0,
                                        "cpuHours": 0.0, "memoryGiBHours": 0.0, "gpuHours": 0.0})
            row["pods"] += 1
            row["seconds"] += secs
            row["cpuHours"] += rd.get("cpu", 0) / 3600
            row["memoryGiBHours"] += rd.get("memory", 0) * MEMORY_UNIT / 2**30 / 3600
            row["gpuHours"] += rd.get("nvidia.com/gpu", 0) / 3600
    return [rows[k] for k in sorted(rows)]


def usage_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No runs recorded (in this window)."
    header = ["WORKSPACE", "OBJECT", "PODS", "RUN", "CPU-H", "MEM-GIB-H", "GPU-H"]
    lines: list[list[str]] = []
    totals: dict[str, list[float]] = {}
    for r in rows:
        lines.append([r["workspace"], f"{r['kind']}/{r['name']}", str(r["pods"]), f"{r['seconds']:.0f}s",
                      f"{r['cpuHours']:.4f}", f"{r['memoryGiBHours']:.4f}", f"{r['gpuHours']:.4f}"])
        t = totals.setdefault(r["workspace"], [0.0] * 5)
        for i, k in enumerate(("pods", "seconds", "cpuHours", "memoryGiBHours", "gpuHours")):
            t[i] += r[k]
    for ws, t in sorted(totals.items()):
        lines.append([ws, "(total)", f"{t[0]:.0f}", f"{t[1]:.0f}s", f"{t[2]:.4f}", f"{t[3]:.4f}", f"{t[4]:.4f}"])
    return _table(header, lines)
