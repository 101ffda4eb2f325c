"""Read-side verbs: status table, get, describe. Nothing here writes."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from kiln.api import KINDS
from kiln.config import KilnConfig
from kiln.controller.project import canonical_kind, find_key, load_valid, open_state, parse_ref
from kiln.errors import KilnError, SpecErrors

__all__ = ["canonical_kind", "parse_ref"]  # (they moved to project; kept importable from here)

HEALTH_ORDER = ["Healthy", "Suspended", "Progressing", "Missing", "Degraded", "Unknown"]


def _store(config: KilnConfig):
    return open_state(config, read_only=True)  # looking never creates a state database


def _ago(ts: str) -> str:
    if not ts:
        return "-"
    try:
        then = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    secs = int((dt.datetime.now(dt.UTC) - then).total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit} ago"
    return f"{max(secs, 0)}s ago"


def row(rec: Any) -> dict[str, Any]:
    ready = rec.condition("Ready")
    return {
        "kind": rec.kind, "workspace": rec.workspace, "name": rec.name,
        "sync": rec.sync, "health": rec.health,
        "ready": ready.status if ready else "Unknown",
        "reason": ready.reason if ready else "",
        "message": ready.message if ready and ready.status != "True" else "",
        "info": rec.extra.get("info", ""),  # kind-specific one-liner (a dataset's current version)
        "generation": rec.generation, "lastChange": rec.last_change, "source": rec.source,
        "progress": _progress(rec.extra.get("workflow")),
    }


def _progress(wf: dict[str, Any] | None) -> str:
    """'3/5 Running' from the workflow summary the controller mirrors into the record."""
    if not wf:
        return "-"
    tasks = wf.get("tasks") or {}
    done = sum(1 for p in tasks.values() if p in ("Succeeded", "Skipped", "Omitted"))
    return f"{done}/{len(tasks)} {wf.get('phase', '?')}" if tasks else str(wf.get("phase", "-"))


def status_rows(config: KilnConfig) -> list[dict[str, Any]]:
    store = _store(config)
    try:
        recs = store.all_objects()
    finally:
        store.close()
    rank = {k: i for i, k in enumerate(KINDS)}
    rows = [row(r) for r in sorted(recs, key=lambda r: (rank.get(r.kind, 99), r.workspace, r.name))]
    return _with_pending(config, rows) if rows else rows


def _with_pending(config: KilnConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sync as ``kiln plan`` sees it: a record says what the last apply did, but after an apply
    that was refused (lock held, invalid specs) or killed, or a spec edited since, the object is
    OutOfSync whenever plan has a change pending for it. When plan cannot run (specs that do not
    validate) the recorded sync stays, with the reason in ``specs``."""
    from kiln.controller.project import plan  # lazy: loading specs imports the handlers

    try:
        pending = {c.key: c for c in plan(config).changes if c.pending}
    except KilnError as exc:  # e.g. a spec that does not validate: status still shows the records
        lines = str(exc.message).strip().splitlines() or [type(exc).__name__]
        note = f"not compared with the specs: {lines[-1] if isinstance(exc, SpecErrors) else lines[0]}"
        return [{**r, "specs": note} for r in rows]
    out = []
    for r in rows:
        c = pending.get(f"{r['kind']}/{r['workspace']}/{r['name']}")
        if c is not None:
            why = c.note or ", ".join(f.path for f in c.fields[:3]) or c.action
            r = {**r, "sync": "OutOfSync", "pending": f"{c.action} pending ({why})"}
        out.append(r)
    return out


def status_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No objects recorded yet. Run `kiln apply` first."
    header = ["KIND", "WORKSPACE", "NAME", "SYNC", "HEALTH", "READY", "WORKFLOW", "LAST CHANGE", "MESSAGE"]
    table = [[r["kind"], "-" if r["kind"] == "Workspace" else r["workspace"], r["name"], r["sync"], r["health"], r["ready"],
              r["progress"], _ago(r["lastChange"]), (r["message"] or r.get("pending") or r.get("info") or "")[:70]]
             for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *table]]
    worst = max((r["health"] for r in rows), key=lambda h: HEALTH_ORDER.index(h) if h in HEALTH_ORDER else 0)
    lines.append(f"{len(rows)} objects; overall health {worst}")
    if rows[0].get("specs"):
        lines.append(f"Sync as last recorded: {rows[0]['specs']}")
    return "\n".join(lines)


def controller_lines(config: KilnConfig) -> list[str]:
    """One line per ``kiln controller`` recorded in this repository's state (see
    ``kiln.controller.daemon``): its sync, applied and head commits, and its last error."""
    store = _store(config)
    try:
        items = store.kv_items("controller")
    finally:
        store.close()
    return controller_rows(items)


def controller_rows(records: dict[str, Any]) -> list[str]:
    """The ``kiln status`` lines for the controllers recorded in a state store (kv items)."""
    out = []
    for branch, r in sorted(records.items()):
        applied = (r.get("lastApplied") or {}).get("commit", "")[:12] or "-"
        seen = (r.get("lastSeen") or {}).get("commit", "")[:12] or "-"
        line = f"Controller {r.get('repo', '?')}@{branch}: {r.get('sync', '?')}, applied {applied}, head {seen}"
        err = r.get("lastError")
        if err:
            first = (err.get("message") or "").strip().splitlines()
            line += f"; {err.get('kind')} commit {str(err.get('commit', ''))[:12]}: {first[0] if first else ''}"[:200]
        out.append(line)
    return out


def get_records(config: KilnConfig, kind: str, name: str | None, workspace: str | None = None) -> list[Any]:
    """Records of KIND (in ``workspace``), or the one that ``name`` names (``kiln.api.refs``)."""
    k = canonical_kind(kind)
    store = _store(config)
    try:
        recs = store.all_objects(kind=k)
    finally:
        store.close()
    if name is None:
        return [r for r in recs if workspace is None or r.workspace == workspace]
    key = find_key(name, [r.key for r in recs], kind=k, workspace=workspace, absent="{} has not been applied")
    return [r for r in recs if r.key == key]


def describe(config: KilnConfig, ref: str, workspace: str | None = None) -> str:
    store = _store(config)
    try:
        key = find_key(ref, [r.key for r in store.all_objects()], workspace=workspace, absent="{} has not been applied")
        rec = store.get(key)
        assert rec is not None
        attempts = store.attempts(key)
        steps = store.steps(key, rec.extra.get("runKey") or rec.spec_hash or None)
    finally:
        store.close()
    out = [f"Name:         {rec.name}", f"Kind:         {rec.kind}", f"Workspace:    {rec.workspace}",
           f"Source:       {rec.source}", f"Spec hash:    {rec.spec_hash or '-'}",
           f"Generation:   {rec.generation} (observed {rec.observed_generation})",
           f"Sync:         {rec.sync}", f"Health:       {rec.health}",
           f"Last change:  {rec.last_change or '-'}", "Conditions:"]
    for c in rec.conditions:
        out.append(f"  {c.type:<12} {c.status:<7} {c.reason:<20} {c.message}  ({c.last_transition})")
    out.append("Inventory:")
    out += [f"  {i.get('kind')}: {i.get('id')}" for i in rec.inventory] or ["  (nothing)"]
    if steps:
        out.append("Steps (current spec):")
        out += [f"  {s.step:<20} {s.state:<10} retries={s.retries}  {s.message}" for s in steps]
    if rec.extra:
        out.append("Status:")
        out += [f"  {k}: {json.dumps(v, default=str)}" for k, v in rec.extra.items()]
        out += _weights_lines((rec.extra.get("best") or {}) if isinstance(rec.extra.get("best"), dict) else {})
    out.append("History (newest first):")
    for a in attempts:
        line = f"  {a.started_at}  gen {a.generation}  {a.result:<11} {len(a.actions)} action(s)"
        out.append(line + (f"  {a.message}" if a.message else ""))
    if not attempts:
        out.append("  (none)")
    return "\n".join(out)


def _weights_lines(best: dict[str, Any]) -> list[str]:
    """An Experiment's chosen weights in words, and its per-category metrics as a table."""
    out = []
    ck = best.get("checkpoint")
    if ck:
        if ck.get("kind") == "best":
            said = f"best by {ck.get('metric')} ({ck.get('value'):.4g}) at step {ck.get('step')}"
        else:
            said = f"last (step {ck.get('step')})" + (f"; {ck['note']}" if ck.get("note") else "")
        out.append(f"Registered weights: {said}; the reported metrics are theirs (register.checkpoint: best|last)")
    cats = best.get("perCategory")
    if cats:
        out.append(f"Per category ({cats.get('split')} split):")
        out.append(f"  {'label':<24} {'iou':>8} {'accuracy':>9}")
        num = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731 - None: absent from prediction and label
        for lab, iou, acc in zip(cats.get("labels", []), cats.get("iou", []), cats.get("accuracy", [])):
            out.append(f"  {lab:<24} {num(iou):>8} {num(acc):>9}")
    return out


def find_spec(config: KilnConfig, ref: str, path: str | None = None, workspace: str | None = None):
    specs = load_valid(config, path)
    key = find_key(ref, [s.key for s in specs.specs], workspace=workspace, absent="no spec defines {}")
    return specs.by_key()[key]
