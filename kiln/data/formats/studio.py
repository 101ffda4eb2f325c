"""AI Studio's own layout (COCO-derived)::

    root/images/0001.png
    root/annotations/0001.json   {"instances": [{"category_id": 1, "bbox": [x, y, w, h],
                                                 "segmentation": {"size": [h, w], "counts": "..."}}]}
    root/labels/0001.png         semantic segmentation: a PNG of category ids (instead of annotations/)
    root/meta.json               {"task": "detection", "categories": [{"id": 1, "name": "cat"}, ...],
                                  "splits": {"0001": "train", ...}}

Annotations and masks pair with images by file stem. ``categories`` may also be an object
``{"1": "cat"}``; ``splits`` is optional (kiln writes it on export so splits survive a round trip).
An image without an annotation file is an unlabelled item; an annotation without an image is an error.

Classification: instances with a ``category_id`` only (no box, no shape); the image's label is that
category (one per image). Semantic masks: 0 is background when ``categories`` does not list it
(AI Studio's masks); a Dataset's ``background:`` says otherwise (``segmentation_json.background_of``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.data.errors import DatasetFormatError
from kiln.data.formats import _masks
from kiln.data.formats._base import (
    DatasetFormat,
    ignored,
    is_image,
    place_file,
    read_json,
    unique_name,
    verify_image,
    write_dataset_json,
)
from kiln.data.formats.segmentation_json import background_of, check_mask, with_background, write_format_file
from kiln.data.model import Annotation, DatasetContent, Item, normalize_split, normalize_task


class Studio(DatasetFormat):
    name = "studio"
    tasks = ("classification", "detection", "instance-segmentation", "semantic-segmentation")

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "images").is_dir() and ((root / "annotations").is_dir() or (root / "labels").is_dir()) \
            and (root / "meta.json").is_file()

    @classmethod
    def _meta(cls, root: Path) -> tuple[dict[str, Any], dict[int, str]]:
        mf = root / "meta.json"
        meta = read_json(mf) if mf.is_file() else {}
        if not isinstance(meta, dict):
            raise DatasetFormatError(mf, "expected a JSON object")
        raw = meta.get("categories", [])
        try:
            if isinstance(raw, dict):
                cats = {int(k): str(v) for k, v in raw.items()}
            else:
                cats = {int(c["id"]): str(c["name"]) for c in raw}
        except (KeyError, TypeError, ValueError):
            raise DatasetFormatError(mf, "'categories' must be [{\"id\": 1, \"name\": ...}] or {\"1\": name}") from None
        return meta, cats

    @classmethod
    def load(cls, root: Path, task: str | None = None, *, verify: bool = True, **options: object) -> DatasetContent:
        meta, cats = cls._meta(root)
        imgs = {p.stem: p for p in sorted((root / "images").iterdir()) if p.is_file() and not ignored(p.name)}
        for p in imgs.values():
            if not is_image(p.name):
                raise DatasetFormatError(p, "not a PNG or JPEG image")
        ann_dir, lab_dir = root / "annotations", root / "labels"
        semantic = lab_dir.is_dir() and not ann_dir.is_dir()
        t = normalize_task(task or meta.get("task")) if (task or meta.get("task")) else None
        splits = {str(k): normalize_split(v) for k, v in (meta.get("splits") or {}).items()}
        items: dict[str, Item] = {}
        for stem, p in imgs.items():
            w = h = None
            if verify:
                w, h = verify_image(p)
            items[stem] = Item(path=p.relative_to(root).as_posix(), split=splits.get(stem), width=w, height=h)
        any_seg = False
        if semantic:
            cats = with_background(cats, background_of(root, options))
            hint = "add it to meta.json's categories, fix the mask, or set the Dataset's background: to that id"
            for m in sorted(lab_dir.iterdir()):
                if ignored(m.name) or not m.is_file():
                    continue
                if m.stem not in items:
                    raise DatasetFormatError(m, f"mask has no image images/{m.stem}.*")
                if verify:
                    size = check_mask(m, set(cats), "meta.json categories", hint)
                    it = items[m.stem]
                    if size != (it.width, it.height):
                        raise DatasetFormatError(m, f"mask is {size[0]}x{size[1]} but its image is {it.width}x{it.height}")
                items[m.stem].mask = m.relative_to(root).as_posix()
        elif ann_dir.is_dir():
            any_seg = cls._annotations(ann_dir, items, cats)
        anns = [a for it in items.values() for a in it.annotations]
        if t is None:  # classification: every instance names a category only (AI Studio's layout)
            plain = bool(anns) and all(_label_only(a) for a in anns)
            t = "semantic-segmentation" if semantic else ("instance-segmentation" if any_seg else
                                                          "classification" if plain else "detection")
        for it in items.values():
            cls._check_shapes(root, it, t, cats)
        return DatasetContent(task=t, root=root, format=cls.name, items=list(items.values()), categories=cats)

    @staticmethod
    def _annotations(ann_dir: Path, items: dict[str, Item], cats: dict[int, str]) -> bool:
        """Read ``annotations/*.json`` into the items; whether any instance has a shape."""
        any_seg = False
        for af in sorted(ann_dir.glob("*.json")):
            if af.stem not in items:
                raise DatasetFormatError(af, f"annotation has no image images/{af.stem}.*")
            data = read_json(af)
            if not isinstance(data, dict) or not isinstance(data.get("instances", []), list):
                raise DatasetFormatError(af, "expected {\"instances\": [...]}")
            for n, inst in enumerate(data.get("instances", [])):
                try:
                    cid = int(inst["category_id"])
                except (KeyError, TypeError, ValueError):
                    raise DatasetFormatError(af, f"instance {n} has no integer category_id") from None
                if cats and cid not in cats:
                    raise DatasetFormatError(af, f"instance {n}: category_id {cid} is not in meta.json categories")
                a = Annotation(category_id=cid, bbox=[float(v) for v in inst["bbox"]] if inst.get("bbox") else None)
                seg = inst.get("segmentation")
                if isinstance(seg, dict):
                    a.rle = _masks.compress_rle(seg)
                    any_seg = True
                elif isinstance(seg, list) and seg:
                    a.polygons = [[float(v) for v in poly] for poly in seg]
                    any_seg = True
                items[af.stem].annotations.append(a)
        return any_seg

    @staticmethod
    def _check_shapes(root: Path, it: Item, task: str, cats: dict[int, str]) -> None:
        """Classification: the instances' one category becomes the label. Other tasks: every
        instance needs a box or a shape."""
        af = root / "annotations" / f"{Path(it.path).stem}.json"
        if task == "classification":
            ids = sorted({a.category_id for a in it.annotations})
            if len(ids) > 1:
                raise DatasetFormatError(af, f"classification needs one category per image, found ids {ids}",
                                         hint="keep one instance, or set the Dataset's task to detection")
            if ids:
                it.label = cats.get(ids[0], str(ids[0]))
                it.annotations = []
            return
        for n, a in enumerate(it.annotations):
            if _label_only(a):
                raise DatasetFormatError(af, f"instance {n} has neither bbox nor segmentation",
                                         hint=f"add a box or a shape, or set the Dataset's task to classification "
                                         f"(the dataset is {task})")

    @classmethod
    def export(cls, content: DatasetContent, out_dir: Path) -> Path:
        cls._export_dir(content, out_dir, "studio layout holds classification/detection/segmentation")
        used: set[str] = set()
        splits: dict[str, str] = {}
        categories = dict(content.categories)
        for label in sorted({it.label for it in content.items if it.label is not None} - set(categories.values())):
            categories[max(categories, default=0) + 1] = label  # a label the category list lacks
        ids = {n: i for i, n in categories.items()}
        for it in content.items:
            name = unique_name(used, it.path)
            stem = Path(name).stem
            place_file(content.abspath(it.path), out_dir / "images" / name)
            if it.split:
                splits[stem] = it.split
            if content.task == "semantic-segmentation":
                if it.mask:
                    place_file(content.abspath(it.mask), out_dir / "labels" / f"{stem}.png")
                continue
            instances: list[dict[str, Any]] = []
            if content.task == "classification" and it.label is not None:
                instances.append({"category_id": ids[it.label]})
            for a in it.annotations:
                inst: dict[str, Any] = {"category_id": a.category_id}
                if a.bbox is not None:
                    inst["bbox"] = a.bbox
                if a.rle is not None:
                    inst["segmentation"] = a.rle
                elif a.polygons:
                    inst["segmentation"] = a.polygons
                instances.append(inst)
            write_dataset_json(out_dir / "annotations" / f"{stem}.json", {"instances": instances})
        if content.task == "semantic-segmentation":
            (out_dir / "labels").mkdir(exist_ok=True)
            write_format_file(out_dir)
        else:
            (out_dir / "annotations").mkdir(exist_ok=True)
        meta: dict[str, Any] = {"task": content.task,
                "categories": [{"id": k, "name": v} for k, v in sorted(categories.items())]}
        if splits:
            meta["splits"] = splits
        write_dataset_json(out_dir / "meta.json", meta)
        return out_dir


def _label_only(a: Annotation) -> bool:
    return a.bbox is None and a.rle is None and a.polygons is None
