"""Evaluation metrics as the EasyMaker / AI Studio documents define them, one function per task.

Each function returns unprefixed names (``accuracy``, ``f1`` ...); ``prefixed(split, m)`` turns
them into the names experiments report and HPO objectives refer to (``validation_accuracy``,
``test_f1``). Non-scalar results (confusion matrix, per-category lists) go in a second dict,
the artifacts.

- classification: accuracy, precision/recall/F1 as **macro** averages, confusion matrix;
- regression: rmse, mae, r2;
- clustering: silhouette, calinski_harabasz, davies_bouldin;
- dimension reduction: explained_variance (sum of the kept components' ratios);
- detection / instance segmentation: COCO mAP (IoU .50:.95), AP50, AP75 via pycocotools;
- semantic segmentation: mean_iou, mean_accuracy, overall_accuracy, per_category_iou,
  per_category_accuracy, computed like Hugging Face ``evaluate``'s ``mean_iou`` (pixels equal to
  ``ignore_index`` skipped, categories absent from both prediction and label give NaN and are left
  out of the means).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any


def prefixed(split: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{split}_{k}": float(v) for k, v in metrics.items()}


def classification(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None
                   ) -> tuple[dict[str, float], dict[str, Any]]:
    """Accuracy and macro precision/recall/F1 from the confusion matrix; equal to scikit-learn's
    ``precision_recall_fscore_support(average="macro", zero_division=0)`` (tested) at a fraction of
    its input-validation cost, which dominated short fits."""
    import numpy as np

    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    index = {v: i for i, v in enumerate(labels)}
    k = len(labels)
    t = np.fromiter((index.get(v, -1) for v in y_true), dtype=np.int64, count=len(y_true))
    p = np.fromiter((index.get(v, -1) for v in y_pred), dtype=np.int64, count=len(y_pred))
    keep = (t >= 0) & (p >= 0)  # values outside ``labels`` are left out, as scikit-learn does
    cm = np.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        rec = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    acc = float((t == p).mean()) if len(t) else 0.0
    return ({"accuracy": acc, "precision": float(prec.mean()), "recall": float(rec.mean()), "f1": float(f1.mean())},
            {"confusion_matrix": cm.tolist(), "labels": [str(x) for x in labels]})


def regression(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {"rmse": math.sqrt(float(mean_squared_error(y_true, y_pred))),
            "mae": float(mean_absolute_error(y_true, y_pred)),
            "r2": float(r2_score(y_true, y_pred))}


def clustering(x: Any, labels: Sequence[int]) -> dict[str, float]:
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    n = len(set(labels))
    if n < 2 or n >= len(labels):  # the scores are undefined for one cluster or one point per cluster
        return {"n_clusters": float(n)}
    return {"silhouette": float(silhouette_score(x, labels)),
            "calinski_harabasz": float(calinski_harabasz_score(x, labels)),
            "davies_bouldin": float(davies_bouldin_score(x, labels)),
            "n_clusters": float(n)}


def explained_variance(ratios: Sequence[float]) -> dict[str, float]:
    return {"explained_variance": float(sum(ratios))}


def segmentation(preds: Sequence[Any], labels: Sequence[Any], num_labels: int, ignore_index: int = 255,
                 reduce_labels: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Like ``evaluate.load("mean_iou")``; ``preds``/``labels`` are (H, W) integer arrays."""
    import numpy as np

    inter = np.zeros(num_labels, dtype=np.float64)
    union = np.zeros(num_labels, dtype=np.float64)
    area_label = np.zeros(num_labels, dtype=np.float64)
    for pred, label in zip(preds, labels):
        pred = np.asarray(pred).astype(np.int64)
        label = np.asarray(label).astype(np.int64)
        if reduce_labels:
            label = label.copy()
            label[label == 0] = 255
            label = label - 1
            label[label == 254] = 255
        keep = label != ignore_index
        pred, label = pred[keep], label[keep]
        hit = pred[pred == label]
        # values outside [0, num_labels) are dropped, as np.histogram with that range does
        a_i = np.bincount(hit[(hit >= 0) & (hit < num_labels)], minlength=num_labels)[:num_labels]
        a_p = np.bincount(pred[(pred >= 0) & (pred < num_labels)], minlength=num_labels)[:num_labels]
        a_l = np.bincount(label[(label >= 0) & (label < num_labels)], minlength=num_labels)[:num_labels]
        inter += a_i
        union += a_p + a_l - a_i
        area_label += a_l
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
        acc = inter / area_label
    overall = float(inter.sum() / area_label.sum()) if area_label.sum() else float("nan")
    return ({"mean_iou": float(np.nanmean(iou)) if not np.all(np.isnan(iou)) else float("nan"),
             "mean_accuracy": float(np.nanmean(acc)) if not np.all(np.isnan(acc)) else float("nan"),
             "overall_accuracy": overall},
            {"per_category_iou": iou.tolist(), "per_category_accuracy": acc.tolist()})


def coco(gt: dict[str, Any], detections: list[dict[str, Any]], iou_type: str = "bbox") -> dict[str, float]:
    """COCO mAP / AP50 / AP75. ``gt`` is a COCO dict (images, annotations, categories);
    ``detections`` are ``{"image_id", "category_id", "score", "bbox" | "segmentation"}``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return {"map": 0.0, "ap50": 0.0, "ap75": 0.0}
    gt = dict(gt)
    gt.setdefault("info", {})
    gt.setdefault("licenses", [])
    anns = []
    for i, a in enumerate(gt.get("annotations", []), 1):
        a = dict(a)
        a.setdefault("id", i)
        a.setdefault("iscrowd", 0)
        if "area" not in a and "bbox" in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
        anns.append(a)
    gt["annotations"] = anns
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the table
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        cd = cg.loadRes([dict(d) for d in detections])
        ev = COCOeval(cg, cd, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    clean = lambda v: max(float(v), 0.0)  # noqa: E731 - pycocotools reports -1 for "no ground truth"
    return {"map": clean(s[0]), "ap50": clean(s[1]), "ap75": clean(s[2])}
