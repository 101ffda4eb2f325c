"""Every format: detect, load (validated), export, re-import gives the same content hash."""

from __future__ import annotations

import json
import zipfile

import pytest

from kiln.data import DatasetFormatError, detect_format, export, load
from kiln.data.archive import extract_archive
from kiln.data.samples import COLORS, materialize_sample

from .conftest import (
    SEED_LAYOUTS,
    make_coco,
    make_image_folder,
    make_segmentation_json,
    make_studio,
    np,
    save,
    seed_easymaker_detection,
    seed_easymaker_segmentation,
    seed_studio,
)


def _roundtrip(src, tmp_path, fmt=None):
    c1 = load(src)
    out = tmp_path / "exported"
    export(c1, out, fmt)
    c2 = load(out)
    assert c2.content_hash() == c1.content_hash()
    return c1, c2


def test_image_folder_split_roundtrip(tmp_path):
    c1, c2 = _roundtrip(make_image_folder(tmp_path / "src"), tmp_path)
    assert c1.format == "image-folder" and c1.task == "classification"
    assert c1.split_counts() == {"train": 12, "validation": 12}
    assert c1.class_counts() == {"blue": 8, "green": 8, "red": 8}


def test_image_folder_unsplit(tmp_path):
    root = tmp_path / "src"
    for c in ("cat", "dog"):
        save(np.zeros((8, 8, 3), np.uint8) + (10 if c == "cat" else 200), root / c / "a.png")
    c = load(root, task="classification")
    assert {i.split for i in c.items} == {None} and c.class_counts() == {"cat": 1, "dog": 1}
    _roundtrip(root, tmp_path)


@pytest.mark.parametrize("segmentation", [False, True])
def test_coco_roundtrip(tmp_path, segmentation):
    c1, c2 = _roundtrip(make_coco(tmp_path / "src", segmentation=segmentation), tmp_path)
    assert c1.format == "coco"
    assert c1.task == ("instance-segmentation" if segmentation else "detection")
    anns = [a for it in c1.items for a in it.annotations]
    if segmentation:
        assert any(a.polygons for a in anns) and any(a.rle for a in anns)


def test_coco_single_file_with_images_folder(tmp_path):
    src = make_coco(tmp_path / "split")
    root = tmp_path / "one"
    data = json.loads((src / "train" / "_annotations.coco.json").read_text())
    (root / "images").mkdir(parents=True)
    for img in data["images"]:
        (root / "images" / img["file_name"]).write_bytes((src / "train" / img["file_name"]).read_bytes())
    (root / "annotations.json").write_text(json.dumps(data))
    c = load(root, task="detection")
    assert len(c.items) == 3 and all(i.split is None for i in c.items)


def test_coco_to_studio_keeps_hash(tmp_path):
    c1 = load(make_coco(tmp_path / "src"))
    s = export(c1, tmp_path / "studio", "studio")
    assert detect_format(tmp_path / "studio") == "studio"
    assert load(tmp_path / "studio").content_hash() == c1.content_hash() == s.content_hash()


@pytest.mark.parametrize("misspelt", [False, True])
def test_segmentation_json_roundtrip(tmp_path, misspelt):
    c1, _ = _roundtrip(make_segmentation_json(tmp_path / "src", misspelt=misspelt), tmp_path)
    assert c1.format == "segmentation-json" and c1.task == "semantic-segmentation"
    assert c1.categories[0] == "unlabeled" and all(i.mask for i in c1.items)


@pytest.mark.parametrize("kind", ["detection", "instance", "semantic"])
def test_studio_roundtrip(tmp_path, kind):
    c1, _ = _roundtrip(make_studio(tmp_path / "src", kind=kind), tmp_path)
    assert c1.format == "studio"
    assert c1.task == {"detection": "detection", "instance": "instance-segmentation",
                       "semantic": "semantic-segmentation"}[kind]


def test_semantic_cross_format(tmp_path):
    c1 = load(make_segmentation_json(tmp_path / "src"))
    export(c1, tmp_path / "studio", "studio")
    c2 = load(tmp_path / "studio")
    assert c2.task == "semantic-segmentation" and c2.content_hash() == c1.content_hash()
    export(c2, tmp_path / "back", "segmentation-json")
    assert load(tmp_path / "back").content_hash() == c1.content_hash()


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "diabetes"])
def test_csv_samples_roundtrip(tmp_path, name):
    materialize_sample(name, tmp_path / "src")
    c1, _ = _roundtrip(tmp_path / "src", tmp_path)
    assert c1.table.label == "target"
    assert set(c1.table.columns.values()) == {"numeric"}


def test_csv_categorical_and_label(tmp_path):
    f = tmp_path / "d" / "t.csv"
    f.parent.mkdir()
    f.write_text("y,color,flag,x\n1,red-1,True,0.5\n0,blue_2,False,1.5\n")
    c = load(f.parent, label="y")
    assert c.table.columns == {"y": "numeric", "color": "categorical", "flag": "categorical", "x": "numeric"}
    export(c, tmp_path / "out")
    assert (tmp_path / "out" / "data.csv").read_text().splitlines()[0] == "color,flag,x,y"
    assert load(tmp_path / "out", label="y").content_hash() == c.content_hash()


def test_digits_sample_is_image_folder(tmp_path):
    materialize_sample("digits", tmp_path / "digits")
    c = load(tmp_path / "digits")
    assert c.format == "image-folder" and len(c.items) == 1797 and len(c.categories) == 10
    from PIL import Image
    with Image.open(c.abspath(c.items[0].path)) as im:
        assert im.size == (32, 32) and im.mode == "L"


def test_shapes_sample_is_deterministic_coco_with_tight_boxes(tmp_path):
    from kiln.data.samples import SHAPES, SHAPES_COUNT, SHAPES_SIZE

    materialize_sample("shapes", tmp_path / "a")
    materialize_sample("shapes", tmp_path / "b")
    a, b = load(tmp_path / "a"), load(tmp_path / "b")
    assert a.format == "coco" and a.content_hash() == b.content_hash()  # same bytes every time
    assert len(a.items) == SHAPES_COUNT and sorted(a.categories.values()) == sorted(SHAPES)
    seen = set()
    from PIL import Image
    for it in a.items:
        assert 1 <= len(it.annotations) <= 3 and it.split is None  # the Dataset's splits: split it
        with Image.open(a.abspath(it.path)) as im:
            px = np.asarray(im.convert("RGB")).astype(int)
        assert px.shape == (SHAPES_SIZE, SHAPES_SIZE, 3)
        for ann in it.annotations:
            seen.add(a.categories[ann.category_id])
            x, y, w, h = (int(v) for v in ann.bbox)
            # the drawn shape touches every side of its box, and its colour is far from the dark background
            inside = px[y:y + h, x:x + w].max(axis=2) > 150
            if len(it.annotations) == 1:
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
                assert not (px.max(axis=2) > 150)[~_box_mask(px.shape[:2], x, y, w, h)].any()
    assert seen == set(SHAPES)
    _roundtrip(tmp_path / "a", tmp_path)


def _box_mask(shape, x, y, w, h):
    m = np.zeros(shape, bool)
    m[y:y + h, x:x + w] = True
    return m


# --- bad input: one line, naming the file / column -------------------------------------------------

def _one_line(err: Exception, *needles: str) -> str:
    text = str(err)
    assert "\n" not in text, text
    for n in needles:
        assert n in text, text
    return text


def test_corrupt_image(tmp_path):
    root = make_image_folder(tmp_path / "src", n=1)
    bad = root / "train" / "red" / "train_red_0.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    with pytest.raises(DatasetFormatError) as e:
        load(root)
    _one_line(e.value, str(bad), "corrupt")


def test_coco_missing_image(tmp_path):
    root = make_coco(tmp_path / "src")
    (root / "validation" / "img1.png").unlink()
    with pytest.raises(DatasetFormatError) as e:
        load(root)
    _one_line(e.value, "validation/_annotations.coco.json", "'img1.png'", "does not exist")


def test_mask_class_not_in_id2label(tmp_path):
    root = make_segmentation_json(tmp_path / "src")
    m = root / "train" / "annotations" / "0001.png"
    mask = np.zeros((32, 32), np.uint8)
    mask[0, 0] = 7
    save(mask, m)
    with pytest.raises(DatasetFormatError) as e:
        load(root)
    _one_line(e.value, str(m), "class id 7", "id2label.json")


def test_csv_date_column_is_typed_datetime(tmp_path):
    """Loading types a date column; the version refuses it (kiln.controller.dataset_steps.check_table),
    so a preprocessing op can still drop it."""
    f = tmp_path / "d" / "sales.csv"
    f.parent.mkdir()
    f.write_text("day,units,y\n2024-01-03,5,1\n2024-01-04,7,0\n")
    assert load(f.parent).table.columns == {"day": "datetime", "units": "numeric", "y": "numeric"}


def test_csv_values_with_spaces_and_symbols_are_categories(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("city,seat,y\nNew York,Driver & Passenger,1\nSão Paulo,Very Good!,0\n")
    c = load(f)
    assert c.table.columns == {"city": "categorical", "seat": "categorical", "y": "numeric"}
    assert c.table.frame["seat"].tolist() == ["Driver & Passenger", "Very Good!"]


def test_zip_slip_refused(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok/a.txt", "fine")
        zf.writestr("../../escaped.txt", "bad")
    with pytest.raises(DatasetFormatError) as e:
        extract_archive(z, tmp_path / "out" / "ds")
    _one_line(e.value, str(z), "../../escaped.txt", "outside")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "ds").exists()


def test_zip_import_then_load(tmp_path):
    src = make_image_folder(tmp_path / "src", n=1)
    z = tmp_path / "ds.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(src.rglob("*.png")):
            zf.write(p, "dataset/" + p.relative_to(src).as_posix())
    out = extract_archive(z, tmp_path / "imported")
    assert load(out).content_hash() == load(src).content_hash()


def test_unknown_format_lists_valid(tmp_path):
    with pytest.raises(DatasetFormatError) as e:
        load(make_image_folder(tmp_path / "s", n=1), format="voc")
    _one_line(e.value, "coco", "image-folder", "studio")


def test_import_kiln_data_is_light():
    import subprocess
    import sys

    code = "import sys, kiln.data; bad=[m for m in ('torch','torchvision','pandas','sklearn','PIL','dvc','pycocotools') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the seed documents' layouts, quirks included ---------------------------------------------------

@pytest.mark.parametrize("layout", sorted(SEED_LAYOUTS))
def test_seed_layout_imports_with_item_and_class_counts_per_split(tmp_path, layout):
    expected = SEED_LAYOUTS[layout](tmp_path / "src")
    c = load(tmp_path / "src")
    assert (c.format, c.task) == (expected["format"], expected["task"])
    items = c.split_counts() if c.table is None else {"unsplit": len(c.table.frame)}
    assert items == expected["items"]
    assert c.split_class_counts() == expected["classes"]
    totals: dict[str, int] = {}
    for per_split in expected["classes"].values():
        for k, v in per_split.items():
            totals[k] = totals.get(k, 0) + v
    assert c.class_counts() == dict(sorted(totals.items()))
    if c.table is None:  # what kiln writes reads back the same (splits, labels, categories)
        _roundtrip(tmp_path / "src", tmp_path)


def test_segmentation_test_list_named_train_json_is_the_test_split(tmp_path):
    """EasyMaker names the test list test/train.json: its items are the test split, none vanish."""
    root = tmp_path / "src"
    seed_easymaker_segmentation(root)
    c = load(root)
    assert c.split_counts() == {"train": 4, "validation": 2, "test": 2}
    assert {it.path.split("/")[0] for it in c.items if it.split == "test"} == {"test"}
    (root / "test" / "notes.json").write_text("[]")
    with pytest.raises(DatasetFormatError) as e:
        load(root)
    _one_line(e.value, "test", "train.json", "notes.json", "test.json")


def test_studio_semantic_implicit_background_and_the_option_that_says_otherwise(tmp_path):
    root = tmp_path / "src"
    seed_studio(root, "semantic")
    c = load(root)
    assert c.categories == {0: "background", 1: "red", 2: "green", 3: "blue"}
    with pytest.raises(DatasetFormatError) as e:
        load(root, background=None)  # a Dataset's background: none
    text = _one_line(e.value, "labels/0001.png", "class id 0", "meta.json categories", "background:")
    assert "id2label" not in text
    assert load(root, background=255, verify=False).categories == {1: "red", 2: "green", 3: "blue", 255: "background"}
    # named in meta.json: the listed name wins, nothing is added
    (root / "meta.json").write_text(json.dumps({"categories": {"0": "sky", "1": "red", "2": "green", "3": "blue"}}))
    assert load(root).categories == {0: "sky", 1: "red", 2: "green", 3: "blue"}


def test_studio_classification_instances_with_category_id_only(tmp_path):
    root = tmp_path / "src"
    seed_studio(root, "classification")
    c = load(root, task="classification")
    assert all(it.label and not it.annotations for it in c.items)
    inst = json.loads((root / "annotations" / "0001.json").read_text())["instances"]
    other = {"category_id": inst[0]["category_id"] % 3 + 1}
    (root / "annotations" / "0001.json").write_text(json.dumps({"instances": [*inst, other]}))
    with pytest.raises(DatasetFormatError) as e:
        load(root)
    _one_line(e.value, "annotations/0001.json", "one category per image")
    with pytest.raises(DatasetFormatError) as e:
        load(root, task="detection")
    _one_line(e.value, "neither bbox nor segmentation", "task to classification")


def test_roboflow_category_0_is_no_class_in_counts_nor_model_labels(tmp_path):
    from kiln.algorithms.base import TrainData
    from kiln.algorithms.detection import dataset_categories

    seed_easymaker_detection(tmp_path / "src")
    c = load(tmp_path / "src")
    assert "none" not in c.categories.values() and 0 not in c.categories
    _, labels = dataset_categories(TrainData(c), "t")
    assert sorted(labels) == sorted(c.class_counts()) == sorted(COLORS)
    # a category 0 that annotations use is a class like any other
    f = tmp_path / "src" / "train" / "_annotations.coco.json"
    data = json.loads(f.read_text())
    data["annotations"][0]["category_id"] = 0
    f.write_text(json.dumps(data))
    assert load(tmp_path / "src").categories[0] == "none"


def test_unlabelled_images_beside_class_folders_are_items_not_a_class(tmp_path):
    root = tmp_path / "src"
    save(np.zeros((8, 8, 3), np.uint8), root / "2026-12-07_a1.png")
    save(np.zeros((8, 8, 3), np.uint8), root / "cat" / "c.png")
    (root / "README.txt").write_text("captured inputs")
    c = load(root)
    assert c.format == "image-folder" and c.class_counts() == {"cat": 1}
    assert sorted((it.path, it.label) for it in c.items) == [("2026-12-07_a1.png", None), ("cat/c.png", "cat")]
    _roundtrip(root, tmp_path)


def test_image_folder_to_studio_classification_keeps_hash(tmp_path):
    c1 = load(make_image_folder(tmp_path / "src", n=1))
    export(c1, tmp_path / "studio", "studio")
    c2 = load(tmp_path / "studio")
    assert (c2.format, c2.task) == ("studio", "classification") and c2.content_hash() == c1.content_hash()
    assert c2.split_class_counts() == c1.split_class_counts()
    c1.categories = {}  # labels the category list lacks still get ids
    export(c1, tmp_path / "again", "studio")
    assert load(tmp_path / "again").split_class_counts() == c2.split_class_counts()
