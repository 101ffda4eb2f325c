"""Deterministic train/validation/test splits, stratified where the classes allow it.

The assignment is recorded as a manifest so a training run can name exactly which items it saw::

    {"seed": 0, "ratios": {"train": 0.8, "validation": 0.1, "test": 0.1}, "stratified": true,
     "items": {"train/cat/0001.png": "train", ...}}      (tabular: row numbers as keys)

Keys are sorted before splitting, so the result depends only on the keys, labels, ratios and seed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.data.errors import DatasetFormatError
from kiln.data.formats._base import write_dataset_json
from kiln.data.model import DatasetContent

# what a dataset without ``spec.splits`` is split into, by training (``TrainData``) and by a
# preprocessed table's fit (which must learn from the same train rows); seed 0, stratified
DEFAULT_RATIOS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}


def split_keys(keys: list[str], labels: list[str | None] | None, ratios: dict[str, float], seed: int = 0
               ) -> tuple[dict[str, str], bool]:
    """Assign every key a split; returns (key -> split, whether it was stratified)."""
    from sklearn.model_selection import train_test_split

    names = [k for k, v in ratios.items() if v > 0]
    total = sum(ratios[n] for n in names)
    if not names or abs(total - 1.0) > 1e-6:
        raise DatasetFormatError("split ratios", f"must be positive and sum to 1, got {ratios}")
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    ks = [keys[i] for i in order]
    ys = [labels[i] for i in order] if labels is not None else None
    out: dict[str, str] = {}
    stratified = ys is not None and None not in ys
    remaining, rem_y, left = ks, ys, 1.0
    for n in names[:-1]:
        frac = ratios[n] / left
        if frac >= 1.0 or len(remaining) < 2:
            break
        try:
            take, rest, ty, ry = train_test_split(remaining, rem_y if rem_y is not None else remaining,
                                                  train_size=frac, random_state=seed,
                                                  stratify=rem_y if stratified else None)
        except ValueError:  # a class too small to stratify: fall back to a plain shuffle
            stratified = False
            take, rest, ty, ry = train_test_split(remaining, rem_y if rem_y is not None else remaining,
                                                  train_size=frac, random_state=seed)
        out.update({k: n for k in take})
        remaining, rem_y, left = rest, (ry if rem_y is not None else None), left - ratios[n]
    out.update({k: names[-1] for k in remaining if k not in out})
    return out, stratified


def _item_label(it: Any, content: DatasetContent) -> str | None:
    if it.label is not None:
        return it.label
    if it.annotations:  # the item's most frequent category stands for it
        names = [content.category_name(a.category_id) for a in it.annotations]
        return max(sorted(set(names)), key=names.count)
    return "_none"


def split_rows(df: Any, label: str | None, ratios: dict[str, float], seed: int = 0, stratify: bool = True,
               columns: Mapping[str, str] | None = None, *, target: str | None = None) -> tuple[dict[str, str], bool]:
    """A table's split assignment (row number as a string -> split). Preprocessing fits its
    transforms on the rows this gives as ``train``, the split stage records the same rows.
    A regression target (``target``) is never stratified on as if its values were classes."""
    keys = [str(i) for i in range(len(df))]
    labels: list[str | None] | None = None
    if target == "regression":
        pass
    elif label and label in df.columns and ((columns or {}).get(label) == "categorical" or df[label].dtype.kind in "iubO"):
        labels = [str(v) for v in df[label].tolist()]
    return split_keys(keys, labels if stratify else None, ratios, seed)


def assign_splits(content: DatasetContent, ratios: dict[str, float] | None = None, seed: int = 0,
                  stratify: bool = True) -> tuple[DatasetContent, dict[str, Any]]:
    """Return a copy of ``content`` with new splits, and the manifest describing them
    (``stratify=False``: a plain seeded shuffle even where the classes would allow stratifying)."""
    ratios = ratios or DEFAULT_RATIOS
    if content.task == "tabular":
        assert content.table is not None and content.table.frame is not None
        mapping, strat = split_rows(content.table.frame, content.table.label, ratios, seed, stratify,
                                    content.table.columns, target=content.table.target)
        new = content
    else:
        keys = [it.path for it in content.items]
        labels = None if content.task == "semantic-segmentation" or not stratify \
            else [_item_label(it, content) for it in content.items]
        mapping, strat = split_keys(keys, labels, ratios, seed)
        new = content.model_copy(update={"items": [it.model_copy(update={"split": mapping[it.path]})
                                                   for it in content.items]})
    manifest = {"seed": seed, "ratios": ratios, "stratified": strat, "items": dict(sorted(mapping.items()))}
    return new, manifest


def write_manifest(path: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    p = Path(path)
    write_dataset_json(p, manifest)
    return p
