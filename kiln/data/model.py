"""The internal representation every format loads into and exports from.

One ``DatasetContent`` per dataset: image items (path relative to ``root``, split, labels) plus
categories, or a table (``TabularData``) for CSV data. Formats convert to and from it; splits,
preprocessing and versioning work on it.

The canonical content hash (``DatasetContent.content_hash()``) identifies *what the dataset says*,
independent of layout: per item the sha256 of the image bytes (and of the mask bytes), its split and
its labels by category *name*, sorted; for tables the schema, the label column and the rows as
canonical CSV. File names, category ids and the format are deliberately left out, so a dataset
converted COCO -> studio -> COCO keeps its hash while any change to pixels or labels changes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

TASKS = (
    "classification",
    "detection",
    "instance-segmentation",
    "semantic-segmentation",
    "tabular",
)
Task = Literal["classification", "detection", "instance-segmentation", "semantic-segmentation", "tabular"]

# Names the source platforms and specs use for the same problems.
_TASK_ALIASES = {
    "image-classification": "classification",
    "object-detection": "detection",
    "instance_segmentation": "instance-segmentation",
    "segmentation": "semantic-segmentation",
    "semantic_segmentation": "semantic-segmentation",
    "tabular-classification": "tabular",
    "tabular-regression": "tabular",
    "regression": "tabular",
}

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "training": "train", "testing": "test"}


def normalize_task(task: str | None) -> str | None:
    """Map an alias to one of ``TASKS``; unknown names raise ``ValueError`` listing the valid ones."""
    if task is None:
        return None
    t = _TASK_ALIASES.get(task, task)
    if t not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    return t


def normalize_split(name: str | None) -> str | None:
    if name is None:
        return None
    return _SPLIT_ALIASES.get(name.lower(), name.lower())


class Annotation(BaseModel):
    """One object in an image: a box ``[x, y, w, h]`` in pixels and/or a shape (polygons or RLE)."""

    category_id: int
    bbox: list[float] | None = None
    polygons: list[list[float]] | None = None
    rle: dict[str, Any] | None = None  # COCO compressed RLE: {"size": [h, w], "counts": str}
    iscrowd: int = 0


class Item(BaseModel):
    """One image. ``label`` for classification, ``annotations`` for detection / instance
    segmentation, ``mask`` (path of a PNG of category ids, relative to root) for semantic."""

    path: str
    split: str | None = None
    label: str | None = None
    annotations: list[Annotation] = Field(default_factory=list)
    mask: str | None = None
    width: int | None = None
    height: int | None = None


# the Dataset tasks a table can have (``TabularData.target``); the unsupervised ones have no label
# unless the Dataset names one, so the CSV reader's default label (the last column) is for the others
TARGETS = ("classification", "regression", "clustering", "dimension-reduction")
UNSUPERVISED = ("clustering", "dimension-reduction")


class TabularData(BaseModel):
    """A table: ``frame`` is a pandas DataFrame (not serialised), ``columns`` maps every column
    to its type (``kiln.data.schema``), ``label`` names the target column (None: unlabelled),
    ``target`` is the Dataset's task when it says one: a regression target has no classes, and an
    unsupervised table (clustering, dimension-reduction) keeps ``label`` None on a re-read."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    columns: dict[str, Literal["numeric", "categorical", "identifier", "datetime", "text"]]
    label: str | None
    frame: Any = Field(default=None, exclude=True)
    source: str | None = None  # file name the table was read from, relative to root
    target: Literal["classification", "regression", "clustering", "dimension-reduction"] | None = None

    def column_schema(self) -> dict[str, Any]:
        """Types, categories and missing counts per column (``kiln.data.schema.table_schema``)."""
        from kiln.data.schema import table_schema

        return table_schema(self.frame, dict(self.columns), self.label, self.target)


class DatasetContent(BaseModel):
    """A dataset as kiln understands it. ``root`` is where the item paths resolve."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    task: Task
    root: Path | None = Field(default=None, exclude=True)
    format: str | None = None
    items: list[Item] = Field(default_factory=list)
    categories: dict[int, str] = Field(default_factory=dict)
    table: TabularData | None = None
    lineage: dict[str, Any] | None = None
    _mask_ids: dict[str, list[int]] = PrivateAttr(default_factory=dict)  # decoded once per mask

    # -- helpers ---------------------------------------------------------------------------------
    def abspath(self, rel: str) -> Path:
        if self.root is None:
            raise ValueError("DatasetContent has no root; item paths cannot be resolved")
        return self.root / rel

    def category_name(self, cid: int) -> str:
        return self.categories.get(cid, str(cid))

    def class_counts(self) -> dict[str, int]:
        """Per-class counts: images per label (classification), objects per category
        (detection / instance), images containing each class (semantic), rows per label (tabular)."""
        counts: dict[str, int] = {}
        for per_split in self.split_class_counts().values():
            for k, v in per_split.items():
                counts[k] = counts.get(k, 0) + v
        return dict(sorted(counts.items()))

    def split_class_counts(self) -> dict[str, dict[str, int]]:
        """``class_counts`` per split (``unsplit`` for items without one); a table's rows are split
        by its ``.kiln/splits.json`` manifest when it has one."""
        out: dict[str, dict[str, int]] = {}
        if self.task == "tabular":
            for split, label in self._table_labels():
                c = out.setdefault(split, {})
                c[label] = c.get(label, 0) + 1
        for it in self.items:
            c = out.setdefault(it.split or "unsplit", {})
            for name in self._item_classes(it):
                c[name] = c.get(name, 0) + 1
        return {s: dict(sorted(c.items())) for s, c in out.items() if c}

    def _table_labels(self) -> list[tuple[str, str]]:
        t = self.table
        if t is None or not t.label or t.frame is None:
            return []
        col = t.frame[t.label]
        if t.target == "regression" or not (t.columns.get(t.label) == "categorical" or col.dtype.kind in "iub"):
            return []  # a regression target has no classes
        splits: dict[str, str] = {}
        manifest = self.root / ".kiln" / "splits.json" if self.root is not None else None
        if manifest is not None and manifest.is_file():
            splits = json.loads(manifest.read_text()).get("items") or {}
        return [(splits.get(str(i), "unsplit"), str(v)) for i, v in enumerate(col.tolist())
                if v is not None and v == v]  # v != v: NaN, a missing label

    def _item_classes(self, it: Item) -> list[str]:
        """The classes one item counts for: its label, one per object, or each class its mask shows."""
        names = [it.label] if it.label is not None else []
        names += [self.category_name(a.category_id) for a in it.annotations]
        if it.mask is not None and self.root is not None:
            if it.mask not in self._mask_ids:
                from kiln.data.formats.segmentation_json import mask_ids

                self._mask_ids[it.mask] = mask_ids(self.abspath(it.mask))
            names += [self.category_name(i) for i in self._mask_ids[it.mask]]
        return names

    def split_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in self.items:
            k = it.split or "unsplit"
            out[k] = out.get(k, 0) + 1
        return out

    # -- canonical hash --------------------------------------------------------------------------
    def canonical(self) -> dict[str, Any]:
        """The layout-independent description the content hash is taken over (see module doc)."""
        if self.task == "tabular":
            assert self.table is not None
            frame = self.table.frame
            # column order is layout (CSV export moves the label last), not content
            csv = frame[sorted(frame.columns)].to_csv(index=False, lineterminator="\n") if frame is not None else ""
            return {
                "task": self.task,
                "columns": self.table.columns,
                "label": self.table.label,
                "rows_sha256": hashlib.sha256(csv.encode()).hexdigest(),
            }
        items = []
        for it in self.items:
            anns = sorted(
                (
                    {
                        "category": self.category_name(a.category_id),
                        "bbox": [round(float(v), 3) for v in a.bbox] if a.bbox is not None else None,
                        "polygons": [[round(float(v), 3) for v in p] for p in a.polygons] if a.polygons else None,
                        "rle": _rle_key(a.rle),
                        "iscrowd": a.iscrowd,
                    }
                    for a in it.annotations
                ),
                key=lambda d: json.dumps(d, sort_keys=True),
            )
            items.append(
                {
                    "file": _sha256(self.abspath(it.path)) if self.root is not None else it.path,
                    "mask": _sha256(self.abspath(it.mask)) if it.mask and self.root is not None else it.mask,
                    "split": it.split,
                    "label": it.label,
                    "annotations": anns,
                }
            )
        items.sort(key=lambda d: json.dumps(d, sort_keys=True))
        cats = self.categories
        if self.task == "semantic-segmentation":
            # mask pixels are ids, so here the id -> name mapping is part of the meaning
            categories: Any = {str(k): v for k, v in sorted(cats.items())}
        else:
            categories = sorted(set(cats.values()))
        return {"task": self.task, "categories": categories, "items": items}

    def content_hash(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _rle_key(rle: dict[str, Any] | None) -> Any:
    if rle is None:
        return None
    counts = rle.get("counts")
    if isinstance(counts, bytes):
        counts = counts.decode()
    return {"size": list(rle.get("size", [])), "counts": counts}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
