"""Server-free parts: configs, the split, conversion of export JSON, completion rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.labeling import assignment, configs, export
from kiln.labeling.client import box_region, brush_region, choice_region, polygon_region

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")


@pytest.mark.parametrize("task,control,obj", [
    ("classification", "Choices", "Image"), ("detection", "RectangleLabels", "Image"),
    ("instance-segmentation", "PolygonLabels", "Image"), ("semantic-segmentation", "BrushLabels", "Image"),
    ("tabular-classification", "Choices", "Table"), ("tabular", "Choices", "Table"),
])
def test_config_round_trips_classes(task: str, control: str, obj: str) -> None:
    xml = configs.label_config(task, ["cat", "dog & co", "<x>"], colors={"cat": "#ff0000"})
    assert f"<{control} " in xml and f"<{obj} " in xml
    assert configs.classes_of(xml, task) == ["cat", "dog & co", "<x>"]


def test_config_text_view_and_regression() -> None:
    xml = configs.label_config("tabular-regression", [], view="text")
    assert "<Text " in xml and "<Number " in xml
    assert configs.classes_of(xml, "tabular-regression") == []


def test_config_errors_name_valid_values() -> None:
    with pytest.raises(ConfigError, match="valid: classification, detection"):
        configs.label_config("keypoints", ["a"])
    with pytest.raises(ConfigError, match="duplicates"):
        configs.label_config("detection", ["a", "a"])
    with pytest.raises(ConfigError, match="valid: table, text"):
        configs.label_config("tabular", ["a"], view="grid")


def test_even_split_is_contiguous_like_the_source_platform() -> None:
    keys = [f"{i:04d}.png" for i in range(1, 43)]
    a = assignment.split(keys, ["cy", "di", "ed"])
    assert assignment.ranges(a, keys) == {"cy": (1, 14), "di": (15, 28), "ed": (29, 42)}
    assert assignment.shares(43, [1, 1, 1]) == [15, 14, 14]


def test_weighted_split_largest_remainder() -> None:
    assert assignment.shares(10, [2, 1, 1]) == [5, 3, 2]  # 5, 2.5, 2.5: tie -> first listed
    assert assignment.shares(7, [1, 3]) == [2, 5]  # 1.75, 5.25
    assert sum(assignment.shares(1001, [0.3, 0.3, 0.4])) == 1001
    with pytest.raises(ConfigError, match="> 0"):
        assignment.shares(3, [1, 0])


def _task(key: str, anns: list[dict], **data: object) -> dict:
    return {"id": hash(key) % 1000, "data": {"kiln_key": key, **data}, "annotations": anns}


def _ann(uid: int, result: list[dict], *, cancelled: bool = False, at: str = "2026-01-01T00:00:00") -> dict:
    return {"id": uid * 100, "completed_by": uid, "result": result, "was_cancelled": cancelled, "updated_at": at}


def test_polygons_convert_to_pixels_and_coco(tmp_path: Path) -> None:
    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    region = polygon_region("leaf", [(10, 10), (50, 10), (30, 60)], 200, 100)
    conv = export.to_content([_task("a.png", [_ann(1, [region])])], task="instance-segmentation",
                             classes=["leaf"], root=tmp_path)
    (ann,) = conv.content.items[0].annotations
    assert ann.polygons == [pytest.approx([10, 10, 50, 10, 30, 60])]
    assert ann.bbox == pytest.approx([10, 10, 40, 50])
    from kiln.data import formats

    formats.export(conv.content, tmp_path / "out", "coco")
    coco = json.loads((tmp_path / "out" / "_annotations.coco.json").read_text())
    assert coco["annotations"][0]["segmentation"] == [pytest.approx([10, 10, 50, 10, 30, 60])]


def test_brush_rle_converts_to_mask(tmp_path: Path) -> None:
    pytest.importorskip("label_studio_sdk")
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    want = np.zeros((30, 40), dtype=np.uint8)
    want[5:12, 8:20] = 1
    want2 = np.zeros_like(want)
    want2[20:25, 30:38] = 1
    result = [brush_region("road", want, 40, 30), brush_region("car", want2, 40, 30)]
    conv = export.to_content([_task("a.png", [_ann(1, result)])], task="semantic-segmentation",
                             classes=["road", "car"], root=tmp_path, mask_dir=tmp_path / "masks")
    it = conv.content.items[0]
    mask = np.asarray(Image.open(conv.content.abspath(it.mask)))
    assert conv.content.categories == {0: "background", 1: "road", 2: "car"}
    assert (mask == want * 1 + want2 * 2).all()


def test_choices_become_image_folder_labels(tmp_path: Path) -> None:
    for k in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / k)
    tasks = [
        _task("a.png", [_ann(1, [choice_region("cat")])], kiln_split="train"),
        # a reviewer's annotation wins over the later annotator's
        _task("b.png", [_ann(2, [choice_region("cat")], at="2026-01-02"), _ann(9, [choice_region("dog")])],
              kiln_split="train"),
        _task("c.png", [_ann(1, [], cancelled=True)]),
    ]
    conv = export.to_content(tasks, task="classification", classes=["cat", "dog"], root=tmp_path, reviewer_ids=[9])
    assert {it.path: it.label for it in conv.content.items} == {"a.png": "cat", "b.png": "dog"}
    assert conv.skipped == ["c.png"]
    from kiln.data import formats

    out = formats.export(conv.content, tmp_path / "folder", "image-folder")
    assert sorted((it.split, it.label) for it in out.items) == [("train", "cat"), ("train", "dog")]


def test_completion_rules() -> None:
    box = box_region("a", 1, 1, 2, 2, 10, 10)
    tasks = [_task("1", [_ann(1, [box])]), _task("2", [_ann(1, [], cancelled=True)]), _task("3", []),
             _task("4", [], kiln_deleted=True)]
    c = export.completion(tasks, "all-annotated")
    assert (c.complete, c.done, c.total) == (False, 2, 3)
    tasks[2]["annotations"] = [_ann(2, [box])]
    assert export.completion(tasks, "all-annotated").complete
    assert not export.completion(tasks, "reviewed", reviewer_ids=[9]).complete
    for t in tasks[:3]:
        t["annotations"].append(_ann(9, [box]))
    assert export.completion(tasks, "reviewed", reviewer_ids=[9]).complete
    assert export.completion(tasks, "min-count", min_count=3).complete
    assert not export.completion(tasks, "min-count", min_count=4).complete
    with pytest.raises(ConfigError, match="valid: all-annotated, reviewed, min-count"):
        export.completion(tasks, "majority")


def test_progress_per_annotator_and_class() -> None:
    tasks = [
        _task("1", [_ann(1, [box_region("a", 1, 1, 2, 2, 10, 10), box_region("b", 1, 1, 2, 2, 10, 10)])],
              assignee="cy"),
        _task("2", [_ann(2, [], cancelled=True)], assignee="cy"),
        _task("3", [], assignee="di"),
    ]
    p = assignment.progress(tasks, {1: "cy", 2: "di"})
    assert p.as_dict() == {
        "total": 3, "annotated": 1, "skipped": 1,
        "per_annotator": {"cy": {"assigned": 2, "annotated": 1, "skipped": 0},
                          "di": {"assigned": 1, "annotated": 0, "skipped": 1}},
        "per_class": {"a": 1, "b": 1},
    }


def test_project_ids_tell_repositories_apart(tmp_path) -> None:
    """Two GitOps repos sharing one Label Studio never adopt each other's projects; two clones
    of one repo (a checkout and the controller's) do share them; a token in the URL stays out."""
    import subprocess

    from kiln.controller.labeling_steps import kiln_id

    def repo(name: str, origin: str | None = None):
        r = tmp_path / name
        r.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=r, check=True)
        if origin:
            subprocess.run(["git", "remote", "add", "origin", origin], cwd=r, check=True)
        return r

    a, b = repo("a"), repo("b")
    assert kiln_id(a, "default", "boxes") != kiln_id(b, "default", "boxes")
    assert kiln_id(a, "default", "boxes").endswith("#default/boxes")
    c1 = repo("c1", "https://bot:s3cret@git.example.com/ml/specs.git")
    c2 = repo("c2", "https://git.example.com/ml/specs")
    assert kiln_id(c1, "vision", "relabel") == kiln_id(c2, "vision", "relabel") \
        == "https://git.example.com/ml/specs#vision/relabel"
