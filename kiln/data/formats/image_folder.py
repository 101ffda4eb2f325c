"""Image classification as class folders.

Split layout (EasyMaker)::

    root/train/<label>/0001.png
    root/validation/<label>/...      (``val``/``valid`` are read as validation)
    root/test/<label>/...            (optional)

Unsplit layout: ``root/<label>/0001.png``. Files and folders starting with ``.`` are ignored.
Images directly in ``root`` (or in a split folder) have no class folder: they are unlabelled items
(a deployment's captured inputs, waiting to be labelled), never a class of their own.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln.data.errors import DatasetFormatError
from kiln.data.formats._base import DatasetFormat, ignored, is_image, place_file, verify_image
from kiln.data.model import DatasetContent, Item, normalize_split

_SPLIT_DIRS = {"train", "validation", "test", "val", "valid"}


def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not ignored(d.name))


def _has_images(p: Path) -> bool:
    return any(is_image(e.name) for e in os.scandir(p) if e.is_file())


class ImageFolder(DatasetFormat):
    name = "image-folder"
    tasks = ("classification",)

    @classmethod
    def _layout(cls, root: Path) -> list[tuple[str | None, Path]]:
        """[(split, split_dir)]: the split dirs if present, else [(None, root)]."""
        dirs = _subdirs(root)
        split_dirs = [d for d in dirs if d.name.lower() in _SPLIT_DIRS]
        if split_dirs:
            return [(normalize_split(d.name), d) for d in split_dirs]
        return [(None, root)]

    @classmethod
    def detect(cls, root: Path) -> bool:
        if not root.is_dir():
            return False
        for _, base in cls._layout(root):
            classes = _subdirs(base)
            if (classes and any(_has_images(c) for c in classes[:5])) or _has_images(base):
                return True
        return False

    @staticmethod
    def _images(root: Path, folder: Path, split: str | None, label: str | None, verify: bool) -> list[Item]:
        """The images directly in ``folder`` as items of ``split`` with ``label``."""
        # string paths: listing 10,000 files is on the path of every re-version
        prefix = "" if folder == root else folder.relative_to(root).as_posix() + "/"
        items = []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if ignored(entry.name) or not entry.is_file():
                continue
            if not is_image(entry.name):
                if label is None:
                    continue  # beside the class folders: a README, a CSV of notes
                raise DatasetFormatError(
                    Path(entry.path), "not a PNG or JPEG image", hint="image folders hold only .png/.jpg/.jpeg files"
                )
            w = h = None
            if verify:
                w, h = verify_image(Path(entry.path))
            # validated Item(), not model_construct(): on pydantic 2.14 model_construct runs
            # inspect.signature() on the annotations default_factory for every item (86 us
            # vs 1.5 us here), 0.9 s of a 10,000-file re-version
            items.append(Item(path=prefix + entry.name, split=split, label=label, width=w, height=h))
        return items

    @classmethod
    def load(cls, root: Path, task: str | None = None, *, verify: bool = True, **options: object) -> DatasetContent:
        items: list[Item] = []
        labels: set[str] = set()
        for split, base in cls._layout(root):
            items += cls._images(root, base, split, None, verify)
            for cdir in _subdirs(base):
                found = cls._images(root, cdir, split, cdir.name, verify)
                items += found
                if found:
                    labels.add(cdir.name)
        if not items:
            raise DatasetFormatError(root, "no images found (in class folders, or unlabelled beside them)")
        cats = {i: n for i, n in enumerate(sorted(labels))}
        return DatasetContent(task="classification", root=root, format=cls.name, items=items, categories=cats)

    @classmethod
    def export(cls, content: DatasetContent, out_dir: Path) -> Path:
        cls._export_dir(content, out_dir, "image-folder holds classification data")
        used: dict[str, set[str]] = {}
        for it in content.items:
            # an unlabelled image goes beside the class folders
            folder = "/".join(p for p in (it.split, it.label) if p)
            names = used.setdefault(folder, set())
            name = Path(it.path).name
            if name in names:
                name = it.path.replace("/", "__")
            names.add(name)
            place_file(content.abspath(it.path), out_dir / folder / name if folder else out_dir / name)
        return out_dir
