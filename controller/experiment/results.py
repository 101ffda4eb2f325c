"""What a run folder's trials add up to: the leaderboard, the record's summary (``summary.json``,
mirrored by the handler while the workflow runs) and the git-tracked results file
(``metrics/<ws>/<name>.json``, ``kiln report``). Reads files only: no training, no ML library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kiln._util.fs import read_json
from kiln.algorithms.registry import automl_defaults
from kiln.api.experiment import Algorithm as AlgoSpec
from kiln.api.experiment import ExperimentSpec
from kiln.controller.experiment.home import TERMINAL, results_rel, write_json
from kiln.controller.steps import StepContext
from kiln.errors import KilnError

# a trial that ended without a model: shown with its reason beside the leaderboard (AutoML:
# SKIPPED never started, the budget was spent; STOPPED was killed fitting when it ran out)
NOT_COMPLETED = ("FAIL", "SKIPPED", "STOPPED")


def automl_candidates(spec: ExperimentSpec, data: dict[str, Any] | None) -> list[AlgoSpec]:
    """The candidates compared: the spec's list, or the catalogue's defaults for the task (the
    spec's, else the dataset's from ``data.json``), cut to ``maxCandidates``. Reads no data."""
    assert spec.automl is not None
    cands = list(spec.automl.candidates)
    if not cands:
        data = data or {}
        task = spec.task or data.get("problem")
        if data.get("type", "tabular") != "tabular" or task not in ("classification", "regression"):
            raise KilnError(f"automl without candidates picks tabular classification or regression algorithms; "
                            f"dataset {data.get('dataset', spec.dataset.name)} is {data.get('type', '?')} "
                            f"({task or 'no task'})",
                            hint="list automl.candidates (see `kiln algorithms list`), or set the "
                                 "Dataset's task: classification | regression")
        cands = [AlgoSpec(name=n) for n in automl_defaults(task)]
    return cands[:spec.automl.maxCandidates]


def trials(run: Path) -> list[dict[str, Any]]:
    """The run's trials, less those of training code that has changed since (``stale``)."""
    recs = [r for p in sorted((run / "trials").glob("*/trial.json")) if (r := read_json(p)) and not r.get("stale")]
    return sorted(recs, key=lambda r: (r.get("number", 0), r.get("id", "")))


def metric_series(run: Path) -> dict[str, dict[str, list[list[float]]]]:
    """Per trial id, each numeric metric it reported as ``[[step, value], ...]``, from the
    trials' ``metrics.jsonl`` as they stand (a trial still training included): what ``kiln
    report`` plots after the fact and the console's live curves poll."""
    series: dict[str, dict[str, list[list[float]]]] = {}
    for f in sorted((run / "trials").glob("*/metrics.jsonl")):
        per: dict[str, list[list[float]]] = {}
        try:
            lines = f.read_text().splitlines()
        except OSError:
            continue  # removed by select while we read: the trial was not chosen
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line being written while we read
            if not isinstance(rec, dict):
                continue
            step = rec.get("step") or 0
            for k, v in rec.items():
                if k in ("step", "time") or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                per.setdefault(k, []).append([step, v])
        series[f.parent.name] = per
    return series


def leaderboard(spec: ExperimentSpec, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed trials, best first; for AutoML with several trials per candidate, each
    candidate's best trial only."""
    done = [r for r in recs if r.get("state") == "COMPLETE" and r.get("objective") is not None]
    sign = -1 if spec.objective.direction == "maximize" else 1
    done.sort(key=lambda r: (sign * float(r["objective"]), r.get("number", 0)))
    if spec.mode == "automl":
        best: dict[str | None, dict[str, Any]] = {}
        for r in done:  # sorted best first: the first trial of each candidate is its best
            best.setdefault(r.get("candidate"), r)
        done = list(best.values())
    keys = [spec.objective.metric, *spec.objective.additionalMetrics]
    out = []
    for rank, r in enumerate(done, 1):
        m = r.get("metrics", {})
        out.append({"rank": rank, "trial": r["id"], "number": r.get("number"), "candidate": r.get("candidate"),
                    "algorithm": r.get("algorithm"), "params": r.get("params", {}),
                    "objective": r["objective"], "metrics": {k: m[k] for k in keys if k in m}})
    return out


def failed(spec: ExperimentSpec, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials that failed or did not start, with why (AutoML: each candidate that has no
    completed trial, with its last reason)."""
    bad = [r for r in recs if r.get("state") in NOT_COMPLETED]
    if spec.mode == "automl":
        ok = {r.get("candidate") for r in recs if r.get("state") == "COMPLETE"}
        last: dict[str | None, dict[str, Any]] = {}
        for r in bad:
            if r.get("candidate") not in ok:
                last[r.get("candidate")] = r
        bad = list(last.values())
    return [{"trial": r["id"], "candidate": r.get("candidate"), "algorithm": r.get("algorithm"),
             "state": r.get("state"), "error": _first_line(r.get("error") or r.get("state") or "?")} for r in bad]


def _first_line(error: str) -> str:
    """An error's first line (scikit-learn appends paragraphs of advice), at most 300 characters."""
    return error.strip().splitlines()[0][:300] if error.strip() else "?"


def summarize(spec: ExperimentSpec, run: Path) -> dict[str, Any]:
    """The record's ``extra`` for an experiment run folder (also used while it runs)."""
    recs = trials(run)
    metric = spec.objective.metric
    if spec.mode == "hpo":
        total = spec.hpo.maxTrials if spec.hpo else 0
    elif spec.mode == "automl":
        assert spec.automl is not None
        per = spec.automl.trialsPerCandidate
        try:
            cands = automl_candidates(spec, read_json(run / "data.json"))
        except KilnError:  # the train step reports it
            cands = []
        total = sum(per if (per > 1 and c.searchSpace) else 1 for c in cands)
        total += any(r.get("candidate") == "ensemble" for r in recs)  # the top candidates' average
    else:
        total = max(1, len(spec.parameterSets))
    finished = [r for r in recs if r.get("state") in (*TERMINAL, *NOT_COMPLETED)]
    states: dict[str, int] = {}
    for r in recs:
        states[r.get("state", "?")] = states.get(r.get("state", "?"), 0) + 1
    sel = read_json(run / "selected.json") or {}
    board = sel.get("leaderboard") or leaderboard(spec, recs)
    best = sel.get("selected") or (board[0] if board else None)
    registered = read_json(run / "registered.json")
    data = read_json(run / "data.json") or {}
    compact = [{"id": r["id"], "number": r.get("number"), "candidate": r.get("candidate"),
                "params": r.get("params", {}), "state": r.get("state"), "objective": r.get("objective"),
                "metrics": {k: v for k, v in (r.get("metrics") or {}).items()
                            if k in (metric, *spec.objective.additionalMetrics) or k.startswith(("validation_", "test_"))},
                "started": r.get("started"), "finished": r.get("finished"),  # shown by describe (#25)
                **({"error": r["error"][:200]} if r.get("error") else {})} for r in recs]
    best_value = (best or {}).get("value", (best or {}).get("objective"))
    bad = failed(spec, recs)
    info = f"{spec.mode} {len(finished)}/{total} trials"
    if spec.mode == "automl":
        for state, word in (("FAIL", "failed"), ("STOPPED", "stopped by the time budget"),
                            ("SKIPPED", "skipped by the time budget")):
            names = [str(b["candidate"]) for b in bad if b["state"] == state]
            info += f", {len(names)} candidate(s) {word} ({', '.join(names)})" if names else ""
    elif spec.mode == "run":  # parameter sets: select ranked the others (`kiln stop --job`, a failure)
        for state, word in (("FAIL", "failed"), ("STOPPED", "stopped")):
            ids = [str(b["trial"]) for b in bad if b["state"] == state]
            info += f", {len(ids)} {word} ({', '.join(ids)})" if ids else ""
    if best:
        info += f", best {metric}={best_value:.4g} ({best['trial']})" if best_value is not None else ""
    if registered:
        info += f" -> {registered['model']} v{registered['version']}"
        if registered.get("promotion"):  # where the aliases went, and why one stayed (#21)
            from kiln.controller.experiment.promotion import summary

            info += f" ({summary(registered['promotion'])})"
    return {"mode": spec.mode, "trialsDone": len(finished), "trialsTotal": total, "states": states,
            "dataset": {k: data.get(k) for k in ("dataset", "number", "version")} if data else None,
            "trials": compact[-50:], "leaderboard": board[:10], "failed": bad[:20],
            "best": {"trial": best["trial"], "metric": metric, "value": best_value,
                     "params": best.get("params", {}), **_weights(recs, best["trial"])} if best else None,
            "registered": registered, "info": info, "run": str(run)}


def _weights(recs: list[dict[str, Any]], trial: str) -> dict[str, Any]:
    """Which weights of ``trial`` are registered and reported (``checkpoint``: best by the
    objective or last, at which step) and its per-category metrics, as its record holds them."""
    rec = next((r for r in recs if r.get("id") == trial), {})
    return {k: rec[k] for k in ("checkpoint", "perCategory", "validation") if rec.get(k)}


def write_summary(ctx: StepContext, spec: ExperimentSpec, run: Path) -> None:
    write_json(run / "summary.json", summarize(spec, run))


def results_doc(ws: str, name: str, spec_hash: str, spec: ExperimentSpec, run: Path) -> dict[str, Any]:
    sel = (read_json(run / "selected.json") or {}).get("selected") or {}
    data = read_json(run / "data.json") or {}
    reg = read_json(run / "registered.json")
    metric = spec.objective.metric
    keep = (metric, *spec.objective.additionalMetrics)
    metrics = {k: v for k, v in (sel.get("metrics") or {}).items()
               if isinstance(v, (int, float)) and (k in keep or k.startswith(("validation_", "test_")))}
    states: dict[str, int] = {}
    for r in trials(run):
        states[r.get("state", "?")] = states.get(r.get("state", "?"), 0) + 1
    return {"experiment": f"{ws}/{name}", "specHash": spec_hash, "mode": spec.mode,
            "dataset": {"name": data.get("dataset"), "number": data.get("number"), "version": data.get("version")},
            "objective": {"metric": metric, "direction": spec.objective.direction, "value": sel.get("value")},
            "best": {"trial": sel.get("trial"), "algorithm": sel.get("algorithm"), "candidate": sel.get("candidate"),
                     "params": sel.get("params", {})},
            "metrics": metrics, **_weights(trials(run), sel.get("trial", "")), "trials": states,
            "registered": {"model": reg["model"], "version": reg["version"],
                           **({"promotion": reg["promotion"]} if reg.get("promotion") else {})} if reg else None}


def write_results(ctx: StepContext, spec: ExperimentSpec, run: Path) -> None:
    """Write ``metrics/<ws>/<name>.json`` (atomically) for the run that was just selected or
    registered; the user commits it with the spec change."""
    ws, name = ctx.workspace, ctx.name
    write_json(ctx.config.repo / results_rel(ws, name), results_doc(ws, name, ctx.spec_hash, spec, run))
