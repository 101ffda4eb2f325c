"""Dataset formats: one module per on-disk layout, one registry ``FORMATS`` (name -> class).

``detect_format(root, task)`` tries the formats in registry order (most specific first) and
returns the first whose ``detect`` accepts the layout and which can carry ``task``;
``load(root, format="auto", task=...)`` validates while loading; ``export(content, out_dir, format)``
writes any format from the internal representation.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln.data.errors import DatasetFormatError
from kiln.data.formats._base import DatasetFormat
from kiln.data.formats.coco import Coco
from kiln.data.formats.csv import Csv
from kiln.data.formats.image_folder import ImageFolder
from kiln.data.formats.segmentation_json import SegmentationJson
from kiln.data.formats.studio import Studio
from kiln.data.model import DatasetContent, normalize_task

# Order matters for detection: layouts with a marker file first, bare folders last.
FORMATS: dict[str, type[DatasetFormat]] = {
    "studio": Studio,
    "segmentation-json": SegmentationJson,
    "coco": Coco,
    "csv": Csv,
    "image-folder": ImageFolder,
}


def get_format(name: str) -> type[DatasetFormat]:
    try:
        return FORMATS[name]
    except KeyError:
        raise DatasetFormatError(
            name, f"unknown dataset format; valid: {', '.join(sorted(FORMATS))}, auto"
        ) from None


def detect_format(root: str | os.PathLike[str], task: str | None = None) -> str:
    """Name of the format of the dataset at ``root``; error naming the tried formats if none fits."""
    root = Path(root)
    t = normalize_task(task)
    if not root.exists():
        raise DatasetFormatError(root, "dataset path does not exist")
    for name, cls in FORMATS.items():
        if t is not None and t not in cls.tasks:
            continue
        if cls.detect(root):
            return name
    cands = [n for n, c in FORMATS.items() if t is None or t in c.tasks]
    raise DatasetFormatError(
        root, f"layout matches no dataset format{f' for task {t}' if t else ''} (tried: {', '.join(cands)})",
        hint="see kiln.data.formats module docs for the expected layouts",
    )


def load(root: str | os.PathLike[str], format: str = "auto", task: str | None = None, *,
         verify: bool = True, **options: object) -> DatasetContent:
    """Load and validate a dataset. ``verify=False`` skips decoding images (fast listing)."""
    root = Path(root)
    t = normalize_task(task)
    name = detect_format(root, t) if format == "auto" else format
    cls = get_format(name)
    if t is not None and t not in cls.tasks:
        raise DatasetFormatError(root, f"format {name} cannot hold task {t}; it holds {', '.join(cls.tasks)}")
    return cls.load(root, t, verify=verify, **options)


def export(content: DatasetContent, out_dir: str | os.PathLike[str], format: str | None = None) -> DatasetContent:
    """Write ``content`` as ``format`` (default: the format it came from) and return the re-read
    content of the written copy (unverified: the files were checked when ``content`` was loaded)."""
    name = format or content.format
    if name is None:
        raise DatasetFormatError(str(out_dir), "no export format given and the content has no source format")
    cls = get_format(name)
    out = Path(out_dir)
    cls.export(content, out)
    options = {"label": content.table.label, "target": content.table.target} if content.table is not None else {}
    result = cls.load(out, content.task, verify=False, **options)
    result.lineage = content.lineage
    return result


__all__ = ["FORMATS", "DatasetFormat", "detect_format", "export", "get_format", "load"]
