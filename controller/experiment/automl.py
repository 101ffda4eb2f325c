"""The AutoML train-candidate step: one candidate algorithm, trained once or searched in its
own study; or (no candidate list) the catalogue's defaults for the dataset's task, in turn.

The time budget (``automl.timeBudget``) is the whole search's: it runs from the first candidate
to start (``automl-start.json`` in the run folder, shared by parallel candidate tasks). A
candidate starts only while budget is left, and its HPO (``trialsPerCandidate``) stops starting
trials when the budget is spent. With a budget, each candidate trains in a forked child process
that is killed when the budget runs out, so a fit in progress at the deadline (a big forest,
boosting in OpenMP threads) cannot overrun it: its trial is recorded as STOPPED with the reason.
A child, not a thread or a callback: scikit-learn's fits cannot be interrupted from inside, and
the built-in tabular algorithms fit in that one process (n_jobs=1, OpenMP threads), so killing it
frees everything. Candidates start in the listed order (defaults: HistGradientBoosting first),
so a small budget keeps the first ones. A candidate that did not start is recorded as SKIPPED
with the reason, like a failed one."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

from kiln._util.clock import utcnow
from kiln._util.fs import read_json
from kiln.algorithms.registry import get_algorithm_class
from kiln.api import Experiment
from kiln.api.experiment import HPO, ExperimentSpec
from kiln.api.experiment import Algorithm as AlgoSpec
from kiln.controller.experiment.home import TrialFailed, file_lock, log, run_folder, write_json
from kiln.controller.experiment.hpo import candidate_study, ensure_study, hpo_loop
from kiln.controller.experiment.results import automl_candidates, trials
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
    left = budget_left(ctx, spec)
    if left is not None and left <= 0:
        trial = Trial(run, f"c-{name}", idx, candidate=name)
        if not trial.record.get("state"):
            why = f"not started: the time budget ({spec.automl.timeBudget} s) was spent"
            trial.save(params={}, state="SKIPPED", algorithm=name, finished=utcnow(), error=why)
            log(f"[{trial.id}] {why}")
        return {"candidate": name, "state": trial.record.get("state"), "error": trial.record.get("error")}
    if left is None:
        return _train(ctx, spec, idx, cand)
    return _train_until(ctx, spec, idx, cand, left)


def _train(ctx: StepContext, spec: ExperimentSpec, idx: int, cand: AlgoSpec) -> dict[str, Any]:
    """Train the candidate: one trial, or its own HPO study (``trialsPerCandidate``)."""
    assert spec.automl is not None
    name, run, n = cand.name, run_folder(ctx), spec.automl.trialsPerCandidate
    if n <= 1 or not cand.searchSpace:
        trial = Trial(run, f"c-{name}", idx, candidate=name)
        try:
            rec = run_trial(ctx, spec, trial, algo=cand, params={})
        except TrialFailed as exc:
            return {"candidate": name, "state": "FAIL", "error": str(exc)[:300]}
        return {"candidate": name, "state": rec["state"], "objective": rec.get("objective")}

    hpo = spec.hpo or HPO(maxTrials=n)
    left = budget_left(ctx, spec)
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


def _train_until(ctx: StepContext, spec: ExperimentSpec, idx: int, cand: AlgoSpec, left: float) -> dict[str, Any]:
    """``_train`` in a forked child, killed when the budget's ``left`` seconds run out; its
    trials still RUNNING then are recorded as STOPPED. The child stays in the task's process
    group, so cancelling the task (the runner signals the group) ends it too."""
    try:
        mp = multiprocessing.get_context("fork")
    except ValueError:  # no fork on this platform: in this process, a started fit runs to its end
        return _train(ctx, spec, idx, cand)
    recv, send = mp.Pipe(duplex=False)
    child = mp.Process(target=_child, args=(send, ctx, spec, idx, cand), name=f"automl-{cand.name}")
    started = time.time()
    child.start()
    send.close()  # the child holds the only writer: its death reads as end of file here
    try:
        if recv.poll(max(0.0, left)):
            try:
                kind, value = recv.recv()
            except EOFError:
                kind, value = "died", None
            child.join()
            if kind == "ok":
                return value  # type: ignore[no-any-return]
            if kind == "error":
                raise KilnError(value[0], hint=value[1])
            why = f"its training process ended without a result (exit code {child.exitcode})"
            return _end_running(ctx, cand.name, "FAIL", why)
        child.kill()  # SIGKILL: a fit in C/OpenMP code does not run Python signal handlers
        child.join()
    finally:
        recv.close()
        if child.is_alive():  # the parent itself was interrupted while waiting
            child.kill()
            child.join()
    assert spec.automl is not None
    why = (f"the time budget ({spec.automl.timeBudget} s) ran out while it was fitting "
           f"({time.time() - started:.1f} s in)")
    return _end_running(ctx, cand.name, "STOPPED", why)


def _child(conn: Connection, ctx: StepContext, spec: ExperimentSpec, idx: int, cand: AlgoSpec) -> None:
    """The forked child: train, send ("ok", result) or ("error", (message, hint)) to the parent."""
    try:
        conn.send(("ok", _train(ctx, spec, idx, cand)))
    except KilnError as exc:
        conn.send(("error", (exc.message, exc.hint)))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent, as in-process it would raise
        conn.send(("error", (f"{type(exc).__name__}: {exc}", None)))
    finally:
        conn.close()


def _end_running(ctx: StepContext, name: str, state: str, why: str) -> dict[str, Any]:
    """Record the candidate's trials left RUNNING by its killed (or dead) child as ``state``."""
    run = run_folder(ctx)
    for rec in trials(run):
        if rec.get("candidate") == name and rec.get("state") == "RUNNING":
            trial = Trial(run, rec["id"], rec.get("number", 0), candidate=name)
            trial.save(state=state, finished=utcnow(), error=why)
            log(f"[{trial.id}] {why}")
    return {"candidate": name, "state": state, "error": why}
