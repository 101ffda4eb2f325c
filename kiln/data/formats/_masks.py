"""Mask encodings shared by the COCO and studio formats and the image ops (pycocotools)."""

from __future__ import annotations

from typing import Any


def compress_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed (list counts) or bytes RLE -> compressed RLE with ``counts`` as str."""
    from pycocotools import mask as mu

    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = mu.frPyObjects(rle, h, w)
    c = rle["counts"]
    return {"size": [int(h), int(w)], "counts": c.decode("ascii") if isinstance(c, bytes) else c}


def _rle_c(rle: dict[str, Any]) -> dict[str, Any]:
    c = rle["counts"]
    return {"size": list(rle["size"]), "counts": c.encode("ascii") if isinstance(c, str) else c}


def polygons_to_rle(polygons: list[list[float]], h: int, w: int) -> dict[str, Any]:
    from pycocotools import mask as mu

    rles = mu.frPyObjects([list(map(float, p)) for p in polygons], h, w)
    merged = mu.merge(rles)
    return compress_rle({"size": [h, w], "counts": merged["counts"]})


def decode(rle: dict[str, Any]):  # -> numpy (h, w) uint8
    from pycocotools import mask as mu

    return mu.decode(_rle_c(rle))


def encode(mask) -> dict[str, Any]:  # numpy (h, w) bool/uint8
    import numpy as np
    from pycocotools import mask as mu

    r = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    return compress_rle({"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": r["counts"]})


def area(rle: dict[str, Any]) -> float:
    from pycocotools import mask as mu

    return float(mu.area(_rle_c(rle)))


def bbox(rle: dict[str, Any]) -> list[float]:
    from pycocotools import mask as mu

    return [float(v) for v in mu.toBbox(_rle_c(rle))]
