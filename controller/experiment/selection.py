"""The select step: pick the best (or the pinned) trial, write the leaderboard, the validation
scores for the report, the summary and the results file."""

from __future__ import annotations

import json
from typing import Any

from kiln.api import Experiment
from kiln.controller.experiment.evaluation import save_eval
from kiln.controller.experiment.home import log, run_folder, write_json
from kiln.controller.experiment.results import failed, leaderboard, trials, write_results, write_summary
from kiln.controller.steps import StepContext
from kiln.errors import KilnError


def select(ctx: StepContext) -> dict[str, Any]:
    spec = ctx.model(Experiment).spec
    run = run_folder(ctx)
    recs = trials(run)
    if not recs:
        raise KilnError("no trial ran", hint="see `kiln logs` for why the training tasks did not start")
    board = leaderboard(spec, recs)
    bad = failed(spec, recs)
    metric = spec.objective.metric
    if isinstance(spec.selectTrial, int):
        chosen = next((r for r in recs if r.get("number") == spec.selectTrial), None)
        if chosen is None:
            raise KilnError(f"selectTrial {spec.selectTrial}: no such trial",
                            hint=f"trials: {', '.join(str(r.get('number')) for r in recs)}")
        if chosen.get("state") != "COMPLETE":
            raise KilnError(f"selectTrial {spec.selectTrial} ({chosen['id']}) is {chosen.get('state')}, not COMPLETE",
                            hint="pick a completed trial from the leaderboard (`kiln describe`)")
        how = "pinned by selectTrial"
    else:
        if not board:
            complete = [r for r in recs if r.get("state") == "COMPLETE"]
            if complete:
                have = ", ".join(sorted(complete[0].get("metrics", {})))
                raise KilnError(f"objective metric {metric!r} was not reported by any trial; reported: {have}",
                                hint="set objective.metric to one of those")
            if spec.mode == "automl":
                reasons = "; ".join(f"{b['candidate']}: {_reason(b['error'])}" for b in bad)
                if all(b["state"] == "FAIL" for b in bad):
                    raise KilnError(f"every automl candidate failed ({len(bad)}): {reasons}",
                                    hint="fix the data or list automl.candidates that fit it; `kiln logs` has "
                                         "each candidate's output")
                assert spec.automl is not None
                raise KilnError(f"no automl candidate finished within the time budget "
                                f"({spec.automl.timeBudget} s): {reasons}",
                                hint="raise automl.timeBudget, or list faster automl.candidates first")
            errors = sorted({r.get("error") or r.get("state", "?") for r in recs})
            raise KilnError(f"no trial completed ({len(recs)} ran): {errors[0][:300]}",
                            hint="see `kiln logs` for each trial's output")
        chosen = next(r for r in recs if r["id"] == board[0]["trial"])
        how = f"best {metric} ({spec.objective.direction})"
    sel = {"trial": chosen["id"], "number": chosen.get("number"), "candidate": chosen.get("candidate"),
           "algorithm": chosen.get("algorithm"), "params": chosen.get("params", {}),
           "metric": metric, "value": chosen.get("objective"), "metrics": chosen.get("metrics", {}),
           "framework": chosen.get("framework"), "how": how}
    write_json(run / "selected.json", {"selected": sel, "leaderboard": board, "failed": bad})
    log(f"leaderboard ({metric}, {spec.objective.direction}):")
    for row in board[:10]:
        label = row["candidate"] or json.dumps(row["params"], sort_keys=True)
        log(f"  {row['rank']:>2}. {row['trial']:<22} {row['objective']:.4f}  {label}")
    for b in bad[:20]:
        log(f"   -. {b['trial']:<22} {b['state']:<8}{b['candidate'] or ''}: {_reason(b['error'])}")
    log(f"selected {sel['trial']}: {metric}={sel['value']} ({how})")
    save_eval(ctx, spec, run, sel)
    write_summary(ctx, spec, run)
    write_results(ctx, spec, run)
    return {"trial": sel["trial"], "metric": metric, "value": sel["value"], "candidates": len(board),
            **({"failed": [f"{b['candidate']}: {_reason(b['error'])}" for b in bad]} if bad else {})}


def _reason(error: str) -> str:
    """A failed trial's error, without the "trial X failed: " prefix its record may carry."""
    head, sep, rest = error.partition(" failed: ")
    return rest if sep and head.startswith("trial ") else error
