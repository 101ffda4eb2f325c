"""kiln's dataset library: formats, validation, conversion, splits, preprocessing, DVC versions.

What may live here: pure library code that a Dataset workflow step calls. No controller, no
state store, no CLI. Heavy libraries (torch, torchvision, pandas, sklearn, PIL, pycocotools, dvc)
are imported inside the functions that use them, so ``import kiln.data`` stays cheap; install them
with ``pip install 'kiln[data]'``.

Layout::

    model.py       DatasetContent / Item / Annotation, the canonical content hash
    formats/       one module per on-disk format, registry ``FORMATS``; load/detect/export
    archive.py     zip/tar extraction with path-traversal protection
    samples.py     sklearn bundled datasets materialised as CSV / image folders
    splits.py      deterministic (stratified) train/validation/test splits + manifest
    preprocess.py  registry ``OPS`` of tabular and image operations, ``apply_ops``
    versioning.py  ``DatasetRepo``: DVC add/push/checkout/diff with a versions log
"""

from __future__ import annotations

from kiln.data.errors import DatasetFormatError
from kiln.data.formats import FORMATS, detect_format, export, load
from kiln.data.model import TASKS, Annotation, DatasetContent, Item, TabularData, normalize_task

__all__ = [
    "FORMATS",
    "TASKS",
    "Annotation",
    "DatasetContent",
    "DatasetFormatError",
    "Item",
    "TabularData",
    "detect_format",
    "export",
    "load",
    "normalize_task",
]
