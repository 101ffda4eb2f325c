"""Preprocessing ops on real data: fitted tabular pipelines and torchvision v2 image ops."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")

from kiln.data import DatasetFormatError, load  # noqa: E402
from kiln.data.preprocess import OPS, apply_ops, load_pipeline, make_op  # noqa: E402
from kiln.data.samples import materialize_sample  # noqa: E402

from .conftest import make_coco, make_image_folder, make_segmentation_json, make_studio, np  # noqa: E402


def test_unknown_op_lists_valid_names():
    with pytest.raises(DatasetFormatError) as e:
        make_op("Sharpen")
    text = str(e.value)
    assert "\n" not in text and "unknown preprocessing op" in text
    assert all(n in text for n in ("MinMaxScaler", "flip", "Fliplr", "pillike.Equalize"))
    assert len(OPS) == 20


def test_bad_params_are_one_line():
    with pytest.raises(DatasetFormatError) as e:
        make_op("rotate", {"degree": 10})
    assert "\n" not in str(e.value) and "degrees" in str(e.value)


def test_tabular_pipeline_saved_and_reapplied(tmp_path):
    materialize_sample("wine", tmp_path / "src")
    src = load(tmp_path / "src")
    df = src.table.frame.copy()
    df.loc[3, "alcohol"] = np.nan  # something for the imputers
    src.table.frame = df
    ops = [
        {"name": "SimpleImputer", "params": {"columns": ["alcohol"], "strategy": "median"}},
        {"name": "KNNImputer", "params": {"n_neighbors": 3}},
        {"name": "MinMaxScaler", "params": {"columns": ["malic_acid", "ash"]}},
        {"name": "StandardScaler", "params": {"columns": ["magnesium"]}},
        {"qcut": {"column": "proline", "q": 4}},
        {"cut": {"column": "hue", "bins": 3}},
        {"name": "KBinsDiscretizer", "params": {"columns": ["color_intensity"], "n_bins": 3}},
        {"name": "drop_columns", "params": {"columns": ["proanthocyanins"]}},
    ]
    out = apply_ops(src, None, ops, tmp_path / "v2")
    f = out.table.frame
    assert out.lineage["parent"] == src.content_hash()
    assert [o["name"] for o in out.lineage["ops"]] == ["SimpleImputer", "KNNImputer", "MinMaxScaler", "StandardScaler",
                                                        "qcut", "cut", "KBinsDiscretizer", "drop_columns"]
    assert "proanthocyanins" not in f.columns and not f.isna().any().any()
    assert f["malic_acid"].min() == 0 and f["malic_acid"].max() == 1
    assert sorted(f["proline"].unique()) == [0, 1, 2, 3] and f["hue"].nunique() == 3
    assert abs(f["magnesium"].mean()) < 1e-9
    # serving applies the saved fitted pipeline and gets the same table
    reread = load(tmp_path / "v2")
    assert reread.content_hash() == out.content_hash()
    again = load_pipeline(tmp_path / "v2").transform(df)
    assert np.allclose(again[f.columns].to_numpy(dtype=float), f.to_numpy(dtype=float))
    assert (tmp_path / "v2" / ".kiln" / "lineage.json").is_file()


def test_factorize_and_sort(tmp_path):
    p = tmp_path / "d"
    p.mkdir()
    (p / "data.csv").write_text("color,x,y\nred,3,1\nblue,1,0\nred,2,1\n")
    out = apply_ops(load(p), None, ["factorize", {"sort_values": {"by": ["x"]}}], tmp_path / "o")
    assert out.table.frame["color"].tolist() == [0, 1, 1] and out.table.frame["x"].tolist() == [1, 2, 3]
    assert out.table.columns["color"] == "numeric"
    import pandas as pd
    served = load_pipeline(tmp_path / "o").transform(pd.DataFrame({"color": ["red", "green"], "x": [0, 0]}))
    assert served["color"].tolist() == [1, -1]


def test_detection_flip_and_resize_move_boxes(tmp_path):
    src = load(make_coco(tmp_path / "src"))
    out = apply_ops(src, None, [{"Fliplr": {}}, {"Resize": {"size": 64}}], tmp_path / "o")
    assert out.format == "coco"
    reread = load(tmp_path / "o")  # verifies every written image
    assert reread.content_hash() == out.content_hash()
    before = {it.path.split("/")[-1] + it.split: it for it in src.items}
    for it in out.items:
        b = before[it.path.split("/")[-1] + it.split]
        assert (it.width, it.height) == (64, 64)
        for a0, a1 in zip(b.annotations, it.annotations):
            x, y, w, h = a0.bbox
            assert a1.bbox == pytest.approx([2 * (32 - x - w), 2 * y, 2 * w, 2 * h], abs=0.01)


def test_instance_rotation_keeps_masks_and_boxes_consistent(tmp_path):
    from PIL import Image

    from kiln.data.formats import _masks

    src = load(make_studio(tmp_path / "src", kind="instance"))
    out = apply_ops(src, None, [{"name": "rotate", "params": {"degrees": 90}}], tmp_path / "o")
    assert out.task == "instance-segmentation"
    for it in out.items:
        img = np.asarray(Image.open(out.abspath(it.path)))
        for a in it.annotations:
            m = _masks.decode(a.rle).astype(bool)
            assert a.bbox == pytest.approx(_masks.bbox(a.rle))
            colours = {tuple(c) for c in img[m]}
            assert len(colours) <= 2  # the shape's colour moved with its mask (overlaps may add one)


def test_semantic_flip_moves_mask(tmp_path):
    from PIL import Image

    src = load(make_segmentation_json(tmp_path / "src"))
    out = apply_ops(src, None, [{"name": "flip", "params": {"direction": "vertical"}}], tmp_path / "o")
    for a, b in zip(sorted(src.items, key=lambda i: i.path), sorted(out.items, key=lambda i: i.path)):
        ma = np.asarray(Image.open(src.abspath(a.mask)))
        mb = np.asarray(Image.open(out.abspath(b.mask)))
        assert (mb == ma[::-1]).all()
    assert load(tmp_path / "o").content_hash() == out.content_hash()


@pytest.mark.parametrize("ops", [
    [{"Multiply": {"mul": 1.3}}],
    [{"GammaContrast": {"gamma": 0.7}}],
    [{"pillike.Equalize": {}}],
    [{"Grayscale": {}}, {"contrast": {"factor": 1.5}}],
    [{"Affine": {"translate_px": {"x": 3, "y": -2}}}],
    [{"Crop": {"px": 2}}],
    [{"Flipud": {"p": 0.5}}],
])
def test_classification_ops(tmp_path, ops):
    src = load(make_image_folder(tmp_path / "src", n=2))
    out = apply_ops(src, None, ops, tmp_path / "o", seed=1)
    reread = load(tmp_path / "o")
    assert reread.class_counts() == src.class_counts()
    assert out.content_hash() != src.content_hash()
    if "Crop" in ops[0]:
        assert {(i.width, i.height) for i in reread.items} == {(20, 20)}
    # deterministic: same ops, same seed -> same content
    assert apply_ops(src, None, ops, tmp_path / "o2", seed=1).content_hash() == out.content_hash()


def test_image_op_on_table_is_refused(tmp_path):
    materialize_sample("iris", tmp_path / "src")
    with pytest.raises(DatasetFormatError) as e:
        apply_ops(load(tmp_path / "src"), None, ["flip"], tmp_path / "o")
    assert "image op" in str(e.value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sort_first", [True, False])
def test_fitted_ops_learn_from_train_rows_only(tmp_path, sort_first):
    """With a split, a scaler's statistics come from the rows the version records as train, also
    when a sort after the scaler moves them (the assignment travels with the rows)."""
    import json

    materialize_sample("wine", tmp_path / "src")
    src = load(tmp_path / "src")
    split = {"ratios": {"train": 0.6, "validation": 0.2, "test": 0.2}, "seed": 3, "stratify": True}
    ops = [{"name": "sort_values", "params": {"by": ["alcohol"]}}, {"name": "StandardScaler", "params": {"columns": ["proline"]}}]
    out = apply_ops(src, None, ops if sort_first else ops[::-1], tmp_path / "v2", split=split)
    manifest = json.loads((tmp_path / "v2/.kiln/splits.json").read_text())
    train = sorted(int(k) for k, s in manifest["items"].items() if s == "train")
    f = out.table.frame
    assert out.lineage["fittedOn"] == {"split": "train", "rows": len(train)} and len(train) < len(f)
    assert abs(f["proline"].iloc[train].mean()) < 1e-9 and abs(f["proline"].mean()) > 1e-3
    assert f["alcohol"].is_monotonic_increasing  # the sort did reorder the rows
    # without a split the whole table is the training table
    whole = apply_ops(src, None, ops[1:], tmp_path / "v3")
    assert "fittedOn" not in whole.lineage and abs(whole.table.frame["proline"].mean()) < 1e-9


@pytest.mark.parametrize("strategy", ["uniform", "quantile", "kmeans"])
def test_kbins_every_strategy_fits(tmp_path, strategy):
    # scikit-learn 1.9 refused the quantile_method placeholder kiln passed for uniform and kmeans
    materialize_sample("wine", tmp_path / "src")
    src = load(tmp_path / "src")
    ops = [{"name": "KBinsDiscretizer",
            "params": {"columns": ["color_intensity"], "n_bins": 3, "strategy": strategy}}]
    f = apply_ops(src, None, ops, tmp_path / "v2").table.frame
    assert sorted(f["color_intensity"].unique()) == [0, 1, 2]
