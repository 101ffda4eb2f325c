"""The handler contract: how one kind is reconciled.

A handler turns a spec into an ordered list of ``Step``s. The controller persists each step's
progress in the state store (``StepProgress``, keyed by object, spec hash and step name), so a
step that succeeded for this spec is never run again, even across a crash: re-applying resumes at
the first step that did not succeed. Steps must therefore be idempotent in their effects
(creating what already exists is not an error) and return a JSON-serialisable output that later
steps and ``kiln describe`` can read.

Errors: raise ``TemporaryError`` for what may pass by itself (a server not up yet): the object is
left Reconciling and the next apply retries. Anything else is permanent for this spec: the object
is marked Stalled with the message until its spec changes or the user re-applies.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.config import repo_root
from kiln.errors import TemporaryError

__all__ = ["Context", "Handler", "Step", "TemporaryError", "in_process", "run_key"]

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.controller.events import Shown
    from kiln.controller.pipelines import Task
    from kiln.loader import LoadedSpec
    from kiln.state import ObjectRecord, StateStore


# LAZY_STEP_IMPORTS: handlers import their kind's step modules (``kiln.controller.*_steps``,
# ``kiln.controller.experiment``) and the serving/labelling clients inside the methods that use
# them, on purpose: every ``kiln validate`` and ``kiln plan`` imports all handlers, and those
# modules add 0.13-0.15 s to that (measured on 2 cores; bench/plan_1000.py's budget is 1 s), while
# only an apply of that kind, or the drift check of an applied object, needs them.


@dataclass
class Context:
    """What a step may use. ``outputs`` holds the outputs of this object's earlier steps."""

    config: KilnConfig
    store: StateStore
    spec: LoadedSpec | None
    record: ObjectRecord | None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: Callable[[str], None] = print
    # how far the work has got, while it runs (``events.Shown``): apply turns it into
    # ``events.Progress``; the default drops it (a handler used outside apply)
    progress: Callable[[Shown], None] = lambda shown: None
    workspaces: dict[str, Any] = field(default_factory=dict)   # name -> WorkspaceSpec, from the specs
    # followed inputs as resolved for this apply ("<ws>/<dataset>" -> version id, see plan.input_versions)
    inputs: dict[str, str] = field(default_factory=dict)
    # an update's class and changed fields (``kiln.controller.diff.classify``): anything but
    # "re-run" is applied by ``Handler.in_place_steps``
    update: str = "re-run"
    changed: list[str] = field(default_factory=list)

    @property
    def run_key(self) -> str:
        """What step progress is keyed on: the spec hash, plus the followed inputs' versions, so
        that a new dataset version re-runs an unchanged spec (the retraining trigger)."""
        assert self.spec is not None
        return run_key(self.spec.spec_hash, self.inputs)

    @property
    def repo(self) -> Path:
        return self.config.repo


@dataclass
class Step:
    name: str
    describe: str                               # what it does, for plan/apply output
    run: Callable[[Context], dict[str, Any] | None]
    inventory: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None  # output -> inventory items
    # run on every apply even when it succeeded for this spec before: steps that observe the
    # world (is the labelling complete?) rather than make something once. Their output says
    # {"changed": false} when they found nothing to do, so that apply reports no action.
    always: bool = False


def in_process(tasks: list[Task], *, always: bool = False, args: bool = True,
               inventory: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] | None = None) -> list[Step]:
    """The tasks of a kind's pipeline (``kiln.controller.pipelines``) as handler steps that run in
    this process, through the step functions a workflow's ``kiln step`` runs (``steps.STEPS``), in
    the pipeline's order. For work that is bookkeeping (a Workspace's records, a labelling job's
    API calls): a workflow would spend a second of subprocesses on milliseconds of work. The
    steps share apply's open state store. ``args=False`` leaves out the tasks' arguments (the
    workflow's polling settings); ``inventory``: task name -> its output's inventory items."""
    from kiln.controller.steps import STEPS, StepContext

    def runner(task: Task) -> Callable[[Context], dict[str, Any]]:
        def run(c: Context) -> dict[str, Any]:
            spec = c.spec
            assert spec is not None
            return STEPS[task.step](StepContext(config=c.config, ref=f"{spec.kind}/{spec.workspace}/{spec.name}",
                                                spec=spec.doc, spec_hash=spec.spec_hash,
                                                args=dict(task.args) if args else {}, shared_store=c.store))

        return run

    inventory = inventory or {}
    return [Step(t.name, t.describe or t.step, runner(t), inventory=inventory.get(t.name), always=always)
            for t in tasks]


def run_key(spec_hash: str, inputs: dict[str, str]) -> str:
    if not inputs:
        return spec_hash
    return f"{spec_hash}-{hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:8]}"


class Handler(ABC):
    kind: str = ""

    @abstractmethod
    def steps(self, ctx: Context) -> list[Step]:
        """The steps that make ``ctx.spec`` real, in order."""

    @abstractmethod
    def delete(self, ctx: Context) -> list[str]:
        """Remove what ``ctx.record.inventory`` lists; return what was done. Items whose delete
        failed must raise, so that they stay in the inventory."""

    @staticmethod
    def repo_of(spec: LoadedSpec) -> Path:
        """The repository a spec belongs to (``kiln.config.repo_root``; ``unavailable`` has no
        config, and every entry point also runs from the repository, hence the cwd fallback)."""
        return repo_root(spec.source.path) or Path.cwd()

    @classmethod
    def unavailable(cls, spec: LoadedSpec) -> str | None:
        """Why this kiln version cannot apply this particular (valid) spec yet, or None. Plan
        shows it and apply treats the object like a kind without handler (exit 2, Stalled with
        this message) instead of failing it: e.g. a Dataset fed by a Deployment's capture."""
        return None

    @classmethod
    def observe(cls, config: KilnConfig, spec: LoadedSpec, record: ObjectRecord) -> tuple[str, str] | None:
        """For ``kiln plan``, about an object whose spec did not change: ``("update", why)`` when
        the world drifted from what was applied (a project edited by hand), ``("poll", why)`` when
        apply should run the ``always`` steps again without it counting as a change (waiting for
        people to finish labelling), None when there is nothing to do. Read-only."""
        return None

    # -- what plan asks (read-only, cheap: plan never runs DVC or a server) ------------------------

    @classmethod
    def followed(cls, spec: LoadedSpec) -> list[tuple[str, str]]:
        """(workspace, name) of the datasets ``spec`` follows (``dataset: {version: latest}``):
        their new versions re-run an unchanged spec (``plan.input_versions``)."""
        ref = getattr(spec.obj.spec, "dataset", None)
        if ref is None or getattr(ref, "version", None) != "latest":
            return []
        return [(ref.workspace or spec.workspace, ref.name)]

    # -- what apply orders by, besides hard dependencies (``apply._waits_for``) --------------------

    @classmethod
    def makes(cls, spec: LoadedSpec) -> set[str]:
        """What applying ``spec`` produces that another object may use without a hard dependency
        on it: ``model:<ws>/<name>`` (a registered model), ``dataset:<ws>/<name>`` (a new version
        of a dataset). Objects of one apply that use it wait for it to finish."""
        return set()

    @classmethod
    def uses(cls, spec: LoadedSpec) -> set[str]:
        """What ``spec`` uses that another object of the same apply may make (``makes``): by
        default the datasets it follows, whose new versions it trains on."""
        return {f"dataset:{ws}/{name}" for ws, name in cls.followed(spec)}

    @classmethod
    def source_inputs(cls, config: KilnConfig, spec: LoadedSpec) -> dict[str, str]:
        """Inputs besides followed datasets, ``"source:<what>" -> fingerprint`` (a Dataset's files)."""
        return {}

    @classmethod
    def own_output(cls, spec: LoadedSpec, lineage: dict[str, Any]) -> bool:
        """Whether a followed dataset's new version (its ``lineage``) was made by ``spec`` itself,
        and so is nothing new for it."""
        return False

    @classmethod
    def on_new_inputs(cls, spec: LoadedSpec, note: str) -> tuple[str, str] | None:
        """What plan makes of new inputs (``note`` says which): ``("update", why)`` by default,
        ``("unchanged", why)`` to only note them, None to ignore them."""
        return ("update", note)

    @classmethod
    def update_class(cls, spec: LoadedSpec, record: ObjectRecord, update: str) -> str:
        """The class ``update`` (``kiln.api.kinds``) as this handler can apply it to ``record``:
        a costlier one when what the cheap path needs is not there (no registered version to
        re-tag). Read-only and cheap: plan asks it."""
        return update

    def in_place_steps(self, ctx: Context) -> list[Step]:
        """The steps of an update of class ``ctx.update`` (not ``re-run``): a metadata change is
        recorded and runs nothing; a handler that declares a cheaper class in ``kiln.api.kinds``
        overrides this for it."""
        if ctx.update == "metadata":
            return []
        raise NotImplementedError(f"{self.kind}: no in-place path for update class {ctx.update!r}")

    def steps_for(self, ctx: Context) -> list[Step]:
        """What apply runs: the whole ``steps`` for a new object or a re-run, else the in-place path."""
        return self.steps(ctx) if ctx.update == "re-run" else self.in_place_steps(ctx)

    def health(self, ctx: Context) -> str:
        """Health of the applied object (Healthy, Progressing, Degraded, Missing, Unknown)."""
        return "Healthy"

    def extra(self, ctx: Context) -> dict[str, Any]:
        """Kind-specific status to keep in the record (shown by ``kiln describe``)."""
        return {}
