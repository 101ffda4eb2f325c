"""The AutoML train-candidate step: one candidate algorithm, trained once or searched in its
own study; or (no candidate list) the catalogue's defaults for the dataset's task, in turn.

The time budget (``automl.timeBudget``) is the whole search's: it runs from the first candidate
to start (``automl-start.json`` in the run folder, shared by parallel candidate tasks). A
candidate starts only while budget is left, and its HPO (``trialsPerCandidate``) stops starting
trials when the budget is spent; a fit that has started is not interrupted. Candidates start in
the listed order (defaults: HistGradientBoosting first), so a small budget keeps the first ones.
A candidate that did not start is recorded as SKIPPED with the reason, like a failed one."""

from __future__ import annotations

import time
from typing import Any

from kiln._util.clock import utcnow
from kiln._util.fs import read_json
from kiln.algorithms.registry import get_algorithm_class
from kiln.api import Experiment
from kiln.api.experiment import HPO, ExperimentSpec
from kiln.api.experiment import Algorithm as AlgoSpec
from kiln.controller.experiment.home import TrialFailed, file_lock, log, run_folder, write_json
from kiln.controller.experiment.hpo import candidate_study, ensure_study, hpo_loop
from kiln.controller.experiment.results import automl_candidates
from kiln.controller.experiment.training import run_trial
from kiln.controller.experiment.trial import Trial
from kiln.controller.steps import StepContext
from kiln.errors import KilnError


def budget_left(ctx: StepContext, spec: ExperimentSpec) -> float | None:
    """Seconds of ``automl.timeBudget`` left (None: no budget); the clock starts with the first
    candidate of the run."""
    assert spec.automl is not None
    if spec.automl.timeBudget is None:
        return None
    run = run_folder(ctx)
    with file_lock(run / "automl-start.lock"):
        stamp = read_json(run / "automl-start.json")
        if not stamp:
            stamp = {"started": time.time()}
            write_json(run / "automl-start.json", stamp)
    return spec.automl.timeBudget - (time.time() - float(stamp["started"]))


def train_candidate(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Experiment).spec
    assert spec.automl is not None
    cands = automl_candidates(spec, read_json(run_folder(ctx) / "data.json"))
    names = [c.name for c in cands]
    name = ctx.args.get("candidate", "")
    if name == "auto" and not spec.automl.candidates:
        log(f"automl candidates (the catalogue's for the task): {', '.join(names)}")
        results = [_one(ctx, spec, i, c) for i, c in enumerate(cands)]
        return {"candidates": results}
    if name not in names:
        raise KilnError(f"--arg candidate={name!r} is not in automl.candidates ({', '.join(names)})")
    idx = names.index(name)
    return _one(ctx, spec, idx, cands[idx])


def _one(ctx: StepContext, spec: ExperimentSpec, idx: int, cand: AlgoSpec) -> dict[str, Any]:
    """Train one candidate; a failure (or the spent budget) is recorded in its trial, not raised:
    one failing candidate does not sink the comparison, select reports it."""
    assert spec.automl is not None
    name = cand.name
    get_algorithm_class(name)  # unknown names: the registry's error lists the valid ones
    run = run_folder(ctx)
    n = spec.automl.trialsPerCandidate
    left = budget_left(ctx, spec)
    if left is not None and left <= 0:
        trial = Trial(run, f"c-{name}", idx, candidate=name)
        if not trial.record.get("state"):
            why = f"not started: the time budget ({spec.automl.timeBudget} s) was spent"
            trial.save(params={}, state="SKIPPED", algorithm=name, finished=utcnow(), error=why)
            log(f"[{trial.id}] {why}")
        return {"candidate": name, "state": trial.record.get("state"), "error": trial.record.get("error")}
    if n <= 1 or not cand.searchSpace:
        trial = Trial(run, f"c-{name}", idx, candidate=name)
        try:
            rec = run_trial(ctx, spec, trial, algo=cand, params={})
        except TrialFailed as exc:
            return {"candidate": name, "state": "FAIL", "error": str(exc)[:300]}
        return {"candidate": name, "state": rec["state"], "objective": rec.get("objective")}

    hpo = spec.hpo or HPO(maxTrials=n)
    if left is not None:  # the candidate's study stops starting trials when the budget is spent
        hpo = hpo.model_copy(update={"timeoutSeconds": max(1, int(min(left, hpo.timeoutSeconds or left)))})
    spec = spec.model_copy(update={"hpo": hpo})
    study = candidate_study(name)
    with file_lock(run / "study.lock"):
        ensure_study(run, spec, cand, study, n)
    try:
        out = hpo_loop(ctx, spec, algo=cand, study_name=study, max_trials=n, max_failed=n, worker="0",
                       candidate=name, number_base=idx * 1000)
    except KilnError as exc:
        return {"candidate": name, "state": "FAIL", "error": str(exc)[:300]}
    return {"candidate": name, **out}
