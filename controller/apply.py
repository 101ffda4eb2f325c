"""Apply: make the recorded state equal the specs, one object at a time, resumably.

For each planned change (dependencies first) the kind's handler yields steps. Each step's
progress is persisted before and after it runs (``StepProgress`` keyed by object, spec hash and
step), so a step that succeeded for this spec is never run again, also after ``kill -9``. The
object's record (spec, hash, generation, conditions, inventory) and an ``Attempt`` are written
together in one transaction when the object finishes, in a ``finally``: a crash leaves the record
of the last completed apply, never half of a new one.

Locks (``kiln.state.lock``): the repository lock is held only while planning (``project.apply``);
each object is applied holding its own ``ObjectLock``, so applies of other objects, and the
controller, go on while one object trains for hours. Under its lock the object's record is read
again: what another process recorded since this plan was made is planned anew (applied twice in
a row, the second apply finds it unchanged). An object whose lock another process holds, or that
depends on an object another process is applying, is left alone and reported ``busy`` (exit 3),
after waiting ``--wait-lock`` seconds for it. Records are written in one store transaction each
(SQLite ``BEGIN IMMEDIATE``, PostgreSQL), which serialises concurrent applies' writes without
the repository lock: a finished training never waits for, or fails on, another process's plan.

Deletions (``--prune``) remove what the inventory lists; an item whose delete failed stays in the
inventory so that it is not leaked.

What apply does is reported as typed events (``kiln.controller.events``) to a listener: the CLI
prints them, ``kiln controller`` logs them.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.controller import events as ev
from kiln.controller.handlers import HANDLERS, Context, Handler, TemporaryError
from kiln.controller.plan import Change, Plan, change_for, input_versions, outside_spec
from kiln.controller.render import workspaces_of
from kiln.errors import KilnError, LockHeld
from kiln.state import Attempt, ObjectLock, ObjectRecord, current_holder, utcnow
from kiln.state.lock import object_lock_path
from kiln.validate import dependencies

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.state import StateStore


@dataclass
class ObjectResult:
    ref: str
    outcome: str  # created | updated | deleted | unchanged | failed | not-applied | retrying | busy
    actions: list[str] = field(default_factory=list)
    skipped_steps: list[str] = field(default_factory=list)
    message: str = ""


@dataclass
class ApplyResult:
    results: list[ObjectResult] = field(default_factory=list)

    @property
    def actions(self) -> int:
        return sum(len(r.actions) for r in self.results)

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.results)

    @property
    def ok(self) -> bool:
        return not any(r.outcome in ("failed", "not-applied", "retrying", "busy") for r in self.results)

    @property
    def exit_code(self) -> int:
        """0: everything reconciled; 1: something failed or must retry; 3: nothing failed, but
        another kiln process is applying some objects (busy); 2: nothing failed, but some objects
        cannot be applied by this kiln version yet (their source is not there)."""
        if any(r.outcome in ("failed", "retrying") for r in self.results):
            return 1
        if self.count("busy"):
            return LockHeld.exit_code
        return 2 if self.count("not-applied") else 0

    def summary(self) -> str:
        parts = [f"{self.count(o)} {o}" for o in ("created", "updated", "deleted", "unchanged")]
        text = f"Apply: {', '.join(parts)}; {self.actions} action(s)."
        for o, label in (("failed", "failed"), ("retrying", "will retry"),
                         ("busy", "busy (another kiln process is applying it)"),
                         ("not-applied", "not applied (not available yet)")):
            if self.count(o):
                text += f" {self.count(o)} {label}."
        return text


@dataclass(frozen=True)
class Origin:
    """Where the applied specs came from, recorded with each attempt (``kiln events``): the git
    commit (``<sha>-dirty`` when the specs differed from it) and that commit's author. Empty
    outside git. Never a secret: a sha and a name as git shows them."""

    commit: str = ""
    author: str = ""


@dataclass
class Locking:
    """The object locks an apply takes (module doc). ``wait``: seconds to wait for another process
    that applies the same object, or one it depends on, before reporting it busy."""

    repo: Path
    command: str = "kiln apply"
    wait: float = 0.0

    def busy_dependency(self, change: Change) -> tuple[str, dict[str, Any]] | None:
        """A dependency of ``change`` that another process is applying (key, holder), after
        waiting up to ``wait`` seconds for it to finish; None when there is none."""
        if change.spec is None:
            return None
        deadline = time.monotonic() + self.wait
        for dep in sorted(dependencies(change.spec)):
            while (holder := current_holder(object_lock_path(self.repo, dep))) is not None:
                if time.monotonic() >= deadline:
                    return dep, holder
                time.sleep(0.05)
        return None


def apply_plan(plan: Plan, config: KilnConfig, store: StateStore, emit: ev.Listener,
               locking: Locking | None = None, origin: Origin = Origin()) -> ApplyResult:
    """Apply every change of ``plan``, reporting to ``emit`` (``events.printing(print)`` prints what
    ``kiln apply`` shows); with ``locking``, each under its object lock. ``origin`` goes into
    every attempt recorded.

    Changes that do not wait for each other (``_waits_for``) run at the same time, on up to the
    runner's limit of threads (``concurrency``, else the CPU count): three trainings of one
    apply overlap instead of queueing, while their pods still share the runner's machine-wide
    slots. A change starts once everything it waits for has finished, whatever its outcome (as
    when they ran in turn: a failed dataset's experiment fails on its own terms), and a failure
    stops nothing else. The results keep the plan's order."""
    # Workspaces as the specs define them (validated together with everything else), so presets
    # and quotas resolve the same way on every runner.
    workspaces = workspaces_of(c.spec for c in plan.changes if c.spec is not None)
    changes = plan.changes
    results: list[ObjectResult | None] = [None] * len(changes)
    lines = _Lines(emit)
    applied = [False]  # whether an object of this run was created or updated (set, never reset)

    def one(i: int) -> ObjectResult:
        change = changes[i]
        if change.action == "unchanged" and change.spec is not None and change.record is not None and applied[0]:
            # an object applied earlier in this run may have made what this one follows (a dataset
            # version an experiment trains on, a model version a deployment serves): apply it now
            # rather than on the next apply
            again = outside_spec(config, change.spec, change.record)
            if again.action == "update":
                change = again
                lines(ev.Noted(change.key, change.ref, change.note))
        lines.begin(change.key)
        try:
            if locking is None or (change.action == "unchanged" and not change.poll):
                res = _apply_change(change, config, store, lines, workspaces, origin)
            else:
                res = _apply_locked(change, config, store, lines, workspaces, locking, origin)
        finally:
            lines.end(change.key)
        if res.outcome in ("created", "updated"):
            applied[0] = True
        results[i] = res
        return res

    workers = config.concurrency or os.cpu_count() or 1
    if workers <= 1 or sum(not _quick(c) for c in changes) < 2:
        for i in range(len(changes)):  # nothing to overlap: in turn, in this thread
            one(i)
    else:
        # an unchanged object is only a line, unless something was applied before it: then it
        # may have new inputs to apply (above), on a worker like any other
        _run_concurrently(changes, _waits_for(changes), one, workers, lambda i: _interrupt(config, changes[i]),
                          quick=lambda i: _quick(changes[i]) and not applied[0])
    return ApplyResult([r for r in results if r is not None])


def _interrupt(config: KilnConfig, change: Change) -> None:
    """Ctrl-C reaches only the main thread: stop the local run of an object that a worker thread
    is applying (its pods run in sessions of their own), so that the worker ends now, its
    object recorded as failed, rather than when its training would have finished."""
    if config.runner != "local" or change.spec is None:
        return
    from kiln.controller.render import workflow_name
    from kiln.controller.runner import make_runner

    try:
        make_runner(config).stop(workflow_name(change.spec), "interrupted (Ctrl-C)")
    except Exception:  # noqa: BLE001 - nothing runs for it (an in-process kind, or done already)
        pass


def _quick(change: Change) -> bool:
    """A change that only prints a line (nothing to apply): run in the scheduling thread, in order."""
    return change.action == "unchanged" and not change.poll


def _waits_for(changes: list[Change]) -> list[set[int] | None]:
    """For each change, the indices of the earlier changes it must wait for (None: all of them).

    A create or update waits for its hard dependencies (``kiln.validate.dependencies``: its
    workspace, the dataset it reads, the experiment it serves) and for the earlier objects that
    make what it uses without naming them (``Handler.makes``/``uses``: a deployment serving a
    registered model by name waits for the Experiment of this apply that registers it; an
    experiment following a dataset waits for a labelling job exporting a version of it). The
    example repo's three trainings, or a thousand workspaces, wait for nothing else. A deletion
    waits for everything before it: deletions come last, dependants first."""
    index = {c.key: i for i, c in enumerate(changes)}
    made: dict[str, list[int]] = {}  # what earlier changes make -> their indices
    out: list[set[int] | None] = []
    for i, c in enumerate(changes):
        if c.action == "delete" or c.spec is None:
            out.append(None)
            continue
        wait = {index[d] for d in dependencies(c.spec) if index.get(d, i) < i}
        handler = HANDLERS.get(c.kind)
        if handler is not None:
            for thing in handler.uses(c.spec):
                wait.update(made.get(thing, ()))
            for thing in handler.makes(c.spec):
                made.setdefault(thing, []).append(i)
        out.append(wait)
    return out


def _run_concurrently(changes: list[Change], waits: list[set[int] | None], one: Callable[[int], ObjectResult],
                      workers: int, interrupt: Callable[[int], None], quick: Callable[[int], bool]) -> None:
    """Run ``one(i)`` for every change once what it waits for has finished, on ``workers`` threads
    (in this thread, in plan order, where ``quick(i)``); on Ctrl-C, ``interrupt(i)`` each running
    one and wait for them."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    n = len(changes)
    blockers = [set(range(i)) if w is None else set(w) for i, w in enumerate(waits)]
    dependants: list[list[int]] = [[] for _ in range(n)]
    for i, b in enumerate(blockers):
        for j in b:
            dependants[j].append(i)
    ready = [i for i in range(n) if not blockers[i]]
    running: dict[Future[ObjectResult], int] = {}
    finished = 0

    def done(i: int) -> None:
        for k in dependants[i]:
            blockers[k].discard(i)
            if not blockers[k]:
                ready.append(k)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kiln-apply") as pool:
        try:
            while finished < n:
                ready.sort(reverse=True)  # plan order: pop() takes the earliest
                while ready and (len(running) < workers or quick(ready[-1])):
                    i = ready.pop()
                    if quick(i):
                        one(i)
                        finished += 1
                        done(i)
                    else:
                        running[pool.submit(one, i)] = i
                if not running:
                    continue
                for fut in wait(running, return_when=FIRST_COMPLETED).done:
                    i = running.pop(fut)
                    fut.result()  # an error of apply itself (not of the object's work) ends the apply
                    finished += 1
                    done(i)
        except BaseException as exc:
            for fut, i in running.items():  # Ctrl-C or an error: start nothing more; what runs ends
                if not fut.cancel() and isinstance(exc, KeyboardInterrupt):
                    interrupt(i)
            raise


# Events about an object's inner work: without its object's name on the line, they are shown
# together with the object's end line when other objects ran meanwhile (``_Lines``).
_DETAIL = (ev.StepSkipped, ev.StepDone, ev.Log, ev.Traceback, ev.DeleteAction)


class _Lines:
    """The listener that apply's threads share: one event at a time, and readable output when
    objects overlap. Lines that name their object (start, end, failure, notes) go out at once;
    an object's step lines go out at once while it runs alone, else they are held and shown
    just before its end line. Progress lines get the object's name while others run."""

    def __init__(self, emit: ev.Listener) -> None:
        self.emit = emit
        self.lock = threading.RLock()
        self.held: dict[str, list[ev.ApplyEvent] | None] = {}  # running object -> held lines (None: live)

    def begin(self, key: str) -> None:
        with self.lock:
            if self.held:  # someone else runs: from now on, both hold their step lines
                for k, v in self.held.items():
                    if v is None:
                        self.held[k] = []
            self.held[key] = [] if self.held else None

    def end(self, key: str) -> None:
        with self.lock:
            self._flush(key)
            self.held.pop(key, None)

    def _flush(self, key: str) -> None:
        for e in self.held.get(key) or []:
            self.emit(e)
        if self.held.get(key):
            self.held[key] = []

    def __call__(self, e: ev.ApplyEvent) -> None:
        with self.lock:
            held = self.held.get(e.key)
            if held is not None and isinstance(e, _DETAIL):
                held.append(e)
                return
            if isinstance(e, (ev.ObjectFailed, ev.ObjectFinished)):
                self._flush(e.key)
            elif isinstance(e, ev.Progress) and len(self.held) > 1 and not getattr(self.emit, "live", False):
                e = replace(e, text=f"{e.ref}: {e.text}")  # a plain line without a name would be anyone's
            self.emit(e)


def _apply_locked(change: Change, config: KilnConfig, store: StateStore, emit: ev.Listener,
                  workspaces: dict[str, Any], locking: Locking, origin: Origin) -> ObjectResult:
    """``_apply_change`` holding the object's lock, on the object's record as it is now."""
    busy = locking.busy_dependency(change)
    if busy is not None:
        dep, holder = busy
        who = f"{holder.get('command', 'another kiln process')} (pid {holder.get('pid', '?')})"
        return _busy(change, emit, f"it depends on {dep}, which {who} is applying now; apply it again "
                                   "when that finishes, or wait for it with --wait-lock SECONDS")
    lock = ObjectLock(locking.repo, change.key, locking.command)
    try:
        try:
            lock.acquire()
        except LockHeld as exc:
            if not locking.wait:
                raise
            emit(ev.Noted(change.key, change.ref, f"waiting up to {locking.wait:g}s: {exc.message}"))
            lock.wait = locking.wait
            lock.acquire()
    except LockHeld as exc:
        return _busy(change, emit, f"{exc.message} (--wait-lock SECONDS waits for it)")
    try:
        now = store.get(change.key)
        if now != change.record:  # another process recorded it since this plan was made
            if change.spec is not None:
                change = change_for(config, change.spec, now)
            elif now is None:
                change = replace(change, action="unchanged", record=None, note="deleted by another kiln process")
            else:
                change = replace(change, record=now)
        return _apply_change(change, config, store, emit, workspaces, origin)
    finally:
        lock.release()


def _busy(change: Change, emit: ev.Listener, message: str) -> ObjectResult:
    # nothing is written: the object's record belongs to the process that applies it
    emit(ev.Busy(change.key, change.ref, message))
    return ObjectResult(change.ref, "busy", message=message)


def _apply_change(change: Change, config: KilnConfig, store: StateStore, emit: ev.Listener,
                  workspaces: dict[str, Any], origin: Origin) -> ObjectResult:
    if change.action == "unchanged" and change.poll and change.kind in HANDLERS and change.spec is not None:
        # nothing changed, but the handler observes something in progress (labelling)
        emit(ev.Noted(change.key, change.ref, change.note))
        res = _reconcile(change, config, store, emit, workspaces, origin)
        if res.outcome == "updated" and not res.actions:
            res.outcome = "unchanged"
        return res
    if change.action == "unchanged":
        if change.spec is not None:
            emit(ev.Unchanged(change.key, change.ref))
        elif change.note:
            emit(ev.Noted(change.key, change.ref, change.note))
        return ObjectResult(change.ref, "unchanged")
    if change.kind not in HANDLERS or (change.action != "delete" and change.blocked):
        res = _not_applicable(change, store)
        emit(ev.NotApplied(change.key, change.ref, res.message))
        return res
    if change.action == "delete":
        return _delete(change, config, store, emit, origin)
    return _reconcile(change, config, store, emit, workspaces, origin)


def _new_record(change: Change) -> ObjectRecord:
    assert change.spec is not None
    return ObjectRecord(key=change.key, source=_source(change))


def _source(change: Change) -> str:
    assert change.spec is not None
    return change.spec.location()


def _not_applicable(change: Change, store: StateStore) -> ObjectResult:
    # a record of a kind this kiln version does not know (written by a newer one) has no handler
    message, reason = (change.blocked, "NotAvailableYet") if change.blocked else (
        f"no {change.kind} handler in this kiln version", "HandlerNotAvailable")
    if change.spec is not None:
        rec = change.record or _new_record(change)
        rec = replace(rec, source=_source(change), sync="OutOfSync", health="Unknown")
        rec = rec.with_condition("Ready", "False", reason, message)
        rec = rec.with_condition("Stalled", "True", reason, message)
        if change.record is None or change.record.conditions != rec.conditions or change.record.source != rec.source:
            store.put(rec)  # bookkeeping only, so that `kiln status` lists it honestly
    return ObjectResult(change.ref, "not-applied", message=message)


def _reconcile(change: Change, config: KilnConfig, store: StateStore, emit: ev.Listener,
               workspaces: dict[str, Any], origin: Origin) -> ObjectResult:
    """Run the handler's steps for ``change`` and record the outcome (module doc)."""
    spec = change.spec
    assert spec is not None
    handler = HANDLERS[change.kind]()
    record = change.record or _new_record(change)
    started, t0 = utcnow(), time.monotonic()
    ctx = Context(config=config, store=store, spec=spec, record=record, workspaces=workspaces,
                  log=lambda line: emit(ev.Log(change.key, change.ref, line)),
                  progress=lambda s: emit(ev.Progress(change.key, change.ref, s.text, s.fraction,
                                                      time.monotonic() - t0, s.stage, s.left)),
                  inputs=input_versions(config, spec),
                  update=change.update if change.action == "update" else "re-run",
                  changed=[f.path for f in change.fields])
    res = ObjectResult(change.ref, "created" if change.action == "create" else "updated")
    if not change.poll:
        emit(ev.ObjectStarted(change.key, change.ref, change.action, spec.location(),
                              change.work() if change.action == "update" and change.fields else ""))
    # recorded first: a killed apply leaves the object OutOfSync (and Reconciling), as plan sees it
    record = replace(record, source=_source(change), sync=record.sync if change.poll else "OutOfSync").with_condition(
        "Reconciling", "True", "Progressing", f"applying spec {spec.spec_hash}")
    store.put(record)
    ctx.record = record  # steps may record progress on it (e.g. a workflow's task phases)
    inventory: list[dict[str, Any]] = []
    error: BaseException | None = None
    try:
        inventory = _run_steps(handler, ctx, change, res, emit)
    except BaseException as exc:  # noqa: BLE001 - any way out of a step but a return is no success
        error = exc  # (a step's sys.exit() included: it fails this object, not the whole apply)
    finally:
        finished = utcnow()
        record = ctx.record or record
        if error is None:
            record, result_word, message = _succeeded(handler, ctx, record, inventory, finished), "succeeded", ""
        else:
            record, result_word, message = _failed(change, record, error, res, emit, finished)
        with store.transaction():
            store.put(record)
            store.record_attempt(Attempt(key=change.key, generation=record.generation, spec_hash=spec.spec_hash,
                                         started_at=started, finished_at=finished, result=result_word,
                                         message=message, actions=res.actions,
                                         **_attempt_origin(change, origin)))
    if not change.poll or res.actions or error is not None:  # a poll that found nothing stays one line
        emit(ev.ObjectFinished(change.key, change.ref, res.outcome, time.monotonic() - t0))
    if isinstance(error, KeyboardInterrupt):
        raise error
    return res


def _run_steps(handler: Handler, ctx: Context, change: Change, res: ObjectResult,
               emit: ev.Listener) -> list[dict[str, Any]]:
    """Run (or skip as done) each step, persisting its progress; return the inventory."""
    store, key = ctx.store, ctx.run_key
    inventory: list[dict[str, Any]] = []
    for step in handler.steps_for(ctx):
        done = store.step(change.key, key, step.name)
        if done is not None and done.succeeded and not step.always:
            ctx.outputs[step.name] = done.output
            res.skipped_steps.append(step.name)
            emit(ev.StepSkipped(change.key, change.ref, step.name))
        else:
            store.start_step(change.key, key, step.name, again=step.always)
            try:
                out = step.run(ctx) or {}
            except BaseException as exc:
                store.finish_step(change.key, key, step.name, "failed", message=str(exc))
                raise
            store.finish_step(change.key, key, step.name, "succeeded", output=out)
            ctx.outputs[step.name] = out
            # an `always` step that found nothing to do ("changed": false) is no action
            if not step.always or out.get("changed", True):
                res.actions.append(f"{step.name}: {step.describe}")
                emit(ev.StepDone(change.key, change.ref, step.name, step.describe))
        if step.inventory is not None:
            inventory += step.inventory(ctx.outputs[step.name])
    return inventory


def _succeeded(handler: Handler, ctx: Context, record: ObjectRecord, inventory: list[dict[str, Any]],
               now: str) -> ObjectRecord:
    spec = ctx.spec
    assert spec is not None
    record = record.applied(spec.doc, spec.spec_hash, now=now)
    extra = {**record.extra, **handler.extra(ctx)}
    if ctx.inputs and ctx.update == "re-run":  # what plan compares against to see a followed dataset's new version
        extra["inputVersions"] = ctx.inputs
        extra["runKey"] = ctx.run_key
    if ctx.changed:  # what the last update did, by its class, for `kiln describe`
        extra["lastUpdate"] = {"class": ctx.update, "fields": ctx.changed, "at": now,
                               "steps": [n for n in ctx.outputs]}
    record = replace(record, inventory=inventory, health=handler.health(ctx), extra=extra)
    record = record.with_condition("Ready", "True", "Succeeded", "applied", now=now)
    record = record.with_condition("Reconciling", "False", "Succeeded", "", now=now)
    return record.with_condition("Stalled", "False", "Succeeded", "", now=now)


def _failed(change: Change, record: ObjectRecord, error: BaseException, res: ObjectResult,
            emit: ev.Listener, now: str) -> tuple[ObjectRecord, str, str]:
    """The record, attempt result and message of a failed (or interrupted) reconcile; a
    TemporaryError leaves the object Reconciling instead of Stalled."""
    temporary = isinstance(error, TemporaryError)
    interrupted = isinstance(error, KeyboardInterrupt)
    message = "interrupted" if interrupted else (
        str(error) if isinstance(error, KilnError) else f"{type(error).__name__}: {error}")
    record = replace(record, sync="OutOfSync", health="Degraded" if not temporary else record.health)
    record = record.with_condition("Ready", "False", "Failed", message, now=now)
    record = record.with_condition("Reconciling", "True" if temporary else "False",
                                   "Retrying" if temporary else "Failed", message, now=now)
    if not temporary and not interrupted:
        record = record.with_condition("Stalled", "True", "Failed", message, now=now)
    res.outcome = "retrying" if temporary else "failed"
    res.message = message
    emit(ev.ObjectFailed(change.key, change.ref, message))
    if _debug() and not isinstance(error, (KilnError, KeyboardInterrupt)):
        emit(ev.Traceback(change.key, change.ref, "".join(traceback.format_exception(error)).rstrip()))
    return record, "interrupted" if interrupted else "failed", message


def _attempt_origin(change: Change, origin: Origin) -> dict[str, Any]:
    """The fields of an Attempt that say what it was for and where it came from."""
    return {"action": "poll" if change.poll and change.action == "unchanged" else change.action,
            # the fields that changed, else why it was planned (e.g. a followed dataset's new version)
            "changes": [f.path for f in change.fields] or ([change.note] if change.note else []), "commit": origin.commit, "author": origin.author}


def _delete(change: Change, config: KilnConfig, store: StateStore, emit: ev.Listener,
            origin: Origin) -> ObjectResult:
    record = change.record
    assert record is not None
    handler = HANDLERS[change.kind]()
    ctx = Context(config=config, store=store, spec=None, record=record,
                  log=lambda line: emit(ev.Log(change.key, change.ref, line)))
    started = utcnow()
    emit(ev.DeleteStarted(change.key, change.ref))
    try:
        actions = handler.delete(ctx)
    except Exception as exc:  # keep the record (and its inventory): nothing is leaked
        rec = record.with_condition("Ready", "False", "DeleteFailed", str(exc))
        with store.transaction():
            store.put(rec)
            store.record_attempt(Attempt(key=change.key, generation=record.generation, spec_hash=record.spec_hash,
                                         started_at=started, finished_at=utcnow(), result="failed",
                                         message=f"delete failed: {exc}", **_attempt_origin(change, origin)))
        emit(ev.ObjectFailed(change.key, change.ref, f"delete failed: {exc}"))
        return ObjectResult(change.ref, "failed", message=str(exc))
    for a in actions:
        emit(ev.DeleteAction(change.key, change.ref, a))
    with store.transaction():  # the history keeps the delete (attempts outlive their object)
        store.delete(change.key)
        store.record_attempt(Attempt(key=change.key, generation=record.generation, spec_hash=record.spec_hash,
                                     started_at=started, finished_at=utcnow(), result="succeeded",
                                     actions=actions or ["delete"], **_attempt_origin(change, origin)))
    return ObjectResult(change.ref, "deleted", actions=actions or ["delete"])


def _debug() -> bool:
    return bool(os.environ.get("KILN_DEBUG"))
