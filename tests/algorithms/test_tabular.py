"""Tabular algorithms on scikit-learn's bundled data (wine, breast_cancer, diabetes) through kiln.data."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.algorithms.base import AlgorithmError, Pruned, ReportCallback, TrainData
from kiln.algorithms.registry import get_algorithm

CLASSIFIERS = ["naive_bayes", "mlp", "logistic_regression", "svm", "decision_tree", "random_forest",
               "gradient_boosting", "xgboost"]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("dataset", ["wine", "breast_cancer"])
def test_classifiers_train_and_evaluate(dataset: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    data: TrainData = request.getfixturevalue(dataset)
    results = {}
    for name in CLASSIFIERS:
        algo = get_algorithm(name)
        model = algo.train(data, {}, workdir=tmp_path / name)
        ev = algo.evaluate(model, data, "test")
        assert set(ev) == {"test_accuracy", "test_precision", "test_recall", "test_f1"}
        cm = ev.artifacts["confusion_matrix"]
        _, y = data.table("test")
        assert sum(map(sum, cm)) == len(y)
        assert sum(cm[i][i] for i in range(len(cm))) == round(ev["test_accuracy"] * len(y))
        # the one-shot fit reported train and validation metrics once, at step 0
        (step, reported), = model.history
        assert step == 0 and "validation_f1" in reported and "train_accuracy" in reported
        assert list((tmp_path / name / "tensorboard").glob("events.out.tfevents.*"))
        results[name] = ev["test_accuracy"]
    assert len(results) >= 5
    assert max(results.values()) >= 0.95, results


def test_save_load_predict_roundtrip(wine: TrainData, tmp_path: Path) -> None:
    algo = get_algorithm("random_forest")
    model = algo.train(wine, {"n_estimators": 20})
    x, y = wine.table("test")
    algo.save(model, tmp_path / "m")
    again = algo.load(tmp_path / "m")
    assert algo.predict(again, x) == algo.predict(model, x)
    assert set(algo.predict(model, x)) <= set(y.unique().tolist())
    # list-of-dicts rows and plain lists in column order give the same answer
    rows = x.head(3)
    assert algo.predict(model, rows.to_dict("records")) == algo.predict(model, rows.values.tolist())
    with pytest.raises(AlgorithmError, match="was saved by algorithm 'random_forest'"):
        get_algorithm("svm").load(tmp_path / "m")
    with pytest.raises(AlgorithmError, match="expects 13"):
        algo.predict(model, [[1.0, 2.0]])


def test_regressors(diabetes: TrainData) -> None:
    scores = {}
    for name in ["linear_regression", "svr", "mlp_regressor", "decision_tree_regressor", "xgboost_regressor"]:
        algo = get_algorithm(name)
        model = algo.train(diabetes, {"max_iter": 2000} if name == "mlp_regressor" else {})
        ev = algo.evaluate(model, diabetes, "test")
        assert set(ev) == {"test_rmse", "test_mae", "test_r2"}
        assert ev["test_rmse"] >= ev["test_mae"] > 0
        scores[name] = ev["test_r2"]
    assert scores["linear_regression"] > 0.3, scores  # diabetes is a noisy target


def test_unsupervised(wine: TrainData) -> None:
    km = get_algorithm("kmeans")
    model = km.train(wine, {"n_clusters": 3})
    ev = km.evaluate(model, wine, "test")
    assert ev["test_n_clusters"] == 3 and -1 <= ev["test_silhouette"] <= 1 and ev["test_davies_bouldin"] > 0
    gm = get_algorithm("gaussian_mixture")
    assert gm.evaluate(gm.train(wine, {"n_components": 3}), wine, "test")["test_n_clusters"] >= 2
    pca = get_algorithm("pca")
    full = pca.evaluate(pca.train(wine, {}), wine, "test")["test_explained_variance"]
    two = pca.train(wine, {"n_components": 2})
    assert full == pytest.approx(1.0) and 0.2 < pca.evaluate(two, wine, "test")["test_explained_variance"] < 1.0
    x, _ = wine.table("test")
    assert len(pca.predict(two, x)[0]) == 2


def test_categorical_columns_are_one_hot_encoded(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    from kiln.data.formats import load

    rng = np.random.default_rng(0)
    n = 200
    colour = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(0, 1, n)
    label = np.where((colour == "red") | (size > 1), 1, 0)
    pd.DataFrame({"colour": colour, "size": size, "label": label}).to_csv(tmp_path / "data.csv", index=False)
    data = TrainData(load(tmp_path, task="tabular"))
    algo = get_algorithm("decision_tree")
    model = algo.train(data, {})
    assert algo.evaluate(model, data, "test")["test_accuracy"] >= 0.9
    assert algo.predict(model, [{"colour": "red", "size": -2.0}, {"colour": "purple", "size": -2.0}]) == [1, 0]
    from kiln.algorithms.onnx import export_and_check  # string columns: per-column typed ONNX inputs

    report = export_and_check(algo, model, tmp_path / "m.onnx", data.table("test")[0])
    assert report is not None and report.passed


def test_classifier_rejects_unlabelled_and_image_data(wine: TrainData, digits_root: Path) -> None:
    from kiln.data.formats import load

    with pytest.raises(AlgorithmError, match="cannot train on a classification dataset"):
        get_algorithm("svm").train(TrainData(load(digits_root, task="classification", verify=False)))
    unlabelled = TrainData(wine.content.model_copy(update={"table": wine.content.table.model_copy(
        update={"label": None})}), wine.row_splits)
    with pytest.raises(AlgorithmError, match="needs a label column"):
        get_algorithm("svm").train(unlabelled)


def test_pruned_from_callback_propagates(wine: TrainData) -> None:
    class PruneAll(ReportCallback):
        def report(self, step: int, metrics: dict[str, float]) -> None:
            raise Pruned(step)

    with pytest.raises(Pruned):
        get_algorithm("naive_bayes").train(wine, callbacks=PruneAll())


@pytest.mark.parametrize("name", ["logistic_regression", "xgboost", "random_forest"])
def test_onnx_parity(name: str, breast_cancer: TrainData, tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx")
    pytest.importorskip("onnxruntime")
    from kiln.algorithms.onnx import export_and_check

    algo = get_algorithm(name)
    model = algo.train(breast_cancer, {})
    x, _ = breast_cancer.table("test")
    report = export_and_check(algo, model, tmp_path / "m.onnx", x, tolerance=1e-4)
    assert report is not None and report.passed and report.samples == len(x) + 2  # + all-missing, unseen rows
    assert report.outputs == ["label", "probabilities"]


def test_parity_check_fails_loudly(breast_cancer: TrainData, tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx")
    from kiln.algorithms.onnx import ParityError, check_parity

    algo = get_algorithm("logistic_regression")
    model = algo.train(breast_cancer, {})
    other = algo.train(breast_cancer, {"C": 0.001})
    x, _ = breast_cancer.table("test")
    path = algo.export_onnx(model, tmp_path / "m.onnx", x)
    import numpy as np

    xs = np.asarray(algo.features(model.meta, x))
    with pytest.raises(ParityError, match="probabilities: max"):
        check_parity(lambda s: algo.native_outputs(other, s), path, x, 1e-4, onnx_samples=xs)


@pytest.mark.parametrize("dataset", ["wine", "diabetes"])
def test_automl_on_a_small_table_cross_validates_and_refits_on_train_and_validation(
        dataset: str, request: pytest.FixtureRequest) -> None:
    """With ``cv_max_rows`` (AutoML) a small table's validation metrics are k-fold out-of-fold
    scores over train + validation (scikit-learn's cross_val_predict on the same folds is the
    oracle) and the kept model is fitted on all those rows; over the limit, the holdout split."""
    import numpy as np
    import pandas as pd
    from sklearn.base import clone
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    from kiln.algorithms import metrics as M
    from kiln.algorithms.tabular import CV_FOLDS

    td: TrainData = request.getfixturevalue(dataset)
    regression = dataset == "diabetes"
    algo = get_algorithm("decision_tree_regressor" if regression else "decision_tree")
    (xt, yt), (xv, yv) = td.table("train"), td.table("validation")
    rows = len(xt) + len(xv)

    model = algo.train(td, {"seed": 0}, cv_max_rows=rows)
    assert model.meta["validation"] == {"method": f"{CV_FOLDS}-fold cross-validation on train + validation",
                                        "rows": rows, "refit": "train + validation"}
    assert model.native[-1].tree_.n_node_samples[0] == rows  # refitted on train + validation
    x, y = pd.concat([xt, xv]), pd.concat([yt, yv])
    xx = algo.features(model.meta, x)
    if regression:
        folds = KFold(CV_FOLDS, shuffle=True, random_state=0)
        oof = cross_val_predict(clone(model.native), xx, y.to_numpy(float), cv=folds)
        want = M.regression(y.to_numpy(float), oof)["r2"]
        got = dict(model.history[-1][1])["validation_r2"]
    else:
        classes = model.meta["classes"]
        yy = y.map({c: i for i, c in enumerate(classes)}).to_numpy()
        folds = StratifiedKFold(CV_FOLDS, shuffle=True, random_state=0)
        oof = cross_val_predict(clone(model.native), xx, yy, cv=folds)
        want = float(np.mean(oof == yy))
        got = dict(model.history[-1][1])["validation_accuracy"]
    assert got == pytest.approx(want)

    # over the limit (and without cv_max_rows: run and hpo modes) the holdout split, as before
    for kw in ({"cv_max_rows": rows - 1}, {}):
        held = algo.train(td, {"seed": 0}, **kw)
        assert "validation" not in held.meta and held.native[-1].tree_.n_node_samples[0] == len(xt)
        metric = "validation_r2" if regression else "validation_accuracy"
        assert dict(held.history[-1][1])[metric] == pytest.approx(algo.evaluate(held, td, "validation")[metric])
