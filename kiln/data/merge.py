"""Adding items to a dataset: the next version = the current one + new items.

Why: a LabelingJob whose ``output.dataset`` is another dataset (captured inputs labelled for the
dataset a model trains on) and ``kiln infer --as-version`` onto an existing dataset must make a
version that *adds* the new items; a version of the new items alone would make the next
retraining (``version: latest``) forget everything it knew. Replacing is the caller's explicit
choice (``--replace``), never the default.

The union lives in one folder of hard links (a copy across filesystems), so the usual exporters
lay it out in any format::

    <union>/base/<path of a current item>      <union>/new/<path of a labelled item>

Categories are matched by name: the current version's ids stay, new names get the next ids, and
the new items' annotations are re-numbered. The new items join ``split`` (``train`` unless the
caller names another) when the current version is split: validation and test stay the same, so
metrics remain comparable across versions; an unsplit version stays unsplit. Semantic masks hold
category ids in their pixels, so they are only merged when both sides number their classes the
same way.

Tables (``merge_tables``): the current rows, then the new ones, in one CSV; the split manifest,
when there is one, gives the new rows ``train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.data.errors import DatasetFormatError
from kiln.data.formats._base import place_file
from kiln.data.model import DatasetContent, Item


def merge_contents(base: DatasetContent, new: DatasetContent, union_root: Path, *,
                   split: str = "train") -> DatasetContent:
    """``base`` plus ``new`` as one content rooted at ``union_root`` (module doc); the new items
    join ``split`` when the base is split."""
    if base.task != new.task:
        raise DatasetFormatError(f"{base.task} dataset", f"cannot add {new.task} items to it",
                                 hint="label into a dataset of the same task, or into a new dataset")
    if base.task == "tabular" or base.table is not None:
        raise DatasetFormatError("tabular dataset", "adding labelled rows to a table is not supported")
    by_name = {n: cid for cid, n in base.categories.items()}
    categories = dict(base.categories)
    remap: dict[int, int] = {}
    for cid, n in sorted(new.categories.items()):
        if n not in by_name:
            by_name[n] = max(categories, default=-1) + 1
            categories[by_name[n]] = n
        remap[cid] = by_name[n]
    if base.task == "semantic-segmentation" and any(k != v for k, v in remap.items()):
        raise DatasetFormatError("semantic masks", "the labelled classes are numbered differently from the dataset's",
                                 hint="list the labels in the LabelingJob in the dataset's class order")
    new_split = split if any(it.split for it in base.items) else None
    items: list[Item] = []
    for side, content, to_split in (("base", base, None), ("new", new, new_split)):
        for it in content.items:
            upd: dict = {"path": f"{side}/{it.path}"}
            place_file(content.abspath(it.path), union_root / upd["path"])
            if it.mask:
                upd["mask"] = f"{side}/{it.mask}"
                place_file(content.abspath(it.mask), union_root / upd["mask"])
            if side == "new":
                upd["split"] = to_split
                upd["annotations"] = [a.model_copy(update={"category_id": remap.get(a.category_id, a.category_id)})
                                      for a in it.annotations]
            items.append(it.model_copy(update=upd))
    return DatasetContent(task=base.task, root=union_root, format=base.format, items=items, categories=categories)


# the format a new version is written in when the source's format cannot hold the task
DEFAULT_FORMATS: dict[str, str] = {"classification": "image-folder", "detection": "coco",
                                   "instance-segmentation": "coco", "semantic-segmentation": "segmentation-json",
                                   "tabular": "csv"}


def load_as(folder: Path, task: str | None) -> DatasetContent:
    """The dataset at ``folder``, read as ``task`` where its format holds it: a COCO folder with
    polygons reads as instance segmentation unless told, and labelled boxes are added to it as
    detection. Otherwise as its format reads it, so that ``merge_contents`` names both tasks in
    its refusal."""
    from kiln.data.formats import FORMATS, detect_format, load
    from kiln.data.model import normalize_task

    fmt, t = detect_format(folder), normalize_task(task)
    return load(folder, fmt, t if t in FORMATS[fmt].tasks else None, verify=False)


def output_format(task: str, input_format: str | None) -> str:
    """The source's format when it can hold ``task`` (a COCO source stays COCO), else the task's default."""
    from kiln.data.formats import FORMATS

    if input_format in FORMATS and task in FORMATS[input_format].tasks:
        return input_format
    return DEFAULT_FORMATS[task]


def merge_tables(base: DatasetContent, new_frame: Any, stage: Path, *, split: str = "train") -> None:
    """``base``'s rows and then ``new_frame``'s, written to ``stage`` (the CSV under the base's
    file name; the split manifest, when the base has one, extended with the new rows as ``split``).

    Rows of a version whose preprocessing was fitted (``.kiln/preprocess.joblib``) are
    transformed; raw rows appended to them would mix two scales in one column, so that is refused."""
    import pandas as pd

    from kiln.data.formats._base import read_json, write_dataset_json

    assert base.table is not None and base.root is not None
    root = base.root if base.root.is_dir() else base.root.parent
    if (root / ".kiln" / "preprocess.joblib").is_file():
        raise DatasetFormatError(f"{base.task} dataset", "its rows were transformed by a fitted preprocessing; "
                                 "raw rows cannot be added to them",
                                 hint="add the rows to the dataset's source instead, or write a new dataset "
                                      "(another --as-version name), or replace it with --replace")
    old = base.table.frame
    if list(new_frame.columns) != list(old.columns):
        raise DatasetFormatError(f"{base.task} dataset", f"its columns {list(old.columns)} differ from the new "
                                 f"rows' {list(new_frame.columns)}",
                                 hint="add rows with the same columns, or replace the dataset with --replace")
    stage.mkdir(parents=True, exist_ok=True)
    union = pd.concat([old, new_frame], ignore_index=True)
    union.to_csv(stage / (base.table.source or "data.csv"), index=False)
    manifest = read_json(root / ".kiln" / "splits.json") if (root / ".kiln" / "splits.json").is_file() else None
    if isinstance(manifest, dict) and manifest.get("items"):
        items = dict(manifest["items"])
        items.update({str(i): split for i in range(len(old), len(union))})
        write_dataset_json(stage / ".kiln" / "splits.json", {**manifest, "items": items})


def added_paths(dr: Any, rel: str, vid: str | None) -> list[str]:
    """The item files of version ``vid`` that no version made from the dataset's source holds:
    what additive versions (lineage ``addedTo``: a LabelingJob's labels, ``kiln infer
    --as-version``) put in, and what a source version carried over (lineage ``carried.paths``).
    Additions keep their names in later versions (the exporters name the current items first)."""
    if vid is None:
        return []
    by_id = {v.id: v for v in dr.versions(rel)}
    v = by_id.get(vid)
    lineage = (v.lineage or {}) if v is not None else {}
    if lineage.get("addedTo") and lineage.get("parent") in by_id:
        parent = lineage["parent"]
        return sorted(set(added_paths(dr, rel, parent)) | set(dr.diff(rel, parent, vid).added))
    return list((lineage.get("carried") or {}).get("paths") or [])


def carry_additions(source: DatasetContent, current: DatasetContent, paths: list[str],
                    union_root: Path) -> DatasetContent | None:
    """``source`` (a new version made from the dataset's source) plus the items of ``current``
    at ``paths`` (``added_paths``) that the source does not hold itself; None when there are none.
    Why: a new source version must not drop what labelling or inference added to the dataset."""
    have = {it.path for it in source.items}
    wanted = set(paths)
    extra = [it for it in current.items if it.path in wanted and it.path not in have]
    if not extra:
        return None
    return merge_contents(source, current.model_copy(update={"items": extra}), union_root)
