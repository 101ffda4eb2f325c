"""The AutoML train-candidate step: one candidate algorithm, trained once or searched in its
own study."""

from __future__ import annotations

from typing import Any

from kiln.algorithms.registry import get_algorithm_class
from kiln.api import Experiment
from kiln.api.experiment import HPO
from kiln.controller.experiment.home import TrialFailed, file_lock, run_folder
from kiln.controller.experiment.hpo import candidate_study, ensure_study, hpo_loop
from kiln.controller.experiment.training import run_trial
from kiln.controller.experiment.trial import Trial
from kiln.controller.steps import StepContext
from kiln.errors import KilnError


def train_candidate(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Experiment).spec
    assert spec.automl is not None
    name = ctx.args.get("candidate", "")
    names = [c.name for c in spec.automl.candidates]
    if name not in names:
        raise KilnError(f"--arg candidate={name!r} is not in automl.candidates ({', '.join(names)})")
    idx = names.index(name)
    cand = spec.automl.candidates[idx]
    get_algorithm_class(cand.name)  # unknown names: the registry's error lists the valid ones
    run = run_folder(ctx)
    n = spec.automl.trialsPerCandidate
    if n <= 1 or not cand.searchSpace:
        trial = Trial(run, f"c-{name}", idx, candidate=name)
        try:
            rec = run_trial(ctx, spec, trial, algo=cand, params={})
        except TrialFailed as exc:
            # one failing candidate does not sink the comparison; select reports it
            return {"candidate": name, "state": "FAIL", "error": str(exc)[:300]}
        return {"candidate": name, "state": rec["state"], "objective": rec.get("objective")}

    if spec.hpo is None:
        spec = spec.model_copy(update={"hpo": HPO(maxTrials=n)})
    study = candidate_study(name)
    with file_lock(run / "study.lock"):
        ensure_study(run, spec, cand, study, n)
    try:
        out = hpo_loop(ctx, spec, algo=cand, study_name=study, max_trials=n, max_failed=n, worker="0",
                       candidate=name, number_base=idx * 1000)
    except KilnError as exc:
        return {"candidate": name, "state": "FAIL", "error": str(exc)[:300]}
    return {"candidate": name, **out}
