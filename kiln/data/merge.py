"""Adding items to a dataset: the next version = the current one + new items.

Why: a LabelingJob whose ``output.dataset`` is another dataset (captured inputs labelled for the
dataset a model trains on) must make a version that *adds* the labelled items; a version of the
labelled items alone would make the next retraining forget everything it knew.

The union lives in one folder of hard links (a copy across filesystems), so the usual exporters
lay it out in any format::

    <union>/base/<path of a current item>      <union>/new/<path of a labelled item>

Categories are matched by name: the current version's ids stay, new names get the next ids, and
the new items' annotations are re-numbered. The new items join ``new_split`` (``train`` when the
current version is split: validation and test stay the same, so metrics remain comparable across
versions). Semantic masks hold category ids in their pixels, so they are only merged when both
sides number their classes the same way.
"""

from __future__ import annotations

from pathlib import Path

from kiln.data.errors import DatasetFormatError
from kiln.data.formats._base import place_file
from kiln.data.model import DatasetContent, Item


def merge_contents(base: DatasetContent, new: DatasetContent, union_root: Path) -> DatasetContent:
    """``base`` plus ``new`` as one content rooted at ``union_root`` (module doc)."""
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
    new_split = "train" if any(it.split for it in base.items) else None
    items: list[Item] = []
    for side, content, split in (("base", base, None), ("new", new, new_split)):
        for it in content.items:
            upd: dict = {"path": f"{side}/{it.path}"}
            place_file(content.abspath(it.path), union_root / upd["path"])
            if it.mask:
                upd["mask"] = f"{side}/{it.mask}"
                place_file(content.abspath(it.mask), union_root / upd["mask"])
            if side == "new":
                upd["split"] = split
                upd["annotations"] = [a.model_copy(update={"category_id": remap.get(a.category_id, a.category_id)})
                                      for a in it.annotations]
            items.append(it.model_copy(update=upd))
    return DatasetContent(task=base.task, root=union_root, format=base.format, items=items, categories=categories)
