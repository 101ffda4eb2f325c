"""The contract every dataset format implements, and helpers they share.

A format class is stateless: ``detect(root)`` is a cheap look at the layout (no image decoding),
``load(root, task)`` reads and *validates* (raises ``DatasetFormatError`` naming the file), and
``export(content, out_dir)`` writes the content in this layout, linking image files where the
filesystem allows (hard link, else copy) so a conversion costs no extra disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import ClassVar

from kiln._util.fs import write_json_atomic
from kiln.data.errors import DatasetFormatError
from kiln.data.model import DatasetContent

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class DatasetFormat:
    """Base class. Subclasses set ``name`` and ``tasks`` (the tasks the layout can carry)."""

    name: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def detect(cls, root: Path) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def load(cls, root: Path, task: str | None = None, *, verify: bool = True, **options: object) -> DatasetContent:
        raise NotImplementedError  # pragma: no cover - interface

    @classmethod
    def export(cls, content: DatasetContent, out_dir: Path) -> Path:
        raise NotImplementedError  # pragma: no cover - interface

    @classmethod
    def _export_dir(cls, content: DatasetContent, out_dir: Path, holds: str) -> None:
        """Start an export: the layout must carry the content's task (``holds`` says what it
        carries, for the error), and ``out_dir`` exists afterwards."""
        if content.task not in cls.tasks:
            raise DatasetFormatError(out_dir, f"{holds}, not {content.task}")
        out_dir.mkdir(parents=True, exist_ok=True)


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def verify_image(path: Path, *, what: str = "image") -> tuple[int, int]:
    """Decode ``path`` fully with PIL; return (width, height). A corrupt file -> one-line error."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DatasetFormatError(path, f"{what} file does not exist")
    try:
        with Image.open(path) as im:
            im.verify()  # structure / checksums
        with Image.open(path) as im:
            im.load()  # verify() does not decode pixel data; truncated files fail only here
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetFormatError(
            path, f"corrupt or undecodable {what} ({type(e).__name__}: {e})",
            hint="re-export the file as PNG or JPEG, or remove it",
        ) from None


def find_inside(root: Path, bases: tuple[Path, ...], rel: str) -> Path | None:
    """The first existing file ``base / rel`` that lies inside ``root``: a path written in an
    annotation file (relative to that file, or to the dataset's root) must not point outside the
    dataset."""
    rootr = root.resolve()
    for base in bases:
        p = base / rel
        if p.is_file() and p.resolve().is_relative_to(rootr):
            return p
    return None


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def place_file(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst``: a hard link when on the same filesystem, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_dataset_json(path: Path, data: object) -> None:
    """A JSON file inside a dataset (annotations, lineage, manifests): DVC hashes these, so the
    bytes stay as they always were: indent 1, keys in insertion order, UTF-8 text unescaped."""
    write_json_atomic(path, data, indent=1, sort_keys=False, ensure_ascii=False)


def read_json(path: Path) -> object:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(path, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except OSError as e:
        raise DatasetFormatError(path, f"cannot read ({e.strerror})") from None


def unique_name(used: set[str], rel: str) -> str:
    """Keep base names when exporting to flat layouts; disambiguate collisions deterministically."""
    name = Path(rel).name
    if name not in used:
        used.add(name)
        return name
    stem, suffix = os.path.splitext(name)
    flat = rel.replace("/", "__")
    if flat not in used:
        used.add(flat)
        return flat
    i = 1
    while f"{stem}_{i}{suffix}" in used:
        i += 1
    used.add(f"{stem}_{i}{suffix}")
    return f"{stem}_{i}{suffix}"


def ignored(name: str) -> bool:
    """kiln keeps its own files (lineage, fitted transforms) under ``.kiln/`` inside a dataset."""
    return name.startswith(".")
