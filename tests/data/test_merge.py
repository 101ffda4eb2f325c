"""Adding labelled items to a dataset's next version (kiln.data.merge), through the real exporters."""

from __future__ import annotations

import pytest

pytest.importorskip("PIL")

from kiln.data import DatasetFormatError, export, load  # noqa: E402
from kiln.data.merge import merge_contents  # noqa: E402

from .conftest import make_coco, make_image_folder  # noqa: E402


def test_image_folder_plus_unsplit_labels_go_to_train(tmp_path):
    base = load(make_image_folder(tmp_path / "base", n=2))
    new = load(make_image_folder(tmp_path / "new", n=1, splits=("",)))  # unsplit: root/<class>/*.png
    assert {it.split for it in new.items} == {None}
    merged = merge_contents(base, new, tmp_path / "union")
    assert len(merged.items) == len(base.items) + len(new.items)
    out = export(merged, tmp_path / "out", "image-folder")
    counts = base.class_counts()
    assert out.class_counts() == {c: counts[c] + 1 for c in counts}
    # the new items join train; validation is exactly the old one
    val = sorted(it.path for it in out.items if it.split == "validation")
    assert val == sorted(it.path for it in base.items if it.split == "validation")
    assert sum(it.split == "train" for it in out.items) == sum(it.split == "train" for it in base.items) + len(new.items)


def test_coco_categories_matched_by_name_and_renumbered(tmp_path):
    base = load(make_coco(tmp_path / "base", n=2))
    new = load(make_coco(tmp_path / "new", n=1))
    names = dict(new.categories)
    # the labelling side numbers its classes differently and has one class more
    shift = {cid: cid + 10 for cid in new.categories}
    new = new.model_copy(update={
        "categories": {**{shift[c]: n for c, n in names.items()}, 99: "purple"},
        "items": [it.model_copy(update={"split": None, "annotations": [
            a.model_copy(update={"category_id": shift[a.category_id]}) for a in it.annotations]}) for it in new.items]})
    merged = merge_contents(base, new, tmp_path / "union")
    assert merged.categories == {**base.categories, max(base.categories) + 1: "purple"}
    out = export(merged, tmp_path / "out", "coco")
    want = base.class_counts()
    for c, k in load(make_coco(tmp_path / "again", n=1)).class_counts().items():
        want[c] = want.get(c, 0) + k
    assert {c: k for c, k in out.class_counts().items() if k} == want


def test_task_mismatch_is_a_clear_error(tmp_path):
    base = load(make_image_folder(tmp_path / "base", n=1))
    new = load(make_coco(tmp_path / "new", n=1))
    with pytest.raises(DatasetFormatError, match="cannot add detection items"):
        merge_contents(base, new, tmp_path / "union")


def test_new_items_join_the_split_the_caller_names(tmp_path):
    base = load(make_image_folder(tmp_path / "base", n=2))
    new = load(make_image_folder(tmp_path / "new", n=1, splits=("",)))
    out = export(merge_contents(base, new, tmp_path / "union", split="test"), tmp_path / "out", "image-folder")
    assert sum(it.split == "test" for it in out.items) == len(new.items) + sum(it.split == "test" for it in base.items)
    assert sum(it.split == "train" for it in out.items) == sum(it.split == "train" for it in base.items)


def _table(folder, rows, manifest=None):
    import json

    folder.mkdir(parents=True)
    (folder / "wine.csv").write_text("alcohol,kind\n" + "".join(f"{a},{k}\n" for a, k in rows))
    if manifest is not None:
        (folder / ".kiln").mkdir()
        (folder / ".kiln" / "splits.json").write_text(json.dumps(manifest))
    return load(folder, "csv", label="kind")


def test_table_rows_are_appended_and_the_split_manifest_extended(tmp_path):
    import json

    from kiln.data.merge import merge_tables

    pd = pytest.importorskip("pandas")
    base = _table(tmp_path / "base", [(12.1, "a"), (13.0, "b"), (11.5, "a")],
                  {"seed": 0, "items": {"0": "train", "1": "validation", "2": "train"}})
    new = pd.DataFrame({"alcohol": [14.2, 12.9], "kind": ["b", "a"]})
    merge_tables(base, new, tmp_path / "out")
    out = load(tmp_path / "out", "csv", label="kind")
    assert out.table.frame["alcohol"].tolist() == [12.1, 13.0, 11.5, 14.2, 12.9]
    assert (tmp_path / "out" / "wine.csv").is_file()  # the base's file name stays
    manifest = json.loads((tmp_path / "out" / ".kiln" / "splits.json").read_text())
    assert manifest["items"] == {"0": "train", "1": "validation", "2": "train", "3": "train", "4": "train"}
    assert manifest["seed"] == 0
    assert out.split_class_counts()["validation"] == {"b": 1}

    with pytest.raises(DatasetFormatError, match="columns .* differ"):
        merge_tables(base, new.rename(columns={"alcohol": "alc"}), tmp_path / "out2")
    (tmp_path / "base" / ".kiln" / "preprocess.joblib").write_bytes(b"")  # a fitted version: raw rows would mix scales
    with pytest.raises(DatasetFormatError, match="fitted preprocessing") as e:
        merge_tables(base, new, tmp_path / "out3")
    assert "--replace" in e.value.hint
