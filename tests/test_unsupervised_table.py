"""Issue #24: a clustering or dimension-reduction table without a ``label:`` has no label, so every
column is a feature (the last one included); a supervised table still defaults its label to the
last column, and a clustering Dataset that names a label keeps it out of the features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("sklearn")

COLUMNS = ["a", "b", "c"]


def blobs_csv(folder: Path, n: int = 90, seed: int = 0) -> Path:
    """Three numeric columns, three well-apart blobs (told apart by the last column alone too)."""
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(
        n_samples=n, n_features=3, centers=[[0, 0, 0], [6, 6, 12], [12, 12, 24]], cluster_std=0.5, random_state=seed
    )
    folder.mkdir(parents=True, exist_ok=True)
    lines = [",".join(COLUMNS)] + [",".join(f"{v:.4f}" for v in row) for row in x]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    return folder


def train_data(repo: Path, problem: str | None, label: str | None = None) -> Any:
    from kiln.controller.experiment.data import load_train_data

    info = {"path": "d", "format": "csv", "type": "tabular", "task": "tabular", "label": label, "problem": problem}
    return load_train_data(repo, info, split={"train": 0.8, "validation": 0.1, "test": 0.1})


@pytest.mark.parametrize("problem", ["clustering", "dimension-reduction"])
def test_an_unsupervised_table_has_no_label_and_every_column_is_a_feature(tmp_path: Path, problem: str) -> None:
    blobs_csv(tmp_path / "d")
    td = train_data(tmp_path, problem)
    assert td.content.table.label is None and td.content.table.target == problem
    x, y = td.table("train")
    assert list(x.columns) == COLUMNS and y is None


def test_kmeans_trains_on_all_three_columns_exports_them_and_infer_predicts(tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx")
    pytest.importorskip("onnxruntime")
    import onnx

    from kiln.algorithms.onnx import export_and_check
    from kiln.algorithms.registry import get_algorithm
    from kiln.controller.infer_cli import _predict_batch, _train_data

    blobs_csv(tmp_path / "d")
    algo = get_algorithm("kmeans")
    model = algo.train(train_data(tmp_path, "clustering"), {"n_clusters": 3, "n_init": 10})
    assert model.meta["columns"] == COLUMNS
    assert model.native[-1].n_features_in_ == 3
    x = train_data(tmp_path, "clustering").table("test")[0]
    report = export_and_check(algo, model, tmp_path / "model.onnx", x)
    assert report is not None and report.mismatches == [0, 0], report.summary()
    (inp,) = onnx.load(str(tmp_path / "model.onnx")).graph.input
    assert inp.type.tensor_type.shape.dim[1].dim_value == 3

    # kiln infer on the version: no label recorded, the model's task says there is none to default to
    td, tabular = _train_data(tmp_path, tmp_path / "d", None, "clustering")
    assert tabular and td.content.table.label is None
    rows, _ = td.table(None, labelled=False)
    shown, _ = _predict_batch(algo, model, rows)
    assert len(shown) == 90 and {p["cluster"] for p in shown} == {0, 1, 2}
    # every row in its blob (the blob read off the last column, which the old default left out)
    from sklearn.metrics import adjusted_rand_score

    blob = np.digitize(rows["c"].to_numpy(), [6, 18])
    assert adjusted_rand_score(blob, [p["cluster"] for p in shown]) == 1.0


def test_a_supervised_table_still_defaults_to_the_last_column_and_a_named_label_stays_out(tmp_path: Path) -> None:
    from kiln.algorithms.base import AlgorithmError
    from kiln.algorithms.registry import get_algorithm
    from kiln.data.formats import export

    blobs_csv(tmp_path / "d")
    for problem in ("classification", "regression", None):
        td = train_data(tmp_path, problem)
        assert td.content.table.label == "c", problem
        assert list(td.table("train")[0].columns) == ["a", "b"]
    named = train_data(tmp_path, "clustering", label="b")  # a column kept for evaluation
    assert named.content.table.label == "b" and list(named.table("train")[0].columns) == ["a", "c"]
    # a re-read of an exported unsupervised table (the pipeline's stages) keeps it without a label
    again = export(train_data(tmp_path, "clustering").content, tmp_path / "out")
    assert again.table is not None and again.table.label is None
    with pytest.raises(AlgorithmError, match="clustering dataset"):
        get_algorithm("logistic_regression").train(train_data(tmp_path, "clustering"))


def test_the_dataset_step_and_an_experiment_of_a_clustering_algorithm_read_no_label(tmp_path: Path) -> None:
    from kiln.api.dataset import DatasetSpec
    from kiln.api.experiment import ExperimentSpec
    from kiln.controller.dataset_steps import _load
    from kiln.controller.experiment.prepare import unsupervised_task

    blobs_csv(tmp_path / "d")
    for task, label in (("clustering", None), ("dimension-reduction", None), ("classification", "c"), (None, "c")):
        spec = DatasetSpec(type="tabular", task=task, source={"path": "d"})
        assert _load(tmp_path / "d", spec, "csv", verify=False).table.label == label, task
    # a Dataset without a task: the experiment's algorithm decides
    exp = {"dataset": {"name": "d"}}
    assert unsupervised_task(ExperimentSpec(**exp, algorithm={"name": "kmeans"})) == "clustering"
    assert unsupervised_task(ExperimentSpec(**exp, algorithm={"name": "pca"})) == "dimension-reduction"
    assert unsupervised_task(ExperimentSpec(**exp, algorithm={"name": "random_forest_classifier"})) is None
    automl = {"mode": "automl", "automl": {"candidates": [{"name": "kmeans"}, {"name": "gaussian_mixture"}]}}
    assert unsupervised_task(ExperimentSpec(**exp, **automl)) == "clustering"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_kmeans_experiment_on_a_dataset_without_task_or_label_clusters_every_column(tmp_path: Path) -> None:
    """Applied for real: the Dataset has neither task nor label, the Experiment's algorithm is
    k-means; the registered model takes a, b and c, and `kiln infer` clusters every row."""
    import json

    pytest.importorskip("dvc")
    pytest.importorskip("bentoml")
    from tests.helpers import kiln, write
    from tests.test_experiment_handler import git_repo, registry

    repo = git_repo(tmp_path / "r")
    blobs_csv(repo / "raw" / "data", n=60)
    head = "apiVersion: kiln.dev/v1alpha1\nkind: {}\nmetadata: {{name: {}}}\nspec:\n"
    write(
        repo,
        {
            "specs/data.yaml": head.format("Dataset", "data") + "  type: tabular\n  format: csv\n  source: {path: raw/data}\n",
            "specs/km.yaml": head.format("Experiment", "km") + "  dataset: {name: data}\n"
            "  algorithm: {name: kmeans, hyperparameters: {n_clusters: 3, n_init: 10}}\n  register: {model: km}\n",
        },
    )
    res = kiln("apply", cwd=repo, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (meta,) = registry(repo).path("km", 1).rglob("meta.json")
    assert json.loads(meta.read_text())["columns"] == COLUMNS
    res = kiln("infer", "km", "data", "--out", str(tmp_path / "pred"), cwd=repo, timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    lines = [json.loads(x) for x in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 60 and {line["prediction"]["cluster"] for line in lines} == {0, 1, 2}
