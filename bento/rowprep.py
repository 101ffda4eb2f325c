"""A dataset's fitted tabular preprocessing as plain numpy, for one request row at a time.

Why: the fitted ``kiln.data.preprocess`` pipeline transforms pandas DataFrames. Built per
request it held the example repo's wine-classifier (StandardScaler + logistic regression, ONNX)
at 0.10x of a bare onnxruntime server (490 against 4,870 req/s, #14); one row through numpy costs
microseconds. :func:`compile_rows` reads the fitted statistics of each op once, at model load, and
returns ``None`` when an op has no numpy form here (KNNImputer, or an op that would read a column
the request does not carry): the engine then keeps the pandas path, which is slower but exact.

The compiled form works on one float64 vector in the model's feature order. A column that an op
factorizes is turned into its code when the value is read (the op's own mapping, -1 for an unseen
value or null), which equals running the op in place only if no op before it touches that column;
that is checked. String columns no op touches pass through as strings (the model's featurisation
encodes them). Results equal the pandas path's to float64 rounding (tests/bento/test_rowprep.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["compile_rows", "Compiled", "STEPS"]

log = logging.getLogger("kiln.bento.server")

# one step: transforms the float64 row in place
Step = Callable[[np.ndarray], None]


class _NoNumpy(Exception):
    """This pipeline keeps the pandas path (the reason is logged once, at load)."""


def _index(cols: list[str], pos: dict[str, int], numeric: set[str], op: Any) -> np.ndarray:
    missing = [c for c in cols if c not in pos]
    if missing:
        raise _NoNumpy(f"{type(op).__name__} reads {missing}, which the model's requests do not carry")
    text = [c for c in cols if c not in numeric]
    if text:
        raise _NoNumpy(f"{type(op).__name__} reads {text} before they are numbers")
    return np.array([pos[c] for c in cols], dtype=np.intp)


def _whole(idx: np.ndarray, pos: dict[str, int]) -> bool:
    """The op reads every column in order: ufuncs in place on the row, no fancy indexing (a few
    microseconds less per request; the wine scaler reads all 13 columns)."""
    return len(idx) == len(pos) and bool((idx == np.arange(len(pos))).all())


def _standard(op: Any, pos: dict[str, int], numeric: set[str]) -> Step:
    idx = _index(op.cols, pos, numeric, op)
    est = op.est
    mean = np.zeros(len(idx)) if est.mean_ is None else np.asarray(est.mean_, np.float64)
    scale = np.ones(len(idx)) if est.scale_ is None else np.asarray(est.scale_, np.float64)

    def whole(x: np.ndarray) -> None:
        np.subtract(x, mean, out=x)
        np.divide(x, scale, out=x)

    def step(x: np.ndarray) -> None:
        x[idx] = (x[idx] - mean) / scale

    return whole if _whole(idx, pos) else step


def _minmax(op: Any, pos: dict[str, int], numeric: set[str]) -> Step:
    idx = _index(op.cols, pos, numeric, op)
    est = op.est
    scale, low = np.asarray(est.scale_, np.float64), np.asarray(est.min_, np.float64)
    lo, hi = est.feature_range
    clip = bool(getattr(est, "clip", False))

    def whole(x: np.ndarray) -> None:
        np.multiply(x, scale, out=x)
        np.add(x, low, out=x)
        if clip:
            np.clip(x, lo, hi, out=x)

    def step(x: np.ndarray) -> None:
        v = x[idx] * scale + low
        x[idx] = np.clip(v, lo, hi) if clip else v

    return whole if _whole(idx, pos) else step


def _imputer(op: Any, pos: dict[str, int], numeric: set[str]) -> Step:
    idx = _index(op.cols, pos, numeric, op)
    est = op.est
    stats = np.asarray(est.statistics_, dtype=np.float64)
    mv = est.missing_values
    if getattr(est, "add_indicator", False) or not (isinstance(mv, float) and math.isnan(mv)):
        raise _NoNumpy("SimpleImputer with an indicator or a missing value other than NaN")
    if np.isnan(stats).any():  # sklearn drops a column it saw no value of: the shape changes
        raise _NoNumpy("SimpleImputer fitted on a column without values")

    def step(x: np.ndarray) -> None:
        v = x[idx]
        x[idx] = np.where(np.isnan(v), stats, v)

    return step


def _kbins(op: Any, pos: dict[str, int], numeric: set[str]) -> Step:
    idx = _index(op.cols, pos, numeric, op)
    inner = [np.asarray(e[1:-1], np.float64) for e in op.est.bin_edges_]

    def step(x: np.ndarray) -> None:  # KBinsDiscretizer.transform, encode="ordinal"
        for k, j in enumerate(idx):
            if not math.isnan(x[j]):  # sklearn refuses NaN; the pandas path gives a 400 too
                x[j] = float(np.searchsorted(inner[k], x[j], side="right"))
            else:
                raise ValueError(f"KBinsDiscretizer cannot bin a missing value of {op.cols[k]}")

    return step


def _cut(op: Any, pos: dict[str, int], numeric: set[str]) -> Step:
    (j,) = _index([op.params.column], pos, numeric, op)
    edges = np.asarray(op.edges, np.float64)

    def step(x: np.ndarray) -> None:  # pandas.cut(labels=False, right=True): e[k] < v <= e[k+1] -> k
        if not math.isnan(x[j]):
            x[j] = float(np.searchsorted(edges, x[j], side="left") - 1)

    return step


def _noop(op: Any, pos: dict[str, int], numeric: set[str]) -> Step | None:
    return None


def _drop(op: Any, pos: dict[str, int], numeric: set[str]) -> Step | None:
    if any(c in pos for c in op.params.columns):
        raise _NoNumpy(f"drop_columns removes {[c for c in op.params.columns if c in pos]}, which the model reads")
    return None  # the model's features never include a dropped column


# op class name -> its numpy form (an op not named here keeps the pandas path)
STEPS: dict[str, Callable[[Any, dict[str, int], set[str]], Step | None]] = {
    "StandardScalerOp": _standard,
    "MinMaxScalerOp": _minmax,
    "SimpleImputerOp": _imputer,
    "KBinsDiscretizerOp": _kbins,
    "QcutOp": _cut,
    "CutOp": _cut,
    "FactorizeOp": _noop,  # applied when the value is read (see Compiled)
    "SortValuesOp": _noop,  # row order only
    "DropColumnsOp": _drop,
}


class Compiled:
    """``prep(values) -> float64 row`` in feature order: ``values`` are the request's values in
    that order, already checked by the engine (numbers, or strings of the string columns)."""

    def __init__(self, features: list[str], steps: list[Step], codes: dict[str, dict[Any, int]],
                 text: set[str]) -> None:
        self.features, self.steps = features, steps
        self.codes = [codes.get(f) for f in features]  # per column: its factorize mapping or None
        self.text = [f in text for f in features]  # per column: passes through as a string
        self.plain = not codes and not text  # every column a number: one np.array of the values

    def code(self, j: int, v: Any) -> float:
        """A factorized column's code: the op's mapping (-1: unseen, null, or unhashable)."""
        m = self.codes[j]
        assert m is not None
        try:
            return float(m.get(v, -1))
        except TypeError:  # a list or an object: no category
            return -1.0


def compile_rows(pipeline: Any, features: list[str], string_columns: set[str]) -> Compiled | None:
    """The numpy form of ``pipeline`` for rows of ``features`` (None: keep the pandas path).
    ``string_columns``: the columns the model takes as strings (its schema's string type)."""
    pos = {f: j for j, f in enumerate(features)}
    codes: dict[str, dict[Any, int]] = {}
    touched: set[str] = set()
    for op in pipeline.ops:  # factorized columns: the op must be the first to read them
        if type(op).__name__ == "FactorizeOp":
            for c, m in op.maps.items():
                if c in pos and c not in touched:
                    codes[c] = dict(m)
                elif c in pos:
                    log.info("serving preprocessing stays on pandas: %s is read before it is factorized", c)
                    return None
        touched.update(getattr(op, "cols", None) or [])
        col = getattr(getattr(op, "params", None), "column", None)
        if col:
            touched.add(col)
    text = {f for f in string_columns if f not in codes}
    numeric = {f for f in features if f not in text}
    steps: list[Step] = []
    for op in pipeline.ops:
        make = STEPS.get(type(op).__name__)
        if make is None:
            log.info("serving preprocessing stays on pandas: %s has no numpy form", type(op).__name__)
            return None
        try:
            s = make(op, pos, numeric)
        except (_NoNumpy, AttributeError) as e:  # AttributeError: an op pickled by an older kiln
            log.info("serving preprocessing stays on pandas: %s", e)
            return None
        if s is not None:
            steps.append(s)
    return Compiled(features, steps, codes, text)
