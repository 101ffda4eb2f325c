"""Tables as people have them, applied for real (issue #24): a Dataset naming only its file and
label gets a typed schema with its version (`kiln data versions`, `kiln describe`), a date
column is featurised (year, month, day, weekday, hour) and served natively (ONNX refused with the
fix), a free-text column is refused with the fix (and the fix works), `missingLabels: error` refuses unlabelled
rows, plan flags a classification label with too many values, and `kiln infer` reads a version
whose table file has its own name (`penguins.csv`, not `data.csv`)."""

from __future__ import annotations

import json
import subprocess
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.helpers import kiln, write

pytest.importorskip("dvc")
pytest.importorskip("sklearn")
pytest.importorskip("bentoml")

ISLANDS = ["Biscoe Island", "Dream", "Torgersen & Co"]


def penguins_csv(n: int = 60) -> str:
    """label first, strings with spaces and symbols, a tag unique per row, one row without a label."""
    rows = ["species,island,tag,bill_mm"]
    for i in range(n):
        species = "" if i == 4 else ("Gentoo" if i % 2 else "Adelie")
        rows.append(f"{species},{ISLANDS[i % 3]},P-{7000 + i * 11},{38 + (i % 2) * 9 + (i % 5) * 0.3:.1f}")
    return "\n".join(rows) + "\n"


def spec(kind: str, name: str, body: str) -> str:
    return (f"apiVersion: kiln.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n"
            + "".join(f"  {line}\n" for line in body.strip().splitlines()))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tables") / "repo"
    root.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "kiln@example.com"], ["config", "user.name", "kiln test"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    # y is 1 on weekends, 200 days from a Monday: only the date's weekday tells it
    days = [date(2023, 1, 2) + timedelta(days=i) for i in range(200)]
    sales = "day,units,y\n" + "".join(f"{d.isoformat()}{' 10:30' if i % 3 else ''},{i % 4},{int(d.weekday() >= 5)}\n"
                                      for i, d in enumerate(days))
    words = ["great", "slow", "delivery", "broken", "box", "love", "it", "would", "buy", "again"]
    reviews = "review,stars\n" + "".join(f"{' '.join(words[(i + k) % 10] for k in range(6 + i % 3))} #{i},{i % 5}\n"
                                         for i in range(40))
    prices = "size,price\n" + "".join(f"{i * 0.5},{1000 + i * 3}\n" for i in range(250))
    write(root, {
        "data/penguins.csv": penguins_csv(),
        "raw/sales.csv": sales,
        "raw/reviews.csv": reviews,
        "raw/prices.csv": prices,
        "specs/penguins.yaml": spec("Dataset", "penguins", """
type: tabular
task: classification
source: {path: data/penguins.csv}
label: species
"""),
        "specs/strict.yaml": spec("Dataset", "strict", """
type: tabular
task: classification
source: {path: data/penguins.csv}
label: species
missingLabels: error
"""),
        "specs/sales.yaml": spec("Dataset", "sales", """
type: tabular
task: classification
source: {path: raw/sales.csv}
splits: {train: 0.6, validation: 0.2, test: 0.2, seed: 1}
"""),
        "specs/reviews.yaml": spec("Dataset", "reviews", "type: tabular\ntask: regression\nsource: {path: raw/reviews.csv}"),
        "specs/reviews-fixed.yaml": spec("Dataset", "reviews-fixed", """
type: tabular
task: regression
source: {path: raw/reviews.csv}
preprocessing:
  - {op: drop_columns, columns: [review]}
"""),
        "specs/sales-model.yaml": spec("Experiment", "sales-model", """
mode: run
dataset: {name: sales}
algorithm: {name: random_forest, hyperparameters: {n_estimators: 20}}
register: {model: sales}
"""),
        "specs/sales-onnx.yaml": spec("Experiment", "sales-onnx", """
mode: run
dataset: {name: sales}
algorithm: {name: random_forest, hyperparameters: {n_estimators: 5}}
register: {model: sales-onnx, export: [onnx]}
"""),
        "specs/prices.yaml": spec("Dataset", "prices", "type: tabular\ntask: classification\nsource: {path: raw/prices.csv}"),
        "specs/pg.yaml": spec("Experiment", "pg", """
mode: run
dataset: {name: penguins}
algorithm: {name: random_forest, hyperparameters: {n_estimators: 10}}
register: {model: pg, aliases: [production]}
"""),
    })
    p = kiln("apply", cwd=root, timeout=400)
    assert p.returncode == 1, p.stdout + p.stderr  # reviews, strict and sales-onnx are refused, the rest applies
    assert "Traceback" not in p.stdout + p.stderr
    root.joinpath("apply.out").write_text(p.stdout)
    return root


def status(repo: Path) -> dict[str, dict]:
    rows = json.loads(kiln("status", "-o", "json", cwd=repo, check=True).stdout)
    return {r["name"]: r for r in rows}


def test_refusals_name_the_column_and_the_fix(repo: Path) -> None:
    st = status(repo)
    reviews = st["reviews"]["message"]
    assert reviews.startswith("validate: raw/reviews.csv: column 'review' holds free text (e.g. 'great slow"), reviews
    assert "{op: drop_columns, columns: [review]}" in reviews and "\n" not in reviews
    strict = st["strict"]["message"]
    assert "1 row(s) have no value in label column 'species'" in strict and "missingLabels: skip" in strict
    assert st["reviews-fixed"]["ready"] == "True"  # the fix the message gives works


def test_a_date_column_is_featurised_and_served_natively_and_onnx_refused_with_the_fix(repo: Path) -> None:
    from kiln.bento.runtime import load_engine
    from tests.test_experiment_handler import registry

    v = json.loads(kiln("data", "versions", "sales", "-o", "json", cwd=repo, check=True).stdout)[0]
    assert v["schema"]["columns"]["day"]["type"] == "datetime"
    st = status(repo)
    assert st["sales-model"]["ready"] == "True", st["sales-model"]
    # the label is the weekday's: a forest on (year, month, day, weekday, hour, units) learns it
    res = json.loads(kiln("get", "experiment", "sales-model", "-o", "json", cwd=repo, check=True).stdout)
    assert res["extra"]["best"]["value"] >= 0.9, res["extra"]["best"]
    reg = registry(repo)
    d = reg.describe("sales", 1)
    assert d["serving"]["schema"]["columns"]["day"] == {"type": "datetime", "example": d["serving"]["schema"]
                                                         ["columns"]["day"]["example"], "missing": 0}
    engine = load_engine(d.path)
    rows = [{"day": "2024-02-03", "units": 1}, {"day": "2024-02-05 09:00", "units": 1}, {"day": None, "units": 2}]
    out = [engine.format(y, None) for y in engine.predict([engine.decode(r, i)[0] for i, r in enumerate(rows)])]
    assert [o["label"] for o in out[:2]] == ["1", "0"], out  # a Saturday, a Monday
    onnx = st["sales-onnx"]["message"]
    assert "column 'day' holds dates" in onnx and "ONNX cannot parse date strings" in onnx, onnx
    assert "drop register.export" in onnx and "drop_columns" in onnx


def test_versions_and_describe_show_the_schema(repo: Path) -> None:
    text = kiln("data", "versions", "penguins", cwd=repo, check=True).stdout
    assert ("v1 columns: 2 categorical; 1 numeric; identifier (not a feature): tag; "
            "1 row(s) without a label (left out of training)") in text.splitlines()
    v = json.loads(kiln("data", "versions", "penguins", "-o", "json", cwd=repo, check=True).stdout)[0]
    cols = v["schema"]["columns"]
    assert cols["island"]["categories"] == {"Biscoe Island": 20, "Dream": 20, "Torgersen & Co": 20}
    assert cols["species"]["missing"] == 1 and cols["tag"]["type"] == "identifier"
    assert cols["bill_mm"] == {"type": "numeric", "missing": 0}
    assert v["classes"] == {"Adelie": 29, "Gentoo": 30}
    desc = kiln("describe", "Dataset/penguins", cwd=repo, check=True).stdout
    assert '"Torgersen & Co": 20' in desc and '"labelMissing": 1' in desc


def test_plan_flags_a_classification_label_with_too_many_values(repo: Path) -> None:
    out = kiln("plan", cwd=repo).stdout
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, out
    assert "Dataset/prices" in warnings[0] and "label column 'price' has 250 distinct values" in warnings[0]
    assert "set task: regression" in warnings[0]


def test_infer_reads_a_table_file_with_its_own_name(repo: Path, tmp_path: Path) -> None:
    assert (repo / "data/default/penguins/penguins.csv").is_file()
    assert status(repo)["pg"]["ready"] == "True"
    p = kiln("infer", "pg@production", "penguins", "--out", str(tmp_path / "pred"), "--as-version", "predicted",
             cwd=repo, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    preds = [json.loads(line) for line in (tmp_path / "pred/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 60  # the row without a label is predicted too
    assert {p["prediction"]["label"] for p in preds} <= {"Adelie", "Gentoo"}
    # the predictions as a dataset version: the label is the source's first column, not the last
    v = json.loads(kiln("data", "versions", "predicted", "-o", "json", cwd=repo, check=True).stdout)[0]
    assert v["lineage"]["label"] == "species" and set(v["classes"]) <= {"Adelie", "Gentoo"}
    assert sum(v["classes"].values()) == 60 and v["schema"]["columns"]["tag"]["type"] == "identifier"


def test_validate_refuses_an_algorithm_of_the_other_task(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    write(root, {
        "raw/prices.csv": "size,price\n" + "".join(f"{i * 0.5},{1000 + i * 3.5}\n" for i in range(30)),
        "specs/prices.yaml": spec("Dataset", "prices", "type: tabular\ntask: regression\nsource: {path: raw/prices.csv}\n"
                                                       "label: price"),
        "specs/fit.yaml": spec("Experiment", "fit", "mode: run\ndataset: {name: prices}\nalgorithm: {name: random_forest}"),
        "specs/auto.yaml": spec("Experiment", "auto", """
mode: automl
dataset: {name: prices}
automl: {candidates: [{name: linear_regression}, {name: logistic_regression}]}
"""),
        "specs/ok.yaml": spec("Experiment", "ok", "mode: run\ndataset: {name: prices}\nalgorithm: {name: linear_regression}"),
    })
    # the PR check refuses both at their lines (#13); the regression experiments without an
    # objective are ranked by validation_r2, their task's metric, so they pass
    out = kiln("plan", cwd=root)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() + out.stdout.splitlines() if " is for classification; " in line]
    assert len(errors) == 2, out.stdout + out.stderr
    assert errors[0].startswith("specs/auto.yaml:7:") and "algorithm logistic_regression is for classification; " \
        "dataset 'prices' is a regression dataset" in errors[0]
    assert errors[1].startswith("specs/fit.yaml:7:") and "algorithm random_forest is for classification" in errors[1]
    assert "Experiment/ok" not in out.stdout + out.stderr
