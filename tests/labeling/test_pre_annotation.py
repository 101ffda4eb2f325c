"""Pre-annotation for every image task, without a server: a predict output in the algorithms' one
shape -> Label Studio regions -> back through the export converter an annotator's submit goes
through; what comes out is what the model predicted (issue 25)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.controller.labeling_steps import (
    PREDICTION_MAPPERS,
    mask_polygons,
    predictions_for,
    served_outputs,
)
from kiln.labeling.export import to_content

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("pycocotools")
pytest.importorskip("label_studio_sdk")

CLASSES = ["cat", "dog"]


def image(tmp_path: Path, w: int = 40, h: int = 30) -> Path:
    p = tmp_path / "img.png"
    Image.new("RGB", (w, h)).save(p)
    return p


def round_trip(tmp_path: Path, task: str, output: object, categories: dict[int, str] | None = None,
               threshold: float = 0.5):
    """The prediction as an annotator would submit it unchanged, exported."""
    path = image(tmp_path)
    (pred,) = predictions_for(task, [output], [path], CLASSES, "m:v1", threshold, categories)
    if pred is None:
        return None, None
    task_json = {"data": {"kiln_key": path.name}, "annotations": [{"id": 1, "result": pred.result}]}
    conv = to_content([task_json], task=task, classes=CLASSES, root=tmp_path, mask_dir=tmp_path / "masks")
    return pred, conv.content.items[0]


def test_every_image_task_has_a_mapper() -> None:
    assert set(PREDICTION_MAPPERS) == {"classification", "detection", "instance-segmentation",
                                       "semantic-segmentation"}


def test_detection_reads_the_detectors_box(tmp_path: Path) -> None:
    # what kiln.algorithms' detectors return: box = [xmin, ymin, xmax, ymax] in pixels
    out = [{"label": "dog", "category_id": 2, "score": 0.9, "box": [4.0, 6.0, 24.0, 16.0]},
           {"label": "cat", "category_id": 1, "score": 0.2, "box": [0.0, 0.0, 5.0, 5.0]},  # below threshold
           {"label": "bird", "category_id": 3, "score": 0.99, "box": [1.0, 1.0, 9.0, 9.0]}]  # not labelled here
    pred, item = round_trip(tmp_path, "detection", out)
    assert pred.score == pytest.approx(0.9) and pred.model_version == "m:v1"
    assert [(a.category_id, a.bbox) for a in item.annotations] == [(2, pytest.approx([4.0, 6.0, 20.0, 10.0]))]
    assert round_trip(tmp_path, "detection", out[1:])[0] is None  # nothing kept: left to a person


def test_instance_masks_become_polygons_that_cover_the_mask(tmp_path: Path) -> None:
    from kiln.data.formats import _masks

    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:20, 10:30] = 1  # a rectangle
    mask[22:28, 2:8] = 1  # a second part of the same object
    out = [{"label": "cat", "category_id": 1, "score": 0.8, "box": [2.0, 5.0, 30.0, 28.0],
            "mask": _masks.encode(mask)}]
    pred, item = round_trip(tmp_path, "instance-segmentation", out)
    assert {r["type"] for r in pred.result} == {"polygonlabels"} and len(pred.result) == 2
    assert all(a.category_id == 1 and a.polygons for a in item.annotations)
    drawn = np.zeros_like(mask)
    for a in item.annotations:
        drawn |= _masks.decode(_masks.polygons_to_rle(a.polygons, 30, 40))
    iou = (drawn & mask).sum() / (drawn | mask).sum()
    assert iou > 0.9, iou
    # an object without a mask keeps its box as a polygon
    pred, item = round_trip(tmp_path, "instance-segmentation", [{**out[0], "mask": None}])
    assert item.annotations[0].bbox == pytest.approx([2.0, 5.0, 28.0, 23.0])


def test_mask_polygons_trace_pixel_edges() -> None:
    m = np.zeros((10, 10), dtype=np.uint8)
    m[2:6, 3:8] = 1
    (poly,) = mask_polygons(m)
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    assert min(xs) == pytest.approx(3, abs=0.6) and max(xs) == pytest.approx(8, abs=0.6)
    assert min(ys) == pytest.approx(2, abs=0.6) and max(ys) == pytest.approx(6, abs=0.6)


def test_semantic_masks_become_brush_regions_and_back(tmp_path: Path) -> None:
    ids = np.zeros((30, 40), dtype=np.int64)  # category ids as the segmenters predict them
    ids[3:12, 5:25] = 7
    ids[15:28, 10:38] = 9
    ids[0:2, 0:2] = 4  # a class the job does not label
    pred, item = round_trip(tmp_path, "semantic-segmentation", ids, categories={0: "background", 4: "bird",
                                                                               7: "cat", 9: "dog"})
    assert sorted(r["value"]["brushlabels"][0] for r in pred.result) == ["cat", "dog"] and pred.score == 1.0
    got = np.asarray(Image.open(tmp_path / item.mask))
    # the job numbers its classes 1..N (background 0): cat 1, dog 2, anything else background
    want = np.select([ids == 7, ids == 9], [1, 2], 0)
    assert (got == want).all()


def test_classification_takes_the_best_label(tmp_path: Path) -> None:
    pred, item = round_trip(tmp_path, "classification", [{"label": "dog", "score": 0.7},
                                                          {"label": "cat", "score": 0.3}])
    assert item.label == "dog" and pred.score == pytest.approx(0.7)


def test_served_answers_come_back_in_the_algorithms_shape() -> None:
    # EasyMaker's detection answer (what a Deployment returns) -> the detectors' predict shape
    answer = {"predictions": [[{"dog": {"xmin": 4, "ymin": 6, "xmax": 24, "ymax": 16}, "score": 0.9}], []]}
    assert served_outputs("detection", answer, 2) == [
        [{"label": "dog", "score": 0.9, "box": [4.0, 6.0, 24.0, 16.0]}], []]
    # a classification of one instance is its ranked list, bare
    one = [{"score": 0.8, "label": "cat"}, {"score": 0.2, "label": "dog"}]
    assert served_outputs("classification", one, 1) == [one]
    assert served_outputs("semantic-segmentation", {"predictions": [[[0, 1], [1, 1]]]}, 1) == [[[0, 1], [1, 1]]]
    with pytest.raises(Exception, match="answered 2 instance"):
        served_outputs("detection", {"predictions": [[]]}, 2)
