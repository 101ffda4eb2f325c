"""One prediction per instance, in the response contract's shape: the one builder for serving
(``kiln.bento.runtime.Engine.format``) and batch inference (``kiln infer``'s predictions.jsonl).

Why one module: the two paths were written apart and drifted (``kiln infer`` printed detections as
``{label, box, score}`` and a table row's class as a ranked list, where the server answered
EasyMaker's ``{<label>: {xmin..}, score}`` and ``{label, score}``). Each path turns its model's raw
output into plain numbers and calls the function of its task here. Per instance:

- image classification: ``[{"score", "label"}, ...]``, every class (or ``top_k``) best first;
- tabular classification: ``{"label", "score"}``, the best class (no score without probabilities);
- regression: a number (a list for several outputs; dimension reduction's components);
- clustering: ``{"cluster": id}`` plus the model's measure of it: ``"distance"`` to its centre
  (k-means, whose ONNX graph outputs the distance to every centre) or ``"score"``, the
  probability of its component (a Gaussian mixture);
- detection (and instance segmentation): ``[{"<label>": {"xmin", "ymin", "xmax", "ymax"},
  "score"}, ...]`` above the threshold, best first, in the image's pixels;
- semantic segmentation: a label id per pixel, row by row.

Plain Python on small lists: numpy's reductions on ten scores cost more than the model run
(bench/serving.py); numpy only to turn logits into probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["probabilities", "ranked", "best", "clustered", "boxes", "mask", "CLUSTER_MEASURES"]

Label = Callable[[int], str]

# what a clustering model's per-cluster vector holds -> (pick the cluster, the response key)
CLUSTER_MEASURES: dict[str, tuple[Callable[[list[float]], float], str]] = {
    "distances": (min, "distance"),  # k-means: skl2onnx's 'scores' output, KMeans.transform
    "probabilities": (max, "score"),  # a mixture: predict_proba, skl2onnx's 'probabilities'
}


def probabilities(p: Any) -> list[float]:
    """Scores as probabilities: a single-output binary model's probability or logit becomes two
    classes; logits (torch/ONNX classifiers) are softmaxed, EasyMaker's scores being probabilities."""
    q = np.asarray(p).reshape(-1).tolist()
    if len(q) == 1:
        s = q[0] if 0.0 <= q[0] <= 1.0 else float(1.0 / (1.0 + np.exp(-q[0])))
        q = [1.0 - s, s]
    elif min(q) < 0.0 or abs(sum(q) - 1.0) > 1e-3:
        e = np.exp(np.asarray(q) - max(q))
        q = (e / e.sum()).tolist()
    return q


def ranked(p: Any, label: Label, top_k: int | None = None) -> list[dict[str, Any]]:
    """An image's classes, best first (ties by index)."""
    q = probabilities(p)
    order = sorted(range(len(q)), key=q.__getitem__, reverse=True)
    if top_k:
        order = order[:top_k]
    return [{"score": q[k], "label": label(k)} for k in order]


def best(p: Any, label: Label) -> dict[str, Any]:
    """A table row's class: the first of ``ranked``'s order, without sorting them all."""
    q = probabilities(p)
    k = q.index(max(q))
    return {"label": label(k), "score": q[k]}


def clustered(y: Any, measure: str | None) -> dict[str, Any]:
    """A row's cluster: ``y`` is the model's vector over clusters (``measure`` says what it holds,
    a key of ``CLUSTER_MEASURES``) or the cluster id alone (``measure`` None)."""
    v = np.asarray(y, dtype=np.float64).reshape(-1).tolist()
    if measure is None or len(v) == 1:
        return {"cluster": int(v[0])}
    pick, key = CLUSTER_MEASURES[measure]
    m = pick(v)
    return {"cluster": v.index(m), key: m}


def boxes(
    found: Iterable[tuple[str, Sequence[float], float]], threshold: float = 0.0, scale: tuple[float, float] = (1.0, 1.0)
) -> list[dict[str, Any]]:
    """``(label, [x0, y0, x1, y1], score)`` per object -> EasyMaker's boxes, best first, those
    under ``threshold`` dropped, corners scaled by ``scale`` (sx, sy) into the image's pixels."""
    sx, sy = scale
    out = []
    for lab, b, s in sorted(found, key=lambda t: -float(t[2])):
        if float(s) < threshold:
            continue
        x0, y0, x1, y1 = (float(v) for v in b)
        out.append(
            {
                lab: {"xmin": round(x0 * sx), "ymin": round(y0 * sy), "xmax": round(x1 * sx), "ymax": round(y1 * sy)},
                "score": float(s),
            }
        )
    return out


def mask(y: Any, size: Sequence[int] | None = None) -> list[list[int]]:
    """Class scores (K x H x W) or label ids (H x W) -> label ids, resized (nearest) to ``size``."""
    y = np.asarray(y)
    ids = y.argmax(axis=0) if y.ndim == 3 else y.astype(np.int64)
    if size is not None and list(ids.shape) != list(size):
        from PIL import Image

        ids = np.asarray(Image.fromarray(ids.astype(np.int32)).resize((size[1], size[0]), Image.NEAREST))
    return ids.astype(int).tolist()
