"""Read-side verbs: status table, get, describe. Nothing here writes."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from kiln._util.clock import duration
from kiln._util.suggest import did_you_mean
from kiln.api import KINDS
from kiln.config import KilnConfig
from kiln.controller.project import canonical_kind, find_key, load_valid, open_state, parse_ref
from kiln.errors import KilnError, SpecErrors

if TYPE_CHECKING:
    from kiln.loader import SpecSet

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
        # who answers for it (spec.owner; a Workspace has members instead) and since when kiln has it
        "owner": spec_field(rec, "owner") or "", "created": rec.created_at,
        "labels": dict(((rec.spec or {}).get("metadata") or {}).get("labels") or {}),
    }


def _progress(wf: dict[str, Any] | None) -> str:
    """'3/5 Running' from the workflow summary the controller mirrors into the record."""
    if not wf:
        return "-"
    tasks = wf.get("tasks") or {}
    done = sum(1 for p in tasks.values() if p in ("Succeeded", "Skipped", "Omitted"))
    return f"{done}/{len(tasks)} {wf.get('phase', '?')}" if tasks else str(wf.get("phase", "-"))


def _visible(config: KilnConfig, recs: list[Any], user: str | None, everything: list[Any] | None = None) -> list[Any]:
    """Only what ``user`` may see (``--as``; ``kiln.controller.policy.Viewer``); all without one."""
    if not user:
        return recs
    from kiln.api.access import Viewer

    return Viewer.of(config, user, recs if everything is None else everything).filter(recs)


def status_rows(config: KilnConfig, user: str | None = None) -> list[dict[str, Any]]:
    store = _store(config)
    try:
        recs = _visible(config, store.all_objects(), user)
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


def status_table(rows: list[dict[str, Any]], *, owners: bool = False) -> str:
    """The table of ``kiln status``; ``owners`` adds the OWNER and CREATED columns (``kiln get``)."""
    if not rows:
        return "No objects recorded yet. Run `kiln apply` first."
    header = ["KIND", "WORKSPACE", "NAME", *(["OWNER", "CREATED"] if owners else []),
              "SYNC", "HEALTH", "READY", "WORKFLOW", "LAST CHANGE", "MESSAGE"]
    table = [[r["kind"], "-" if r["kind"] == "Workspace" else r["workspace"], r["name"],
              *([r["owner"] or "-", _ago(r["created"])] if owners else []), r["sync"], r["health"], r["ready"],
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


def _parse_ts(ts: str | None) -> dt.datetime | None:
    if not ts:
        return None
    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def span(started: str | None, finished: str | None) -> dict[str, Any]:
    """``{"startedAt", "finishedAt", "seconds"}``: seconds is None until it has finished (or when
    a time is unreadable), never a guess."""
    t0, t1 = _parse_ts(started), _parse_ts(finished)
    secs = round((t1 - t0).total_seconds(), 3) if t0 is not None and t1 is not None else None
    return {"startedAt": started or None, "finishedAt": finished or None, "seconds": secs}


def timings(rec: Any, attempts: list[Any], steps: list[Any]) -> dict[str, Any]:
    """When each part of an object's work started and ended, from what is recorded anyway: the
    apply attempts (state store), the handler steps of the current spec (state store), the
    workflow run and its tasks (the runner's node times, mirrored into the record) and an
    experiment's trials (``trial.json``, summarised into the record)."""
    out: dict[str, Any] = {
        "applies": [{"result": a.result, "generation": a.generation, **span(a.started_at, a.finished_at)}
                    for a in attempts],
        "steps": [{"step": s.step, "state": s.state, **span(s.started_at, s.stopped_at)} for s in steps],
    }
    wf = rec.extra.get("workflow")
    if isinstance(wf, dict):
        times = wf.get("taskTimes") or {}
        out["run"] = {"workflow": wf.get("name"), "phase": wf.get("phase"),
                      **span(wf.get("startedAt"), wf.get("finishedAt")),
                      "tasks": [{"task": t, "phase": ph, **span(*(times.get(t) or [None, None]))}
                                for t, ph in (wf.get("tasks") or {}).items()]}
    trials = rec.extra.get("trials")
    if isinstance(trials, list):
        out["trials"] = [{"id": t.get("id"), "state": t.get("state"), **span(t.get("started"), t.get("finished"))}
                         for t in trials if isinstance(t, dict)]
    return out


_dur = duration  # one way to write a duration: apply's progress lines use it too


def _span_text(sp: dict[str, Any]) -> str:
    end = sp["finishedAt"] or ("running" if sp["startedAt"] else "-")
    return f"{sp['startedAt'] or '-'} -> {end}  ({_dur(sp['seconds'])})"


def spec_field(rec: Any, name: str) -> Any:
    """A field of the applied spec's ``spec:`` (None when the record has no spec yet)."""
    return ((rec.spec or {}).get("spec") or {}).get(name)


def _health_rank(r: dict[str, Any]) -> int:
    return HEALTH_ORDER.index(r["health"]) if r["health"] in HEALTH_ORDER else len(HEALTH_ORDER)


# `kiln get --sort-by FIELD`: field -> sort key of a ``row``. Times are ISO 8601 text, which
# sorts as time; ``status`` puts the healthiest first, worst last (HEALTH_ORDER), then not ready.
SORT_FIELDS: dict[str, Any] = {
    "name": lambda r: (r["name"], r["workspace"]),
    "workspace": lambda r: (r["workspace"], r["name"]),
    "owner": lambda r: (r["owner"] == "", r["owner"], r["name"]),  # objects without an owner last
    "created": lambda r: (r["created"], r["name"]),
    "lastChange": lambda r: (r["lastChange"], r["name"]),
    "status": lambda r: (_health_rank(r), r["ready"] != "True", r["name"]),
    "health": lambda r: (_health_rank(r), r["name"]),
    "sync": lambda r: (r["sync"], r["name"]),
    "ready": lambda r: (r["ready"], r["name"]),
    "generation": lambda r: (r["generation"], r["name"]),
}
_SORT_ALIASES = {"last-change": "lastChange", "lastchange": "lastChange", "updated": "lastChange"}


def sort_key(field: str) -> Any:
    """The sort key of ``--sort-by field``; an unknown field is an error that suggests one."""
    key = SORT_FIELDS.get(field) or SORT_FIELDS.get(_SORT_ALIASES.get(field.lower(), field.lower()))
    if key is None:
        hint = did_you_mean(field, [*SORT_FIELDS, *_SORT_ALIASES])
        raise KilnError(f"--sort-by {field!r} is not a field kiln get sorts by" + (f"; {hint}" if hint else ""),
                        hint=f"one of: {', '.join(SORT_FIELDS)}")
    return key


def parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """``-l`` as kubectl writes it: ``key=value``, ``key!=value`` or ``key`` (has the label),
    several joined by commas (all must hold) -> ``[(key, op, value)]``."""
    out: list[tuple[str, str, str | None]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        for op in ("!=", "==", "="):
            if op in part:
                key, _, value = part.partition(op)
                out.append((key.strip(), "!=" if op == "!=" else "=", value.strip()))
                break
        else:
            out.append((part, "exists", None))
        if not out[-1][0] or any(c in out[-1][0] for c in " =!"):
            raise KilnError(f"-l {text!r}: {part!r} is not a label selector",
                            hint="write key=value, key!=value or key (several: a=b,c=d)")
    return out


def _selected(labels: dict[str, str], selector: list[tuple[str, str, str | None]]) -> bool:
    for key, op, value in selector:
        if op == "exists" and key not in labels:
            return False
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
    return True


def get_records(config: KilnConfig, kind: str, name: str | None, workspace: str | None = None,
                selectors: tuple[str, ...] = (), sort_by: str | None = None, user: str | None = None) -> list[Any]:
    """Records of KIND (in ``workspace``), or the one that ``name`` names (``kiln.api.refs``);
    only those whose ``metadata.labels`` match every ``-l`` selector, sorted by ``sort_by``
    (``SORT_FIELDS``; default: by key)."""
    k = canonical_kind(kind)
    order = sort_key(sort_by) if sort_by else None  # a bad field fails before the store is read
    selector = [c for text in selectors for c in parse_selector(text)]
    store = _store(config)
    try:
        recs = store.all_objects(kind=k)
        if user:  # an object the user may not see is as absent as one never applied
            recs = _visible(config, recs, user, store.all_objects(kind="Workspace"))
    finally:
        store.close()
    if name is None:
        recs = [r for r in recs if workspace is None or r.workspace == workspace]
    else:
        key = find_key(name, [r.key for r in recs], kind=k, workspace=workspace, absent="{} has not been applied")
        recs = [r for r in recs if r.key == key]
    if selector:
        recs = [r for r in recs if _selected(row(r)["labels"], selector)]
    if order is not None:
        recs.sort(key=lambda r: order(row(r)))
    return recs


def record_json(config: KilnConfig, recs: list[Any]) -> list[dict[str, Any]]:
    """``kiln get -o json``: each record as stored, with its owner, labels and the start, end
    and duration of its applies, steps, workflow tasks and trials (``times``)."""
    store = _store(config)
    try:
        out = []
        for r in recs:
            steps = store.steps(r.key, r.extra.get("runKey") or r.spec_hash or None)
            row_ = row(r)
            out.append({**r.to_dict(), "owner": row_["owner"] or None, "labels": row_["labels"],
                        "times": timings(r, store.attempts(r.key), steps)})
        return out
    finally:
        store.close()


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
    out = [f"Name:         {rec.name}", f"Kind:         {rec.kind}", f"Workspace:    {rec.workspace}"]
    desc = spec_field(rec, "description")
    if desc:  # free text may span lines: keep them aligned under the label
        out.append("Description:  " + str(desc).strip().replace("\n", "\n              "))
    out += [f"Source:       {rec.source}", f"Spec hash:    {rec.spec_hash or '-'}",
           f"Generation:   {rec.generation} (observed {rec.observed_generation})",
           f"Sync:         {rec.sync}", f"Health:       {rec.health}",
           f"Last change:  {rec.last_change or '-'}", "Conditions:"]
    for c in rec.conditions:
        out.append(f"  {c.type:<12} {c.status:<7} {c.reason:<20} {c.message}  ({c.last_transition})")
    out.append("Inventory:")
    out += [f"  {i.get('kind')}: {i.get('id')}" for i in rec.inventory] or ["  (nothing)"]
    times = timings(rec, attempts, steps)
    if steps:
        out.append("Steps (current spec):")
        out += [f"  {s.step:<20} {s.state:<10} retries={s.retries}  {_span_text(t)}  {s.message}".rstrip()
                for s, t in zip(steps, times["steps"])]
    run = times.get("run")
    if run:
        out.append(f"Run:          {run['workflow']} {run['phase']}  {_span_text(run)}")
        width = max((len(t["task"]) for t in run["tasks"]), default=0)
        out += [f"  {t['task']:<{width}}  {t['phase'] or '?':<10} {_span_text(t)}" for t in run["tasks"]]
    if times.get("trials"):
        out.append("Trials:")
        out += [f"  {t['id']:<10} {t['state'] or '?':<9} {_span_text(t)}" for t in times["trials"]]
    if rec.extra:
        out.append("Status:")
        # the workflow's tasks and the trials are shown above, with their times
        out += [f"  {k}: {json.dumps(v, default=str)}" for k, v in rec.extra.items()
                if not (k == "workflow" and run) and not (k == "trials" and times.get("trials"))]
        out += _weights_lines((rec.extra.get("best") or {}) if isinstance(rec.extra.get("best"), dict) else {})
        out += _promotion_lines(rec.extra.get("registered"))
    if rec.kind == "Deployment":
        out += _rollout_lines(config, rec)
    out.append("History (newest first):")
    for a, t in zip(attempts, times["applies"]):
        line = f"  {a.started_at}  gen {a.generation}  {a.result:<11} {len(a.actions)} action(s)  took {_dur(t['seconds'])}"
        if a.action:  # recorded since state schema 2 (`kiln events` has them all)
            line += f"  {a.action}" + (f" from {a.commit[:12]}" + ("-dirty" if a.commit.endswith("-dirty") else "")
                                       if a.commit else "") + (f" by {a.author}" if a.author else "")
        out.append(line + (f"  {a.message}" if a.message else ""))
    if not attempts:
        out.append("  (none)")
    return "\n".join(out)


def _rollout_lines(config: KilnConfig, rec: Any) -> list[str]:
    """A routed deployment's rollout, read live (a rolled-back rollout fails its apply, so the
    record's status is the last success's): versions behind the router, the rollout's phase,
    reason and steps, requests per version, a shadow's agreement (kiln.controller.deployment_rollout)."""
    from kiln._util.fs import read_json
    from kiln.controller.deployment_rollout import describe_rollout
    from kiln.controller.deployment_steps import deployment_home

    home = deployment_home(config, rec.workspace, rec.name)
    live = describe_rollout(home, read_json(home / "server.json"))
    if not live:
        return []
    out = ["Rollout (live):", f"  versions: {json.dumps(live['backends'])}"]
    r = live.get("rollout")
    if r:
        out.append(f"  {r['strategy']} v{r['from']} -> v{r['to']}: {r['phase']}" + (f": {r['reason']}" if r.get("reason") else ""))
        out += [f"    step {st['weight']}%: {st['requests']} request(s), {st['errors']} error(s), p99 {st['p99Ms']} ms"
                for st in r.get("steps") or []]
    if live.get("requests"):
        out.append(f"  requests: {json.dumps(live['requests'])}")
    if live.get("shadow"):
        sh = live["shadow"]
        out.append(f"  shadow agreement: {sh['agreed']}/{sh['compared']} = {sh['agreementRate']:.1%} (outputs in {sh['log']})")
    return out


def _promotion_lines(registered: Any) -> list[str]:
    """Where each ``register.aliases`` alias went for the registered version, and why (#21)."""
    decisions = (registered or {}).get("promotion") if isinstance(registered, dict) else None
    if not decisions:
        return []
    out = [f"Aliases (for {registered.get('model')} v{registered.get('version')}):"]
    for d in decisions:
        where = f"-> v{d['to']}" if d.get("moved") else f"kept at v{d['to']}"
        out.append(f"  {d['alias']:<12} {where:<12} ({d.get('rule', '')}) {d.get('reason', '')}")
    return out


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


def find_spec(config: KilnConfig, ref: str, path: str | None = None, workspace: str | None = None,
              specs: SpecSet | None = None):
    specs = specs if specs is not None else load_valid(config, path)
    key = find_key(ref, [s.key for s in specs.specs], workspace=workspace, absent="no spec defines {}")
    return specs.by_key()[key]
