"""Automatic featurisation of tables: the first step of every tabular model's sklearn Pipeline.

Why inside the model: it is fitted by ``Pipeline.fit`` on the train split only (no statistic of
held-out rows leaks in), it is saved, exported to ONNX and served with the model, so the served
model takes raw rows as they are in the CSV (strings, missing values) and nothing is applied twice
or forgotten. The seed's preprocessing ops (``kiln.data.preprocess``) run before it, on the
dataset version; what they already made numeric is featurised as a number.

Chosen from the train rows' column types (no data is read here; purely data-manipulative):

- numeric (int, float): ``SimpleImputer(median)``; a 0/1 missing indicator for each column that
  has missing values in the train rows; ``StandardScaler`` where the algorithm needs it
  (linear, SVM, kNN, MLP: ``SklearnAlgorithm.scale_numeric``);
- categorical (string, object, bool, category): a missing value is a category of its own (the
  empty string: a string input in ONNX cannot hold null, and a CSV's empty cell reads as missing,
  so "" is never a real value); one-hot (``handle_unknown='ignore'``) up to ``MAX_ONEHOT``
  categories, else ordinal with unseen values as -1 (scaled where the algorithm needs it);
- datetime (the dataset version's ``datetime`` columns, strings as in the CSV): year, month, day,
  weekday and hour as numbers (``featurize_dates.DateParts``), then imputed and scaled as numbers.
  No ONNX export for these (skl2onnx cannot parse dates): the native model serves them.

The input schema kept in the model's ``meta.json`` (and its ``kiln-serving.json``)::

    {"columns": {"<name>": {"type": "number", "missing": 3}
                 | {"type": "string", "encoding": "onehot|ordinal", "categories": [...], "missing": 0}
                 | {"type": "datetime", "example": "2024-01-31", "missing": 0}}}
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

MAX_ONEHOT = 20       # more categories than this: ordinal, not a column each
MAX_LISTED = 200      # categories kept in the schema (the encoder keeps them all)
MISSING = ""          # a missing categorical value, as the model sees it


def is_numeric(series: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


def build(x: Any, *, scale: bool, dates: Collection[str] = ()) -> tuple[Any, dict[str, Any]]:
    """(unfitted transformer, input schema) for the train rows ``x`` (a DataFrame); ``dates``: the
    columns the dataset version typed ``datetime``. All-numeric tables get a transformer over a
    plain float array (one ONNX input, the fast serving path); mixed tables one over a DataFrame
    (one ONNX input per column)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import MissingIndicator, SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    columns = [str(c) for c in x.columns]
    schema: dict[str, Any] = {}
    numeric, onehot, ordinal, missing, when = [], [], [], [], []
    for c in columns:
        s = x[c]
        n_missing = int(s.isna().sum())
        if c in dates and not is_numeric(s):
            schema[c] = {"type": "datetime", "example": str(s.dropna().iloc[0]) if n_missing < len(s) else "",
                         "missing": n_missing}
            when.append(c)
            continue
        if is_numeric(s):
            schema[c] = {"type": "number", "missing": n_missing}
            numeric.append(c)
            if n_missing:
                missing.append(c)
            continue
        cats = sorted({str(v) for v in s.dropna().tolist()})
        enc = "onehot" if len(cats) <= MAX_ONEHOT else "ordinal"
        schema[c] = {"type": "string", "encoding": enc, "categories": cats[:MAX_LISTED], "missing": n_missing}
        (onehot if enc == "onehot" else ordinal).append(c)
    num_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if scale:
        num_steps.append(("scale", StandardScaler()))
    all_numeric = not onehot and not ordinal and not when
    # an all-numeric table is fitted on a float array: columns by position
    ref = (lambda cs: [columns.index(c) for c in cs]) if all_numeric else (lambda cs: list(cs))
    parts: list[tuple[str, Any, list[Any]]] = []
    if numeric:
        parts.append(("num", Pipeline(num_steps), ref(numeric)))
    if missing:
        # its own transformer, not SimpleImputer(add_indicator=True): skl2onnx 1.20 drops the
        # indicator columns of that (the ONNX graph then reads past its input)
        parts.append(("missing", MissingIndicator(features="all"), ref(missing)))
    if onehot:
        parts.append(("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ref(onehot)))
    if ordinal:
        enc_steps: list[tuple[str, Any]] = [("encode", OrdinalEncoder(handle_unknown="use_encoded_value",
                                                                       unknown_value=-1))]
        if scale:
            enc_steps.append(("scale", StandardScaler()))
        parts.append(("ordinal", Pipeline(enc_steps), ref(ordinal)))
    if when:
        from kiln.algorithms.featurize_dates import DateParts

        date_steps: list[tuple[str, Any]] = [("parts", DateParts()), ("impute", SimpleImputer(strategy="median"))]
        if scale:
            date_steps.append(("scale", StandardScaler()))
        parts.append(("datetime", Pipeline(date_steps), ref(when)))
    if all_numeric and not missing:
        return Pipeline(num_steps), {"columns": schema}
    return ColumnTransformer(parts, sparse_threshold=0.0), {"columns": schema}


def normalise(df: Any, schema: dict[str, Any], columns: list[str]) -> Any:
    """Rows as the featuriser was fitted on them: numbers as float64 (NaN: missing), strings as
    ``str`` (``MISSING``: missing; booleans as 'True'/'False', as pandas reads them). A float
    array when every column is a number, else a DataFrame in the fitted column order."""
    import numpy as np
    import pandas as pd

    types = schema["columns"]
    if all(types[c]["type"] == "number" for c in columns):
        return df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64) \
            if any(df[c].dtype.kind not in "iuf" for c in columns) else df.to_numpy(dtype=np.float64)
    out = {}
    for c in columns:
        s = df[c]
        if types[c]["type"] == "number":
            out[c] = pd.to_numeric(s, errors="coerce").astype(np.float64)
        else:
            out[c] = s.map(lambda v: v if isinstance(v, str) else MISSING if pd.isna(v) else str(v)).astype(object)
    return pd.DataFrame(out, index=df.index, columns=columns)


def onnx_feed(x: Any, schema: dict[str, Any], columns: list[str], input_names: list[str] | None = None) -> dict[str, Any]:
    """A normalised DataFrame as ONNX inputs: one ``N x 1`` tensor per column, in column order
    (skl2onnx renames inputs it cannot use as given, e.g. 'bill len' -> 'bill_len', so inputs are
    matched by position, not by name)."""
    import numpy as np

    names = input_names or columns
    feed = {}
    for name, c in zip(names, columns):
        kind = np.float32 if schema["columns"][c]["type"] == "number" else object
        feed[name] = np.asarray(x[c].to_numpy(), dtype=kind).reshape(-1, 1)
    return feed


def onnx_initial_types(schema: dict[str, Any], columns: list[str]) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    return [(c, FloatTensorType([None, 1]) if schema["columns"][c]["type"] == "number"
             else StringTensorType([None, 1])) for c in columns]


_REGISTERED = False


def register_missing_indicator() -> None:
    """skl2onnx has no MissingIndicator converter: IsNaN then Cast to float (``features='all'``
    over the columns given, which is how ``build`` uses it)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from onnx import TensorProto
    from skl2onnx import update_registered_converter
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.impute import MissingIndicator

    def shape(operator: Any) -> None:
        n = operator.inputs[0].get_first_dimension()
        operator.outputs[0].type = FloatTensorType([n, len(operator.raw_operator.features_)])

    def convert(scope: Any, operator: Any, container: Any) -> None:
        nan = scope.get_unique_variable_name("isnan")
        container.add_node("IsNaN", operator.inputs[0].full_name, nan, name=scope.get_unique_operator_name("IsNaN"))
        container.add_node("Cast", nan, operator.outputs[0].full_name, to=TensorProto.FLOAT,
                           name=scope.get_unique_operator_name("Cast"))

    update_registered_converter(MissingIndicator, "KilnMissingIndicator", shape, convert)
    _REGISTERED = True


def parity_rows(df: Any, schema: dict[str, Any], columns: list[str]) -> Any:
    """``df`` plus rows that reach the featuriser's other paths: every value missing, and every
    string an unseen category, so the ONNX parity check covers imputation and unknown handling."""
    import numpy as np
    import pandas as pd

    if len(df) == 0:
        return df
    blank = {c: (np.nan if schema["columns"][c]["type"] == "number" else None) for c in columns}
    unseen = {c: (df[c].iloc[0] if schema["columns"][c]["type"] == "number" else "\u2400unseen value")
              for c in columns}
    extra = pd.DataFrame([blank, unseen], columns=columns)
    return pd.concat([df[columns], extra], ignore_index=True)
