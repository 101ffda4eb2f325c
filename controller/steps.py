"""Step functions: what ``kiln step NAME`` runs inside a workflow task (a pod on Argo, a
subprocess under the local runner). One registry dict, name -> function.

A step gets the object's composed spec from the workflow (``--spec``), never from the user's
files, so the same manifest runs anywhere kiln's image runs. Steps are idempotent: a retried or
resumed task must be able to run again over what an earlier try left.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from kiln.api import Workspace
from kiln.config import KilnConfig
from kiln.errors import KilnError, TemporaryError

M = TypeVar("M", bound=BaseModel)


@dataclass
class StepContext:
    config: KilnConfig
    ref: str                       # Kind/workspace/name
    spec: dict[str, Any]           # the composed spec document
    spec_hash: str
    args: dict[str, str] = field(default_factory=dict)
    _models: dict[type, Any] = field(default_factory=dict, repr=False)
    # the caller's open store, when the step runs in the controller's process (``in_process``):
    # opening one per step is an engine and a schema check, most of a bookkeeping step's cost
    shared_store: Any = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.ref.split("/")[0]

    @property
    def workspace(self) -> str:
        return self.ref.split("/")[1]

    @property
    def name(self) -> str:
        return self.ref.split("/")[2]

    def model(self, cls: type[M]) -> M:
        """The spec document validated as ``cls`` (e.g. ``ctx.model(Dataset).spec``), once per
        step: steps get the typed spec, never a dict with defaults filled in by hand."""
        if cls not in self._models:
            self._models[cls] = cls.model_validate(self.spec)
        return self._models[cls]

    def store(self):  # -> StateStore
        from kiln.state import open_store

        return open_store(self.config.state_url(), self.config.repo, max_attempts=self.config.historyLimit)

    @contextmanager
    def state(self) -> Iterator[Any]:  # -> StateStore
        """The state store for the length of a ``with``: the shared one in-process, else one of
        this step's own, closed at the end."""
        if self.shared_store is not None:
            yield self.shared_store
            return
        store = self.store()
        try:
            yield store
        finally:
            store.close()


class StepNotAvailable(KilnError):
    pass


def workspace_dir(config: KilnConfig, name: str) -> Path:
    return config.kiln_dir() / "workspaces" / name


def workspace_storage(ctx: StepContext) -> dict[str, Any]:
    path = workspace_dir(ctx.config, ctx.name)
    path.mkdir(parents=True, exist_ok=True)
    return {"path": str(path.relative_to(ctx.config.repo))}


def workspace_members(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Workspace).spec
    value = {
        "members": {m.user: m.role for m in spec.members},
        "quotas": spec.quotas.model_dump(exclude_none=True),
        "presets": {p.name: p.model_dump(exclude_none=True, exclude={"name"}) for p in spec.presets},
        "defaultPreset": spec.defaultPreset,
        "specHash": ctx.spec_hash,
    }
    with ctx.state() as store:
        store.put_kv("workspace", ctx.name, value)
    return {"members": len(spec.members), "presets": len(spec.presets)}


def _lazy(target: str) -> Callable[[StepContext], dict[str, Any]]:
    """A step implemented in another module, imported only when it runs (``kiln step`` for one
    kind must not pay for another kind's imports)."""
    module, _, attr = target.partition(":")

    def run(ctx: StepContext) -> dict[str, Any]:
        import importlib

        return getattr(importlib.import_module(module), attr)(ctx)

    run.__name__ = attr
    return run


# Exit code of `kiln step` for a problem retrying cannot fix (bad data, bad spec): the rendered
# retryStrategy does not retry it. Other failures (crashes, TemporaryError) exit 1 and are retried.
PERMANENT_EXIT = 4

STEPS: dict[str, Callable[[StepContext], dict[str, Any]]] = {
    "workspace.storage": workspace_storage,
    "workspace.members": workspace_members,
    "dataset.fetch": _lazy("kiln.controller.dataset_steps:dataset_fetch"),
    "dataset.validate": _lazy("kiln.controller.dataset_steps:dataset_validate"),
    "dataset.preprocess": _lazy("kiln.controller.dataset_steps:dataset_preprocess"),
    "dataset.split": _lazy("kiln.controller.dataset_steps:dataset_split"),
    "dataset.version": _lazy("kiln.controller.dataset_steps:dataset_version"),
    "experiment.prepare-data": _lazy("kiln.controller.experiment.prepare:prepare_data"),
    "experiment.train": _lazy("kiln.controller.experiment.training:train"),
    "experiment.create-study": _lazy("kiln.controller.experiment.hpo:create_study"),
    "experiment.hpo-worker": _lazy("kiln.controller.experiment.hpo:hpo_worker"),
    "experiment.train-candidate": _lazy("kiln.controller.experiment.automl:train_candidate"),
    "experiment.select": _lazy("kiln.controller.experiment.selection:select"),
    "experiment.export-onnx": _lazy("kiln.controller.experiment.export:export_onnx"),
    "experiment.register": _lazy("kiln.controller.experiment.register:register"),
    "labeling.project": _lazy("kiln.controller.labeling_steps:labeling_project"),
    "labeling.pre-annotate": _lazy("kiln.controller.labeling_steps:labeling_pre_annotate"),
    "labeling.import": _lazy("kiln.controller.labeling_steps:labeling_import"),
    "labeling.assign": _lazy("kiln.controller.labeling_steps:labeling_assign"),
    "labeling.wait-complete": _lazy("kiln.controller.labeling_steps:labeling_wait_complete"),
    "labeling.export": _lazy("kiln.controller.labeling_steps:labeling_export"),
    "deployment.resolve-model": _lazy("kiln.controller.deployment_steps:deployment_resolve_model"),
    "deployment.build": _lazy("kiln.controller.deployment_steps:deployment_build"),
    "deployment.rollout": _lazy("kiln.controller.deployment_steps:deployment_rollout"),
    "deployment.smoke-test": _lazy("kiln.controller.deployment_steps:deployment_smoke_test"),
}


def _plugin(name: str) -> Callable[[StepContext], dict[str, Any]] | None:
    """Steps from other packages: entry points in the group ``kiln.steps`` (name = step name)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="kiln.steps"):
        if ep.name == name:
            return ep.load()
    return None


def run_step(name: str, ctx: StepContext) -> dict[str, Any]:
    fn = STEPS.get(name) or _plugin(name)
    if fn is None:
        raise StepNotAvailable(f"step {name!r} is not available in this kiln version",
                               hint=f"steps available: {', '.join(sorted(STEPS))}")
    try:
        out = fn(ctx) or {}
    except KilnError as exc:
        if not isinstance(exc, TemporaryError):
            exc.exit_code = PERMANENT_EXIT  # type: ignore[misc]
        raise
    json.dumps(out)  # outputs must be JSON: fail here, not in the runner
    return out
