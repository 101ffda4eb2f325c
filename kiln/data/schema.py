"""Column typing of a table, decided when a dataset version is made; purely data-manipulative.

Tables come as people have them: strings with spaces and symbols, ``NA`` or empty cells, a row
number or an id per row, dates. Every column gets one type:

- ``numeric``: int or float;
- ``categorical``: any string value (``'Very Good'``, ``'Driver & Passenger'``), booleans, yes/no;
- ``identifier``: unique per row (string ids; integers counting the rows in file order): kept in the file, not a
  feature (it tells nothing about unseen rows), noted in the schema;
- ``datetime``: dates or times; the models featurise them (year, month, day, weekday, hour:
  ``kiln.algorithms.featurize``);
- ``text``: free text (many distinct values of several words each, e.g. a review); a version
  refuses it (``kiln.controller.dataset_steps``) with the fix: drop or convert the column.

The label is never an identifier. The stored schema (``table_schema``), kept with each version in
the versions log (``kiln.data.versioning``)::

    {"rows": 344, "label": "species", "target": "classification", "labelMissing": 2,
     "columns": {"island": {"type": "categorical", "missing": 0, "distinct": 3,
                            "categories": {"Biscoe": 168, ...}},      (the 20 most frequent)
                 "bill_mm": {"type": "numeric", "missing": 2},
                 "id": {"type": "identifier", "missing": 0, "note": "unique per row: not a feature"}}}
"""

from __future__ import annotations

import re
from typing import Any

# a table must have this many rows before "unique per row" says identifier rather than chance
MIN_ROWS_FOR_IDENTIFIER = 20
CATEGORIES_KEPT = 20
# a classification label with more distinct values than this is most likely a regression target
MANY_CLASSES = 200
# free text: values of at least this many words on average, and mostly distinct (not the few
# long category names of 'Driver & Passenger' or 'Premium Plus Family')
TEXT_WORDS = 5
TEXT_DISTINCT = 0.5

_DATE = re.compile(
    r"^(\d{4}[-/.]\d{1,2}([-/.]\d{1,2})?|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?"
    r"|^\d{1,2}:\d{2}(:\d{2})?$"
)


def column_type(s: Any, *, is_label: bool = False) -> str | None:
    """numeric | categorical | identifier | datetime | text for a pandas Series; None: another dtype."""
    kind = s.dtype.kind
    values = s.dropna()
    unique_per_row = (not is_label and len(values) == len(s) >= MIN_ROWS_FOR_IDENTIFIER
                      and values.is_unique)
    if kind in "iu":
        # an integer that counts the rows in file order (0.., 1.., any start, step 1) is a row number
        if unique_per_row and bool((values.diff().iloc[1:] == 1).all()):
            return "identifier"
        return "numeric"
    if kind == "f":
        return "numeric"
    if kind == "b":
        return "categorical"
    if kind != "O":
        return None
    svals = values.astype(str)
    if len(svals) and svals.str.match(_DATE).all():
        return "datetime"
    if (not is_label and len(svals) >= MIN_ROWS_FOR_IDENTIFIER and svals.nunique() >= TEXT_DISTINCT * len(svals)
            and svals.str.split().str.len().mean() >= TEXT_WORDS):
        return "text"
    if unique_per_row:
        return "identifier"
    return "categorical"


def table_schema(frame: Any, columns: dict[str, str], label: str | None, target: str | None = None) -> dict[str, Any]:
    """The schema stored with a version (see the module docstring)."""
    out: dict[str, Any] = {"rows": int(len(frame)), "label": label, "target": target, "columns": {}}
    for name, typ in columns.items():
        s = frame[name]
        col: dict[str, Any] = {"type": typ, "missing": int(s.isna().sum())}
        if typ == "categorical" or (name == label and target != "regression" and typ != "numeric"):
            counts = s.dropna().astype(str).value_counts()
            col["distinct"] = int(len(counts))
            col["categories"] = {str(k): int(v) for k, v in counts.head(CATEGORIES_KEPT).items()}
        elif name == label and target == "classification":
            col["distinct"] = int(s.nunique())
        if typ == "identifier":
            col["note"] = "unique per row: not a feature"
        out["columns"][name] = col
    if label is not None and label in columns:
        out["labelMissing"] = out["columns"][label]["missing"]
    return out


def summary(schema: dict[str, Any]) -> str:
    """One line for tables of versions: type counts, identifiers left out, missing labels."""
    cols = schema.get("columns") or {}
    by_type: dict[str, list[str]] = {}
    for name, c in cols.items():
        by_type.setdefault(c.get("type", "?"), []).append(name)
    parts = [f"{len(v)} {k}" for k, v in sorted(by_type.items()) if k != "identifier"]
    if by_type.get("identifier"):
        parts.append(f"identifier (not a feature): {', '.join(by_type['identifier'])}")
    label = schema.get("label")
    missing = [f"{n} {c['missing']}" for n, c in cols.items() if c.get("missing") and n != label]
    if missing:
        parts.append(f"missing values: {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if schema.get("labelMissing"):
        parts.append(f"{schema['labelMissing']} row(s) without a label (left out of training)")
    return "; ".join(parts) or "-"
