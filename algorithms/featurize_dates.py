"""Date and time columns as numbers: the transformer ``featurize.build`` puts on a table's
``datetime`` columns (``kiln.data.schema``). A module of its own because a fitted pipeline pickles
a reference to the class: it must import scikit-learn at the top, which ``featurize`` does not.

Each column becomes ``PARTS`` (year, month, day, weekday, hour) as floats; a missing or
unparseable value is NaN in each (imputed after, as any number). Parsing is pandas' on the
strings as the CSV holds them, so training, ``kiln infer`` and the native serving path agree.
skl2onnx has no string-to-date operator: models with such a column have no ONNX export
(``SklearnAlgorithm.export_onnx`` says so, naming the column)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

PARTS = ("year", "month", "day", "weekday", "hour")
_ACCESSOR = {"weekday": "day_of_week"}  # pandas' name (0: Monday)


class DateParts(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Strings (or datetimes) of each column -> ``PARTS`` floats per column. Stateless."""

    def fit(self, x: Any, y: Any = None) -> DateParts:
        self.n_features_in_ = x.shape[1]
        self.columns_ = [str(c) for c in getattr(x, "columns", range(x.shape[1]))]
        return self

    def transform(self, x: Any) -> Any:
        import pandas as pd

        frame = x if isinstance(x, pd.DataFrame) else pd.DataFrame(x)
        out = []
        for c in frame.columns:
            s = frame[c]
            # '' is the featuriser's missing value; format="mixed": each value parsed on its own
            when = pd.to_datetime(s.where(s != ""), errors="coerce", format="mixed")
            out += [getattr(when.dt, _ACCESSOR.get(p, p)).to_numpy(dtype=np.float64, na_value=np.nan) for p in PARTS]
        return np.column_stack(out) if out else np.empty((len(frame), 0))

    def get_feature_names_out(self, input_features: Any = None) -> Any:
        names = input_features if input_features is not None else self.columns_
        return np.asarray([f"{c}_{p}" for c in names for p in PARTS], dtype=object)
