"""Sample datasets (scikit-learn's bundled data, materialised through kiln.data) for algorithm tests."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("sklearn")


@pytest.fixture(autouse=True)
def _drop_large_outputs(tmp_path: Path):
    """Checkpoints of detection/transformer models are hundreds of MB each; pytest keeps the last
    three runs' temp dirs, so each test's tmp_path is emptied when the test ends."""
    yield
    import shutil

    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("samples")


def _tabular(samples_dir: Path, name: str):
    from kiln.algorithms.base import TrainData
    from kiln.data.formats import load
    from kiln.data.samples import materialize_sample

    root = samples_dir / name
    if not (root / "data.csv").exists():
        materialize_sample(name, root)
    return TrainData(load(root, task="tabular"))


@pytest.fixture(scope="session")
def wine(samples_dir: Path):
    return _tabular(samples_dir, "wine")


@pytest.fixture(scope="session")
def breast_cancer(samples_dir: Path):
    return _tabular(samples_dir, "breast_cancer")


@pytest.fixture(scope="session")
def diabetes(samples_dir: Path):
    return _tabular(samples_dir, "diabetes")


@pytest.fixture(scope="session")
def digits_root(samples_dir: Path) -> Path:
    from kiln.data.samples import materialize_sample

    root = samples_dir / "digits"
    if not root.exists():
        materialize_sample("digits", root)
    return root


def digits_data(root: Path, per_split: dict[str, int] | None = None):
    """Digits as TrainData (80/10/10 stratified split), optionally cut to the first N per split."""
    from kiln.algorithms.base import TrainData
    from kiln.data.formats import load

    td = TrainData(load(root, task="classification"))
    if per_split:
        rank: dict[tuple[str | None, str | None], int] = {}
        keyed = []
        for it in td.content.items:  # interleave the classes, so a small cut holds all ten
            r = rank[(it.split, it.label)] = rank.get((it.split, it.label), -1) + 1
            keyed.append(((r, it.label), it))
        kept, seen = [], {}
        for _, it in sorted(keyed, key=lambda p: p[0]):
            if seen.get(it.split, 0) < per_split.get(it.split, 0):
                kept.append(it)
                seen[it.split] = seen.get(it.split, 0) + 1
        td = TrainData(td.content.model_copy(update={"items": kept}))
    return td


# -- drawn image datasets (no downloads): coloured shapes on noisy backgrounds ----------------------

SHAPES = {1: "square", 2: "circle"}


def _shape_polygon(kind: str, cx: float, cy: float, r: float) -> list[float]:
    import math

    if kind == "square":
        return [cx - r, cy - r, cx + r, cy - r, cx + r, cy + r, cx - r, cy + r]
    pts: list[float] = []
    for k in range(16):
        a = 2 * math.pi * k / 16
        pts += [cx + r * math.cos(a), cy + r * math.sin(a)]
    return pts


def draw_shapes(root: Path, per_split: dict[str, int], size: int = 64, seed: int = 0, *,
                layout: str = "coco") -> Path:
    """Images with 1-2 shapes each (red squares, blue circles) on a noisy grey background.

    ``layout="coco"``: ``root/{split}/_annotations.coco.json`` with boxes and polygons;
    ``layout="segmentation-json"``: ``root/{split}/{split}.json`` + masks (0 background, 1 square,
    2 circle) + ``resources/id2label.json``.
    """
    import json

    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colours = {"square": (220, 40, 40), "circle": (40, 60, 220)}
    for split, n in per_split.items():
        d = root / split
        d.mkdir(parents=True, exist_ok=True)
        images, anns, pairs = [], [], []
        for i in range(n):
            arr = rng.normal(128, 20, (size, size, 3)).clip(0, 255).astype(np.uint8)
            im = Image.fromarray(arr)
            mask = Image.new("L", (size, size), 0)
            draw, mdraw = ImageDraw.Draw(im), ImageDraw.Draw(mask)
            for k in range(int(rng.integers(1, 3))):
                cid = int(rng.integers(1, 3))
                kind = SHAPES[cid]
                r = float(rng.uniform(size * 0.12, size * 0.22))
                # left half for the first shape, right half for the second: they never overlap
                cx = float(rng.uniform(r, size / 2 - 1)) + (size / 2 if k else 0)
                cx = min(cx, size - r - 1)
                cy = float(rng.uniform(r + 1, size - r - 1))
                poly = _shape_polygon(kind, cx, cy, r)
                draw.polygon(poly, fill=colours[kind])
                mdraw.polygon(poly, fill=cid)
                xs, ys = poly[0::2], poly[1::2]
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cid, "iscrowd": 0,
                             "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                             "area": (max(xs) - min(xs)) * (max(ys) - min(ys)), "segmentation": [poly]})
            name = f"{i:04d}.png"
            if layout == "coco":
                im.save(d / name)
            else:
                (d / "images").mkdir(exist_ok=True)
                (d / "annotations").mkdir(exist_ok=True)
                im.save(d / "images" / name)
                mask.save(d / "annotations" / name)
                pairs.append({"image": f"images/{name}", "seg_map": f"annotations/{name}"})
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        if layout == "coco":
            (d / "_annotations.coco.json").write_text(json.dumps({
                "info": {}, "licenses": [], "images": images, "annotations": anns,
                "categories": [{"id": c, "name": n} for c, n in SHAPES.items()]}))
        else:
            (d / f"{split}.json").write_text(json.dumps(pairs))
    if layout != "coco":
        (root / "resources").mkdir(exist_ok=True)
        (root / "resources" / "id2label.json").write_text(json.dumps({"0": "background", **{str(k): v for k, v in
                                                                                            SHAPES.items()}}))
    return root


@pytest.fixture(scope="session")
def shapes_coco(samples_dir: Path):
    from kiln.algorithms.base import TrainData
    from kiln.data.formats import load

    root = samples_dir / "shapes-coco"
    if not root.exists():
        draw_shapes(root, {"train": 8, "validation": 2, "test": 3})
    return TrainData(load(root, task="detection"))


@pytest.fixture(scope="session")
def shapes_instances(samples_dir: Path):
    from kiln.algorithms.base import TrainData
    from kiln.data.formats import load

    root = samples_dir / "shapes-coco"
    if not root.exists():
        draw_shapes(root, {"train": 8, "validation": 2, "test": 3})
    return TrainData(load(root, task="instance-segmentation"))


@pytest.fixture(scope="session")
def shapes_segmentation(samples_dir: Path):
    from kiln.algorithms.base import TrainData
    from kiln.data.formats import load

    root = samples_dir / "shapes-seg"
    if not root.exists():
        draw_shapes(root, {"train": 8, "validation": 2, "test": 3}, layout="segmentation-json")
    return TrainData(load(root, task="semantic-segmentation"))
