"""Training one trial (a built-in algorithm or the user's command), resuming from its
checkpoints, and the run-mode train step."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from kiln._util.clock import utcnow
from kiln._util.fs import read_json
from kiln.algorithms.base import Pruned, ReportCallback
from kiln.algorithms.registry import get_algorithm
from kiln.api import Experiment
from kiln.api.experiment import Algorithm as AlgoSpec
from kiln.api.experiment import ExperimentSpec
from kiln.controller.experiment.command import train_command
from kiln.controller.experiment.data import load_train_data
from kiln.controller.experiment.evaluation import eval_doc
from kiln.controller.experiment.home import TrialFailed, file_lock, log, run_folder, write_json
from kiln.controller.experiment.trial import (
    Reporter,
    Trial,
    TrialStopped,
    list_checkpoints,
    stopped_on_sigterm,
    tensorboardx_without_torch,
)
from kiln.controller.steps import StepContext
from kiln.errors import KilnError


def run_trial(ctx: StepContext, spec: ExperimentSpec, trial: Trial, *, algo: AlgoSpec | None,
              params: dict[str, Any], optuna_trial: Any = None) -> dict[str, Any]:
    """Train one trial (resuming from its checkpoints), leaving ``trial.json`` COMPLETE, PRUNED
    or FAIL. Returns the record. Raises ``TrialFailed`` when it failed; a SIGTERM leaves it
    STOPPED with why and exits with the signal's status."""
    with file_lock(trial.dir.parent / f".{trial.id}.lock"):
        trial.record = read_json(trial.dir / "trial.json") or {}
        if trial.done:
            log(f"[{trial.id}] already trained: {spec.objective.metric}={trial.record.get('objective')}")
            return trial.record
        trial.dir.mkdir(parents=True, exist_ok=True)
        resume = bool(trial.record) and trial.record.get("state") == "RUNNING"
        trial.save(params=params, state="RUNNING", started=trial.record.get("started") or utcnow(), error=None,
                   pid=os.getpid(), algorithm=algo.name if algo else None,
                   command=spec.command.run if spec.command else None)
        log(f"[{trial.id}] {'resuming' if resume else 'starting'}"
            f"{' ' + algo.name if algo else ''} with {json.dumps(params, sort_keys=True)}")
        try:
            with stopped_on_sigterm():
                if algo is not None:
                    framework = _train_builtin(ctx, spec, trial, algo, params, optuna_trial)
                else:
                    framework = train_command(ctx, spec, trial, params, optuna_trial)
        except TrialStopped as exc:
            # a stopped trial is not a failed one: select ranks the others and lists it with
            # why (the AutoML budget's STOPPED path); the exit status is the signal's, as before
            trial.save(state="STOPPED", finished=utcnow(), error=str(exc))
            log(f"[{trial.id}] {exc}")
            raise SystemExit(128 + signal.SIGTERM) from None
        except Pruned as exc:
            trial.save(state="PRUNED", finished=utcnow(), error=None, pruned_at=exc.step)
            return trial.record
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a trial's failure is data for the study
            msg = str(exc) if isinstance(exc, KilnError) else f"{type(exc).__name__}: {exc}"
            trial.save(state="FAIL", finished=utcnow(), error=msg[:2000])
            log(f"[{trial.id}] failed: {msg}")
            raise TrialFailed(f"trial {trial.id} failed: {msg}") from None
        obj = trial.record.get("metrics", {}).get(spec.objective.metric)
        trial.save(state="COMPLETE", finished=utcnow(), framework=framework, objective=obj)
        log(f"[{trial.id}] done: {spec.objective.metric}={obj}")
        return trial.record


def _train_builtin(ctx: StepContext, spec: ExperimentSpec, trial: Trial, algo_spec: AlgoSpec,
                   params: dict[str, Any], optuna_trial: Any) -> str:
    data = read_json(run_folder(ctx) / "data.json")
    algo = get_algorithm(algo_spec.name)
    if algo.framework != "pytorch":
        tensorboardx_without_torch()
    else:
        import torch

        # parallel trials share the machine: one torch thread pool each, not one per core each
        parallel = spec.hpo.parallelTrials if spec.mode == "hpo" and spec.hpo else 1
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel))
    hp = {**algo_spec.hyperparameters, **params}
    hp_model = algo.hyperparameters(hp)  # bad names/values: a clear error before any data is read
    td = load_train_data(ctx.config.repo, data, algo_spec.split or spec.split)
    rep = Reporter(trial, spec.objective, total=getattr(hp_model, "epochs", None), optuna_trial=optuna_trial,
                   keep_checkpoints=spec.checkpoint.keep)
    kwargs: dict[str, Any] = {}
    if algo.data_type == "tabular":
        kwargs["featurization"] = (algo_spec.featurization or spec.featurization) != "off"
        from kiln.algorithms.tabular import CV_MAX_ROWS, SklearnAlgorithm

        if spec.mode == "automl" and isinstance(algo, SklearnAlgorithm):
            kwargs["cv_max_rows"] = CV_MAX_ROWS  # a small table: compared by cross-validation, refitted
    if algo_spec.pretrained:
        p = Path(algo_spec.pretrained)
        kwargs["pretrained"] = p if p.is_absolute() else ctx.config.repo / p
    ck = trial.dir / "checkpoints"
    saved = list_checkpoints(ck)
    resume_from = ck if saved else None
    if saved:
        log(f"[{trial.id}] resuming from checkpoint {saved[-1].name}")
    which = spec.registration.checkpoint if spec.registration else "best"
    keep_best = (spec.objective.metric, spec.objective.direction) if which == "best" else None
    try:
        model = algo.train(td, hp_model, callbacks=_ReporterCallback(rep, spec.checkpoint, keep_best),
                           workdir=trial.dir, resume_from=resume_from, **kwargs)
    finally:
        rep.close()
    chosen = (model.meta or {}).get("checkpoint")
    final = _reported(model.history, chosen) if model.history else dict(rep.last)
    categories = None
    if td.has_split("test"):
        ev = algo.evaluate(model, td, "test")
        final.update(ev)
        categories = per_category("test", ev.artifacts)
    if categories is None and algo.task == "semantic-segmentation" and td.has_split("validation"):
        categories = per_category("validation", algo.evaluate(model, td, "validation").artifacts)
    clean = {k: float(v) for k, v in final.items() if isinstance(v, (int, float))}
    out = trial.dir / "model"
    tmp = trial.dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save(model, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    _trial_eval(trial, algo, model, td)
    # the metrics of the weights registered, not of the last report: the chosen report's values
    # replace the reporter's running ones
    trial.save(metrics={**trial.record.get("metrics", {}), **clean}, checkpoint=chosen, perCategory=categories,
               validation=(model.meta or {}).get("validation"))
    return algo.framework


def _reported(history: list[tuple[int, dict[str, float]]], chosen: dict[str, Any] | None) -> dict[str, Any]:
    """The metrics of the report whose weights the model holds (``meta["checkpoint"]["step"]``),
    merged over the earlier reports' (a steps-based loop reports train_loss and validation
    metrics at different steps); the last report when the algorithm states no choice."""
    step = (chosen or {}).get("step")
    out: dict[str, Any] = {}
    for s, m in history:
        if step is not None and s > step:
            break
        out.update(m)
    return out


def per_category(split: str, artifacts: dict[str, Any]) -> dict[str, Any] | None:
    """EasyMaker's per-category segmentation metrics from an evaluation's artifacts, by label:
    ``{"split", "labels", "iou": [...], "accuracy": [...]}`` (None for a category absent from both
    prediction and label, where the value is undefined); None when the evaluation has none."""
    if "per_category_iou" not in artifacts:
        return None

    def clean(vs: list[Any]) -> list[float | None]:
        return [None if v is None or v != v else round(float(v), 6) for v in vs]

    return {"split": split, "labels": [str(x) for x in artifacts.get("labels", [])],
            "iou": clean(artifacts["per_category_iou"]), "accuracy": clean(artifacts.get("per_category_accuracy", []))}


class _ReporterCallback(ReportCallback):
    """The algorithm's callback: reports go to the trial's ``Reporter``; ``checkpoint`` (the
    spec's) says how often the training loop saves a resumable checkpoint; ``keep_best`` (the
    objective, unless ``register.checkpoint: last``) which weights the loop returns."""

    def __init__(self, rep: Reporter, checkpoint: Any = None, keep_best: tuple[str, str] | None = None) -> None:
        self.rep = rep
        self.keep_best = keep_best
        if checkpoint is not None:
            self.checkpoint_every, self.checkpoint_unit = checkpoint.every, checkpoint.unit

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.rep.report(step, metrics)


def _trial_eval(trial: Trial, algo: Any, model: Any, td: Any) -> None:
    """A tabular classifier's validation scores, written now while scikit-learn and the model
    are loaded: the select step then copies the chosen trial's file instead of importing
    scikit-learn and unpickling the model (about 1.8 s of every run's serial tail). Best effort;
    select computes it itself when the file is missing (image models: another validation pass)."""
    if algo.task != "classification" or algo.data_type != "tabular":
        return
    try:
        classes = (model.meta or {}).get("classes")
        # small files only: every trial keeps one until select (larger splits: select computes it)
        doc = eval_doc(algo, model, td, classes, max_values=50_000) if classes else None
        if doc is not None:
            write_json(trial.dir / "eval.json", doc, indent=None)
    except Exception as exc:  # noqa: BLE001 - report curves are a convenience
        log(f"[{trial.id}] no validation scores saved for the report: {type(exc).__name__}: {exc}")


def train(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Experiment).spec
    run = run_folder(ctx)
    if "parameters" in ctx.args:
        try:
            params = json.loads(ctx.args["parameters"])
        except ValueError:
            raise KilnError(f"--arg parameters is not JSON: {ctx.args['parameters'][:80]}") from None
        canon = [json.dumps(p, sort_keys=True) for p in spec.parameterSets]
        key = json.dumps(params, sort_keys=True)
        if key not in canon:
            raise KilnError("--arg parameters is not one of spec.parameterSets")
        number = canon.index(key)
        trial = Trial(run, f"p{number}", number)
    else:
        params, number = {}, 0
        trial = Trial(run, "run", 0)
    rec = run_trial(ctx, spec, trial, algo=spec.algorithm, params=params)
    return {"trial": trial.id, "state": rec["state"], "objective": rec.get("objective")}
