"""Every format: detect, load (validated), export, re-import gives the same content hash."""

from __future__ import annotations

import json
import zipfile

import pytest

from kiln.data import DatasetFormatError, detect_format, export, load
from kiln.data.archive import extract_archive
from kiln.data.samples import materialize_sample

from .conftest import make_coco, make_image_folder, make_segmentation_json, make_studio, np, save


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


def test_csv_date_column(tmp_path):
    f = tmp_path / "d" / "sales.csv"
    f.parent.mkdir()
    f.write_text("day,units,y\n2024-01-03,5,1\n2024-01-04,7,0\n")
    with pytest.raises(DatasetFormatError) as e:
        load(f.parent)
    _one_line(e.value, str(f), "'day'", "dates")


def test_csv_free_text_column(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("city,y\nNew York,1\n")
    with pytest.raises(DatasetFormatError) as e:
        load(f)
    _one_line(e.value, "'city'", "'New York'")


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
