"""COCO object detection / instance segmentation.

Per-split layout (EasyMaker, Roboflow)::

    root/train/_annotations.coco.json      images beside it: root/train/0001.png
    root/validation/_annotations.coco.json
    root/test/_annotations.coco.json       (optional)

or one COCO file at the root (``root/_annotations.coco.json`` or ``root/annotations.json`` or
``root/annotations/instances_*.json``) whose ``file_name``s resolve against the file's folder, the
root, or ``root/images/``. Segmentations may be polygons or RLE (compressed or not); they load as
given, so the task is ``instance-segmentation`` when any annotation has one, else ``detection``.

Roboflow's exports (EasyMaker's detection example) start ``categories`` with a placeholder,
``{"id": 0, "name": "none", "supercategory": "none"}`` (or named after the dataset, as the other
categories' supercategory), which no annotation uses. It is not a class: it is left out of the
categories, so class counts and the labels a model is trained with agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.data.errors import DatasetFormatError
from kiln.data.formats import _masks
from kiln.data.formats._base import (
    DatasetFormat,
    find_inside,
    image_size,
    place_file,
    read_json,
    unique_name,
    verify_image,
    write_dataset_json,
)
from kiln.data.model import Annotation, DatasetContent, Item, normalize_split

ANN_NAME = "_annotations.coco.json"
_SPLIT_DIRS = ("train", "validation", "val", "valid", "test")


def _coco_files(root: Path) -> list[tuple[str | None, Path]]:
    per_split = [(normalize_split(s), root / s / ANN_NAME) for s in _SPLIT_DIRS if (root / s / ANN_NAME).is_file()]
    if per_split:
        return per_split
    for cand in (root / ANN_NAME, root / "annotations.json"):
        if cand.is_file():
            return [(None, cand)]
    inst = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
    out: list[tuple[str | None, Path]] = []
    for f in inst:
        # instances_train2017.json -> train
        stem = f.stem[len("instances_"):].rstrip("0123456789")
        out.append((normalize_split(stem) if stem else None, f))
    return out


def _placeholder(categories: dict[int, str], supercategories: dict[int, str], used: set[int]) -> bool:
    """Whether category 0 is Roboflow's placeholder (see the module doc)."""
    if 0 not in categories or 0 in used or supercategories.get(0) != "none":
        return False
    name = categories[0]
    return name == "none" or any(sc == name for cid, sc in supercategories.items() if cid != 0)


class Coco(DatasetFormat):
    name = "coco"
    tasks = ("detection", "instance-segmentation")

    @classmethod
    def detect(cls, root: Path) -> bool:
        return root.is_dir() and bool(_coco_files(root))

    @classmethod
    def load(cls, root: Path, task: str | None = None, *, verify: bool = True, **options: object) -> DatasetContent:
        files = _coco_files(root)
        if not files:
            raise DatasetFormatError(root, f"no COCO annotation file found (expected {{split}}/{ANN_NAME})")
        items: list[Item] = []
        categories: dict[int, str] = {}
        supercategories: dict[int, str] = {}
        any_seg = False
        for split, ann_file in files:
            data = read_json(ann_file)
            if not isinstance(data, dict) or not isinstance(data.get("images"), list):
                raise DatasetFormatError(ann_file, "not a COCO file: no 'images' list")
            for c in data.get("categories", []):
                cid, cname = int(c["id"]), str(c["name"])
                if categories.get(cid, cname) != cname:
                    raise DatasetFormatError(
                        ann_file, f"category id {cid} is {cname!r} here but {categories[cid]!r} in another split"
                    )
                categories[cid] = cname
                supercategories[cid] = str(c.get("supercategory", ""))
            by_id: dict[int, Item] = {}
            for img in data["images"]:
                fname = str(img.get("file_name", ""))
                path = find_inside(root, (ann_file.parent, root, root / "images"), fname)
                if path is None:
                    raise DatasetFormatError(
                        ann_file, f"image {fname!r} (id {img.get('id')}) does not exist next to the annotation file",
                        hint="add the image or remove it from 'images'",
                    )
                if verify:
                    w, h = verify_image(path)
                else:
                    w, h = img.get("width"), img.get("height")
                it = Item(path=path.relative_to(root).as_posix(), split=split, width=w, height=h)
                by_id[int(img["id"])] = it
                items.append(it)
            for a in data.get("annotations", []):
                iid, cid = int(a["image_id"]), int(a["category_id"])
                if iid not in by_id:
                    raise DatasetFormatError(ann_file, f"annotation {a.get('id')} refers to unknown image id {iid}")
                if cid not in categories:
                    raise DatasetFormatError(ann_file, f"annotation {a.get('id')} refers to unknown category id {cid}")
                ann = Annotation(category_id=cid, bbox=[float(v) for v in a["bbox"]] if a.get("bbox") else None,
                                 iscrowd=int(a.get("iscrowd", 0)))
                seg = a.get("segmentation")
                if isinstance(seg, list) and seg:
                    ann.polygons = [[float(v) for v in p] for p in seg]
                    any_seg = True
                elif isinstance(seg, dict) and "counts" in seg:
                    ann.rle = _masks.compress_rle(seg)
                    any_seg = True
                by_id[iid].annotations.append(ann)
        t = task or ("instance-segmentation" if any_seg else "detection")
        used = {a.category_id for it in items for a in it.annotations}
        if _placeholder(categories, supercategories, used):
            del categories[0]
        return DatasetContent(task=t, root=root, format=cls.name, items=items, categories=categories)

    @classmethod
    def export(cls, content: DatasetContent, out_dir: Path) -> Path:
        cls._export_dir(content, out_dir, "COCO export holds detection/instance segmentation")
        groups: dict[str | None, list[Item]] = {}
        for it in content.items:
            groups.setdefault(it.split, []).append(it)
        cats = [{"id": cid, "name": n, "supercategory": "none"} for cid, n in sorted(content.categories.items())]
        for split, its in groups.items():
            d = out_dir / split if split else out_dir
            used: set[str] = {ANN_NAME}
            images: list[dict[str, Any]] = []
            anns: list[dict[str, Any]] = []
            for iid, it in enumerate(its, start=1):
                src = content.abspath(it.path)
                name = unique_name(used, it.path)
                place_file(src, d / name)
                w, h = (it.width, it.height) if it.width and it.height else image_size(src)
                images.append({"id": iid, "file_name": name, "width": w, "height": h})
                for a in it.annotations:
                    anns.append(cls._ann(len(anns) + 1, iid, a, h, w))
            write_dataset_json(d / ANN_NAME, {
                "info": {"description": "exported by kiln"}, "licenses": [],
                "categories": cats, "images": images, "annotations": anns,
            })
        return out_dir

    @staticmethod
    def _ann(aid: int, iid: int, a: Annotation, h: int, w: int) -> dict[str, Any]:
        out: dict[str, Any] = {"id": aid, "image_id": iid, "category_id": a.category_id, "iscrowd": a.iscrowd}
        rle = a.rle or (_masks.polygons_to_rle(a.polygons, h, w) if a.polygons else None)
        if a.polygons:
            out["segmentation"] = a.polygons
        elif a.rle:
            out["segmentation"] = a.rle
        bbox = a.bbox if a.bbox is not None else (_masks.bbox(rle) if rle else None)
        if bbox is None:
            raise DatasetFormatError(f"image {iid}", f"annotation {aid} has neither a box nor a shape")
        out["bbox"] = bbox
        out["area"] = _masks.area(rle) if rle else float(bbox[2] * bbox[3])
        return out
