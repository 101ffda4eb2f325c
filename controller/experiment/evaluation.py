"""The selected classifier's validation labels and class scores (``eval.json``, the curves of
``kiln report``): computed by a tabular trial while its model is loaded, else by select."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kiln._util.fs import read_json
from kiln.algorithms.registry import get_algorithm
from kiln.api.experiment import ExperimentSpec
from kiln.controller.experiment.data import load_train_data
from kiln.controller.experiment.home import log, write_json
from kiln.controller.steps import StepContext

EVAL_MAX_VALUES = 500_000  # items x classes in eval.json: it stays a few MB (a PR report's curves need no more)


def save_eval(ctx: StepContext, spec: ExperimentSpec, run: Path, sel: dict[str, Any]) -> None:
    """Write ``eval.json`` for a selected built-in classifier. Best effort: a report's curves
    are a convenience, so a failure here is logged and never fails the selection."""
    path = run / "eval.json"
    path.unlink(missing_ok=True)  # never leave the curves of a previously selected model
    ready = run / "trials" / sel["trial"] / "eval.json"
    if ready.is_file():  # written by the trial itself (tabular): no model to load here
        shutil.copyfile(ready, path)
    for done in (run / "trials").glob("*/eval.json"):  # the trials' own files served their purpose
        done.unlink(missing_ok=True)
    if path.is_file():
        return
    meta = read_json(run / "trials" / sel["trial"] / "model" / "meta.json") or {}
    if not meta.get("algorithm") or not meta.get("classes"):
        return
    try:
        doc = evaluate_selected(ctx.config.repo, spec, run, sel, meta)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log(f"no validation scores saved for the report: {type(exc).__name__}: {exc}")
        return
    if doc is not None:
        write_json(path, doc, indent=None)  # one line: thousands of score rows


def evaluate_selected(repo: Path, spec: ExperimentSpec, run: Path, sel: dict[str, Any],
                      meta: dict[str, Any]) -> dict[str, Any] | None:
    """The selected classifier's labels and per-class scores on the validation split (the test
    split when there is none), in the split the trial was trained with."""
    algo = get_algorithm(meta["algorithm"])
    if algo.task != "classification":
        return None
    algo_spec = spec.algorithm
    if spec.mode == "automl" and spec.automl is not None:
        algo_spec = next((c for c in spec.automl.candidates if c.name == sel.get("candidate")), None)
    td = load_train_data(repo, read_json(run / "data.json"), (algo_spec.split if algo_spec else None) or spec.split)
    if not any(td.has_split(s) for s in ("validation", "test")):
        return None
    return eval_doc(algo, algo.load(run / "trials" / sel["trial"] / "model"), td, meta["classes"])


def eval_doc(algo: Any, model: Any, td: Any, classes_: list[Any], max_values: int | None = None) -> dict[str, Any] | None:
    """Labels and per-class scores of a trained classifier on the validation split (else test);
    None past ``max_values`` scores (items x classes)."""
    import numpy as np

    split = next((s for s in ("validation", "test") if td.has_split(s)), None)
    if split is None:
        return None
    classes = [str(c) for c in classes_]
    index = {c: i for i, c in enumerate(classes)}
    cap = max(100, EVAL_MAX_VALUES // len(classes))
    kind = "probability"
    if algo.data_type == "tabular":
        x, y = td.table(split)
        total = len(x)
        if max_values is not None and total * len(classes) > max_values:
            return None
        x, y = x.iloc[:cap], y.iloc[:cap]
        labels = [str(v) for v in y.tolist()]
        xx = algo.features(model.meta, x)
        est = model.native
        if hasattr(est[-1], "predict_proba"):
            scores = np.asarray(est.predict_proba(xx), dtype=float)
        else:  # e.g. SVC without probability=True: margins rank as well for PR/ROC
            kind = "decision"
            scores = np.asarray(est.decision_function(xx), dtype=float)
            if scores.ndim == 1:
                scores = np.stack([-scores, scores], axis=1)
    else:
        items = td.labelled_items(split)
        total = len(items)
        items = items[:cap]
        labels = [str(it.label) for it in items]
        parts = [algo.probabilities(model, [td.content.abspath(it.path) for it in items[i:i + 64]])
                 for i in range(0, len(items), 64)]
        scores = np.concatenate(parts) if parts else np.zeros((0, len(classes)))
    keep = [i for i, lab in enumerate(labels) if lab in index]
    return {"split": split, "classes": classes, "kind": kind, "items": len(keep), "truncated": total > len(labels),
            "y_true": [index[labels[i]] for i in keep],
            "scores": [[round(float(v), 6) for v in scores[i]] for i in keep]}
