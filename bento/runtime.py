"""Load a registered model version and turn EasyMaker-format instances into predictions.

Why its own module: the fast path, BentoML's fallback API and the batcher all call the same three
steps, so a request behaves the same whichever way it arrives:

1. ``decode(instance, index)``: one instance -> an input array (or :class:`InstanceError` naming
   ``instances[i].field``), so one bad instance is rejected before it can join a batch; a table
   row is an object keyed by column or a list in feature order, and a model registered with its
   dataset's fitted preprocessing gets it applied here in numpy (``kiln.bento.rowprep``);
2. ``predict(arrays)``: the stacked batch through the model (onnxruntime, TorchScript, sklearn);
3. ``format(output, meta)``: one instance's result in the EasyMaker response shape.

How to serve a model is in ``kiln-serving.json`` inside the model version (written at register)::

    {"framework": "onnx|torch|sklearn", "file": "model.onnx",          # default by framework
     "task": "classification|regression|clustering|detection|segmentation",
     "input": "tabular|image",
     "features": ["sepal_length", ...],        # tabular: the request fields, in model order
     "feature_types": {"sepal_length": "number", "color": "string"},  # checked per field;
                                               # default "number" ("any" with a preprocess)
     "labels": ["setosa", ...],                # class names (index -> name)
     "preprocess": "preprocess",               # tabular: fitted kiln.data pipeline dir, if any
     "schema": {"columns": {"island": {"type": "string", "categories": [..], "encoding": "onehot",
                "missing": 0}, "bill": {"type": "number", "missing": 3}}},
                                               # tabular models with their featurisation: raw rows
                                               # (strings, null for missing, any order; an extra
                                               # or missing field is a 400 naming it); a model with
                                               # a string column takes one ONNX input per column
     "image": {"size": [H, W], "mode": "RGB|L", "mean": [..], "std": [..]},
     "threshold": 0.5,                         # detection: minimum score
     "output_size": [512, 512],                # segmentation: label map size (default image size)
     "top_k": null}                            # classification: keep the k best

Responses: ``{"predictions": [P_1, ..., P_n]}``, one entry per instance whatever the batch size
(``kiln.bento.fastpath``). Per instance (EasyMaker's formats for images): image classification
``[{"score", "label"}, ...]`` best first; tabular classification ``{"label", "score"}`` (the best
class; no score from an sklearn model without probabilities);
detection ``[{"<label>": {"xmin", "ymin", "xmax", "ymax"}, "score": s}, ...]`` per instance (a torch
detector returns per image ``{"boxes", "scores", "labels"}``: a list of dicts, or one dict of batched
``N x Q`` tensors; an ONNX detector with outputs of those three names, ``N x Q`` each; boxes are pixel
xyxy in the model's input frame, labels index ``labels``);
segmentation a label id per pixel (rows of ints); regression a number (or list) per instance;
clustering ``{"cluster", "distance"}`` (k-means) or ``{"cluster", "score"}`` (a mixture). The shapes
are built by ``kiln.bento.predictions``, which ``kiln infer`` calls too.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import logging
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.bento import predictions as P
from kiln.bento.registry import FRAMEWORKS, SERVING_FILE
from kiln.bento.rowprep import compile_rows
from kiln.data.preprocess import load_pipeline
from kiln.errors import ConfigError

__all__ = ["InstanceError", "ServingConfig", "Engine", "load_engine", "TASKS", "INPUTS", "LOADERS"]

TASKS = ("classification", "regression", "clustering", "detection", "segmentation")
INPUTS = ("tabular", "image")
FEATURE_TYPES = ("number", "string", "any")
log = logging.getLogger("kiln.bento.runtime")


class InstanceError(ValueError):
    """One instance is unusable; ``where`` is ``instances[i].field``."""

    def __init__(self, index: int, field_: str | None, problem: str) -> None:
        self.index, self.field, self.problem = index, field_, problem
        self.where = f"instances[{index}]" + (f".{field_}" if field_ else "")
        super().__init__(f"{self.where}: {problem}")


@dataclass
class ServingConfig:
    framework: str
    task: str = "classification"
    input: str = "tabular"
    file: str | None = None
    features: list[str] | None = None
    feature_types: dict[str, str] = field(default_factory=dict)
    labels: list[str] | None = None
    preprocess: str | None = None
    image: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.5
    output_size: list[int] | None = None
    top_k: int | None = None
    schema: dict[str, Any] | None = None

    @functools.cached_property
    def typed(self) -> bool:
        """Rows go to the model column by column (string columns), not as one float matrix.
        Cached: asked twice a request, it walked every column each time (5 % of a wine request)."""
        cols = (self.schema or {}).get("columns") or {}
        return any(c.get("type") in ("string", "datetime") for c in cols.values())  # dates: as strings

    @classmethod
    def load(cls, model_dir: Path) -> ServingConfig:
        p = model_dir / SERVING_FILE
        if not p.is_file():
            raise ConfigError(f"{model_dir}: no {SERVING_FILE}", hint="register the model with serving={...}")
        raw = json.loads(p.read_text())
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{p}: unknown keys {unknown}", hint=f"valid: {', '.join(sorted(known))}")
        cfg = cls(**raw)
        if cfg.framework not in FRAMEWORKS:
            raise ConfigError(f"{p}: unknown framework {cfg.framework!r}", hint=f"valid: {', '.join(FRAMEWORKS)}")
        if cfg.task not in TASKS:
            raise ConfigError(f"{p}: unknown task {cfg.task!r}", hint=f"valid: {', '.join(TASKS)}")
        if cfg.input not in INPUTS:
            raise ConfigError(f"{p}: unknown input {cfg.input!r}", hint=f"valid: {', '.join(INPUTS)}")
        if cfg.input == "tabular" and not cfg.features:
            raise ConfigError(f"{p}: a tabular model needs 'features' (the request fields in model order)")
        bad_types = {k: v for k, v in cfg.feature_types.items() if v not in FEATURE_TYPES}
        if bad_types:
            raise ConfigError(f"{p}: unknown feature_types {bad_types}", hint=f"valid: {', '.join(FEATURE_TYPES)}")
        if cfg.schema is not None and set(cfg.schema.get("columns") or {}) != set(cfg.features or ()):
            raise ConfigError(f"{p}: schema.columns must name exactly the features")
        if cfg.input == "image" and not cfg.image.get("size"):
            raise ConfigError(f"{p}: an image model needs image.size [H, W]")
        cfg.file = cfg.file or FRAMEWORKS[cfg.framework]
        return cfg


_F32_MAX = float(np.finfo(np.float32).max)
_PLAIN = {int, float}  # JSON numbers as orjson gives them (bool is not one)


# ---------------------------------------------------------------------------------- loaders --
# A loader takes (model file, CPU threads, whether the deployment asks for a GPU) and returns the
# model as a function of a batch, with ``device`` set to where it runs ("cuda" or "cpu"): a GPU is
# used when asked for and present, else the CPU serves (load_engine warns).


def onnx_providers(gpu: bool, available: list[str]) -> list[str]:
    """onnxruntime's providers for a deployment, best first: CUDA when asked for and built in
    (``onnxruntime-gpu``), with the CPU behind it for the operators CUDA lacks."""
    if gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _load_onnx(path: Path, threads: int, gpu: bool = False) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=so,
                                providers=onnx_providers(gpu, ort.get_available_providers()))
    # what the session took, not what was asked: a CUDA provider whose libraries fail to load
    # drops to the CPU with only a log line of onnxruntime's
    device = "cuda" if "CUDAExecutionProvider" in sess.get_providers() else "cpu"
    inputs = sess.get_inputs()
    inp = inputs[0]
    name = inp.name
    names = [i.name for i in inputs]
    dtypes = [np.dtype(object) if "string" in i.type else np.dtype(np.float32) for i in inputs]
    outs = [o.name for o in sess.get_outputs()]
    if {"boxes", "scores", "labels"} <= set(outs):  # a detector decoding in its graph (N x K per output)
        def detect(x: np.ndarray) -> list[dict[str, np.ndarray]]:
            boxes, scores, labels = sess.run(["boxes", "scores", "labels"], {name: x.astype(np.float32, copy=False)})
            return [{"boxes": b, "scores": s, "labels": k} for b, s, k in zip(boxes, scores, labels)]

        detect.device = device  # type: ignore[attr-defined]
        return detect
    # skl2onnx classifiers have (label, probabilities): keep the 2-D float output
    pick = next((o.name for o in sess.get_outputs() if "prob" in o.name.lower()), outs[-1] if len(outs) > 1 else outs[0])
    want_int = "int64" in inp.type
    # a model over flat pixel rows (sklearn on 8x8 digits) serving image input: rows of N x C x H x W
    flat = len(inp.shape or ()) == 2

    def run(x: Any) -> Any:
        if isinstance(x, dict):  # one N x 1 input per column, by position (skl2onnx renames some)
            if x and isinstance(next(iter(x.values())), np.ndarray):
                feed = {n: np.asarray(v, dtype=t).reshape(-1, 1) for n, t, v in zip(names, dtypes, x.values())}
            else:  # columns as Python sequences (Engine.predict): each N x 1 array made in one call
                feed = {n: np.array([[v] for v in col], dtype=t) for n, t, col in zip(names, dtypes, x.values())}
            out = sess.run([pick], feed)[0]
        else:
            if flat and x.ndim > 2:
                x = x.reshape(len(x), -1)
            out = sess.run([pick], {name: x.astype(np.int64 if want_int else np.float32, copy=False)})[0]
        if isinstance(out, list) and out and isinstance(out[0], dict):  # ZipMap output
            keys = sorted(out[0])
            out = np.array([[row[k] for k in keys] for row in out], dtype=np.float32)
        return out

    run.takes_columns = True  # type: ignore[attr-defined]
    # what the picked output holds, for a clustering model: k-means' 'scores' are the distances
    # to each centre, a mixture's 'probabilities' its components' (kiln.bento.predictions)
    run.measure = {"scores": "distances", "probabilities": "probabilities"}.get(pick)  # type: ignore[attr-defined]
    run.device = device  # type: ignore[attr-defined]
    return run


def _load_torch(path: Path, threads: int, gpu: bool = False) -> Callable[[np.ndarray], Any]:
    import torch

    device = "cuda" if gpu and torch.cuda.is_available() else "cpu"

    torch.set_num_threads(threads)
    try:  # a scripted torchvision detector calls torchvision's C++ ops (nms, box_iou_rotated ...),
        import torchvision  # noqa: F401 - registered on import; without it torch.jit.load fails
    except ImportError:  # a model without torchvision ops loads without it
        pass
    try:
        model = torch.jit.load(str(path), map_location=device)
    except RuntimeError:  # a pickled nn.Module rather than TorchScript
        model = torch.load(str(path), map_location=device, weights_only=False)
    model.eval()

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            out = _to_cpu(model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)))
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], list):
            out = out[1]  # scripted torchvision detectors return (losses, detections)
        if isinstance(out, dict) and "out" in out:
            out = out["out"]  # torchvision segmentation models
        if isinstance(out, dict) and "boxes" in out:  # batched detections (N x Q x ...): one dict per image
            return [{k: v[i].numpy() for k, v in out.items()} for i in range(len(out["boxes"]))]
        if isinstance(out, list):
            return [{k: v.numpy() for k, v in d.items()} for d in out]
        return out.numpy()

    run.device = device  # type: ignore[attr-defined]
    return run


def _to_cpu(out: Any) -> Any:
    """A model's output (tensor, or dicts/lists/tuples of them) back in host memory for numpy."""
    if hasattr(out, "cpu"):
        return out.cpu()
    if isinstance(out, dict):
        return {k: _to_cpu(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_cpu(v) for v in out)
    return out


def _load_sklearn(path: Path, threads: int, gpu: bool = False) -> Callable[[np.ndarray], Any]:
    import joblib
    from sklearn.base import is_clusterer

    model = joblib.load(path)
    proba = fn = getattr(model, "predict_proba", None)
    measure = "probabilities" if fn is not None else None
    if fn is None and is_clusterer(model) and hasattr(model, "transform"):
        # k-means: the distance to every centre (what its ONNX graph outputs), not the id alone
        fn, measure = model.transform, "distances"

    def run(x: Any) -> Any:
        if isinstance(x, dict):  # a mixed table: the model's featuriser takes a DataFrame
            import pandas as pd

            x = pd.DataFrame(x)
        return fn(x) if fn is not None else model.predict(x)

    run.classes = getattr(model, "classes_", None)  # type: ignore[attr-defined]
    run.predicts_proba = proba is not None  # type: ignore[attr-defined]
    run.measure = measure  # type: ignore[attr-defined]
    run.device = "cpu"  # type: ignore[attr-defined]  # scikit-learn has no GPU
    return run


LOADERS: dict[str, Callable[[Path, int, bool], Callable[[np.ndarray], Any]]] = {
    "onnx": _load_onnx, "torch": _load_torch, "sklearn": _load_sklearn,
}


# ---------------------------------------------------------------------------------- engine ----
def _shown(v: Any) -> str:
    """A client's value in an error message: a scalar's type and its first 40 characters, a list
    or object by its type only. Why: ``str()`` of a list nested 1,000 deep (orjson parses up to
    1,023 levels) raises RecursionError, which was a 500 instead of the 400 naming the field."""
    if v is None or isinstance(v, (str, int, float)):
        return f"{type(v).__name__} {str(v)[:40]!r}"
    return type(v).__name__


def _number(v: Any, i: int, f: str) -> float:
    """A raw value of a number column: JSON numbers, numbers written as strings (a CSV row read
    as text), null or an empty string for missing (the model imputes)."""
    if v is None:
        return math.nan
    if isinstance(v, str):
        t = v.strip()
        if not t:
            return math.nan
        try:
            x = float(t)
        except ValueError:
            raise InstanceError(i, f, f"expected a number, got {_shown(v)}") from None
    elif isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InstanceError(i, f, f"expected a number or null, got {_shown(v)}")
    else:
        try:
            x = float(v)
        except OverflowError:  # an integer of 400 digits: JSON allows it, a float does not
            x = math.inf
    if math.isnan(x):
        return x
    if not math.isfinite(x) or abs(x) > _F32_MAX:
        raise InstanceError(i, f, f"{str(v)[:40]} is out of range for the model's 32-bit floats")
    return x


def _category(v: Any, i: int, f: str) -> str:
    """A raw value of a string column: any string (an unseen one is the encoder's to handle),
    null for missing, booleans and numbers as pandas reads them from a CSV ('True', '3')."""
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return ""  # kiln.algorithms.featurize.MISSING: the serving layer does not import sklearn code
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return str(v)
    raise InstanceError(i, f, f"expected a string, a number or null, got {_shown(v)}")


DEFAULT_MIN_PIXELS = 4_000_000   # a phone photo: the smallest default limit, whatever the model's input

@dataclass
class Engine:
    """A loaded model version plus its serving config. Thread-compatible: ``predict`` runs in one
    executor thread; ``decode``/``format`` anywhere."""

    cfg: ServingConfig
    run: Callable[[np.ndarray], Any]
    model_dir: Path
    pipeline: Any = None
    rowprep: Any = None   # the pipeline in numpy (kiln.bento.rowprep.Compiled); None: pandas per row
    name: str = ""
    version: int = 0
    max_pixels: int | None = None   # the deployment's limits.maxImagePixels (None: from the input size)
    device: str = "cpu"             # where the model runs: "cuda" or "cpu" (describe, /metrics)
    _known: set[str] | None = None  # the fields a raw row may carry (features and ignored columns)
    # a raw row's columns in model order, each with whether it is a number (else a string): the
    # schema walked once at the first request instead of twice per row
    _plan: list[tuple[str, bool]] | None = None

    @property
    def pixel_limit(self) -> int:
        """The largest image a request may send, in pixels: a 100 KB PNG can declare 10,000 x
        10,000 pixels and take a second and 400 MB to decode, so the header is checked first."""
        if self.max_pixels:
            return self.max_pixels
        h, w = (self.cfg.image or {}).get("size", (0, 0))
        return max(DEFAULT_MIN_PIXELS, 16 * int(h) * int(w))

    # -- decode ----------------------------------------------------------------------------------
    def decode(self, inst: Any, i: int) -> tuple[np.ndarray, Any]:
        """One instance -> (model input row, meta used by ``format``)."""
        if isinstance(inst, list) and self.cfg.input == "tabular":
            inst = self._row_object(inst, i)
        if not isinstance(inst, dict):
            want = "an object keyed by column or a list in feature order" if self.cfg.input == "tabular" else "an object"
            raise InstanceError(i, None, f"expected {want}, got {type(inst).__name__}")
        if self.cfg.input == "image":
            return self._decode_image(inst, i)
        if self.rowprep is not None:
            return self._decode_compiled(inst, i), None
        if self.pipeline is not None:
            return self._decode_raw_row(inst, i), None
        feats = self.cfg.features or ()
        if self.cfg.schema is not None and (self.cfg.typed or len(inst) != len(feats)):
            return self._decode_typed(inst, i), None
        # the common case in one pass (plain JSON numbers, all finite); anything else takes the
        # loop below, which names the first bad field. type() is exact: bool is not accepted.
        try:
            vals = [inst[f] for f in feats]
        except KeyError:
            vals = None
        if vals is not None and all(type(v) is float or type(v) is int for v in vals):
            # finite and within float32, checked in Python: numpy's reductions cost microseconds
            # each on a 64-value row (sum() is NaN or inf when any value is)
            if vals and math.isfinite(sum(vals)) and -_F32_MAX <= min(vals) and max(vals) <= _F32_MAX:
                return np.array(vals, dtype=np.float32), None
        if self.cfg.schema is not None:  # nulls, numbers as strings: the model imputes and parses
            return self._decode_typed(inst, i), None
        row = np.empty(len(feats), dtype=np.float32)
        for j, f in enumerate(feats):
            if f not in inst:
                raise InstanceError(i, f, f"missing; the model needs {', '.join(self.cfg.features or ())}")
            v = inst[f]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InstanceError(i, f, f"expected a number, got {_shown(v)}")
            if not math.isfinite(v):
                raise InstanceError(i, f, "expected a finite number")
            with np.errstate(over="ignore"):
                row[j] = v
            if not math.isfinite(row[j]):  # 1e39 is a finite JSON number but not a float32
                raise InstanceError(i, f, f"{str(v)[:40]} is out of range for the model's 32-bit floats")
        return row, None

    def _row_object(self, row: list, i: int) -> dict:
        """A row sent as a list: its values in feature order, as the CSV has them."""
        feats = self.cfg.features or []
        if len(row) != len(feats):
            raise InstanceError(i, None, f"a row as a list has {len(feats)} values, in this order: "
                                f"{', '.join(feats)}; got {len(row)} (or send an object keyed by column)")
        return dict(zip(feats, row))

    def _decode_compiled(self, inst: dict, i: int) -> Any:
        """A raw row through the fitted preprocessing in numpy (kiln.bento.rowprep): values are
        checked per column as the schema types them, so a bad one is a 400 naming its field."""
        c = self.rowprep
        assert c is not None
        feats = c.features
        if self.cfg.schema is not None:
            self._no_extra_field(inst, i)
        try:
            vals = [inst[f] for f in feats]
        except KeyError:
            f = next(f for f in feats if f not in inst)
            raise InstanceError(i, f, f"missing; the model needs {', '.join(feats)} (null for an unknown value)") from None
        x = None
        if c.plain and set(map(type, vals)) <= _PLAIN:  # the common case: plain JSON numbers, one pass
            try:
                x = np.array(vals, dtype=np.float64)
            except OverflowError:  # a 400-digit integer: the loop below names it
                x = None
        if x is None:
            x = np.empty(len(feats), dtype=np.float64)
            for j, (f, v) in enumerate(zip(feats, vals)):
                if c.text[j]:
                    x[j] = math.nan  # the string goes to the model as it came (below)
                    _category(v, i, f)
                elif c.codes[j] is not None:
                    x[j] = c.code(j, v)
                else:
                    x[j] = _number(v, i, f)
        try:
            for step in c.steps:
                step(x)
        except ValueError as e:
            raise InstanceError(i, None, f"preprocessing failed: {str(e)[:200]}") from None
        a = np.abs(x)
        if not a.max() <= _F32_MAX and np.fmax.reduce(a) > _F32_MAX:  # NaN (missing) is for the model's imputer
            f = feats[int(np.flatnonzero(a > _F32_MAX)[0])]
            raise InstanceError(i, f, f"{str(inst[f])[:40]} is out of range for the model's 32-bit floats "
                                "after preprocessing")
        y = x.astype(np.float32)
        if self.cfg.typed:
            return tuple(_category(v, i, f) if t else float(y[j])
                         for j, (f, v, t) in enumerate(zip(feats, vals, c.text)))
        return y

    def _decode_typed(self, inst: dict, i: int) -> Any:
        """A raw row of a model with an input schema: every column by name, no other field (a
        row with as many fields as the model has columns, all found, has none). One pass over
        the columns; plain JSON numbers and strings are taken as they are, anything else goes
        through ``_number``/``_category``, which parse it or name the field."""
        plan = self._plan
        if plan is None:
            cols = (self.cfg.schema or {})["columns"]
            plan = self._plan = [(f, cols[f]["type"] == "number") for f in self.cfg.features or ()]
        if len(inst) != len(plan):
            self._no_extra_field(inst, i)
        vals: list[Any] = []
        for f, num in plan:
            try:
                v = inst[f]
            except KeyError:
                self._no_extra_field(inst, i)  # an unknown field is named before a missing one
                raise InstanceError(i, f, f"missing; the model needs {', '.join(self.cfg.features or ())} "
                                          "(null for an unknown value)") from None
            if num:
                # NaN and out-of-range values fail the comparison: _number says what they are
                vals.append(float(v) if (type(v) is float or type(v) is int) and -_F32_MAX <= v <= _F32_MAX
                            else _number(v, i, f))
            else:
                vals.append(v if type(v) is str else _category(v, i, f))
        if self.cfg.typed:
            return tuple(vals)
        return np.array(vals, dtype=np.float32)

    def _no_extra_field(self, inst: dict, i: int) -> None:
        # the dataset's label and identifier columns (a row as in the CSV) are accepted and ignored
        known = self._known
        if known is None:
            known = self._known = {*(self.cfg.features or ()), *(self.cfg.schema or {}).get("ignored", ())}
        extra = next((k for k in inst if k not in known), None)
        if extra is not None:
            raise InstanceError(i, str(extra)[:60], "not a column of the model; it takes "
                                + ", ".join(self.cfg.features or ()))

    def _typed_row(self, row: Any, i: int) -> Any:
        """Values in model order as the featuriser was fitted on them: a float32 row when every
        column is a number (NaN: missing), else a tuple of floats and strings ('' for missing)."""
        cols = (self.cfg.schema or {})["columns"]
        vals = [(_number if cols[f]["type"] == "number" else _category)(row[f], i, f) for f in self.cfg.features or ()]
        if self.cfg.typed:
            return tuple(vals)
        return np.array(vals, dtype=np.float32)

    def _decode_raw_row(self, inst: dict, i: int) -> Any:
        types = self.cfg.feature_types
        if self.cfg.schema is not None:
            self._no_extra_field(inst, i)
        for f in self.cfg.features or ():
            if f not in inst:
                raise InstanceError(i, f, f"missing; the model needs {', '.join(self.cfg.features or ())}")
            v = inst[f]
            want = types.get(f, "any")
            if want == "number" and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise InstanceError(i, f, f"expected a number, got {_shown(v)}")
            if want == "string" and not isinstance(v, str):
                raise InstanceError(i, f, f"expected a string, got {type(v).__name__}")
            if v is not None and not isinstance(v, (int, float, str, bool)):
                raise InstanceError(i, f, f"expected a number or string, got {type(v).__name__}")
        row = {f: inst[f] for f in self.cfg.features or ()}
        try:  # transform row by row, so an error names its instance
            df = self._transform([row])
            if self.cfg.schema is None:
                return df.to_numpy(dtype=np.float32)[0]
        except Exception as e:  # noqa: BLE001 - pipeline ops raise many kinds
            strings = [f for f, v in row.items() if isinstance(v, str)]
            hint = f" (string fields: {', '.join(strings)})" if strings else ""
            raise InstanceError(i, None, f"preprocessing failed: {str(e)[:200]}{hint}") from None
        return self._typed_row(df.iloc[0], i)

    def _transform(self, rows: list[dict]) -> Any:
        import pandas as pd

        df = self.pipeline.transform(pd.DataFrame(rows, columns=self.cfg.features))
        label = getattr(self.pipeline, "label", None)
        if label and label in df.columns:
            df = df.drop(columns=[label])
        return df

    def _decode_image(self, inst: dict, i: int) -> tuple[np.ndarray, Any]:
        from PIL import Image, UnidentifiedImageError

        data = inst.get("data")
        if data is None:
            raise InstanceError(i, "data", "missing; send the image file as base64")
        if not isinstance(data, str):
            raise InstanceError(i, "data", f"expected a base64 string, got {type(data).__name__}")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InstanceError(i, "data", "not valid base64") from None
        problem = _png_chunk_problem(raw) if raw.startswith(_PNG_SIGNATURE) else None
        if problem:
            raise InstanceError(i, "data", f"not a decodable image ({problem})")
        try:
            img = Image.open(io.BytesIO(raw))  # reads the header only
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise InstanceError(i, "data", f"not a decodable image ({str(e)[:120]})") from None
        limit = self.pixel_limit
        if img.size[0] * img.size[1] > limit:
            raise InstanceError(i, "data", f"image is {img.size[0]} x {img.size[1]} pixels, more than the "
                                f"{limit:,} this deployment accepts (limits.maxImagePixels); resize it first")
        try:
            img.load()
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise InstanceError(i, "data", f"not a decodable image ({str(e)[:120]})") from None
        im = self.cfg.image
        w0, h0 = img.size
        h, w = im["size"]
        img = img.convert(im.get("mode", "RGB"))
        if (w0, h0) != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32) / float(im.get("scale", 255.0))
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        if "mean" in im:
            x = (x - np.asarray(im["mean"], np.float32)[:, None, None]) / np.asarray(im.get("std", [1.0]), np.float32)[:, None, None]
        return x, (w0, h0)

    # -- predict / format --------------------------------------------------------------------
    def predict(self, xs: list[np.ndarray]) -> list[Any]:
        """Stacked batch -> per-instance raw outputs."""
        if self.cfg.typed and getattr(self.run, "takes_columns", False):
            # the runtime makes each column's array itself, in its input's type: one numpy call
            # a column instead of a float64 array converted again (a quarter of a row's time)
            out = self.run(dict(zip(self.cfg.features or (), zip(*xs))))
        elif self.cfg.typed:  # rows of floats and strings: one array per column
            cols = (self.cfg.schema or {})["columns"]
            feed = {f: np.array([x[j] for x in xs], dtype=np.float64 if cols[f]["type"] == "number" else object)
                    for j, f in enumerate(self.cfg.features or ())}
            out = self.run(feed)
        else:
            out = self.run(np.stack(xs) if len(xs) > 1 else xs[0][None])  # a view: np.stack copies
        if isinstance(out, list):
            return out
        return list(out)

    def format(self, y: Any, meta: Any) -> Any:
        """One instance's raw output -> its prediction (``kiln.bento.predictions``' shapes)."""
        task = self.cfg.task
        if task == "classification":
            if self.cfg.input == "tabular":  # the label and its score; all scores ranked for images
                if getattr(self.run, "predicts_proba", True) is False:  # an sklearn model without scores
                    return {"label": str(np.asarray(y).reshape(-1)[0])}
                return P.best(y, self._label)
            return P.ranked(y, self._label, self.cfg.top_k)
        if task == "regression":
            a = np.asarray(y, dtype=np.float64)
            return float(a.reshape(-1)[0]) if a.size == 1 else a.tolist()
        if task == "clustering":
            return P.clustered(y, getattr(self.run, "measure", None))
        if task == "detection":
            return self._boxes(y, meta)
        return P.mask(y, self.cfg.output_size or self.cfg.image["size"])

    def _label(self, k: int) -> str:
        labels = self.cfg.labels
        return labels[k] if labels and 0 <= k < len(labels) else str(k)

    def _boxes(self, d: dict[str, np.ndarray], meta: Any) -> list[dict[str, Any]]:
        """Boxes in the model's input frame, scaled to the sent image's pixels."""
        h, w = self.cfg.image["size"]
        w0, h0 = meta
        found = ((self._label(int(lab)), b, s) for b, s, lab in zip(d["boxes"], d["scores"], d["labels"]))
        return P.boxes(found, self.cfg.threshold, (w0 / w, h0 / h))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk_problem(raw: bytes) -> str | None:
    """What makes a PNG too costly to open, read from its chunk headers only, or None.

    - More than one iCCP chunk (colour profile): Pillow inflates each one when it opens the file
      (up to 1 MiB a chunk from ~1 KB on the wire, no limit on their number), before the pixel
      count is checked; a 230 KB PNG of 8 x 8 pixels with 150 of them raised valid p99 4.5x at
      10 % of requests (bench/security_load.py). The PNG standard allows one.
    - Too many chunks: Pillow walks chunks in Python (~2.3 us each, holding the GIL), so 655,360
      empty chunks in a 7.5 MB body took 1.5 s of CPU. Encoders write IDAT in 8-64 KiB chunks, so
      a real PNG averages several KiB a chunk; the limit allows one chunk per 2 KiB (at least
      1,024), which stops the walk after a few ms."""
    limit = max(1024, len(raw) // 2048)
    count = profiles = 0
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(raw):
        length, kind = struct.unpack_from(">I4s", raw, pos)
        count += 1
        profiles += kind == b"iCCP"
        if profiles > 1:
            return "a PNG holds at most one colour profile, iCCP chunk; this one has more"
        if count > limit:
            return f"a PNG of {len(raw):,} bytes with more than {limit:,} chunks; re-encode it"
        if kind == b"IEND":
            break
        pos += 12 + length  # length, type, data, CRC
    return None


PNG_TEXT_LIMIT = 2**20


def limit_png_text() -> None:
    """At most 1 MiB of PNG text chunks in all (Pillow's default: 64 MiB). Why: Pillow inflates
    every text chunk when it opens a file, before the pixel count can be checked; a 64 KB PNG of
    8 x 8 pixels with 62 compressed chunks took 0.4 s of CPU and 63 MB, and at 10 % of requests
    raised valid p99 4.8x and peak memory 1.4x (bench/security_load.py). A model reads no text;
    1 MiB still admits an image's XMP metadata. Over it, the image is a 400 ("not a decodable
    image"). Process-wide: Pillow keeps the limit in a module variable."""
    from PIL import PngImagePlugin

    PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, PNG_TEXT_LIMIT)


def load_engine(model_dir: str | Path, *, threads: int = 1, name: str = "", version: int = 0,
                gpu: bool = False) -> Engine:
    """Load a model version directory (a BentoML model dir from the registry); ``gpu``: the
    deployment asks for one, used when present (else the CPU serves, with a warning)."""
    d = Path(model_dir)
    cfg = ServingConfig.load(d)
    f = d / (cfg.file or "")
    if not f.is_file():
        raise ConfigError(f"{d}: model file {cfg.file} is missing")
    run = LOADERS[cfg.framework](f, threads, gpu)
    device = getattr(run, "device", "cpu")
    if gpu and device != "cuda":
        why = {"onnx": "onnxruntime has no usable CUDAExecutionProvider (install onnxruntime-gpu, check CUDA)",
               "torch": "torch sees no CUDA device", "sklearn": "scikit-learn models run on the CPU"}[cfg.framework]
        log.warning("deployment %s asks for a GPU but serves on the CPU: %s", name or d.name, why)
    if cfg.framework == "sklearn" and cfg.labels is None and getattr(run, "classes", None) is not None:
        cfg.labels = [str(c) for c in run.classes]  # type: ignore[attr-defined]
    pipeline = rowprep = None
    if cfg.preprocess:
        pipeline = load_pipeline(d / cfg.preprocess)
        cols = (cfg.schema or {}).get("columns") or {}
        strings = {f for f in cfg.features or () if (cols.get(f) or {}).get("type") == "string"
                   or cfg.feature_types.get(f) == "string"}
        rowprep = compile_rows(pipeline, list(cfg.features or ()), strings)
    if cfg.input == "image":
        limit_png_text()
    return Engine(cfg=cfg, run=run, model_dir=d, pipeline=pipeline, rowprep=rowprep, name=name, version=version,
                  device=device)
