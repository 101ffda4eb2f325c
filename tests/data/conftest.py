"""Builders for small real datasets, one per format, from the product's own shape drawing
(``kiln.data.samples.draw_shapes``: coloured rectangles labelled by colour here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("pycocotools")

from kiln.data.samples import COLORS, draw_shapes  # noqa: E402


def shape_image(seed: int, size: int = 32) -> tuple[np.ndarray, list[tuple[str, list[int]]]]:
    """A noisy background with 1-2 filled rectangles; returns pixels and [(colour, [x,y,w,h])]."""
    arr, objects = draw_shapes(seed, size, count=1 + seed % 2, kinds=("square",), min_side=6, max_side=11)
    return arr, [(o["color"], o["bbox"]) for o in objects]


def save(arr, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_image_folder(root: Path, n: int = 4, splits=("train", "validation")) -> Path:
    for s in splits:
        for c, color in COLORS.items():
            for i in range(n):
                arr = np.full((24, 24, 3), color, dtype=np.uint8)  # > 255 pixels, or equalize is a no-op
                noise = np.random.default_rng(i).integers(0, 35, arr.shape)  # many grey levels, not flat
                arr = np.clip(arr.astype(int) - noise, 0, 255).astype(np.uint8)
                arr[i % 24, :, :] = 255
                save(arr, root / s / c / f"{s}_{c}_{i}.png")
    return root


def make_coco(root: Path, n: int = 3, segmentation: bool = False) -> Path:
    from pycocotools import mask as mu

    cats = [{"id": i + 1, "name": c} for i, c in enumerate(COLORS)]
    cid = {c["name"]: c["id"] for c in cats}
    seed = 0
    for s in ("train", "validation"):
        images, anns = [], []
        for i in range(n):
            seed += 1
            arr, boxes = shape_image(seed)
            save(arr, root / s / f"img{i}.png")
            images.append({"id": i + 1, "file_name": f"img{i}.png", "width": 32, "height": 32})
            for k, (name, (x, y, w, h)) in enumerate(boxes):
                a = {"id": len(anns) + 1, "image_id": i + 1, "category_id": cid[name],
                     "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
                if segmentation:
                    if k == 0:
                        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
                    else:
                        m = np.zeros((32, 32), np.uint8)
                        m[y:y + h, x:x + w] = 1
                        r = mu.encode(np.asfortranarray(m))
                        a["segmentation"] = {"size": [32, 32], "counts": r["counts"].decode()}
                anns.append(a)
        (root / s / "_annotations.coco.json").write_text(json.dumps(
            {"info": {}, "licenses": [], "categories": cats, "images": images, "annotations": anns}))
    return root


def semantic_pair(seed: int):
    arr, boxes = shape_image(seed)
    mask = np.zeros((32, 32), np.uint8)
    for name, (x, y, w, h) in boxes:
        mask[y:y + h, x:x + w] = list(COLORS).index(name) + 1
    return arr, mask


ID2LABEL = {"0": "unlabeled", "1": "red", "2": "green", "3": "blue"}


def make_segmentation_json(root: Path, n: int = 3, misspelt: bool = False) -> Path:
    seed = 100
    for s in ("train", "validation"):
        entries = []
        for i in range(n):
            seed += 1
            arr, mask = semantic_pair(seed)
            save(arr, root / s / "images" / f"{i:04d}.png")
            save(mask, root / s / "annotations" / f"{i:04d}.png")
            entries.append({"image": f"images/{i:04d}.png", "seg_map": f"annotations/{i:04d}.png"})
        (root / s / f"{s}.json").write_text(json.dumps(entries))
    (root / "resources").mkdir(parents=True)
    (root / "resources" / ("id2lable.json" if misspelt else "id2label.json")).write_text(json.dumps(ID2LABEL))
    return root


def make_studio(root: Path, kind: str = "instance", n: int = 4) -> Path:
    from pycocotools import mask as mu

    for i in range(n):
        if kind == "semantic":
            arr, mask = semantic_pair(200 + i)
            save(arr, root / "images" / f"{i:04d}.png")
            save(mask, root / "labels" / f"{i:04d}.png")
            continue
        arr, boxes = shape_image(300 + i)
        save(arr, root / "images" / f"{i:04d}.png")
        inst = []
        for name, (x, y, w, h) in boxes:
            d = {"category_id": list(COLORS).index(name) + 1, "bbox": [x, y, w, h]}
            if kind == "instance":
                m = np.zeros((32, 32), np.uint8)
                m[y:y + h, x:x + w] = 1
                d["segmentation"] = {"size": [32, 32], "counts": mu.encode(np.asfortranarray(m))["counts"].decode()}
            inst.append(d)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{i:04d}.json").write_text(json.dumps({"instances": inst}))
    cats = [{"id": 0, "name": "unlabeled"}] if kind == "semantic" else []
    cats += [{"id": i + 1, "name": c} for i, c in enumerate(COLORS)]
    (root / "meta.json").write_text(json.dumps({"categories": cats}))
    return root


# --- the seed documents' layouts, quirks included (SEEDS_DIGEST.md §1, §3) ------------------------
# Each builder writes a tiny dataset and returns what a correct reader must find, counted from what
# was drawn (never from kiln's loader): {"format", "task", "items": {split: n},
# "classes": {split: {class: n}}}. Items without a split count under "unsplit".

def _tally(expected: dict, split: str, names) -> None:
    expected["items"][split] = expected["items"].get(split, 0) + 1
    c = expected["classes"].setdefault(split, {})
    for n in names:
        c[n] = c.get(n, 0) + 1


def _expect(fmt: str, task: str) -> dict:
    return {"format": fmt, "task": task, "items": {}, "classes": {}}


def seed_easymaker_classification(root: Path) -> dict:
    """EasyMaker: folder/{train,validation,test}/{label}/image.png."""
    exp = _expect("image-folder", "classification")
    for s, n in (("train", 3), ("validation", 2), ("test", 1)):
        for c, color in COLORS.items():
            for i in range(n if c != "blue" else n + 1):
                save(np.full((8, 8, 3), color, np.uint8), root / s / c / f"{i:04d}.png")
                _tally(exp, s, [c])
    return exp


def seed_easymaker_segmentation(root: Path) -> dict:
    """EasyMaker SegFormer: the test list is test/train.json and the ids are in id2lable.json (sic)."""
    exp = _expect("segmentation-json", "semantic-segmentation")
    names = {0: "unlabeled", 1: "red", 2: "green", 3: "blue"}
    seed = 400
    for s, list_name, n in (("train", "train.json", 4), ("validation", "validation.json", 2), ("test", "train.json", 2)):
        entries = []
        for i in range(n):
            seed += 1
            arr, mask = semantic_pair(seed)
            save(arr, root / s / "images" / f"{i + 1:04d}.png")
            save(mask, root / s / "annotations" / f"{i + 1:04d}.png")
            entries.append({"image": f"images/{i + 1:04d}.png", "seg_map": f"annotations/{i + 1:04d}.png"})
            _tally(exp, s, [names[int(v)] for v in np.unique(mask)])
        (root / s / list_name).write_text(json.dumps(entries, indent=4))
    (root / "resources").mkdir(parents=True)
    (root / "resources" / "id2lable.json").write_text(json.dumps({str(k): v for k, v in names.items()}))
    return exp


def seed_easymaker_detection(root: Path) -> dict:
    """EasyMaker DETR / Roboflow COCO: unused category 0 "none", ids from 0, empty segmentation lists."""
    exp = _expect("coco", "detection")
    cats = [{"id": 0, "name": "none", "supercategory": "none"}]
    cats += [{"id": i + 1, "name": c, "supercategory": c} for i, c in enumerate(COLORS)]
    cid = {c["name"]: c["id"] for c in cats}
    seed = 500
    for s, n in (("train", 3), ("validation", 2), ("test", 1)):
        images, anns = [], []
        for i in range(n):
            seed += 1
            arr, boxes = shape_image(seed)
            save(arr, root / s / f"{i + 1:04d}.png")
            images.append({"id": i, "license": 1, "file_name": f"{i + 1:04d}.png", "height": 32, "width": 32,
                           "date_captured": "2022-08-23T09:36:56+00:00"})
            for name, (x, y, w, h) in boxes:
                anns.append({"id": len(anns), "image_id": i, "category_id": cid[name], "bbox": [x, y, w, h],
                             "area": w * h, "segmentation": [], "iscrowd": 0})
            _tally(exp, s, [name for name, _ in boxes])
        (root / s / "_annotations.coco.json").write_text(json.dumps({
            "info": {"description": "Exported from roboflow.ai"}, "licenses": [{"id": 1, "name": "CC BY 4.0"}],
            "categories": cats, "images": images, "annotations": anns}, indent=4))
    return exp


def seed_studio(root: Path, kind: str) -> dict:
    """AI Studio's own layout: images/, annotations/*.json ("instances") or labels/*.png, meta.json.
    Semantic masks use 0 for background without listing it; classification instances carry a
    category_id only."""
    from pycocotools import mask as mu

    task = {"detection": "detection", "instance": "instance-segmentation", "semantic": "semantic-segmentation",
            "classification": "classification"}[kind]
    exp = _expect("studio", task)
    names = {i + 1: c for i, c in enumerate(COLORS)}
    for i in range(5):
        arr, boxes = shape_image(600 + i)
        save(arr, root / "images" / f"{i + 1:04d}.png")
        if kind == "semantic":
            _, mask = semantic_pair(600 + i)
            save(mask, root / "labels" / f"{i + 1:04d}.png")
            _tally(exp, "unsplit", ["background" if v == 0 else names[int(v)] for v in np.unique(mask)])
            continue
        if kind == "classification":
            inst = [{"category_id": list(COLORS).index(boxes[0][0]) + 1}]
            _tally(exp, "unsplit", [boxes[0][0]])
        else:
            inst = []
            for name, (x, y, w, h) in boxes:
                d: dict = {"category_id": list(COLORS).index(name) + 1, "bbox": [x, y, w, h]}
                if kind == "instance":
                    m = np.zeros((32, 32), np.uint8)
                    m[y:y + h, x:x + w] = 1
                    d["segmentation"] = {"size": [32, 32], "counts": mu.encode(np.asfortranarray(m))["counts"].decode()}
                inst.append(d)
            _tally(exp, "unsplit", [name for name, _ in boxes])
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{i + 1:04d}.json").write_text(json.dumps({"instances": inst}))
    (root / "meta.json").write_text(json.dumps({"categories": [{"id": k, "name": v} for k, v in names.items()]}))
    return exp


def seed_studio_tabular(root: Path) -> dict:
    """AI Studio tabular: a CSV whose last column is the label (int: classification)."""
    exp = _expect("csv", "tabular")
    rows = ["sepal,colour,kind"] + [f"{i * 0.5},c-{i % 2},{i % 3}" for i in range(7)]
    root.mkdir(parents=True)
    (root / "flowers.csv").write_text("\n".join(rows) + "\n")
    exp["items"] = {"unsplit": 7}
    exp["classes"] = {"unsplit": {"0": 3, "1": 2, "2": 2}}
    return exp


SEED_LAYOUTS = {
    "easymaker-classification": seed_easymaker_classification,
    "easymaker-segmentation": seed_easymaker_segmentation,
    "easymaker-detection": seed_easymaker_detection,
    "studio-detection": lambda root: seed_studio(root, "detection"),
    "studio-instance-segmentation": lambda root: seed_studio(root, "instance"),
    "studio-semantic-segmentation": lambda root: seed_studio(root, "semantic"),
    "studio-classification": lambda root: seed_studio(root, "classification"),
    "studio-tabular": seed_studio_tabular,
}
