"""The AutoML train-candidate step: one candidate algorithm, trained once or searched in its
own study; or (no candidate list) the catalogue's defaults for the dataset's task, in turn.

The time budget (``automl.timeBudget``) is the whole experiment's: it runs from the start of the
prepare-data task (its process, imports included) to the registered model, so the search ends
early enough for what follows it (select, ONNX export with its parity check, register: "the
tail"). The search's deadline is the budget less an estimate of the tail (``tail_reserve``:
from this process's start-up and the best candidate's fit time, at least ``TAIL_MIN_S``), and
never earlier than ``SEARCH_MIN_SHARE`` of the budget after the first candidate started: a
budget smaller than the experiment's fixed costs (start-ups, imports, reading the table) still
gets a search, and overruns by about those costs. ``automl-start.json`` in the run folder (shared by parallel candidate tasks) holds
when the experiment and the first candidate started. A candidate starts only while search time
is left, and its HPO (``trialsPerCandidate``) stops starting trials when it is spent. With a budget, each candidate trains in a forked child process
that is killed when the budget runs out, so a fit in progress at the deadline (a big forest,
boosting in OpenMP threads) cannot overrun it: its trial is recorded as STOPPED with the reason.
A child, not a thread or a callback: scikit-learn's fits cannot be interrupted from inside, and
the built-in tabular algorithms fit in that one process (n_jobs=1, OpenMP threads), so killing it
frees everything. Candidates start in the listed order (defaults: HistGradientBoosting first),
so a small budget keeps the first ones. A candidate that did not start is recorded as SKIPPED
with the reason, like a failed one.

Without a candidate list, one task trains the defaults in turn; it loads the table once and
imports scikit-learn before the first fork (each candidate's child inherits both), and after
the search exports the leading candidate to ONNX in this process (``export.export_trial``), so
the export-onnx task that follows finds it done instead of importing scikit-learn and skl2onnx
and reading the table again. With a candidate list (one task each, in parallel), the task that
finishes last does that export."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

from kiln._util.clock import parse_utc, utcnow
from kiln._util.fs import read_json
from kiln._util.proc import started_at
from kiln.algorithms.registry import get_algorithm_class
from kiln.api import Experiment
from kiln.api.experiment import HPO, ExperimentSpec
from kiln.api.experiment import Algorithm as AlgoSpec
from kiln.controller.experiment.home import TrialFailed, file_lock, log, run_folder, write_json
from kiln.controller.experiment.hpo import candidate_study, ensure_study, hpo_loop
from kiln.controller.experiment.results import automl_candidates, leaderboard, trials
from kiln.controller.experiment.training import run_trial
from kiln.controller.experiment.trial import Trial
from kiln.controller.steps import StepContext
from kiln.errors import KilnError

# The tail after the search (select, export-onnx and register, each a short kiln process; the
# ONNX conversion and parity check; a refit): never estimated below this many seconds.
TAIL_MIN_S = 3.0
# per tail process, how many times this process's own start-up (interpreter and kiln imports,
# measured: it grows with the machine's load as theirs will)
TAIL_PROCESSES = 3
# the ONNX conversion and parity check against the native model, as a share of the model's fit
# time (a forest's conversion walks every tree its fit grew)
TAIL_EXPORT_SHARE = 0.3
# the least share of the budget the search gets from its first candidate's start, whatever the
# estimates: on a loaded machine 15 s can go to start-ups and imports before the first fit
SEARCH_MIN_SHARE = 0.25


def mark_experiment_start(ctx: StepContext, spec: ExperimentSpec) -> None:
    """The budget's clock starts with the experiment (the prepare-data task calls this): the
    start of this process, imports included. A retried or resumed run keeps the first stamp."""
    if spec.mode != "automl" or spec.automl is None or spec.automl.timeBudget is None:
        return
    run = run_folder(ctx)
    with file_lock(run / "automl-start.lock"):
        stamp = read_json(run / "automl-start.json") or {}
        if "experiment" not in stamp:
            write_json(run / "automl-start.json", {**stamp, "experiment": started_at() or time.time()})


def _stamp(ctx: StepContext) -> dict[str, float]:
    """``automl-start.json``: when the experiment and the search's first candidate started."""
    run = run_folder(ctx)
    with file_lock(run / "automl-start.lock"):
        stamp = read_json(run / "automl-start.json") or {}
        if "started" not in stamp:
            stamp = {"started": time.time(), **stamp}
            stamp.setdefault("experiment", stamp["started"])  # prepare-data ran before this version
            write_json(run / "automl-start.json", stamp)
    return {k: float(v) for k, v in stamp.items()}


def tail_reserve(startup_s: float, load_s: float, fit_s: float, export: bool, exported_here: bool) -> float:
    """Seconds kept from the budget for what follows the search: ``TAIL_PROCESSES`` short kiln
    processes, each about as slow to start as this one was (``startup_s``), and with ``export``
    the leading model's ONNX export: skl2onnx's import (about what importing scikit-learn and
    reading the table took here, ``load_s``), a share of its fit time ``fit_s`` and, unless this
    process exports it with both loaded (``exported_here``), that import and read once more."""
    tail = TAIL_PROCESSES * startup_s
    if export:
        tail += load_s * (1 if exported_here else 2) + TAIL_EXPORT_SHARE * fit_s
    return max(TAIL_MIN_S, tail)


def budget_left(ctx: StepContext, spec: ExperimentSpec, reserve: float = 0.0) -> float | None:
    """Seconds of search left (None: no budget): ``automl.timeBudget`` from the experiment's
    start less ``reserve`` (the tail's estimate), and at least ``SEARCH_MIN_SHARE`` of the
    budget from the first candidate's start."""
    assert spec.automl is not None
    budget = spec.automl.timeBudget
    if budget is None:
        return None
    stamp = _stamp(ctx)
    end = max(stamp["experiment"] + budget - reserve, stamp["started"] + budget * SEARCH_MIN_SHARE)
    return end - time.time()


def train_candidate(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Experiment).spec
    assert spec.automl is not None
    cands = automl_candidates(spec, read_json(run_folder(ctx) / "data.json"))
    names = [c.name for c in cands]
    name = ctx.args.get("candidate", "")
    onnx = bool(spec.registration and "onnx" in spec.registration.export)
    if name == "auto" and not spec.automl.candidates:
        log(f"automl candidates (the catalogue's for the task): {', '.join(names)}")
        startup, load = _warm_up(ctx, spec)
        results = []
        for i, c in enumerate(cands):
            reserve = tail_reserve(startup, load, _leader_fit_s(ctx, spec), onnx, exported_here=True)
            results.append(_one(ctx, spec, i, c, reserve))
        if spec.automl.ensemble:
            _ensemble(ctx, spec, tail_reserve(startup, load, _leader_fit_s(ctx, spec), onnx, exported_here=True))
        if onnx and not isinstance(spec.selectTrial, int):
            _export_leader(ctx, spec)
        return {"candidates": results}
    if name not in names:
        raise KilnError(f"--arg candidate={name!r} is not in automl.candidates ({', '.join(names)})")
    idx = names.index(name)
    startup, load = _warm_up(ctx, spec)
    reserve = tail_reserve(startup, load, _leader_fit_s(ctx, spec), onnx, exported_here=False)
    out = _one(ctx, spec, idx, cands[idx], reserve)
    if onnx and not isinstance(spec.selectTrial, int) and _search_over(ctx, names):
        # the last candidate task to finish exports the leader while its libraries are loaded
        with file_lock(run_folder(ctx) / "export.lock"):
            _export_leader(ctx, spec)
    return out


def _ensemble(ctx: StepContext, spec: ExperimentSpec, reserve: float) -> None:
    """The top candidates' ensemble as one more trial (``ensemble``), while search time is left:
    it costs a prediction pass (a cross-validation on a small table). Best effort: a failure
    is logged and the single candidates compete alone."""
    from kiln.controller.experiment.ensemble import build_ensemble

    left = budget_left(ctx, spec, reserve)
    if left is not None and left <= 0:
        log("no ensemble of the top candidates: the time budget was spent")
        return
    try:
        build_ensemble(ctx, spec)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log(f"no ensemble of the top candidates: {type(exc).__name__}: {exc}")


def _search_over(ctx: StepContext, names: list[str]) -> bool:
    """Every candidate has a trial and none is still running (parallel candidate tasks)."""
    recs = trials(run_folder(ctx))
    return {r.get("candidate") for r in recs} >= set(names) and all(r.get("state") != "RUNNING" for r in recs)


def _warm_up(ctx: StepContext, spec: ExperimentSpec) -> tuple[float, float]:
    """Read the table and import scikit-learn once, before the candidates' children fork: each
    inherits both instead of paying for them again (seconds each on a loaded machine). Returns
    (this process's start-up until now, the seconds the warm-up took): what the tail's
    processes will pay again, at the machine's present load (``tail_reserve``)."""
    from kiln.controller.experiment.data import preload_train_data

    t0 = time.time()
    startup = t0 - (started_at() or t0)
    try:
        import sklearn.pipeline  # noqa: F401 - imported for the children
        preload_train_data(ctx.config.repo, read_json(run_folder(ctx) / "data.json"), spec.split)
    except Exception as exc:  # noqa: BLE001 - each candidate loads (and reports a failure) itself
        log(f"table not preloaded for the candidates: {type(exc).__name__}: {exc}")
    return startup, time.time() - t0


def _leader(ctx: StepContext, spec: ExperimentSpec) -> dict[str, Any] | None:
    """The trial select would choose now (the leaderboard's first), if any."""
    recs = trials(run_folder(ctx))
    board = leaderboard(spec, recs)
    return next((r for r in recs if r["id"] == board[0]["trial"]), None) if board else None


def _leader_fit_s(ctx: StepContext, spec: ExperimentSpec) -> float:
    rec = _leader(ctx, spec)
    if not rec or not rec.get("started") or not rec.get("finished"):
        return 0.0
    return max(0.0, (parse_utc(rec["finished"]) or 0.0) - (parse_utc(rec["started"]) or 0.0))


def _export_leader(ctx: StepContext, spec: ExperimentSpec) -> None:
    """Export the leading candidate to ONNX here, where scikit-learn and the table are loaded;
    the export-onnx task then only checks it is the selected trial's. Best effort: a failure is
    left for that task to report (it exports again and fails with its message)."""
    from kiln.controller.experiment.export import current_export, export_trial

    rec = _leader(ctx, spec)
    if rec is None or current_export(spec, run_folder(ctx) / "trials" / rec["id"]):
        return  # none finished, or another candidate task exported it already
    t0 = time.time()
    try:
        export_trial(ctx, spec, run_folder(ctx), rec["id"])
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log(f"ONNX export of {rec['id']} left to the export-onnx task: {type(exc).__name__}: {exc}")
        return
    log(f"[{rec['id']}] exported to ONNX (parity checked) in {time.time() - t0:.1f} s")


def _one(ctx: StepContext, spec: ExperimentSpec, idx: int, cand: AlgoSpec, reserve: float = 0.0) -> dict[str, Any]:
    """Train one candidate; a failure (or the spent budget) is recorded in its trial, not raised:
    one failing candidate does not sink the comparison, select reports it."""
    assert spec.automl is not None
    name = cand.name
    get_algorithm_class(name)  # unknown names: the registry's error lists the valid ones
    run = run_folder(ctx)
    left = budget_left(ctx, spec, reserve)
    if left is not None and left <= 0:
        trial = Trial(run, f"c-{name}", idx, candidate=name)
        if not trial.record.get("state"):
            why = (f"not started: the time budget ({spec.automl.timeBudget} s) was spent"
                   f"{f' (less {reserve:.0f} s kept for export and registration)' if reserve else ''}")
            trial.save(params={}, state="SKIPPED", algorithm=name, finished=utcnow(), error=why)
            log(f"[{trial.id}] {why}")
        return {"candidate": name, "state": trial.record.get("state"), "error": trial.record.get("error")}
    if left is None:
        return _train(ctx, spec, idx, cand)
    return _train_until(ctx, spec, idx, cand, left, reserve)


def _train(ctx: StepContext, spec: ExperimentSpec, idx: int, cand: AlgoSpec, reserve: float = 0.0) -> dict[str, Any]:
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
    left = budget_left(ctx, spec, reserve)
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


def _train_until(ctx: StepContext, spec: ExperimentSpec, idx: int, cand: AlgoSpec, left: float,
                 reserve: float) -> dict[str, Any]:
    """``_train`` in a forked child, killed when the budget's ``left`` seconds run out; its
    trials still RUNNING then are recorded as STOPPED. The child stays in the task's process
    group, so cancelling the task (the runner signals the group) ends it too."""
    try:
        mp = multiprocessing.get_context("fork")
    except ValueError:  # no fork on this platform: in this process, a started fit runs to its end
        return _train(ctx, spec, idx, cand, reserve)
    recv, send = mp.Pipe(duplex=False)
    child = mp.Process(target=_child, args=(send, ctx, spec, idx, cand, reserve), name=f"automl-{cand.name}")
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
           f"({time.time() - started:.1f} s in{f'; {reserve:.0f} s kept for export and registration' if reserve else ''})")
    return _end_running(ctx, cand.name, "STOPPED", why)


def _child(conn: Connection, ctx: StepContext, spec: ExperimentSpec, idx: int, cand: AlgoSpec,
           reserve: float) -> None:
    """The forked child: train, send ("ok", result) or ("error", (message, hint)) to the parent."""
    try:
        conn.send(("ok", _train(ctx, spec, idx, cand, reserve)))
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
