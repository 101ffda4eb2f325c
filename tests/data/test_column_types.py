"""Column typing of tables as people have them (issue #24): strings with spaces and symbols,
NA/empty cells in features and label, the label first, yes/no labels, an identifier column, a
row number, a date column; the schema stored with a version; a regression target is no classes."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pandas")

from kiln.algorithms.base import TrainData  # noqa: E402
from kiln.data import load  # noqa: E402
from kiln.data.schema import summary  # noqa: E402

CUTS = ["Very Good", "Fair", "Premium"]
SEATS = ["Driver & Passenger", "Driver", "None/Unknown"]


def people_table(path: Path, n: int = 30) -> Path:
    """label first (yes/no, one missing), an id per row, a row number, strings with spaces and
    symbols, NA and empty cells in features."""
    lines = ["bought,row,customer,cut,seat,price,visited"]
    for i in range(n):
        bought = "" if i == 3 else ("yes" if i % 3 else "no")
        price = "NA" if i == 5 else f"{100 + i * 7.5}"
        seat = "" if i == 7 else SEATS[i % 3]
        lines.append(f"{bought},{i + 1},C-{1000 + i * 13},{CUTS[i % 3]},{seat},{price},2024-0{1 + i % 9}-1{i % 9}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_column_gets_a_type_and_any_category_value_is_accepted(tmp_path):
    f = people_table(tmp_path / "d" / "shop.csv")
    t = load(f.parent, label="bought", target="classification").table
    assert t.columns == {"bought": "categorical", "row": "identifier", "customer": "identifier",
                         "cut": "categorical", "seat": "categorical", "price": "numeric", "visited": "datetime"}
    assert set(t.frame["cut"]) == set(CUTS)
    assert "Driver & Passenger" in set(t.frame["seat"])


def test_stored_schema_has_types_categories_and_missing_counts(tmp_path):
    f = people_table(tmp_path / "d" / "shop.csv")
    s = load(f.parent, label="bought", target="classification").table.column_schema()
    assert s["rows"] == 30 and s["label"] == "bought" and s["target"] == "classification"
    assert s["labelMissing"] == 1
    cols = s["columns"]
    assert cols["bought"] == {"type": "categorical", "missing": 1, "distinct": 2, "categories": {"yes": 20, "no": 9}}
    assert cols["seat"]["missing"] == 1 and cols["seat"]["categories"]["Driver & Passenger"] == 10
    assert cols["price"] == {"type": "numeric", "missing": 1}
    assert cols["customer"]["note"] == "unique per row: not a feature"
    line = summary(s)
    assert "identifier (not a feature): row, customer" in line
    assert "1 row(s) without a label (left out of training)" in line
    assert "missing values: seat 1, price 1" in line  # features only: the label's are the line above


def test_training_rows_leave_out_identifiers_and_rows_without_a_label(tmp_path):
    f = people_table(tmp_path / "d" / "shop.csv")
    td = TrainData(load(f.parent, label="bought"))
    x, y = td.table(None)
    assert list(x.columns) == ["cut", "seat", "price", "visited"]
    assert len(x) == 29 and y.notna().all()
    x_all, _ = td.table(None, labelled=False)  # batch inference predicts the unlabelled row too
    assert len(x_all) == 30


def test_small_tables_and_measurements_are_no_identifiers(tmp_path):
    f = tmp_path / "t.csv"
    # 3 rows, all distinct: too few to call it an id; unique floats are measurements
    f.write_text("name,w,y\na,1.5,0\nb,2.5,1\nc,3.5,0\n")
    assert load(f).table.columns == {"name": "categorical", "w": "numeric", "y": "numeric"}
    rows = "\n".join(f"{i * 3},{(i * 7) % 30},{i % 2}" for i in range(30))  # unique ints, not counting rows
    (tmp_path / "u.csv").write_text("units,shuffled,y\n" + rows + "\n")
    assert load(tmp_path / "u.csv").table.columns == {"units": "numeric", "shuffled": "numeric", "y": "numeric"}


def test_a_regression_target_has_no_classes_and_is_not_stratified(tmp_path):
    from kiln.data.splits import assign_splits

    f = tmp_path / "r.csv"
    f.write_text("size,price\n" + "\n".join(f"{i},{100 + i}" for i in range(40)) + "\n")  # integer target
    reg = load(f, target="regression")
    assert reg.class_counts() == {} and reg.table.column_schema()["columns"]["price"] == {"type": "numeric", "missing": 0}
    _, manifest = assign_splits(reg, seed=1)
    assert manifest["stratified"] is False
    # without the Dataset saying so, an integer label still counts as classes (classification)
    assert len(load(f).class_counts()) == 40


def test_training_data_of_a_regression_dataset_knows_its_target(tmp_path):
    from kiln.controller.experiment.data import load_train_data

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "r.csv").write_text("size,price\n" + "\n".join(f"{i},{100 + i}" for i in range(40)) + "\n")
    info = {"path": "d", "format": "csv", "type": "tabular", "task": "tabular", "label": "price", "problem": "regression"}
    td = load_train_data(tmp_path, info, split={"train": 0.8, "validation": 0.1, "test": 0.1})
    assert td.content.table.target == "regression" and td.content.class_counts() == {}


def test_a_classifier_refuses_a_regression_target(tmp_path):
    from kiln.algorithms.base import AlgorithmError
    from kiln.algorithms.registry import get_algorithm

    f = tmp_path / "r.csv"
    f.write_text("size,price\n" + "\n".join(f"{i * 0.5},{100 + i % 9}" for i in range(40)) + "\n")
    with pytest.raises(AlgorithmError) as e:
        get_algorithm("decision_tree").train(TrainData(load(f, target="regression")))
    assert "label 'price' is a regression target" in str(e.value) and "regression algorithm" in e.value.hint
    model = get_algorithm("decision_tree_regressor").train(TrainData(load(f, target="regression")))
    assert "classes" not in model.meta
