"""Experiment handler: an Experiment's work is its workflow (prepare-data -> train | (prepare-data,
create-study) -> hpo-worker x parallelTrials | train-candidate x candidates -> select -> export-onnx ->
register; steps in ``kiln.controller.experiment``); this class adds what the controller
keeps about it.

The record's ``extra`` (``kiln status``/``describe``, mirrored while the workflow runs and kept
when it fails) is the run folder's summary::

    {"mode": "hpo", "trialsDone": 7, "trialsTotal": 10, "states": {"COMPLETE": 6, "PRUNED": 1},
     "dataset": {"dataset": "vision/digits", "number": "v1", "version": "<md5>"},
     "trials": [{"id": "t0000", "number": 0, "params": {...}, "state": "COMPLETE",
                 "objective": 0.96, "metrics": {...}}, ...],
     "leaderboard": [{"rank": 1, "trial": "t0004", "objective": 0.98, ...}, ...],
     "best": {"trial": "t0004", "metric": "validation_accuracy", "value": 0.98, "params": {...}},
     "registered": {"model": "digits-classifier", "version": 3, "aliases": ["production"],
                    "promotion": [{"alias": "production", "moved": true, "to": 3, "reason": ...}], ...},
     "info": "hpo 7/10 trials, best validation_accuracy=0.98 (t0004) -> digits-classifier v3 (production -> v3)"}

``registered.aliases`` are the aliases that point at this version; ``promotion`` each
``register.aliases`` rule's decision (``kiln.controller.experiment.promotion``).

Re-applying an unchanged spec does nothing (plan: unchanged). A change of only how the model is
registered (``re-register``) or of which finished trial is (``re-select``, ``kiln.api.kinds``)
works in place on the run the record points at (``extra.run``): no workflow, no training. The dataset version an experiment
trains on is part of its memo keys, so ``version: latest`` never reuses a prepare-data of an
older version.

Delete (``apply --prune``) removes the workflow run, the experiment's folder
(``.kiln/workspaces/<ws>/experiments/<name>/``: data copies, trials, study) and its results file
``metrics/<ws>/<name>.json``. Registered model
versions stay: deployments and other users may use them; ``kiln models`` manages them.
"""

from __future__ import annotations

# Step modules are imported inside the methods that use them: see LAZY_STEP_IMPORTS in base.py.
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from kiln.controller.events import Shown
from kiln.controller.handlers.base import Context, Step
from kiln.controller.handlers.workflow import WorkflowHandler


class ExperimentHandler(WorkflowHandler):
    kind = "Experiment"

    @classmethod
    def on_new_inputs(cls, spec: Any, note: str) -> tuple[str, str] | None:
        """As ``trigger.onNewDatasetVersion`` says: retrain, only note it, or ignore it."""
        policy = spec.obj.spec.trigger.onNewDatasetVersion
        if policy == "ignore":
            return None
        if policy == "plan-only":
            return ("unchanged", f"{note} (trigger onNewDatasetVersion: plan-only; not retrained)")
        return ("update", f"{note}: retrain (trigger onNewDatasetVersion: retrain)")

    @classmethod
    def makes(cls, spec: Any) -> set[str]:
        reg = spec.obj.spec.registration
        return {f"model:{spec.workspace}/{reg.model}"} if reg is not None else set()

    @classmethod
    def update_class(cls, spec: Any, record: Any, update: str) -> str:
        """In place needs the finished run the record points at (``kiln gc`` may have removed an
        older one); re-tagging needs a registered version, else the chosen trial is registered."""
        run = (record.extra or {}).get("run")
        if update in ("re-register", "re-select") and not (run and (Path(run) / "selected.json").is_file()):
            return "re-run"
        if update == "re-register" and not (record.extra or {}).get("registered"):
            return "re-select"
        return update

    def in_place_steps(self, ctx: Context) -> list[Step]:
        """``re-register``: the registered version is re-tagged, re-aliased or converted to ONNX;
        ``re-select``: the chosen finished trial is selected and registered. Both in the run
        folder the record points at, by the step functions a workflow runs, in this process:
        bookkeeping on files and the registry, seconds long, no training (module doc)."""
        if ctx.update not in ("re-register", "re-select"):
            return super().in_place_steps(ctx)
        from kiln.controller.steps import StepContext

        spec, run = ctx.spec, self._run_dir(ctx)
        assert spec is not None
        reg = spec.obj.spec.registration

        def step(name: str, target: str, describe: str) -> Step:
            def run_it(c: Context) -> dict[str, Any]:
                import importlib

                module, _, attr = target.partition(":")
                # the run folder is named by the spec hash that trained it: the steps find it by that
                sctx = StepContext(c.config, f"Experiment/{spec.workspace}/{spec.name}", spec.doc, run.name)
                return getattr(importlib.import_module(module), attr)(sctx)

            return Step(name, describe, run_it)

        update = step("re-register", "kiln.controller.experiment.register:update_registration",
                      "update the registered version in place (tags, description, aliases, ONNX export): no training")
        if ctx.update == "re-register":
            return [update]
        steps = [step("select", "kiln.controller.experiment.selection:select",
                      "select the chosen finished trial (selectTrial): no training")]
        if reg is not None:
            if "onnx" in reg.export:
                steps.append(step("export-onnx", "kiln.controller.experiment.export:export_onnx",
                                  "export the selected trial's model to ONNX (parity checked)"))
            steps += [step("register", "kiln.controller.experiment.register:register",
                           f"register the selected trial as {reg.model}"), update]
        return steps

    def steps(self, ctx: Context) -> list[Step]:
        steps = super().steps(ctx)
        handler = self

        def wrap(step: Step) -> Step:
            inner = step.run

            def run(c: Context) -> dict[str, Any] | None:
                try:
                    return inner(c)
                finally:  # also when the workflow failed: the trials and why they stopped stay visible
                    if c.record is not None:
                        try:
                            extra = handler.live_extra(c)
                            c.record = replace(c.record, extra={**c.record.extra, **extra})
                            _log_failed(c, extra)
                        except Exception:  # noqa: BLE001 - status only
                            pass

            return replace(step, run=run)

        return [wrap(s) for s in steps]

    def render_args(self, ctx: Context) -> dict[str, Any]:
        from kiln.controller.dataset_steps import data_rel
        from kiln.data.versioning import DatasetRepo

        spec = ctx.spec
        assert spec is not None
        ref = spec.obj.spec.dataset
        rel = data_rel(ref.workspace or spec.workspace, ref.name)
        if not (ctx.repo / f"{rel}.versions.json").is_file():
            return {}
        try:
            return {"data_version": DatasetRepo(ctx.repo).resolve(rel, ref.version).id}
        except Exception:  # noqa: BLE001 - prepare-data reports a missing version with its own message
            return {}

    def _run_dir(self, ctx: Context) -> Path:
        from kiln.controller.experiment.home import run_dir

        spec = ctx.spec
        assert spec is not None
        recorded = ctx.record.extra.get("run") if ctx.record is not None else None
        if ctx.update != "re-run" and recorded:  # an in-place update works on the run it updates
            return Path(recorded)
        return run_dir(ctx.config, spec.workspace, spec.name, spec.spec_hash)

    def live_extra(self, ctx: Context) -> dict[str, Any]:
        from kiln.controller.experiment.results import summarize

        d = self._run_dir(ctx)
        if not d.is_dir():
            return {}
        return summarize(ctx.spec.obj.spec, d)  # type: ignore[union-attr]

    def extra(self, ctx: Context) -> dict[str, Any]:
        return self.live_extra(ctx)

    def progress(self, ctx: Context, workflow: dict[str, Any],
                 live: dict[str, Any]) -> Shown | None:
        from kiln.controller.experiment.progress import progress

        spec = ctx.spec
        assert spec is not None
        d = self._run_dir(ctx)
        shown = progress(spec.obj.spec, d, live) if d.is_dir() else None
        if shown is None:  # before the first trial, after the last: the tasks say more
            return super().progress(ctx, workflow, live)
        return shown

    def inventory_from(self, spec: Any, outputs: dict[str, Any]) -> list[dict[str, Any]]:

        items: list[dict[str, Any]] = []
        reg = outputs.get("register")
        if isinstance(reg, dict) and "version" in reg:
            # listed, not owned: delete keeps registered versions
            items.append({"kind": "model-version", "id": f"{reg['model']}:v{reg['version']}"})
        return items

    def delete(self, ctx: Context) -> list[str]:
        from kiln.controller.experiment.home import experiment_home, results_rel

        assert ctx.record is not None
        done = super().delete(ctx)
        home = experiment_home(ctx.config, ctx.record.workspace, ctx.record.name)
        if home.exists():
            for p in home.rglob("*"):  # the data copies are read-only
                if p.is_file():
                    p.chmod(0o644)
            shutil.rmtree(home)
            done.append(f"remove {home.relative_to(ctx.repo)}")
        # the git-tracked results file goes too (the user commits its removal): a report must
        # not show a deleted experiment as current
        results = ctx.repo / results_rel(ctx.record.workspace, ctx.record.name)
        if results.is_file():
            results.unlink()
            done.append(f"remove {results.relative_to(ctx.repo)}")
        for item in ctx.record.inventory:
            if item.get("kind") == "model-version":
                done.append(f"kept registered model {item['id']}")
        return done


def _log_failed(ctx: Context, extra: dict[str, Any]) -> None:
    """Apply's output names each AutoML candidate that failed or was skipped, with why: the
    leaderboard alone would show only the ones that trained."""
    if extra.get("mode") != "automl" or not extra.get("failed"):
        return
    ctx.log(f"  {extra.get('info', '')}")
    for f in extra["failed"]:
        ctx.log(f"  candidate {f['candidate']} {f['state'].lower()}: {f['error']}")
