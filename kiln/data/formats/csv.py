"""Tabular data as one CSV file (AI Studio rules).

``root`` is the CSV file itself or a folder holding exactly one ``*.csv`` (``data.csv`` on export).
The label is the last column unless ``label=`` names another. Every column is typed:

- numeric: pandas int64 / float64;
- categorical: object or bool whose values are letters/digits plus ``-`` and ``_``;
- anything else (dates, times, free text with spaces or symbols) is an error naming the column.
"""

from __future__ import annotations

import re
from pathlib import Path

from kiln._util.fs import replacing
from kiln.data.errors import DatasetFormatError
from kiln.data.formats._base import DatasetFormat, ignored
from kiln.data.model import DatasetContent, TabularData

_CATEGORICAL = re.compile(r"^[\w\-]+$")  # \w: unicode letters, digits, underscore
_DATE = re.compile(
    r"^(\d{4}[-/.]\d{1,2}([-/.]\d{1,2})?|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?"
    r"|^\d{1,2}:\d{2}(:\d{2})?$"
)


def _csv_file(root: Path) -> Path | None:
    if root.is_file() and root.suffix.lower() == ".csv":
        return root
    if root.is_dir():
        found = [p for p in root.iterdir() if p.suffix.lower() == ".csv" and p.is_file() and not ignored(p.name)]
        if len(found) == 1:
            return found[0]
    return None


def infer_schema(frame, file: Path) -> dict[str, str]:
    """Column -> numeric | categorical; raise naming the first column of another type."""
    schema: dict[str, str] = {}
    for col in frame.columns:
        s = frame[col]
        kind = s.dtype.kind
        if kind in "iuf":
            schema[str(col)] = "numeric"
            continue
        if kind == "b":
            schema[str(col)] = "categorical"
            continue
        if kind != "O":
            raise DatasetFormatError(file, f"column {col!r} has unsupported type {s.dtype}",
                                     hint="only numeric and categorical columns are supported")
        values = s.dropna()
        svals = values.astype(str)
        if len(svals) and svals.str.match(_DATE).all():
            raise DatasetFormatError(
                file, f"column {col!r} holds dates/times (e.g. {svals.iloc[0]!r}), which are not supported",
                hint="drop the column or convert it to numbers (e.g. days since a reference date)",
            )
        bad = svals[~svals.str.match(_CATEGORICAL)]
        if len(bad):
            raise DatasetFormatError(
                file, f"column {col!r} has value {bad.iloc[0]!r}; categorical values may only hold letters, digits, '-' and '_'",
                hint="clean the values or drop the column",
            )
        schema[str(col)] = "categorical"
    return schema


class Csv(DatasetFormat):
    name = "csv"
    tasks = ("tabular",)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return _csv_file(root) is not None

    @classmethod
    def load(cls, root: Path, task: str | None = None, *, verify: bool = True,  # type: ignore[override]
             label: str | None = None, **options: object) -> DatasetContent:
        # label: CSV's own option (which column is the target), passed by name through **options
        import pandas as pd

        f = _csv_file(root)
        if f is None:
            raise DatasetFormatError(root, "expected a .csv file or a folder with exactly one .csv")
        try:
            frame = pd.read_csv(f)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DatasetFormatError(f, f"cannot parse CSV: {str(e).splitlines()[0]}") from None
        if frame.shape[1] == 0:
            raise DatasetFormatError(f, "CSV has no columns")
        schema = infer_schema(frame, f)
        if label is None:
            label = str(frame.columns[-1])
        elif label not in schema:
            raise DatasetFormatError(f, f"label column {label!r} does not exist; columns: {', '.join(schema)}")
        base = root if root.is_dir() else root.parent
        table = TabularData(columns=schema, label=label, frame=frame, source=f.relative_to(base).as_posix())
        return DatasetContent(task="tabular", root=base, format=cls.name, table=table)

    @classmethod
    def export(cls, content: DatasetContent, out_dir: Path) -> Path:
        if content.table is None or content.table.frame is None:
            raise DatasetFormatError(out_dir, f"CSV export needs tabular content, not {content.task}")
        out_dir.mkdir(parents=True, exist_ok=True)
        frame = content.table.frame
        label = content.table.label
        if label is not None and frame.columns[-1] != label:
            frame = frame[[c for c in frame.columns if c != label] + [label]]  # label goes last
        with replacing(out_dir / "data.csv") as tmp:
            frame.to_csv(tmp, index=False, lineterminator="\n")
        return out_dir
