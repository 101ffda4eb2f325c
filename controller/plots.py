"""The PNG plots of ``kiln report`` (matplotlib, Agg backend: no display on a CI runner).

Why fixed pixels: the report is a pull-request comment, where an image is shown at its own width
up to the column's (~800 px); every plot is ``SIZE`` inches at ``DPI`` (800x500 px), never
trimmed (``bbox_inches="tight"`` would change the size per plot), so they line up.

One function per plot kind in ``PLOTS``; each draws onto a fresh figure from a plain dict
(``render(kind, data, path)``), so tests can render every kind from generated data::

    training-curves   {"metrics": [name, ...], "series": {trial: {metric: [[step, value], ...]}}}
    confusion-matrix  {"classes": [...], "matrix": [[count, ...], ...], "split": "validation"}
    pr-curve          {"classes": [...], "y_true": [class index, ...], "scores": [[score, ...], ...]}
    roc-curve         same as pr-curve
    hpo-history       {"metric": name, "direction": "maximize" | "minimize",
                       "trials": [[number, value], ...]}
    param-importance  {"metric": name, "importances": {param: importance}}
    class-counts      {"classes": [...], "base": [count, ...], "now": [count, ...]}
    candidates        {"metric": name, "direction": "maximize" | "minimize", "chosen": candidate,
                       "candidates": {candidate: [value of each completed trial, ...]}}
    per-category      {"labels": [...], "iou": [value | None, ...], "accuracy": [value | None, ...],
                       "split": "test"}   (None: the category is in neither prediction nor label)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.errors import KilnError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIZE = (8.0, 5.0)  # inches
DPI = 100  # -> 800x500 px
MAX_LINES = 10  # more trials / classes than this in one plot: the rest are not drawn individually


def _one_vs_rest(data: dict[str, Any]) -> tuple[Any, Any, list[str]]:
    import numpy as np

    classes = [str(c) for c in data["classes"]]
    y = np.asarray(data["y_true"], dtype=int)
    scores = np.asarray(data["scores"], dtype=float).reshape(len(y), len(classes))
    return y, scores, classes


def training_curves(fig: Figure, data: dict[str, Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    metrics = list(data["metrics"])
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    series = list(data["series"].items())[:MAX_LINES]
    for ax, metric in zip(axes, metrics):
        for trial, per_metric in series:
            pts = per_metric.get(metric) or []
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None,
                        markersize=3, label=str(trial))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    if len(series) > 1:
        axes[0].legend(fontsize=7, title="trial", title_fontsize=7)


def confusion_matrix(fig: Figure, data: dict[str, Any]) -> None:
    import numpy as np

    classes = [str(c) for c in data["classes"]]
    cm = np.asarray(data["matrix"], dtype=float)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.04)
    n = len(classes)
    if n <= 20:  # tick labels and counts stay readable up to about this many classes
        ax.set_xticks(range(n), classes, rotation=45 if n > 5 else 0, ha="right" if n > 5 else "center", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        top = cm.max() if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=10 if n <= 10 else 7,
                        color="white" if top and cm[i, j] > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({data.get('split', 'validation')})")


def pr_curve(fig: Figure, data: dict[str, Any]) -> None:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, scores, classes = _one_vs_rest(data)
    ax = fig.subplots()
    for k, name in enumerate(classes[:MAX_LINES]):
        pos = y == k
        if not pos.any():
            continue
        p, r, _ = precision_recall_curve(pos, scores[:, k])
        ax.plot(r, p, label=f"{name} (AP {average_precision_score(pos, scores[:, k]):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"precision-recall, one vs rest ({data.get('split', 'validation')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")


def roc_curve(fig: Figure, data: dict[str, Any]) -> None:
    from sklearn.metrics import auc
    from sklearn.metrics import roc_curve as roc

    y, scores, classes = _one_vs_rest(data)
    ax = fig.subplots()
    for k, name in enumerate(classes[:MAX_LINES]):
        pos = y == k
        if not pos.any() or pos.all():  # ROC needs both positives and negatives
            continue
        fpr, tpr, _ = roc(pos, scores[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, one vs rest ({data.get('split', 'validation')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def hpo_history(fig: Figure, data: dict[str, Any]) -> None:
    pts = sorted((int(n), float(v)) for n, v in data["trials"])
    ax = fig.subplots()
    pick = max if data.get("direction", "maximize") == "maximize" else min
    best: list[float] = []
    for _, v in pts:
        best.append(v if not best else pick(best[-1], v))
    ax.scatter([n for n, _ in pts], [v for _, v in pts], s=18, label="trial", zorder=3)
    ax.step([n for n, _ in pts], best, where="post", color="tab:red", label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers, not 0.2 steps
    ax.set_xlabel("trial")
    ax.set_ylabel(data["metric"])
    ax.set_title(f"HPO history ({data.get('direction', 'maximize')} {data['metric']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def param_importance(fig: Figure, data: dict[str, Any]) -> None:
    items = sorted(data["importances"].items(), key=lambda kv: kv[1])
    ax = fig.subplots()
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"hyperparameter importance for {data.get('metric', 'the objective')}")
    ax.grid(axis="x", alpha=0.3)


def class_counts(fig: Figure, data: dict[str, Any]) -> None:
    import numpy as np

    classes = [str(c) for c in data["classes"]]
    x = np.arange(len(classes))
    ax = fig.subplots()
    ax.bar(x - 0.2, data["base"], width=0.4, label="base")
    ax.bar(x + 0.2, data["now"], width=0.4, label="now")
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center",
                  fontsize=8)
    ax.set_ylabel("items")
    ax.set_title("items per class")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def candidates(fig: Figure, data: dict[str, Any]) -> None:
    """AutoML: each candidate's best trial as a bar, best at the top, the chosen one in red;
    dots for every trial of candidates that had a search of their own."""
    maximize = data.get("direction", "maximize") == "maximize"
    pick = max if maximize else min
    rows = [(name, pick(vals), vals) for name, vals in data["candidates"].items() if vals]
    rows.sort(key=lambda r: r[1], reverse=not maximize)  # barh draws bottom-up: best ends on top
    ax = fig.subplots()
    y = list(range(len(rows)))
    colors = ["tab:red" if name == data.get("chosen") else "tab:blue" for name, _, _ in rows]
    ax.barh(y, [best for _, best, _ in rows], color=colors, alpha=0.8)
    for i, (_, best, vals) in enumerate(rows):
        if len(vals) > 1:
            ax.scatter(vals, [i] * len(vals), s=14, color="black", zorder=3)
        ax.annotate(f"{best:.4g}", (best, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(y, [name for name, _, _ in rows], fontsize=8)
    everything = [v for _, _, vals in rows for v in vals]
    lo, hi = min(everything), max(everything)
    pad = (hi - lo) * 0.15 or abs(hi) * 0.05 or 0.05
    # scores of good candidates differ in the second decimal: start the axis near them, not at 0
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel(data["metric"] + (" (higher is better)" if maximize else " (lower is better)"))
    ax.set_title(f"AutoML candidates: best {data['metric']} each (red: chosen)")
    ax.grid(axis="x", alpha=0.3)


def per_category(fig: Figure, data: dict[str, Any]) -> None:
    """A segmenter's IoU and pixel accuracy per category, side by side; an undefined value (the
    category in neither prediction nor label) is marked "n/a" rather than drawn as 0."""
    import numpy as np

    labels = [str(c) for c in data["labels"]]
    x = np.arange(len(labels))
    ax = fig.subplots()
    for off, key, name in ((-0.2, "iou", "IoU"), (0.2, "accuracy", "accuracy")):
        vals = list(data.get(key) or [])
        vals += [None] * (len(labels) - len(vals))
        ax.bar(x + off, [np.nan if v is None else v for v in vals], width=0.4, label=name)
        for i, v in enumerate(vals):
            if v is None:
                ax.annotate("n/a", (x[i] + off, 0.0), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center",
                  fontsize=8)
    ax.set_ylim(0.0, 1.05)
    ax.set_title(f"per category ({data.get('split', 'test')} split)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


PLOTS: dict[str, Callable[[Figure, dict[str, Any]], None]] = {
    "training-curves": training_curves,
    "confusion-matrix": confusion_matrix,
    "pr-curve": pr_curve,
    "roc-curve": roc_curve,
    "hpo-history": hpo_history,
    "param-importance": param_importance,
    "class-counts": class_counts,
    "candidates": candidates,
    "per-category": per_category,
}


def render(kind: str, data: dict[str, Any], path: Path) -> Path:
    """Draw plot ``kind`` from ``data`` into the PNG ``path`` (atomically: temp file + rename)."""
    if kind not in PLOTS:
        raise KilnError(f"unknown plot kind {kind!r}", hint=f"valid kinds: {', '.join(sorted(PLOTS))}")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    # a bare Figure (not pyplot): nothing global to leak between plots or threads
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    PLOTS[kind](fig, data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
