"""Built-in sample datasets, generated without downloads (scikit-learn's bundled data, or drawn).

- ``iris``, ``wine``, ``breast_cancer`` (classification) and ``diabetes`` (regression) as one
  ``data.csv`` with the target as the last column (``target``);
- ``digits`` as an unsplit image folder: ``<out>/<digit>/<index>.png``, the 8x8 images scaled
  to 0..255 and upscaled to 32x32 grayscale;
- ``shapes`` (detection) as one unsplit COCO file, drawn by :func:`draw_shapes` with fixed seeds
  (the same bytes on every machine): 60 RGB 64x64 images with 1-3 filled squares, circles and
  triangles each, the category being the shape (its colour varies)::

      <out>/_annotations.coco.json   {"categories": [{"id": 1, "name": "square"}, ...],
                                      "images": [{"id": 1, "file_name": "0000.png", "width": 64,
                                                  "height": 64}, ...],
                                      "annotations": [{"id", "image_id", "category_id",
                                                       "bbox": [x, y, w, h], "area", "iscrowd": 0}]}
      <out>/0000.png ...

  Splits come from the Dataset's ``splits:``. Tests draw their own small datasets with
  :func:`draw_shapes` too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiln._util.fs import replacing
from kiln.data.errors import DatasetFormatError

SAMPLES = {
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
    "diabetes": "load_diabetes",
    "digits": "load_digits",
    "shapes": "draw_shapes",  # drawn here, not loaded from scikit-learn
}

SHAPES = ("square", "circle", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}
SHAPES_COUNT, SHAPES_SIZE = 60, 64


def draw_shapes(seed: int, size: int = 64, *, count: int | None = None, kinds: Sequence[str] = SHAPES,
                min_side: int | None = None, max_side: int | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """A noisy dark background with ``count`` (default 1-3) filled shapes; deterministic in ``seed``.

    Returns ``(pixels, objects)``: a ``size x size x 3`` uint8 array and per shape
    ``{"shape", "color", "bbox": [x, y, w, h]}`` (the tight box of the drawn pixels). Squares are
    axis-aligned boxes of random width and height; circles are ellipses inscribed in theirs; triangles
    point up. Shapes may overlap; a later one is drawn over an earlier one.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    unknown = sorted(set(kinds) - set(SHAPES))
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; valid: {', '.join(SHAPES)}")
    rng = np.random.default_rng(seed)
    lo = min_side or max(4, size // 6)
    hi = max_side or max(lo + 1, size // 3)
    bg = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
    im = Image.fromarray(bg)
    draw = ImageDraw.Draw(im)
    objects = []
    n = count if count is not None else 1 + int(rng.integers(0, 3))
    for _ in range(n):
        kind = kinds[int(rng.integers(0, len(kinds)))]
        color = list(COLORS)[int(rng.integers(0, len(COLORS)))]
        w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        box = (x, y, x + w - 1, y + h - 1)  # PIL's corners are inclusive
        if kind == "square":
            draw.rectangle(box, fill=COLORS[color])
        elif kind == "circle":
            draw.ellipse(box, fill=COLORS[color])
        else:
            draw.polygon([(x, y + h - 1), (x + w - 1, y + h - 1), (x + (w - 1) / 2, y)], fill=COLORS[color])
        objects.append({"shape": kind, "color": color, "bbox": [x, y, w, h]})
    return np.asarray(im), objects


def _write_shapes(out: Path, count: int = SHAPES_COUNT, size: int = SHAPES_SIZE) -> None:
    from PIL import Image

    cid = {name: i + 1 for i, name in enumerate(SHAPES)}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i in range(count):
        arr, objects = draw_shapes(i, size)
        Image.fromarray(arr).save(out / f"{i:04d}.png")
        images.append({"id": i + 1, "file_name": f"{i:04d}.png", "width": size, "height": size})
        for o in objects:
            x, y, w, h = o["bbox"]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cid[o["shape"]],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    doc = {"info": {"description": "kiln sample: shapes"}, "licenses": [],
           "categories": [{"id": i, "name": n} for n, i in cid.items()], "images": images, "annotations": anns}
    tmp = out / ".annotations.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, out / "_annotations.coco.json")  # last, so a crash never leaves a COCO file without images


def materialize_sample(name: str, out_dir: str | os.PathLike[str], *, size: int = 32) -> Path:
    """Write sample ``name`` under ``out_dir``; return ``out_dir``."""
    if name not in SAMPLES:
        raise DatasetFormatError(name, f"unknown sample dataset; valid: {', '.join(SAMPLES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if name == "shapes":
        _write_shapes(out)
        return out
    import sklearn.datasets as skd

    bunch = getattr(skd, SAMPLES[name])()
    if name == "digits":
        import numpy as np
        from PIL import Image

        for i, (img, y) in enumerate(zip(bunch.images, bunch.target)):
            arr = np.clip(img * (255.0 / 16.0), 0, 255).astype(np.uint8)
            d = out / str(int(y))
            d.mkdir(exist_ok=True)
            Image.fromarray(arr, mode="L").resize((size, size), Image.Resampling.BILINEAR).save(d / f"{i:04d}.png")
        return out
    import pandas as pd

    # sklearn's feature names contain spaces and parentheses; CSV headers may, values may not
    frame = pd.DataFrame(bunch.data, columns=[str(c).replace(" ", "_") for c in bunch.feature_names])
    frame["target"] = bunch.target
    with replacing(out / "data.csv") as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")
    return out
