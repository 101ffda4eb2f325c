"""Hyperparameter search on Optuna: the study (RDB storage in the run folder, shared by the
parallel hpo-workers), samplers and pruners from the spec, the create-study step and the worker
loop that asks, trains and tells until the study is told to stop. Optuna is imported inside the
functions: the other steps never pay for it."""

from __future__ import annotations

import functools
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from kiln._util.fs import read_json
from kiln._util.proc import pid_alive
from kiln.api import Experiment
from kiln.api.experiment import Algorithm as AlgoSpec
from kiln.api.experiment import ExperimentSpec
from kiln.controller.experiment.home import STUDY, TrialFailed, file_lock, log, run_folder
from kiln.controller.experiment.training import run_trial
from kiln.controller.experiment.trial import Trial
from kiln.controller.steps import StepContext
from kiln.errors import KilnError


def _storage(run: Path) -> Any:
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{run / 'study.db'}",
                                      engine_kwargs={"connect_args": {"timeout": 120}})


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def search_space(spec: ExperimentSpec, algo: AlgoSpec | None) -> dict[str, Any]:
    if algo is not None:
        return dict(algo.searchSpace)
    assert spec.command is not None
    return dict(spec.command.searchSpace)


def _grid(space: dict[str, Any]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for k, p in space.items():
        if p.type == "choice":
            grid[k] = list(p.values)
        elif p.type == "int":
            grid[k] = list(range(p.low, p.high + 1, p.step))
        elif p.step:
            n = int(round((p.high - p.low) / p.step))
            grid[k] = [p.low + i * p.step for i in range(n + 1)]
        else:
            raise KilnError(f"sampler grid: searchSpace.{k} is a continuous float range",
                            hint="give it a step, make it a choice, or use sampler tpe/random")
    return grid


def make_sampler(spec: ExperimentSpec, space: dict[str, Any], worker: str = "0") -> Any:
    import optuna

    hpo = spec.hpo
    assert hpo is not None
    s = hpo.sampler
    # parallel workers with one seed would propose the very same parameters: offset it per worker.
    # Not for the grid: its seed shuffles the grid, workers share out points by trial number, and
    # so must all see one order (other seeds: the same points twice, others never)
    seed = None if s.seed is None else s.seed + (0 if s.type == "grid" else 7919 * int(worker or 0))
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: _grid_sampler_class()(_grid(space), seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
    }
    return samplers[s.type]()


@functools.cache
def _grid_sampler_class() -> type:
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler, except that it never calls ``study.stop()`` after the last grid
        point: that raises RuntimeError outside ``study.optimize`` (optuna#5141), and kiln's
        workers ask and tell. They stop on their own once every point has a trial (_stop_reason)."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler


def _grid_size(spec: ExperimentSpec, space: dict[str, Any]) -> int | None:
    """How many points the grid sampler has (None for the other samplers)."""
    if spec.hpo is None or spec.hpo.sampler.type != "grid":
        return None
    return math.prod(len(v) for v in _grid(space).values())


def make_pruner(spec: ExperimentSpec) -> Any:
    import optuna

    assert spec.hpo is not None
    p = spec.hpo.pruner
    pruners = {
        "none": lambda: optuna.pruners.NopPruner(),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=p.warmupSteps),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=max(1, p.warmupSteps or 1)),
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, p.warmupSteps or 1)),
    }
    return pruners[p.type]()


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, p in space.items():
        if p.type == "float":
            out[k] = trial.suggest_float(k, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            out[k] = trial.suggest_int(k, p.low, p.high, log=p.log, step=p.step)
        else:
            out[k] = trial.suggest_categorical(k, list(p.values))
    return out


def candidate_study(candidate: str | None) -> str:
    return STUDY if candidate is None else f"{STUDY}-{candidate}"


def ensure_study(run: Path, spec: ExperimentSpec, algo: AlgoSpec | None, study_name: str,
                  max_trials: int) -> dict[str, Any]:
    import optuna

    _quiet_optuna()
    space = search_space(spec, algo)
    direction = spec.objective.direction
    study = optuna.create_study(study_name=study_name, storage=_storage(run), direction=direction,
                                load_if_exists=True)
    enqueued = {}
    if not study.user_attrs.get("created"):
        # a parameter both fixed and searched starts from its fixed value (a template's value)
        fixed = dict(algo.hyperparameters) if algo is not None else {}
        enqueued = {k: v for k, v in fixed.items() if k in space}
        if enqueued:
            study.enqueue_trial(enqueued, skip_if_exists=True)
        study.set_user_attr("started", time.time())
        study.set_user_attr("maxTrials", max_trials)
        study.set_user_attr("created", True)
    return {"study": study_name, "direction": direction, "searchSpace": sorted(space), "enqueued": enqueued,
            "trials": len(study.trials)}


def create_study(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Experiment).spec
    assert spec.hpo is not None
    run = run_folder(ctx)
    with file_lock(run / "study.lock"):
        out = ensure_study(run, spec, spec.algorithm, STUDY, spec.hpo.maxTrials)
    log(f"study {out['study']}: {spec.hpo.maxTrials} trials, {spec.hpo.parallelTrials} in parallel, "
        f"{spec.hpo.sampler.type} sampler, {spec.hpo.pruner.type} pruner, {spec.objective.direction} "
        f"{spec.objective.metric}" + (f" (goal {spec.objective.goal})" if spec.objective.goal is not None else ""))
    return out


def _goal_reached(spec: ExperimentSpec, value: float | None) -> bool:
    goal = spec.objective.goal
    if goal is None or value is None:
        return False
    return value >= goal if spec.objective.direction == "maximize" else value <= goal


def _live(study: Any) -> list[Any]:
    """The study's trials, less those interrupted (each is queued again as a new trial) and those
    of training code that has changed since (``staleBefore``, see ``_begin``)."""
    stale = int(study.user_attrs.get("staleBefore", 0))
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("interrupted") and t.number >= stale]


def _budget(study: Any) -> list[Any]:
    """The trials that count against maxTrials and maxFailedTrials: live ones, less the failures
    of earlier rounds (each new apply after a failure stop gets a fresh failure budget)."""
    rnd = int(study.user_attrs.get("round", 0))
    return [t for t in _live(study) if t.state.name != "FAIL" or int(t.user_attrs.get("round", 0)) == rnd]


def code_fingerprint(ctx: StepContext, spec: ExperimentSpec) -> str:
    """What the trials' training code is: the command line and the files it names (the user's
    script) for ``command``, kiln's version for the built-in algorithms."""
    import hashlib
    import shlex

    import kiln

    if spec.command is None:
        return f"kiln {kiln.__version__}"
    h = hashlib.sha256(f"{spec.command.run}\0{spec.command.workdir}".encode())
    cwd = (ctx.config.repo / spec.command.workdir).resolve()
    for tok in shlex.split(spec.command.run):
        f = (cwd / tok).resolve()
        if f.is_file() and f.is_relative_to(ctx.config.repo.resolve()):
            h.update(tok.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _begin(study: Any, run: Path, worker: str, code: str, candidate: str | None, max_failed: int) -> int:
    """Start (or join) a round of the study for ``worker``; returns the round number.

    The rule (README, "Retrying a failed HPO search"): a worker that finds the study stopped by failures
    (maxFailedTrials, or the objective never reported) starts a new round when its own slot
    already ran in this round - that is a new apply, not a late worker of the same one - or when
    the training code changed: the failure budget is fresh, the stop is lifted. Completed and
    pruned trials are kept (the search goes on from them) unless the code changed: those of the
    old code are then marked stale and count for nothing (not in the leaderboard either)."""
    attrs = study.user_attrs
    rnd, workers, then = int(attrs.get("round", 0)), list(attrs.get("roundWorkers") or []), attrs.get("roundCode")
    changed = then is not None and then != code
    failed = attrs.get("stop") == "no-metric" or \
        sum(t.state.name == "FAIL" for t in _budget(study)) >= max_failed
    if changed or (failed and worker in workers):
        if changed:
            _mark_stale(study, run, candidate)
        rnd, workers = rnd + 1, []
        if attrs.get("stop") in ("failed", "no-metric"):
            study.set_user_attr("stop", None)
        log(f"study round {rnd}: " + ("the training code changed; earlier trials no longer count" if changed
                                      else "a fresh failure budget for this apply; completed trials are kept"))
    study.set_user_attr("round", rnd)
    study.set_user_attr("roundCode", code)
    study.set_user_attr("roundWorkers", sorted({*workers, worker}))
    return rnd


def _mark_stale(study: Any, run: Path, candidate: str | None) -> None:
    """Every trial so far is of the old code: in the study by number (a finished Optuna trial
    cannot be changed), in its ``trial.json`` for the leaderboard and the summary."""
    trials = study.get_trials(deepcopy=False)
    study.set_user_attr("staleBefore", len(trials))
    for t in trials:
        tr = Trial(run, _trial_id(candidate, t.number), t.number, candidate=candidate)
        if tr.record and not tr.record.get("stale"):
            tr.save(stale=True)


def _counts(trials: list[Any]) -> dict[str, int]:
    out = {"RUNNING": 0, "COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "WAITING": 0}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _stop_reason(study: Any, spec: ExperimentSpec, max_trials: int, max_failed: int, timeout: int | None,
                 grid_size: int | None = None) -> str | None:
    reason = study.user_attrs.get("stop")
    if reason:
        return str(reason)
    trials = _budget(study)
    c = _counts(trials)
    if c["FAIL"] >= max_failed:
        return "failed"
    started = c["RUNNING"] + c["COMPLETE"] + c["PRUNED"] + c["FAIL"]
    if started >= max_trials:
        return "max-trials"
    # every grid point has a trial (running or finished; Optuna's grid sampler never proposes a
    # point again, also after a failure in an earlier round)
    if grid_size is not None and not c["WAITING"] and \
            len({t.system_attrs["grid_id"] for t in _live(study) if "grid_id" in t.system_attrs}) >= grid_size:
        return "grid-done"
    if timeout and time.time() - float(study.user_attrs.get("started", time.time())) > timeout:
        return "timeout"
    return None


def _recover_orphans(study: Any, run: Path, worker: str) -> None:
    """Trials left RUNNING by a killed worker (same worker slot, dead pid) are closed as
    interrupted and their parameters queued again; the new trial resumes from their checkpoints."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("worker") != worker or t.user_attrs.get("host") != os.uname().nodename:
            continue
        pid = int(t.user_attrs.get("pid", 0))
        if pid and pid != os.getpid() and pid_alive(pid):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial({**t.params, }, user_attrs={"resume_from": t.number})
        log(f"trial t{t.number:04d} was interrupted (worker {worker} killed); queued again to resume")


def hpo_loop(ctx: StepContext, spec: ExperimentSpec, *, algo: AlgoSpec | None, study_name: str,
             max_trials: int, max_failed: int, worker: str, candidate: str | None = None,
             number_base: int = 0) -> dict[str, Any]:
    """Pull trials from the shared study until it is told to stop. Returns this worker's counts."""
    import optuna

    _quiet_optuna()
    run = run_folder(ctx)
    space = search_space(spec, algo)
    grid_size = _grid_size(spec, space)
    timeout = spec.hpo.timeoutSeconds if spec.hpo else None
    lock = run / "study.lock"
    mine = 0
    study = None
    code = code_fingerprint(ctx, spec)
    while True:
        with file_lock(lock):
            if study is None:
                study = optuna.load_study(study_name=study_name, storage=_storage(run),
                                          sampler=make_sampler(spec, space, worker), pruner=make_pruner(spec))
            if mine == 0:
                _recover_orphans(study, run, worker)
                rnd = _begin(study, run, worker, code, candidate, max_failed)
            reason = _stop_reason(study, spec, max_trials, max_failed, timeout, grid_size)
            if reason is not None:
                break
            ot = study.ask()
            ot.set_user_attr("worker", worker)
            ot.set_user_attr("pid", os.getpid())
            ot.set_user_attr("host", os.uname().nodename)
            ot.set_user_attr("round", rnd)
            params = suggest(ot, space)
        mine += 1
        trial = Trial(run, _trial_id(candidate, ot.number), number_base + ot.number, candidate=candidate)
        prev = ot.user_attrs.get("resume_from")
        if prev is not None:  # continue the interrupted trial's training from its checkpoints
            old = run / "trials" / _trial_id(candidate, int(prev))
            if (old / "checkpoints").is_dir() and not trial.dir.exists():
                shutil.copytree(old / "checkpoints", trial.dir / "checkpoints")
        _train_and_tell(ctx, spec, study, ot, trial, algo, params)
    c = _counts(_budget(study))
    done = c["COMPLETE"] + c["PRUNED"] + c["FAIL"]
    if reason == "failed":
        last = _last_error(run, candidate)
        raise KilnError(f"stopped after {c['FAIL']} failed trial(s) (maxFailedTrials {spec.hpo.maxFailedTrials if spec.hpo else max_failed})"
                        + (f"; last error: {last}" if last else ""),
                        hint="fix the training (see `kiln logs`), then apply again: a new apply gets a fresh "
                             "failure budget and keeps the completed trials")
    if reason == "no-metric":
        raise KilnError(str(study.user_attrs.get("stop_detail")),
                        hint="set objective.metric to a reported metric, or report it from your script")
    log(f"worker {worker}: stopping ({reason}); study {done}/{max_trials} trials done: "
        f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed")
    return {"worker": worker, "ranTrials": mine, "stop": reason, **{k.lower(): v for k, v in c.items()}}


def _trial_id(candidate: str | None, number: int) -> str:
    return f"t{number:04d}" if candidate is None else f"c-{candidate}-t{number:03d}"


def _train_and_tell(ctx: StepContext, spec: ExperimentSpec, study: Any, ot: Any, trial: Trial,
                    algo: AlgoSpec | None, params: dict[str, Any]) -> None:
    """Train the asked trial and tell the study its outcome; a trial that never reported the
    objective, or one that reached the goal, tells the study to stop (``stop`` user attribute)."""
    import optuna

    tid = trial.id
    try:
        rec = run_trial(ctx, spec, trial, algo=algo, params=params, optuna_trial=ot)
    except TrialFailed:
        study.tell(ot, state=optuna.trial.TrialState.FAIL)
        return
    if rec["state"] == "PRUNED":
        study.tell(ot, state=optuna.trial.TrialState.PRUNED)
        return
    value = rec.get("objective")
    if value is None:
        have = ", ".join(sorted(rec.get("metrics", {}))) or "none"
        msg = (f"objective metric {spec.objective.metric!r} was never reported by trial {tid}; "
               f"reported: {have}")
        trial.save(state="FAIL", error=msg)
        study.tell(ot, state=optuna.trial.TrialState.FAIL)
        study.set_user_attr("stop", "no-metric")
        study.set_user_attr("stop_detail", msg)
        return
    study.tell(ot, float(value))
    if _goal_reached(spec, float(value)):
        log(f"[{tid}] goal reached: {spec.objective.metric}={value:.4g} (goal {spec.objective.goal}); "
            "no new trials start")
        study.set_user_attr("stop", "goal")
        study.set_user_attr("stop_detail", f"goal {spec.objective.goal} reached by trial {tid} ({value:.4g})")


def _last_error(run: Path, candidate: str | None) -> str:
    recs = [read_json(p) or {} for p in (run / "trials").glob("*/trial.json")]
    recs = [r for r in recs if r.get("state") == "FAIL" and r.get("candidate") == candidate and r.get("error")]
    recs.sort(key=lambda r: r.get("finished") or "")
    return recs[-1]["error"][:500] if recs else ""


def hpo_worker(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Experiment).spec
    assert spec.hpo is not None
    worker = ctx.args.get("worker", "0")
    hpo = spec.hpo
    return hpo_loop(ctx, spec, algo=spec.algorithm, study_name=STUDY, max_trials=hpo.maxTrials,
                    max_failed=max(1, hpo.maxFailedTrials), worker=worker)
