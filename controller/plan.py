"""Plan: compare the desired state (specs) with the recorded state and say what apply would do.

Cheapest check first: the spec hash. Only objects whose hash differs get a field diff. The plan
is pure: it reads the state store and writes nothing.

An unchanged spec can still need an apply, for two reasons outside the spec (given ``config``):

- a followed dataset (``dataset: {version: latest}``) has a new version since the object was
  applied: apply records the versions it resolved (``extra.inputVersions``) and plan compares
  them with the datasets' current versions. An Experiment with ``trigger.onNewDatasetVersion:
  retrain`` is planned as an update ("dataset wine has a new version v3"), ``plan-only`` is only
  noted, ``ignore`` is silent. A LabelingJob imports the new items (not when the new version is
  its own output). The run is then keyed on spec hash *and* input versions (``Context.run_key``),
  so the steps run again instead of being skipped as done for this spec.
- the handler observes drift or work in progress (``Handler.observe``): a Label Studio project
  edited by hand is an update; labelling in progress is a ``poll`` (listed as unchanged with a
  note; apply runs the handler's ``always`` steps to check completion).

A changed spec is classified by what its changed fields cost (``kiln.controller.diff.classify``,
declared per kind in ``kiln.api.kinds``): ``metadata``, ``re-register``, ``re-select``,
``restart`` or ``re-run``. Anything but ``re-run`` is applied in place (``Handler.in_place_steps``)
only when the last apply succeeded and nothing outside the spec asks for a run (a new dataset
version, drift); the handler may escalate a class it cannot do in place (``Handler.update_class``).

Each pending change also carries its cascade (``kiln.controller.cascade``): what follows from it in
the same apply (model version, aliases by rule, rollouts, pre-annotation, retrains).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal

from kiln.api.kinds import UPDATE_CLASSES, UpdateClass
from kiln.controller import cascade
from kiln.controller.diff import FieldChange, announce, classify, diff, update_word
from kiln.controller.handlers import HANDLERS, KINDS
from kiln.controller.handlers.dataset import source_fingerprint as source_fingerprint  # moved; dataset_steps uses it
from kiln.data.versions_log import read_versions_log
from kiln.validate import dependencies

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.controller.cascade import Effect
    from kiln.loader import LoadedSpec, SpecSet
    from kiln.state import ObjectRecord

Action = Literal["create", "update", "delete", "unchanged"]
PRUNE_ANNOTATION = "kiln.dev/prune"   # "disabled" keeps the object when its spec is deleted


@dataclass
class Change:
    action: Action
    key: str
    kind: str
    ref: str
    spec: LoadedSpec | None = None
    record: ObjectRecord | None = None
    fields: list[FieldChange] = field(default_factory=list)
    note: str = ""
    poll: bool = False   # unchanged, but apply should run the handler's `always` steps (see module doc)
    update: UpdateClass = "re-run"   # an update's class: what apply does (module doc)
    runs: str = ""       # an Experiment's training, in one line (``run_summary``)
    cascade: list[Effect] = field(default_factory=list)   # what follows in this apply (kiln.controller.cascade)
    refused: str = ""    # why apply refuses to run it now (its workspace's period of use, ``period_out``)

    @property
    def handled(self) -> bool:
        return self.kind in HANDLERS and not self.blocked

    @property
    def blocked(self) -> str:
        """Why the handler cannot apply this spec yet ("" when it can)."""
        if self.refused:
            return self.refused
        if self.kind not in HANDLERS or self.spec is None:
            return ""
        return HANDLERS[self.kind].unavailable(self.spec) or ""

    def why_not(self) -> str:
        """The plain reason this change cannot be applied, for plan and apply output."""
        if self.blocked:
            return self.blocked
        return f"no {self.kind} handler in this kiln version"

    @property
    def pending(self) -> bool:
        return self.action != "unchanged"

    def work(self) -> str:
        """What apply will do, by class: ``in place: register.tags; retrain: algorithm.lr``."""
        # the costliest class comes first; its work covers the cheaper fields
        return announce(self.kind, self.fields) if self.fields else update_word(self.update, self.kind)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"action": self.action, "kind": self.kind, "ref": self.ref, "key": self.key}
        if self.spec is not None:
            d["source"] = self.spec.location()
            d["specHash"] = self.spec.spec_hash
        if self.fields:
            d["fields"] = [f.to_dict() for f in self.fields]
        if self.action == "update":
            d["update"] = self.update
            d["work"] = self.work()
        if not self.handled:
            d["handler"] = "not available yet"
            d["reason"] = self.why_not()
        if self.note:
            d["note"] = self.note
        if self.runs:
            d["runs"] = self.runs
        if self.cascade:
            d["cascade"] = [e.to_dict() for e in self.cascade]
        return d


@dataclass
class Plan:
    changes: list[Change]
    prune: bool = False
    warnings: list[str] = field(default_factory=list)  # what apply would not refuse but likely gets wrong

    def count(self, action: str) -> int:
        return sum(c.action == action for c in self.changes)

    @property
    def has_changes(self) -> bool:
        return any(c.pending for c in self.changes)

    def summary(self) -> str:
        parts = [f"{self.count(a)} to {a}" for a in ("create", "update", "delete")]
        text = f"Plan: {', '.join(parts)}, {self.count('unchanged')} unchanged."
        unhandled = sorted({c.kind for c in self.changes if c.pending and not c.handled and not c.blocked})
        if unhandled:
            text += f" Not yet applicable (no handler in this kiln version): {', '.join(unhandled)}."
        refused = [c.ref for c in self.changes if c.pending and c.refused]
        if refused:
            text += f" Refused (the workspace's period of use): {', '.join(refused)}."
        blocked = [c.ref for c in self.changes if c.pending and c.blocked and not c.refused]
        if blocked:
            text += f" Not yet applicable (source not available yet): {', '.join(blocked)}."
        return text

    def to_json(self) -> str:
        return json.dumps({
            "summary": {a: self.count(a) for a in ("create", "update", "delete", "unchanged")},
            "changes": [c.to_dict() for c in self.changes],
            **({"warnings": self.warnings} if self.warnings else {}),
        }, indent=2, default=str)

    def to_text(self, verbose: bool = False) -> str:
        sign = {"create": "+", "update": "~", "delete": "-", "unchanged": " "}
        lines = []
        for c in self.changes:
            if c.action == "unchanged" and not (verbose or c.note):
                continue
            line = f"{sign[c.action]} {c.action:<9} {c.ref}"
            if c.spec is not None:
                line += f"  ({c.spec.location()})"
            if not c.handled and c.pending:
                line += f"  [{c.why_not()}]"
            if c.note:
                line += f"  [{c.note}]"
            lines.append(line)
            lines += [f"      runs: {c.runs}"] if c.runs and c.pending else []
            if c.action == "update" and c.fields:
                lines.append(f"      => {c.work()}")
            lines += [f"      {f.format(c.kind)}" for f in c.fields]
            lines += cascade.text_lines(c.cascade)
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(self.summary())
        return "\n".join(lines)

    def to_markdown(self) -> str:
        icon = {"create": "🟢 create", "update": "🟡 update", "delete": "🔴 delete", "unchanged": "⚪ unchanged"}
        out = ["### kiln plan", "", self.summary(), ""]
        out += [f"> **warning:** {w}" for w in self.warnings] + ([""] if self.warnings else [])
        pending = [c for c in self.changes if c.pending]
        if pending:
            out += ["| action | object | source | details |", "|---|---|---|---|"]
            for c in pending:
                details = "<br>".join(f"`{f.format(c.kind)}`" for f in c.fields[:20])
                if c.action == "update" and c.fields:
                    details = f"**{c.work()}**<br>" + details
                if len(c.fields) > 20:
                    details += f"<br>… {len(c.fields) - 20} more"
                if not c.handled:
                    details = (details + "<br>" if details else "") + f"_{c.why_not()}_"
                if c.note:
                    details = (details + "<br>" if details else "") + c.note
                if c.runs:
                    details = f"runs: {c.runs}" + ("<br>" + details if details else "")
                src = c.spec.location() if c.spec else ""
                out.append(f"| {icon[c.action]} | `{c.ref}` | {src} | {details} |")
        out += cascade.markdown_lines(pending)
        kept = [c for c in self.changes if not c.pending and c.note]
        if kept:
            out += ["", *[f"- `{c.ref}`: {c.note}" for c in kept]]
        unchanged = [c.ref for c in self.changes if not c.pending]
        if unchanged:
            out += ["", f"<details><summary>{len(unchanged)} unchanged</summary>", "",
                    *[f"- `{r}`" for r in unchanged], "", "</details>"]
        return "\n".join(out) + "\n"


def apply_order(specs: list[LoadedSpec]) -> list[LoadedSpec]:
    """Dependencies first; within that, kind order (Workspace, Dataset, …) then name."""
    rank = {k: i for i, k in enumerate(KINDS)}
    by_key = {s.key: s for s in specs}
    ordered: list[LoadedSpec] = []
    seen: set[str] = set()

    def visit(s: LoadedSpec, trail: frozenset[str] = frozenset()) -> None:
        if s.key in seen or s.key in trail:  # cycles are reported by validate
            return
        for d in sorted(dependencies(s)):
            if d in by_key:
                visit(by_key[d], trail | {s.key})
        seen.add(s.key)
        ordered.append(s)

    for s in sorted(specs, key=lambda s: (rank[s.kind], s.workspace, s.name)):
        visit(s)
    return ordered


def input_versions(config: KilnConfig | None, spec: LoadedSpec) -> dict[str, str]:
    """What a run depends on besides its spec: ``"<ws>/<dataset>" -> current version id`` of the
    followed datasets (and a derived Dataset's parent) that have versions, and a Dataset's local
    source fingerprint (``source_fingerprint``)."""
    if config is None:
        return {}
    handler = HANDLERS[spec.kind]
    out = handler.source_inputs(config, spec)
    for ws, name in handler.followed(spec):
        # read the log directly: plan must stay cheap and never run DVC; a damaged log is an
        # error, never "no new version"
        log = read_versions_log(config.repo / "data" / ws / f"{name}.versions.json")
        current = (log or {}).get("current")
        if current:
            out[f"{ws}/{name}"] = current
    return out


def _version_info(config: KilnConfig, dataset: str, vid: str) -> tuple[int, dict[str, Any]]:
    ws, name = dataset.split("/")
    log = read_versions_log(config.repo / "data" / ws / f"{name}.versions.json") or {}
    for i, v in enumerate(log.get("versions", []), start=1):
        if v.get("id") == vid:
            return i, v.get("lineage") or {}
    return 0, {}


def _new_inputs(config: KilnConfig, s: LoadedSpec, rec: ObjectRecord) -> tuple[Action, str] | None:
    """Whether a followed dataset has a new version since ``rec`` was applied."""
    now = input_versions(config, s)
    before = rec.extra.get("inputVersions") or {}
    notes: list[str] = []
    for ds, vid in sorted(now.items()):
        if before.get(ds) == vid:
            continue
        if ds.startswith("source:"):
            _, what, where = ds.split(":", 2)
            notes.append(f"new inputs captured by Deployment {where}" if what == "capture"
                         else f"source {what} {where} changed")
            continue
        n, lineage = _version_info(config, ds, vid)
        if HANDLERS[s.kind].own_output(s, lineage):
            continue  # e.g. a labelling job's own output: nothing new to label
        name = ds.split("/")[1] if ds.split("/")[0] == s.workspace else ds
        notes.append(f"dataset {name} has a new version v{n}")
    if not notes:
        return None
    return HANDLERS[s.kind].on_new_inputs(s, "; ".join(notes))


def make_plan(specs: SpecSet, records: list[ObjectRecord], *, scope: str | None = None,
              prune: bool = False, config: KilnConfig | None = None) -> Plan:
    """``scope``: records whose source does not lie under this path are left out of the plan
    altogether (neither deleted nor noted as kept), so planning one folder never proposes deleting
    what the rest of the repository defines. Records of specs that exist are always compared.
    ``config``: also look outside the spec (followed datasets, ``Handler.observe``)."""
    known = {r.key: r for r in records}
    changes = [change_for(config, s, known.pop(s.key, None)) for s in apply_order(specs.specs)]
    workspaces = {s.name: s.obj.spec for s in specs.specs if s.kind == "Workspace"}
    for i, c in enumerate(changes):
        out = period_out(workspaces.get(c.spec.workspace)) if c.spec is not None and c.kind != "Workspace" else ""
        if not out:
            continue
        if c.kind == "Deployment" and c.record is not None and c.record.generation:
            # its server stops; the spec stays, so extending the period plans a create again
            changes[i] = Change("delete", c.key, c.kind, c.ref, record=c.record,
                                note=f"{out}: the deployment stops (extend the Workspace's spec.period to restart it)")
        elif c.pending:
            c.refused = f"{out}: new runs are refused (extend the Workspace's spec.period)"
    for c in changes:
        if c.kind == "Experiment" and c.pending and c.spec is not None:
            c.runs = run_summary(c.spec, workspaces.get(c.spec.workspace), config)
    pinned = cascade.attach(changes, specs.specs, config)
    rank = {k: i for i, k in enumerate(KINDS)}
    # Deletions in reverse kind order: what refers to others goes first.
    for rec in sorted(known.values(), key=lambda r: (-rank.get(r.kind, 0), r.key)):
        if scope is not None and not within(rec.source, scope):
            continue
        ref = f"{rec.kind}/{rec.name}" if rec.workspace == "default" else rec.key
        keep = (rec.spec.get("metadata", {}).get("annotations", {}) or {}).get(PRUNE_ANNOTATION) == "disabled"
        if keep:
            note = f"spec removed; kept: annotation {PRUNE_ANNOTATION}: disabled"
            changes.append(Change("unchanged", rec.key, rec.kind, ref, record=rec, note=note))
        elif not prune:
            changes.append(Change("unchanged", rec.key, rec.kind, ref, record=rec,
                                  note="spec removed; kept until you apply with --prune"))
        else:
            changes.append(Change("delete", rec.key, rec.kind, ref, record=rec))
    return Plan(changes, prune=prune, warnings=[*label_warnings(config, specs.specs), *task_warnings(specs.specs),
                                                *quota_warnings(specs.specs), *pinned])


def period_out(workspace: Any, today: dt.date | None = None) -> str:
    """Why ``workspace``'s period of use excludes today ("" while it is in its period)."""
    period = getattr(workspace, "period", None)
    if period is None:
        return ""
    today = today or dt.date.today()
    if period.end is not None and today > period.end:
        return f"the workspace's period of use ended on {period.end}"
    if period.start is not None and today < period.start:
        return f"the workspace's period of use starts on {period.start}"
    return ""


def run_summary(s: LoadedSpec, workspace: Any, config: KilnConfig | None) -> str:
    """What applying Experiment ``s`` trains, in one line: mode, algorithm(s), trials x parallel,
    dataset version (the current one for ``latest``, from the versions log) and resources (the
    workspace's preset resolved), e.g. ``hpo resnet18, 6 trials x 2 parallel, dataset vision/digits
    latest (v2), 2 CPU 8Gi (preset cpu-large) per trial``."""
    from kiln.api.workspace import WorkspaceSpec

    spec = s.obj.spec
    if spec.mode == "automl":
        auto = spec.automl
        names = [c.name for c in auto.candidates][:auto.maxCandidates] if auto.candidates else []
        what = (f"{len(names)} candidates ({', '.join(names)})" if names else
                "the catalogue's default candidates" + (f" (first {auto.maxCandidates})" if auto.maxCandidates else ""))
        trials = f"{auto.trialsPerCandidate} trial(s) per candidate, one at a time"
        if auto.timeBudget:
            trials += f", within {auto.timeBudget} s"
    else:
        what = spec.algorithm.name if spec.algorithm else f"command {spec.command.run!r}"
        if spec.mode == "hpo":
            trials = f"{spec.hpo.maxTrials} trials x {spec.hpo.parallelTrials} parallel"
        else:
            n = len(spec.parameterSets) or 1
            trials = f"{n} trial{'s' if n > 1 else ''}"
    ref = spec.dataset
    dws = ref.workspace or s.workspace
    version = ref.version
    if ref.version == "latest" and config is not None:
        log = read_versions_log(config.repo / "data" / dws / f"{ref.name}.versions.json") or {}
        ids = [v.get("id") for v in log.get("versions", [])]
        version += f" (v{ids.index(log['current']) + 1})" if log.get("current") in ids else " (no version yet)"
    size = (workspace or WorkspaceSpec()).resolve(spec.resources)
    preset = spec.resources.preset or (workspace.defaultPreset if workspace is not None else None)
    res = f"{size.cpu} CPU {size.memory}" + (f" {size.gpu} GPU" + (f" {size.gpuModel}" if size.gpuModel else "")
                                             if size.gpu else "") + (f" (preset {preset})" if preset else "")
    return (f"{spec.mode} {what}, {trials}, dataset {ref.name if dws == s.workspace else f'{dws}/{ref.name}'} "
            f"{version}, {res} per trial")


def label_warnings(config: KilnConfig | None, specs: list[LoadedSpec]) -> list[str]:
    """A tabular classification Dataset whose current version's label has more distinct values
    than a classifier can learn from (``kiln.data.schema.MANY_CLASSES``): most likely a quantity
    that should be a regression target. Read from the versions log: plan never loads data."""
    from kiln.data.schema import MANY_CLASSES

    if config is None:
        return []
    out = []
    for s in specs:
        spec = s.obj.spec if s.kind == "Dataset" else None
        if spec is None or spec.type != "tabular" or spec.task != "classification":
            continue
        log = read_versions_log(config.repo / "data" / s.workspace / f"{s.name}.versions.json") or {}
        v = next((v for v in log.get("versions", []) if v.get("id") == log.get("current")), None)
        schema = (v or {}).get("schema") or {}
        label = schema.get("label")
        distinct = ((schema.get("columns") or {}).get(label) or {}).get("distinct", 0)
        if distinct > MANY_CLASSES:
            out.append(f"{s.ref} ({s.location()}): label column {label!r} has {distinct} distinct values, too many "
                       f"classes for task classification; if it is a quantity, set task: regression, "
                       f"otherwise group its values (e.g. a qcut op) into at most {MANY_CLASSES} classes")
    return out


def task_warnings(specs: list[LoadedSpec]) -> list[str]:
    """An Experiment whose built-in algorithm (or AutoML candidate) is for the other task than its
    tabular Dataset's label: a regression target is never fitted as classes (nor classes as
    numbers); the train step refuses it too (``Algorithm._check_task``), this says so before any
    data is prepared. Reads specs only; unknown algorithm names are the train step's to report."""
    from kiln.algorithms.registry import ALGORITHMS, get_algorithm_class

    datasets = {(s.workspace, s.name): s.obj.spec for s in specs if s.kind == "Dataset"}
    out = []
    for s in specs:
        if s.kind != "Experiment":
            continue
        spec = s.obj.spec
        ds = datasets.get((spec.dataset.workspace or s.workspace, spec.dataset.name))
        if ds is None or ds.type != "tabular" or ds.task not in ("classification", "regression"):
            continue
        names = [spec.algorithm.name] if spec.algorithm else []
        names += [c.name for c in spec.automl.candidates] if spec.automl else []
        for name in names:
            task = get_algorithm_class(name).task if name in ALGORITHMS else None
            if task in ("classification", "regression") and task != ds.task:
                label = f"label {ds.label!r}" if ds.label else "label (the last column)"
                out.append(f"{s.ref} ({s.location()}): algorithm {name!r} is for {task}, but the {label} of "
                           f"dataset {spec.dataset.name!r} is a {ds.task} target (its task); choose a "
                           f"{ds.task} algorithm (`kiln algorithms list`), or set the Dataset's task: {task}")
    return out


def quota_warnings(specs: list[LoadedSpec]) -> list[str]:
    """A workspace whose experiments (trials in parallel) or deployments (replicas) together ask
    for more than its run-time quotas: each fits alone (validate checks that), but not all at
    once, so the work will queue (the local runner's resource queue, ``kiln queue``)."""
    from kiln.api.common import cpu_cores, memory_bytes

    workspaces = {s.name: s.obj.spec for s in specs if s.kind == "Workspace"}
    need: dict[tuple[str, bool], list[float]] = {}  # (workspace, deployment) -> [cpu, memory, gpu, jobs]
    for s in specs:
        ws = workspaces.get(s.workspace)
        if ws is None or s.kind not in ("Experiment", "Deployment"):
            continue
        spec = s.obj.spec
        if s.kind == "Experiment":
            count = spec.hpo.parallelTrials if spec.hpo else 1
        else:
            count = max(spec.autoscaling.maxReplicas if spec.autoscaling else spec.replicas, 1)
        size = ws.resolve(spec.resources)
        acc = need.setdefault((s.workspace, s.kind == "Deployment"), [0.0, 0.0, 0.0, 0.0])
        acc[0] += cpu_cores(size.cpu) * count
        acc[1] += memory_bytes(size.memory) * count
        acc[2] += size.gpu * count
        acc[3] += count
    out = []
    for (name, deployment), (cpu, mem, gpu, jobs) in sorted(need.items()):
        q = workspaces[name].quotas
        what = "deployments' replicas" if deployment else "experiments' jobs"
        over = []
        if q.cpu is not None and cpu > cpu_cores(q.cpu):
            over.append(f"{cpu:g} CPU (quota cpu {q.cpu})")
        if q.memory is not None and mem > memory_bytes(q.memory):
            over.append(f"{mem / 2**30:.3g}Gi memory (quota memory {q.memory})")
        gq = q.deploymentGpus if deployment else q.trainingGpus
        if gq is not None and gpu > gq:
            over.append(f"{gpu:g} GPU (quota {'deploymentGpus' if deployment else 'trainingGpus'} {gq})")
        if not deployment and q.maxConcurrentJobs is not None and jobs > q.maxConcurrentJobs:
            over.append(f"{jobs:g} jobs (quota maxConcurrentJobs {q.maxConcurrentJobs})")
        if over:
            out.append(f"workspace {name}: its {what} together ask for {', '.join(over)}: they will queue and run "
                       f"as the quota frees (see `kiln queue`); raise the Workspace's quotas to run them at once")
    return out


def within(source: str, scope: str) -> bool:
    """Whether a record's ``source`` (``path:line``) lies under the folder or file ``scope``,
    compared by path components: ``specs/ab/x.yaml`` is not under ``specs/a``."""
    if not scope:
        return True
    path = source.rsplit(":", 1)[0] if source.rsplit(":", 1)[-1].isdigit() else source
    return PurePath(os.path.normpath(path)).is_relative_to(os.path.normpath(scope))


def change_for(config: KilnConfig | None, s: LoadedSpec, rec: ObjectRecord | None) -> Change:
    """The change that makes ``rec`` (None: never applied) match spec ``s``. Apply asks again,
    under the object's lock, when another process recorded the object after this plan was made."""
    if rec is None or rec.generation == 0:
        return Change("create", s.key, s.kind, s.ref, spec=s, record=rec)
    unfinished = rec.observed_generation != rec.generation or _not_ready(rec)
    if rec.spec_hash != s.spec_hash:
        update, fields = classify(s.kind, diff(rec.spec, s.doc))
        if update != "re-run":
            update = HANDLERS[s.kind].update_class(s, rec, update)
        why = ""
        if update != "re-run" and unfinished:
            update, why = "re-run", "the last apply did not finish: re-run"
        elif update != "re-run" and config is not None:
            outside = outside_spec(config, s, rec)
            if outside.action != "unchanged":  # a new dataset version or drift asks for the whole run
                update, why = "re-run", f"{outside.note}: re-run"
        # escalated: that costlier work is what apply does about each field too
        rank = UPDATE_CLASSES.index
        fields = [f if rank(f.update) >= rank(update) else dc_replace(f, update=update) for f in fields]
        return Change("update", s.key, s.kind, s.ref, spec=s, record=rec, fields=fields, update=update, note=why)
    if unfinished:
        return Change("update", s.key, s.kind, s.ref, spec=s, record=rec,
                      note="retry: the last apply did not finish")
    return outside_spec(config, s, rec)


def outside_spec(config: KilnConfig | None, s: LoadedSpec, rec: ObjectRecord) -> Change:
    """The change for an applied, unchanged spec: unchanged unless the world moved (module doc)."""
    same = Change("unchanged", s.key, s.kind, s.ref, spec=s, record=rec)
    if config is None:
        return same
    found = _new_inputs(config, s, rec)
    if found is not None and found[0] == "update":
        return Change("update", s.key, s.kind, s.ref, spec=s, record=rec, note=found[1])
    handler = HANDLERS.get(s.kind)
    seen = handler.observe(config, s, rec) if handler is not None and not handler.unavailable(s) else None
    if seen is not None and seen[0] == "update":
        return Change("update", s.key, s.kind, s.ref, spec=s, record=rec, note=seen[1])
    if seen is not None:
        same.poll, same.note = True, seen[1]
    if found is not None:
        same.note = "; ".join(x for x in (found[1], same.note) if x)
    return same


def _not_ready(rec: ObjectRecord) -> bool:
    ready = rec.condition("Ready")
    return ready is None or ready.status != "True"
