"""Tabular data as one CSV file (AI Studio rules).

``root`` is the CSV file itself or a folder holding exactly one ``*.csv`` (``data.csv`` on export).
The label is the last column unless ``label=`` names another, or the task (``target=``) is
clustering or dimension-reduction: an unsupervised table has no label unless one is named (a column
kept for evaluation), and every other column is a feature. Every column is typed:

- numeric: pandas int64 / float64;
- categorical: any string (spaces and symbols included) or bool;
- identifier (unique per row) and datetime: see ``kiln.data.schema``, which decides the types.

``NA`` and empty cells are missing values (pandas' defaults).
"""

from __future__ import annotations

from pathlib import Path

from kiln._util.fs import replacing
from kiln.data.errors import DatasetFormatError
from kiln.data.formats._base import DatasetFormat, ignored
from kiln.data.model import TARGETS, UNSUPERVISED, DatasetContent, TabularData
from kiln.data.schema import column_type


def csv_file(root: Path) -> Path | None:
    """The CSV a source holds: the file itself, or the one .csv of a folder (None: no single one)."""
    if root.is_file() and root.suffix.lower() == ".csv":
        return root
    if root.is_dir():
        found = [p for p in root.iterdir() if p.suffix.lower() == ".csv" and p.is_file() and not ignored(p.name)]
        if len(found) == 1:
            return found[0]
    return None


def infer_schema(frame, file: Path, label: str | None = None) -> dict[str, str]:
    """Column -> numeric | categorical | identifier | datetime | text (``kiln.data.schema``); a column
    of any other dtype is an error naming it."""
    schema: dict[str, str] = {}
    for col in frame.columns:
        typ = column_type(frame[col], is_label=str(col) == label)
        if typ is None:
            raise DatasetFormatError(file, f"column {col!r} has unsupported type {frame[col].dtype}",
                                     hint="only numeric, categorical and date columns are supported")
        schema[str(col)] = typ
    return schema


class Csv(DatasetFormat):
    name = "csv"
    tasks = ("tabular",)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return csv_file(root) is not None

    @classmethod
    def load(cls, root: Path, task: str | None = None, *, verify: bool = True,  # type: ignore[override]
             label: str | None = None, target: str | None = None, **options: object) -> DatasetContent:
        # label: CSV's own option (which column is the target), passed by name through **options;
        # target: the Dataset's task, so a number label is typed right (classification | regression)
        # and an unsupervised table's last column stays a feature (clustering | dimension-reduction)
        import pandas as pd

        f = csv_file(root)
        if f is None:
            raise DatasetFormatError(root, "expected a .csv file or a folder with exactly one .csv")
        try:
            frame = pd.read_csv(f)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DatasetFormatError(f, f"cannot parse CSV: {str(e).splitlines()[0]}") from None
        if frame.shape[1] == 0:
            raise DatasetFormatError(f, "CSV has no columns")
        if label is None and target not in UNSUPERVISED:
            label = str(frame.columns[-1])
        elif label is not None and label not in frame.columns:
            raise DatasetFormatError(f, f"label column {label!r} does not exist; columns: {', '.join(map(str, frame.columns))}")
        schema = infer_schema(frame, f, label)
        base = root if root.is_dir() else root.parent
        table = TabularData(columns=schema, label=label, frame=frame, source=f.relative_to(base).as_posix(),
                            target=target if target in TARGETS else None)
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
