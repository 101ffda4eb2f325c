"""Semantic segmentation as JSON pair lists (EasyMaker SegFormer layout)::

    root/train/train.json          [{"image": "images/0001.png", "seg_map": "annotations/0001.png"}, ...]
    root/validation/validation.json
    root/test/test.json            (optional; ``root/{split}.json`` is read too)
    root/resources/id2label.json   {"0": "unlabeled", "1": "flat-road", ...}

EasyMaker's documents name the test list ``test/train.json``: a split folder without
``{split}.json`` holding exactly one ``.json`` file uses that file, and its items belong to the
folder's split (the folder says the split, not the file name). ``id2lable.json`` (the spelling in
EasyMaker's documents) is accepted as well. Paths in a split file resolve against the split file's
folder, then the root. A mask is a single-channel PNG whose pixel values are category ids; every id
must be in id2label, except the background (``background_of``: 0 unless told otherwise). An unsplit dataset is ``root/data/data.json``.
"""

from __future__ import annotations

from pathlib import Path

from kiln.data.errors import DatasetFormatError
from kiln.data.formats._base import (
    DatasetFormat,
    find_inside,
    ignored,
    place_file,
    read_json,
    unique_name,
    verify_image,
    write_dataset_json,
)
from kiln.data.model import DatasetContent, Item, normalize_split

_SPLITS = ("train", "validation", "val", "valid", "test", "data")
ID2LABEL_NAMES = ("id2label.json", "id2lable.json")


def _id2label_file(root: Path) -> Path | None:
    for n in ID2LABEL_NAMES:
        if (root / "resources" / n).is_file():
            return root / "resources" / n
    return None


def _split_file(root: Path, s: str) -> Path | None:
    for f in (root / s / f"{s}.json", root / f"{s}.json"):
        if f.is_file():
            return f
    if not (root / s).is_dir():
        return None
    # EasyMaker's documents put the test list at test/train.json: the folder names the split
    lists = sorted(p for p in (root / s).glob("*.json") if p.is_file() and not ignored(p.name))
    if len(lists) > 1:
        raise DatasetFormatError(root / s, f"several split lists ({', '.join(p.name for p in lists)}) "
                                 f"and no {s}.json", hint=f"keep one list in {s}/, or name it {s}.json")
    return lists[0] if lists else None


def _split_files(root: Path) -> list[tuple[str | None, Path]]:
    out: list[tuple[str | None, Path]] = []
    for s in _SPLITS:
        f = _split_file(root, s)
        if f is not None:
            out.append((None if s == "data" else normalize_split(s), f))
    return out


BACKGROUND = "background"
FORMAT_FILE = ".kiln/format.json"  # kiln's record of how to read the masks: {"background": 0 | null}


def background_of(root: Path, options: dict[str, object]) -> int | None:
    """The mask value that means background when the category list does not name it: the
    ``background`` load option (a Dataset spec's ``background``), else what the dataset's
    ``.kiln/format.json`` records, else 0 (AI Studio's masks: 0 is background). None: no implicit
    background, every mask value must be listed."""
    f = root / FORMAT_FILE
    if "background" in options:
        value = options["background"]
    else:
        data = read_json(f) if f.is_file() else {}
        value = data.get("background", 0) if isinstance(data, dict) else 0
    if value is None or value == "none":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise DatasetFormatError(f, f"background must be a mask value (0, 255, ...) or none, not {value!r}")
    return int(value)


def with_background(categories: dict[int, str], background: int | None) -> dict[int, str]:
    """``categories`` plus the implicit background class, unless the list names that id itself."""
    if background is None or background in categories:
        return categories
    return dict(sorted({**categories, background: BACKGROUND}.items()))


def write_format_file(out_dir: Path) -> None:
    """An exported category list is complete (the background is in it when the data has one), so
    nothing is implicit when it is read back."""
    write_dataset_json(out_dir / FORMAT_FILE, {"background": None})


def check_mask(path: Path, ids: set[int], listed_in: str, hint: str) -> tuple[int, int]:
    """Decode a mask and check every pixel value is a known category id. ``listed_in`` names the
    user's category file (relative to the dataset), ``hint`` how to fix an unknown id."""
    size = verify_image(path, what="mask")
    values = mask_ids(path)
    unknown = sorted(v for v in values if v not in ids)
    if unknown:
        raise DatasetFormatError(
            path, f"mask contains class id {unknown[0]}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
            + f" not in {listed_in} (known ids: {sorted(ids)})", hint=hint)
    return size


def mask_ids(path: Path) -> list[int]:
    """The category ids a mask's pixels hold (sorted)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise DatasetFormatError(path, f"mask has mode {im.mode}; expected a single-channel PNG of category ids")
        arr = np.asarray(im)
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        # a histogram, not np.unique's sort: 512x512 masks are counted several times faster
        return [int(v) for v in np.flatnonzero(np.bincount(arr.ravel()))]
    return [int(v) for v in np.unique(arr)]


class SegmentationJson(DatasetFormat):
    name = "segmentation-json"
    tasks = ("semantic-segmentation",)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return root.is_dir() and _id2label_file(root) is not None and bool(_split_files(root))

    @classmethod
    def load(cls, root: Path, task: str | None = None, *, verify: bool = True, **options: object) -> DatasetContent:
        id_file = _id2label_file(root)
        if id_file is None:
            raise DatasetFormatError(root / "resources" / "id2label.json", "missing (id2lable.json is accepted too)")
        raw = read_json(id_file)
        if not isinstance(raw, dict):
            raise DatasetFormatError(id_file, 'expected an object {"0": "unlabeled", ...}')
        try:
            categories = {int(k): str(v) for k, v in raw.items()}
        except ValueError:
            raise DatasetFormatError(id_file, "keys must be integer class ids") from None
        categories = with_background(categories, background_of(root, options))
        ids = set(categories)
        listed = id_file.relative_to(root).as_posix()
        hint = f"add the id to {listed}, fix the mask, or set the Dataset's background: to that id"
        items: list[Item] = []
        files = _split_files(root)
        if not files:
            raise DatasetFormatError(root, "no split file found (expected train/train.json)")
        for split, sf in files:
            entries = read_json(sf)
            if not isinstance(entries, list):
                raise DatasetFormatError(sf, 'expected a list of {"image": ..., "seg_map": ...}')
            for n, e in enumerate(entries):
                if not isinstance(e, dict) or "image" not in e:
                    raise DatasetFormatError(sf, f"entry {n} has no 'image'")
                img = find_inside(root, (sf.parent, root), str(e["image"]))
                if img is None:
                    raise DatasetFormatError(sf, f"entry {n}: image {e['image']!r} does not exist")
                mask = None
                if e.get("seg_map"):
                    mask = find_inside(root, (sf.parent, root), str(e["seg_map"]))
                    if mask is None:
                        raise DatasetFormatError(sf, f"entry {n}: seg_map {e['seg_map']!r} does not exist")
                w = h = None
                if verify:
                    w, h = verify_image(img)
                    if mask is not None:
                        mw, mh = check_mask(mask, ids, listed, hint)
                        if (mw, mh) != (w, h):
                            raise DatasetFormatError(mask, f"mask is {mw}x{mh} but its image is {w}x{h}")
                items.append(Item(path=img.relative_to(root).as_posix(), split=split,
                                  mask=mask.relative_to(root).as_posix() if mask else None, width=w, height=h))
        return DatasetContent(task="semantic-segmentation", root=root, format=cls.name, items=items, categories=categories)

    @classmethod
    def export(cls, content: DatasetContent, out_dir: Path) -> Path:
        cls._export_dir(content, out_dir, "segmentation-json holds semantic segmentation")
        groups: dict[str, list[Item]] = {}
        for it in content.items:
            groups.setdefault(it.split or "data", []).append(it)
        for split, its in groups.items():
            d = out_dir / split
            used_i: set[str] = set()
            used_m: set[str] = set()
            entries = []
            for it in its:
                iname = "images/" + unique_name(used_i, it.path)
                place_file(content.abspath(it.path), d / iname)
                entry = {"image": iname}
                if it.mask:
                    mname = "annotations/" + unique_name(used_m, it.mask)
                    place_file(content.abspath(it.mask), d / mname)
                    entry["seg_map"] = mname
                entries.append(entry)
            write_dataset_json(d / f"{split}.json", entries)
        write_dataset_json(out_dir / "resources" / "id2label.json",
                          {str(k): v for k, v in sorted(content.categories.items())})
        write_format_file(out_dir)
        return out_dir
