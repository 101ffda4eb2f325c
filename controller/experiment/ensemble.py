"""AutoML's ensemble: the top candidates' fitted models averaged (soft voting for classifiers,
the mean for regressors), compared with them on validation like one more candidate.

Run by the defaults' candidates task after the search, where scikit-learn and the table are
loaded (``automl.train_candidate``). The ensemble is recorded as trial ``c-ensemble``
(candidate ``ensemble``): the leaderboard ranks it with the others, so it is selected only when
it beats the best single candidate on validation (ties go to the single one: its trial number
is lower). Its validation score is measured as the members' was: on the validation split, or,
when they were cross-validated (a small table), by cross-validating the ensemble itself (each
fold refits every member). The model is a scikit-learn ``VotingClassifier``/``VotingRegressor``
over the members' pipelines (featurisers included), so it saves, exports to ONNX (skl2onnx
converts both) and serves as any tabular model; its ``meta.json`` names the best member's
algorithm (which loads, evaluates and exports a pipeline) and lists the members.
"""

from __future__ import annotations

import time
from typing import Any

from kiln._util.clock import utcnow
from kiln._util.fs import read_json
from kiln.algorithms.registry import get_algorithm
from kiln.api.experiment import ExperimentSpec
from kiln.controller.experiment.data import load_train_data
from kiln.controller.experiment.home import log, run_folder
from kiln.controller.experiment.results import leaderboard, trials
from kiln.controller.experiment.trial import Trial
from kiln.controller.steps import StepContext

ENSEMBLE_MEMBERS = 3        # the top N completed candidates (at least 2)
ENSEMBLE_NUMBER = 900_000   # its trial number: after every candidate's (ties rank the single one first)


def build_ensemble(ctx: StepContext, spec: ExperimentSpec) -> dict[str, Any] | None:
    """Record the ensemble of the top candidates as a trial; None when there is nothing to
    average (fewer than two compatible members) or the task is not a table's."""
    import numpy as np
    from sklearn.ensemble import VotingClassifier, VotingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import LabelEncoder

    run = run_folder(ctx)
    recs = trials(run)
    board = [b for b in leaderboard(spec, recs) if b["candidate"] != "ensemble"]
    members: list[tuple[str, Any, Any]] = []
    for b in board:
        meta = read_json(run / "trials" / b["trial"] / "model" / "meta.json") or {}
        if not meta.get("algorithm"):
            continue
        algo = get_algorithm(meta["algorithm"])
        model = algo.load(run / "trials" / b["trial"] / "model")
        same = not members or (model.meta["columns"] == members[0][2].meta["columns"]
                               and model.meta.get("schema") is not None and members[0][2].meta.get("schema") is not None)
        if algo.task == "classification" and not hasattr(model.native[-1], "predict_proba"):
            same = False  # soft voting averages probabilities
        if same and algo.data_type == "tabular" and algo.task in ("classification", "regression"):
            members.append((b["candidate"], algo, model))
        if len(members) == ENSEMBLE_MEMBERS:
            break
    if len(members) < 2:
        return None
    t0, started = time.time(), utcnow()
    lead_algo, lead = members[0][1], members[0][2]
    named = [(name, m.native) for name, _, m in members]
    if lead_algo.task == "classification":
        vote: Any = VotingClassifier(named, voting="soft", flatten_transform=False)
        vote.le_ = LabelEncoder().fit(np.arange(len(lead.meta["classes"])))
        vote.classes_ = vote.le_.classes_
    else:
        vote = VotingRegressor(named)
    vote.estimators_ = [m for _, m in named]  # fitted already: averaged as they are
    vote.named_estimators_ = dict(named)
    model = type(lead)(lead_algo.name, Pipeline([("est", vote)]), lead.hyperparameters,
                       {**lead.meta, "ensemble": [name for name, _, _ in members]})
    data = read_json(run / "data.json")
    td = load_train_data(ctx.config.repo, data, spec.split)
    metric = spec.objective.metric
    if lead.meta.get("validation"):  # the members were cross-validated: so is the ensemble
        import pandas as pd

        from kiln.algorithms.tabular import CV_FOLDS

        (x, y), (xv, yv) = td.table("train"), td.table("validation")
        x, y = pd.concat([x, xv]), pd.concat([y, yv])
        classes = lead.meta.get("classes")
        yy = y.map({c: i for i, c in enumerate(classes)}).to_numpy() if classes else y.to_numpy(float)
        scores = lead_algo._cross_validate(model.native, lead_algo.features(lead.meta, x), yy, CV_FOLDS, classes)
        model.meta["validation"] = {**lead.meta["validation"], "refit": "the members' (train + validation)"}
    else:
        scores = dict(lead_algo.evaluate(model, td, "validation"))
    if td.has_split("test"):
        scores.update(lead_algo.evaluate(model, td, "test"))
    trial = Trial(run, "c-ensemble", ENSEMBLE_NUMBER, candidate="ensemble")
    trial.dir.mkdir(parents=True, exist_ok=True)
    lead_algo.save(model, trial.dir / "model")
    what = " + ".join(name for name, _, _ in members)
    clean = {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}
    trial.save(params={"members": [name for name, _, _ in members]}, state="COMPLETE", algorithm=f"ensemble ({what})",
               started=started, finished=utcnow(), metrics=clean, objective=clean.get(metric),
               framework="sklearn", validation=model.meta.get("validation"))
    log(f"[c-ensemble] {what}: {metric}={clean.get(metric)} ({time.time() - t0:.1f} s)")
    return trial.record
