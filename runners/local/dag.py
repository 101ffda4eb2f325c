"""The DAG template: tasks start as soon as their ``depends`` hold, each on a pooled thread.

A :class:`DagRun` lives for one run of one DAG template. Its attributes are the shared state of
that run (guarded by ``cv``): the finished task nodes, the ready heap, the count of tasks handed
to threads and not yet recorded. Whichever thread records a task schedules the tasks that became
ready; plain pods among them wait in the runner's gate as callables (``admission.PodGate``), and
the rest start at once.

``failFast`` as Argo's controller applies it (default true), for a DAG template with
``parallelism`` (Argo checks it with the parallelism limit): once the DAG has failed - a target
task's branch ended Failed or Error with no ``continueOn`` for it, the test Argo's
``assessDAGPhase`` makes - no new task starts (nor one still queued for a place); the running ones
finish, then the DAG fails. A failure that a dependent handles (``depends: "A.Failed"``,
``continueOn``) fails no target and stops nothing. With ``failFast: false``, or without
``parallelism``, every task whose dependencies are met starts (Argo schedules before it assesses).
"""

from __future__ import annotations

import functools
import heapq
import threading
from typing import TYPE_CHECKING, Any

from kiln.errors import WorkflowError
from kiln.runners import _expr
from kiln.runners._template import UnresolvedTag
from kiln.runners.local.admission import HANDOFF, hand
from kiln.runners.local.common import FAILED
from kiln.runners.local.validation import parse_depends

if TYPE_CHECKING:
    from kiln.runners.local.interpreter import _Run

Token = tuple[str, str, str]


class DagRun:
    """One run of a DAG template as node ``node``; :meth:`execute` returns once it is finished."""

    def __init__(self, run: _Run, node: dict, tmpl: dict, local: dict[str, Any]) -> None:
        self.run = run
        self.node = node
        self.tmpl = tmpl
        dag = tmpl["dag"]
        self.tasks: dict[str, dict] = {t["name"]: t for t in dag.get("tasks") or []}
        self.order = list(self.tasks)
        self.where = f"template {tmpl['name']!r}"
        self.names = set(self.order)
        self.deps = {t: self._dependencies(t) for t in self.order}
        self.parents = {t: sorted({x[1] for x in self.deps[t] if x[0] == "ref"}) for t in self.order}
        self.children_of: dict[str, list[str]] = {t: [] for t in self.order}
        for t in self.order:
            for p in self.parents[t]:
                self.children_of[p].append(t)
        # dag.target may come from a parameter: the template arrives rendered with its inputs
        self.targets = (dag.get("target") or "").split() or [t for t in self.order if not self.children_of[t]]
        unknown = [t for t in self.targets if t not in self.tasks]
        if unknown:
            raise WorkflowError(f"{self.where}: dag.target names unknown task {unknown[0]!r}",
                                hint=f"tasks: {', '.join(self.order)}")
        self.needed = self._ancestry(self.targets)
        self.limit = int(tmpl["parallelism"]) if tmpl.get("parallelism") else None
        # Argo checks failFast where it checks the template's parallelism (checkParallelism:
        # "template has failed or errored children and failFast enabled"); without parallelism
        # every task whose dependencies are met starts, as Argo's reconcile schedules before it
        # assesses (dag-continue-on-fail's D runs after E failed)
        self.fail_fast = self.limit is not None and str(dag.get("failFast", True)).lower() != "false"
        self.halted = ""  # why no new task starts (failFast), once the DAG has failed
        self.scope = dict(local)
        self.cv = threading.Condition()
        self.tnodes: dict[str, dict] = {}
        self.groups: dict[str, list[dict] | None] = {}
        # ready-to-run bookkeeping: a task is ready when its last parent is recorded in tnodes;
        # ready tasks start in declaration order
        self.index = {t: i for i, t in enumerate(self.order)}
        self.waiting = {t: len(self.parents[t]) for t in self.order}
        self.ready = [(self.index[t], t) for t in self.order if t in self.needed and not self.parents[t]]
        self.pending = 0  # tasks handed to workers and not yet recorded
        self.gate = run.runner.gate
        self.plain_pod = {t: self._is_plain_pod(self.tasks[t]) for t in self.order}

    def _dependencies(self, t: str) -> list[Token]:
        task = self.tasks[t]
        if task.get("depends"):
            return parse_depends(task["depends"], self.names, f"{self.where} dag task {t!r}")
        toks: list[Token] = []
        for d in task.get("dependencies") or []:
            if toks:
                toks.append(("op", "&&", ""))
            toks.append(("ref", d, ""))
        return toks

    def _ancestry(self, targets: list[str]) -> set[str]:
        """Only targets and their ancestors run."""
        needed: set[str] = set()
        stack = list(targets)
        while stack:
            t = stack.pop()
            if t not in needed:
                needed.add(t)
                stack.extend(self.parents[t])
        return needed

    def _is_plain_pod(self, task: dict) -> bool:
        """A task that is one pod and nothing else: it may wait for a place as a callable."""
        tm = self.run.templates.get(task.get("template") or "") or {}
        return (self.run.wf_sem is None and (tm.get("container") is not None or tm.get("script") is not None)
                and not tm.get("retryStrategy") and not task.get("hooks") and not task.get("onExit")
                and not any(task.get(k) is not None for k in ("withItems", "withParam", "withSequence")))

    # ------------------------------------------------------------------ the run
    def execute(self) -> None:
        run = self.run
        with self.cv:
            starts = self.schedule()
        self.launch(starts, inline=False)
        with self.cv:
            while self.pending:
                self.cv.wait(0.5)
        run.check_stop()
        phase, msg = self.assess()
        if phase == "Succeeded" and any(t not in self.tnodes for t in self.targets):
            phase, msg = "Failed", "not all target tasks ran"
        if phase == "Succeeded":
            dscope = dict(self.scope)
            run.output_params(self.node, self.tmpl, dscope)
        run.finish(self.node, phase, msg)

    def launch(self, starts: list[str], inline: bool) -> None:
        """Start tasks: plain pods through the gate (now, or queued there for a place), others
        at once. ``inline``: on this thread's driver loop (the first) and workers (the rest);
        never for the DAG's own thread, which goes on to wait for them."""
        for t in starts:
            if self.plain_pod[t]:
                fn = functools.partial(self.run_gated, t)
                if not self.gate.try_start(fn):
                    continue  # queued: the pod that frees a place runs it
            else:
                fn = functools.partial(self.run_plain, t)
            hand(fn, inline)

    def run_gated(self, t: str) -> None:  # holds a gate place, which its pod takes over
        HANDOFF.place = True
        try:
            self.run_task(t)
        finally:
            if HANDOFF.place:  # ended before its pod (when false, reused, an error)
                HANDOFF.place = False
                hand(self.gate.release(), inline=True)
            self.task_done(t)

    def run_plain(self, t: str) -> None:
        try:
            self.run_task(t)
        finally:
            self.task_done(t)

    def task_done(self, t: str) -> None:
        with self.cv:
            self.pending -= 1
            starts = self.schedule()
            if not self.pending:
                self.cv.notify_all()
        self.launch(starts, inline=True)

    # ------------------------------------------------------------------ scheduling (caller holds cv)
    def recorded(self, t: str) -> None:
        """``t`` now has its node in tnodes (caller holds cv): release its children, or, when
        it failed a target of a failFast DAG, stop starting tasks (module doc)."""
        if self.fail_fast and not self.halted and t in self.targets and self.failed_target(t):
            self.halted = f"failFast: task {t!r} failed"
        for c in self.children_of[t]:
            self.waiting[c] -= 1
            if not self.waiting[c] and c in self.needed:
                heapq.heappush(self.ready, (self.index[c], c))

    def schedule(self) -> list[str]:
        """Take every ready task (caller holds cv): the ones to start are returned, counted
        in ``pending``; the caller starts them once it has released cv."""
        run, node = self.run, self.node
        starts: list[str] = []
        while self.ready and not run.stop_event.is_set() and not self.halted:
            _, t = heapq.heappop(self.ready)
            try:
                ok = self.depends_ok(t)
            except _expr.ExprError as exc:
                self.tnodes[t] = run.new_node(f"{node['name']}.{t}", t, "Skipped", self.tasks[t]["template"], node["id"],
                                              node["id"], "Error", f"depends: {exc}")
                self.recorded(t)
                continue
            if not ok:
                self.omit(t)
                continue
            self.pending += 1
            starts.append(t)
        return starts

    def omit(self, t: str) -> None:
        """``t``'s depends does not hold: record it Omitted (caller holds cv)."""
        run, node, parents = self.run, self.node, self.parents[t]
        pid = run.outbound(self.tnodes[parents[0]]) if parents else node["id"]
        n = run.reuse(run.node_id(f"{node['name']}.{t}"), pid) or run.skip_node(
            f"{node['name']}.{t}", t, self.tasks[t]["template"], node["id"], pid, "Omitted",
            "omitted: depends condition not met")
        for p in parents[1:]:
            run.link(run.outbound(self.tnodes[p]), n["id"])
        self.tnodes[t] = n
        run.publish(self.scope, f"tasks.{t}", n, None)
        self.recorded(t)

    def depends_ok(self, tname: str) -> bool:
        toks = self.deps[tname]
        if not toks:
            return True
        text = " ".join(tok[1] if tok[0] == "op" else ("true" if self.result_of(tok[1], tok[2]) else "false") for tok in toks)
        return bool(_expr.evaluate(text, {}))

    def result_of(self, tname: str, result: str) -> bool:
        n = self.tnodes[tname]
        ph = n["phase"]
        cont = self.tasks[tname].get("continueOn") or {}
        kids = self.groups.get(tname)
        if result == "":
            return ph in ("Succeeded", "Skipped") or (ph == "Failed" and bool(cont.get("failed"))) or (ph == "Error" and bool(cont.get("error")))
        if result == "Errored":
            return ph == "Error"
        if result == "Completed":
            return ph in ("Succeeded", "Failed")
        if result == "Daemoned":
            return bool(n.get("daemoned"))
        if result == "AnySucceeded":
            return any(k["phase"] == "Succeeded" for k in kids or [n])
        if result == "AllFailed":
            return all(k["phase"] == "Failed" for k in kids or [n])
        return ph == result

    # ------------------------------------------------------------------ one task
    def run_task(self, tname: str) -> None:
        run, node = self.run, self.node
        task = self.tasks[tname]
        with self.cv:
            if self.halted:  # queued for a place when the DAG failed: never starts (failFast)
                return
        try:
            n, kids = self.start_task(tname)
        except (UnresolvedTag, WorkflowError, _expr.ExprError) as exc:
            n = run.new_node(f"{node['name']}.{tname}", tname, "Skipped", task["template"], node["id"], node["id"], "Error", str(exc))
            kids = None
        except BaseException as exc:  # keep the scheduler alive; report the task
            n = run.new_node(f"{node['name']}.{tname}", tname, "Skipped", task["template"], node["id"], node["id"], "Error",
                             f"{type(exc).__name__}: {exc}")
            kids = None
        with self.cv:
            self.tnodes[tname] = n
            self.groups[tname] = kids
            run.publish(self.scope, f"tasks.{tname}", n, kids)
            self.recorded(tname)

    def start_task(self, tname: str) -> tuple[dict, list[dict] | None]:
        """Run task ``tname`` (one node, or a TaskGroup of fanned-out items); its node and items."""
        run, node = self.run, self.node
        task = self.tasks[tname]
        tnode_name = f"{node['name']}.{tname}"
        with self.cv:
            tscope = dict(self.scope)
        run.refresh_globals(tscope)
        # like Argo, a dependent hangs off the outbound node (a Retry's last attempt)
        parent_ids = [run.outbound(self.tnodes[p]) for p in self.parents[tname]] or [node["id"]]
        items = run.expand(task, tscope, f"{self.where} dag task {tname!r}")
        kids: list[dict] | None
        if items is None:
            n = run.run_one(task, tnode_name, tname, node["id"], parent_ids[0], tscope)
            kids = None
        else:
            reused = run.reuse(run.node_id(tnode_name), parent_ids[0])
            if reused is None:
                n = run.new_node(tnode_name, tname, "TaskGroup", task["template"], node["id"], parent_ids[0])
                kids = run.fan_out(task, tnode_name, tname, node["id"], n["id"], tscope, items, self.limit) if items else []
                bad = [k for k in kids if k["phase"] in FAILED]
                run.finish(n, bad[0]["phase"] if bad else ("Skipped" if not items else "Succeeded"),
                           f"child '{bad[0]['id']}' {bad[0]['phase'].lower()}" if bad else "")
            else:
                n = reused
                kids = [run.nodes[c] for c in n["children"] if c in run.nodes]
        for pid in parent_ids[1:]:
            run.link(pid, n["id"])
        return n, kids

    # ------------------------------------------------------------------ the DAG's phase
    def branch_phase(self, tname: str, memo: dict[str, str]) -> str:
        if tname in memo:
            return memo[tname]
        ph = self.tnodes[tname]["phase"]
        if ph == "Omitted":
            inherited = [self.branch_phase(p, memo) for p in self.parents[tname] if p in self.tnodes]
            bad = [x for x in inherited if x in FAILED]
            ph = bad[0] if bad else "Succeeded"
        memo[tname] = ph
        return ph

    def failed_target(self, t: str, memo: dict[str, str] | None = None) -> str:
        """The phase (Failed, Error) of recorded target ``t``'s branch when it fails the DAG, else ""."""
        ph = self.branch_phase(t, {} if memo is None else memo)
        cont = self.tasks[t].get("continueOn") or {}
        return ph if ph == "Failed" and not cont.get("failed") or ph == "Error" and not cont.get("error") else ""

    def assess(self) -> tuple[str, str]:
        memo: dict[str, str] = {}
        for t in self.targets:
            if t not in self.tnodes:
                continue
            ph = self.failed_target(t, memo)
            if ph:
                n = self.tnodes[t]
                return ph, f"child '{n['id']}' {ph.lower()}" if n["phase"] != "Omitted" else f"task {t!r} omitted after a failure"
        return "Succeeded", ""
