"""Tabular algorithms (AI Studio's list) on scikit-learn and XGBoost.

Every model is a scikit-learn ``Pipeline``: the featuriser fitted on the train split
(``kiln.algorithms.featurize``: imputation, missing indicators, one-hot/ordinal encoding, scaling
where the estimator needs it; ``featurization: off`` passes the columns through) followed by the
estimator, so the saved model takes raw rows and ONNX export covers the whole pipeline. Classification labels are encoded to ``0..n-1`` for fitting (XGBoost needs that) and
decoded on predict; ``meta["classes"]`` keeps the original values.

Saved layout (``save(model, folder)``)::

    folder/meta.json      {"algorithm", "hyperparameters", "columns", "categorical", "classes",
                           "schema" (the input schema, featurize), "featurization": "auto|off"}
    folder/model.joblib   the fitted Pipeline
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kiln.algorithms import metrics as M
from kiln.algorithms.base import (
    Algorithm,
    AlgorithmError,
    Evaluation,
    Hyperparameters,
    ReportCallback,
    TrainData,
    TrainedModel,
    atomic_save,
    read_meta,
    write_meta,
)

# AutoML on a small table (train + validation rows at most this many) scores each candidate by
# k-fold cross-validation over train + validation and fits the model it keeps on all of them:
# one small validation split picks a model by noise (penguins: 34 rows, one error is 0.03
# accuracy) and leaves a tenth of the few rows unused. Larger tables keep the holdout split,
# where k more fits would take the time budget for little gain.
CV_MAX_ROWS = 5000
CV_FOLDS = 5


def idle_cpus() -> int:
    """The CPUs of this process not busy now (1-minute load average), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        busy = 0.0
    return max(1, min(cpus, round(cpus - busy)))


@contextmanager
def openmp_threads() -> Iterator[None]:
    """OpenMP threads (HistGradientBoosting's fit and predict) limited to the idle CPUs. OpenMP
    workers busy-wait at each barrier, so on a machine whose CPUs others use (parallel trials,
    other jobs) one thread per core is far slower than one thread: a 35,000-row fit took over
    120 s with 2 threads on 2 CPUs at load 12, 2.3 s with 1 (bench/tabular_automl.py)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=idle_cpus(), user_api="openmp"):
        yield


class SklearnAlgorithm(Algorithm):
    """Shared fit/evaluate/predict/save/ONNX for pipelines of (preprocessor, estimator)."""

    data_type = "tabular"
    framework = "sklearn"
    # Trees are scale-invariant and compare float32 features (sklearn and XGBoost cast to float32
    # inside): unscaled inputs make the ONNX float32 graph reach the same leaves exactly.
    scale_numeric = True

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        raise NotImplementedError

    # -- data ------------------------------------------------------------------------------------
    def _preprocessor(self, x: Any, featurize: bool, dates: list[str]) -> tuple[Any, dict[str, Any] | None]:
        """(transformer, input schema): the automatic featurisation (``kiln.algorithms.featurize``)
        or, with ``featurization: off``, the columns as the dataset version has them."""
        from kiln.algorithms import featurize as F

        if featurize:
            return F.build(x, scale=self.scale_numeric, dates=dates)
        strings = [str(c) for c in x.columns if not F.is_numeric(x[c])]
        if strings:
            raise AlgorithmError(f"algorithm {self.name}: featurization is off and column {strings[0]!r} is not numeric",
                                 hint="encode it with a preprocessing op of the Dataset (factorize), "
                                      "or drop 'featurization: off'")
        return "passthrough", None

    @staticmethod
    def features(model_meta: dict[str, Any], x: Any) -> Any:
        """The model's input for rows (DataFrame, dicts or lists), in the fitted column order: a float
        array (all numeric) or a DataFrame. Models with an input schema get their values normalised
        as the featuriser was fitted on them (``featurize.normalise``)."""
        import numpy as np
        import pandas as pd

        cols = model_meta["columns"]
        schema = model_meta.get("schema")
        if isinstance(x, pd.DataFrame):
            missing = [c for c in cols if c not in x.columns]
            if missing:
                raise AlgorithmError(f"input rows lack column(s) {', '.join(missing)}",
                                     hint=f"the model was trained on columns {', '.join(cols)}")
            # already in the fitted order (train and evaluate): no copy through pandas' indexer
            df = x if list(x.columns) == cols else x[cols]
        elif isinstance(x, list) and x and isinstance(x[0], dict):
            df = pd.DataFrame(x)
            return SklearnAlgorithm.features(model_meta, df)
        else:
            arr = np.asarray(x, dtype=object if model_meta["categorical"] or schema else np.float64)
            if arr.ndim == 1:
                arr = arr.reshape(1, -1)
            if arr.shape[1] != len(cols):
                raise AlgorithmError(f"input rows have {arr.shape[1]} values, the model expects {len(cols)}",
                                     hint=f"columns in order: {', '.join(cols)}")
            df = pd.DataFrame(arr, columns=cols)
        if schema:
            from kiln.algorithms.featurize import normalise

            return normalise(df, schema, cols)
        if model_meta["categorical"]:
            return df
        return df.to_numpy(dtype=np.float64)

    # -- contract --------------------------------------------------------------------------------
    def train(self, data: TrainData, hp: Any = None, *, callbacks: ReportCallback | None = None,
              workdir: Path | None = None, resume_from: Path | None = None,
              featurization: bool = True, cv_max_rows: int = 0) -> TrainedModel:
        """Fit on the train split and score on validation; or, with ``cv_max_rows`` (AutoML)
        and at most that many train + validation rows, score by ``CV_FOLDS``-fold
        cross-validation over them and fit the model on all of them (``meta["validation"]``
        says which)."""
        from sklearn.pipeline import Pipeline

        self._check_task(data, ("tabular",))
        hp = self.hyperparameters(hp)
        x, y = data.table("train")
        if len(x) == 0:
            raise AlgorithmError(f"algorithm {self.name}: the train split is empty")
        folds = self._cv_folds(data, y, cv_max_rows)
        if folds:
            import pandas as pd

            xv, yv = data.table("validation")
            x, y = pd.concat([x, xv]), pd.concat([y, yv])
        t = data.content.table
        dates = [c for c, typ in (t.columns.items() if t is not None else ()) if typ == "datetime"]
        pre, schema = self._preprocessor(x, featurization, dates)
        columns = [str(c) for c in x.columns]
        # columns given to the model as strings (typed inputs): categories, and dates as in the CSV
        categorical = [c for c in columns if schema and schema["columns"][c]["type"] in ("string", "datetime")]
        if schema is not None and t is not None:
            # a row copied from the CSV also holds the label and identifier columns: the model
            # accepts and ignores those (any other unknown column is still an error naming it)
            schema["ignored"] = [c for c, typ in t.columns.items()
                                 if c not in columns and (c == t.label or typ == "identifier")]
        meta: dict[str, Any] = {"columns": columns, "categorical": categorical, "schema": schema,
                                "featurization": "auto" if featurization else "off"}
        yy = None
        if self.task in ("classification", "regression"):
            if y is None:
                raise AlgorithmError(f"algorithm {self.name} ({self.task}) needs a label column",
                                     hint="name the dataset's label column, or use a clustering algorithm")
            if self.task == "classification":
                classes = sorted(y.unique().tolist())
                meta["classes"] = classes
                index = {c: i for i, c in enumerate(classes)}
                yy = y.map(index).to_numpy()
            else:
                yy = y.to_numpy(dtype=float)
        n_classes = len(meta.get("classes", [])) or None
        pipe = Pipeline([("pre", pre), ("est", self.build(hp, n_classes))])
        meta_x = self.features(meta, x)
        cv_scores = None
        if folds:
            assert yy is not None
            cv_scores = self._cross_validate(pipe, meta_x, yy, folds, meta.get("classes"))
            meta["validation"] = {"method": f"{folds}-fold cross-validation on train + validation",
                                  "rows": len(x), "refit": "train + validation"}
        with openmp_threads():
            pipe.fit(meta_x, yy) if yy is not None else pipe.fit(meta_x)
        model = TrainedModel(self.name, pipe, hp.model_dump(), meta)
        reporter, history = self._reporter(callbacks, workdir)
        try:
            scores = dict(self.evaluate(model, data, "train"))
            if cv_scores is not None:
                scores.update(cv_scores)
            elif data.has_split("validation"):
                scores.update(self.evaluate(model, data, "validation"))
            reporter.report(0, scores)
        finally:
            reporter.close()
        model.history = history.history
        return model

    def _cv_folds(self, data: TrainData, y: Any, cv_max_rows: int) -> int:
        """How many folds to cross-validate in (0: the holdout validation split): a classifier
        or regressor, a validation split, at most ``cv_max_rows`` rows in train + validation,
        and every class with at least ``CV_FOLDS`` rows (each fold then trains on every class)."""
        if not cv_max_rows or self.task not in ("classification", "regression") or y is None \
                or not data.has_split("validation"):
            return 0
        _, yv = data.table("validation")
        if len(y) + len(yv) > cv_max_rows or len(y) + len(yv) < 2 * CV_FOLDS:
            return 0
        if self.task == "classification":
            import pandas as pd

            counts = pd.concat([y, yv]).value_counts()
            if counts.min() < CV_FOLDS:
                return 0
        return CV_FOLDS

    def _cross_validate(self, pipe: Any, x: Any, yy: Any, folds: int, classes: list[Any] | None) -> dict[str, float]:
        """``validation_*`` metrics of the out-of-fold predictions: each row predicted by the
        pipeline (featuriser included, refitted per fold: no leak) fitted on the other folds."""
        import numpy as np
        from sklearn.base import clone
        from sklearn.model_selection import KFold, StratifiedKFold

        split = (StratifiedKFold(folds, shuffle=True, random_state=0) if classes is not None
                 else KFold(folds, shuffle=True, random_state=0))
        pred = np.empty(len(yy), dtype=np.int64 if classes is not None else np.float64)
        rows = x.iloc if hasattr(x, "iloc") else x
        with openmp_threads():
            for tr, te in split.split(np.zeros(len(yy)), yy):
                p = clone(pipe).fit(rows[tr], yy[tr])
                pred[te] = p.predict(rows[te])
        if classes is not None:
            m, _ = M.classification([classes[i] for i in yy], [classes[i] for i in pred], classes)
            return M.prefixed("validation", m)
        return M.prefixed("validation", M.regression(yy, pred))

    def evaluate(self, model: TrainedModel, data: TrainData, split: str = "test") -> Evaluation:
        with openmp_threads():
            return self._evaluate(model, data, split)

    def _evaluate(self, model: TrainedModel, data: TrainData, split: str) -> Evaluation:
        x, y = data.table(split)
        if len(x) == 0:
            raise AlgorithmError(f"dataset has no {split!r} rows to evaluate on")
        pipe = model.native
        xx = self.features(model.meta, x)
        if self.task == "classification":
            classes = model.meta["classes"]
            pred = [classes[i] for i in pipe.predict(xx)]
            m, art = M.classification(y.tolist(), pred, classes)
            return Evaluation(M.prefixed(split, m), art)
        if self.task == "regression":
            return Evaluation(M.prefixed(split, M.regression(y.to_numpy(float), pipe.predict(xx))))
        z = pipe[:-1].transform(xx)
        if self.task == "clustering":
            return Evaluation(M.prefixed(split, M.clustering(z, pipe.predict(xx).tolist())))
        est = pipe[-1]
        return Evaluation(M.prefixed(split, M.explained_variance(est.explained_variance_ratio_)))

    def predict(self, model: TrainedModel, inputs: Any) -> list:
        xx = self.features(model.meta, inputs)
        out = model.native.transform(xx) if self.task == "dimension-reduction" else model.native.predict(xx)
        if self.task == "classification":
            classes = model.meta["classes"]
            return [classes[int(i)] for i in out]
        return out.tolist()

    def save(self, model: TrainedModel, path: Path) -> Path:
        import joblib

        path = Path(path)
        atomic_save(path / "model.joblib", lambda tmp: joblib.dump(model.native, tmp))
        write_meta(path, {"algorithm": self.name, "hyperparameters": model.hyperparameters, **model.meta})
        return path

    def load(self, path: Path) -> TrainedModel:
        import joblib

        meta = read_meta(Path(path), self.name)
        pipe = joblib.load(Path(path) / "model.joblib")
        hp = meta.pop("hyperparameters")
        meta.pop("algorithm")
        return TrainedModel(self.name, pipe, hp, meta)

    def export_onnx(self, model: TrainedModel, path: Path, sample: Any) -> Path | None:
        """Whole pipeline, featurisation included, to ONNX. All-numeric tables: one float input
        ``X`` (rows x columns); mixed tables: one ``N x 1`` input per column, float or string, in
        column order (``onnx_feed``). Classifiers output ``label`` (encoded index) and
        ``probabilities`` (no ZipMap)."""
        from kiln.algorithms import featurize as F

        meta = model.meta
        if meta["categorical"] and not meta.get("schema"):
            return None  # saved before featurisation: raw categorical columns, no typed inputs
        dates = [c for c, col in (meta.get("schema") or {}).get("columns", {}).items() if col["type"] == "datetime"]
        if dates:  # featurize_dates: ONNX has no operator that parses a date string
            raise AlgorithmError(f"column {dates[0]!r} holds dates, which the model turns into numbers in Python: "
                                 "ONNX cannot parse date strings, so this model has no ONNX export",
                                 hint=f"drop register.export (the model is served as it is, dates included), or "
                                      f"convert {dates[0]!r} to numbers in the CSV (e.g. days since a date) or drop it "
                                      f"with `{{op: drop_columns, columns: [{dates[0]}]}}` in the Dataset's preprocessing")
        _register_xgboost()
        F.register_missing_indicator()
        options = {id(model.native[-1]): {"zipmap": False}} if self.task == "classification" else None
        if meta.get("ensemble"):  # AutoML's ensemble: its members may be HistGradientBoosting's
            from kiln.algorithms.tabular_more import _int_missing_flags

            with _int_missing_flags():
                return self._to_onnx(model, path, sample, options)
        return self._to_onnx(model, path, sample, options)

    def _to_onnx(self, model: TrainedModel, path: Path, sample: Any, options: Any) -> Path:
        import numpy as np
        from skl2onnx import to_onnx

        from kiln.algorithms import featurize as F

        meta = model.meta
        opset = {"": 17, "ai.onnx.ml": 3}
        if meta["categorical"]:
            onx = to_onnx(model.native, initial_types=F.onnx_initial_types(meta["schema"], meta["columns"]),
                          options=options, target_opset=opset)
        else:
            xx = np.asarray(self.features(meta, sample), dtype=np.float32)
            onx = to_onnx(model.native, xx[:1], options=options, target_opset=opset)
        path = Path(path)
        atomic_save(path, lambda tmp: Path(tmp).write_bytes(onx.SerializeToString()))
        return path

    def onnx_feed(self, model: TrainedModel, sample: Any) -> Any:
        """What the exported ONNX model is fed for ``sample`` rows: a float32 array or a dict of
        per-column tensors (names as the exporter wrote them: ``onnx_feed`` of featurize)."""
        import numpy as np

        from kiln.algorithms import featurize as F

        xx = self.features(model.meta, sample)
        if not model.meta["categorical"]:
            return np.asarray(xx, dtype=np.float32)
        return F.onnx_feed(xx, model.meta["schema"], model.meta["columns"])

    def parity_sample(self, model: TrainedModel, sample: Any) -> Any:
        """``sample`` plus an all-missing row and an unseen-categories row (models with an input
        schema), so the parity check compares imputation and unknown handling too."""
        import pandas as pd

        from kiln.algorithms import featurize as F

        if not model.meta.get("schema") or not isinstance(sample, pd.DataFrame):
            return sample
        return F.parity_rows(sample, model.meta["schema"], model.meta["columns"])

    def native_outputs(self, model: TrainedModel, sample: Any) -> list[Any]:
        """What the ONNX outputs should equal, in their order (for ``check_parity``)."""
        import numpy as np

        xx = self.features(model.meta, sample)
        pipe = model.native
        if self.task == "classification":
            if not hasattr(pipe[-1], "predict_proba"):
                return [pipe.predict(xx)]  # SVC: ONNX's second output is decision scores
            return [pipe.predict(xx), pipe.predict_proba(xx)]
        if self.task == "regression":
            return [np.asarray(pipe.predict(xx)).reshape(-1, 1)]
        if self.task == "clustering":  # the id, and what serving reads the cluster's measure from
            if hasattr(pipe[-1], "predict_proba"):
                return [pipe.predict(xx), pipe.predict_proba(xx)]  # a mixture: 'probabilities'
            if hasattr(pipe[-1], "transform"):
                return [pipe.predict(xx), pipe.transform(xx)]  # k-means: 'scores', the distances
            return [pipe.predict(xx)]
        return [pipe.transform(xx)]


_XGB_REGISTERED = False


def _register_xgboost() -> None:
    """skl2onnx has no XGBoost converter; onnxmltools provides it (optional dependency)."""
    global _XGB_REGISTERED
    if _XGB_REGISTERED:
        return
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from skl2onnx import update_registered_converter
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes,
            calculate_linear_regressor_output_shapes,
        )
        from xgboost import XGBClassifier, XGBRegressor
    except ImportError:
        return
    update_registered_converter(XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes,
                                convert_xgboost, options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
    update_registered_converter(XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes,
                                convert_xgboost)
    _XGB_REGISTERED = True


# ---------------------------------------------------------------------------------------------
# hyperparameter models (sklearn defaults; ranges where sklearn validates them)

class _Tree(Hyperparameters):
    max_depth: int | None = Field(None, ge=1, le=1000)
    min_samples_split: int = Field(2, ge=2, le=10_000)
    min_samples_leaf: int = Field(1, ge=1, le=10_000)


class _MLP(Hyperparameters):
    hidden_units: int = Field(100, ge=1, le=4096, description="neurons per hidden layer")
    hidden_layers: int = Field(1, ge=1, le=10)
    activation: Literal["relu", "tanh", "logistic", "identity"] = "relu"
    learning_rate: float = Field(0.001, gt=0, le=10, description="initial learning rate (adam)")
    alpha: float = Field(0.0001, ge=0, le=100, description="L2 penalty")
    batch_size: int | None = Field(None, ge=1, le=100_000, description="None: min(200, rows)")
    max_iter: int = Field(200, ge=1, le=100_000, description="epochs")
    early_stopping: bool = False


class _XGB(Hyperparameters):
    n_estimators: int = Field(100, ge=1, le=100_000)
    max_depth: int = Field(6, ge=1, le=100)
    learning_rate: float = Field(0.3, gt=0, le=1)
    subsample: float = Field(1.0, gt=0, le=1)
    colsample_bytree: float = Field(1.0, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0, le=1e6)
    reg_alpha: float = Field(0.0, ge=0, le=1e6)


def _mlp_kwargs(hp: _MLP) -> dict[str, Any]:
    return dict(hidden_layer_sizes=(hp.hidden_units,) * hp.hidden_layers, activation=hp.activation,
                learning_rate_init=hp.learning_rate, alpha=hp.alpha, batch_size=hp.batch_size or "auto", max_iter=hp.max_iter,
                early_stopping=hp.early_stopping, random_state=hp.seed)


def _xgb_kwargs(hp: _XGB) -> dict[str, Any]:
    return dict(n_estimators=hp.n_estimators, max_depth=hp.max_depth, learning_rate=hp.learning_rate,
                subsample=hp.subsample, colsample_bytree=hp.colsample_bytree, reg_lambda=hp.reg_lambda,
                reg_alpha=hp.reg_alpha, random_state=hp.seed, n_jobs=1)


# ---------------------------------------------------------------------------------------------
# classification

class NaiveBayes(SklearnAlgorithm):
    """Gaussian naive Bayes."""

    name, task = "naive_bayes", "classification"

    class Hyperparameters(Hyperparameters):
        var_smoothing: float = Field(1e-9, ge=0, le=1)

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.naive_bayes import GaussianNB

        return GaussianNB(var_smoothing=hp.var_smoothing)


class MLPClassifier(SklearnAlgorithm):
    """Multi-layer perceptron classifier (adam)."""

    name, task = "mlp", "classification"
    Hyperparameters = _MLP

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.neural_network import MLPClassifier as C

        return C(**_mlp_kwargs(hp))


class LogisticRegression(SklearnAlgorithm):
    """Logistic regression (L2, lbfgs)."""

    name, task = "logistic_regression", "classification"

    class Hyperparameters(Hyperparameters):
        C: float = Field(1.0, gt=0, le=1e6, description="inverse regularisation strength")
        max_iter: int = Field(100, ge=1, le=100_000)
        tol: float = Field(1e-4, gt=0, le=1)

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.linear_model import LogisticRegression as C

        return C(C=hp.C, max_iter=hp.max_iter, tol=hp.tol, random_state=hp.seed)


class SVM(SklearnAlgorithm):
    """Support vector classifier (libsvm's SMO solver)."""

    name, task = "svm", "classification"

    class Hyperparameters(Hyperparameters):
        C: float = Field(1.0, gt=0, le=1e6)
        kernel: Literal["rbf", "linear", "poly", "sigmoid"] = "rbf"
        gamma: Literal["scale", "auto"] = "scale"
        degree: int = Field(3, ge=1, le=10)
        tol: float = Field(1e-3, gt=0, le=1)

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.svm import SVC

        # probability=False: Platt scaling is deprecated in scikit-learn 1.9 and costs a 5-fold CV
        return SVC(C=hp.C, kernel=hp.kernel, gamma=hp.gamma, degree=hp.degree, tol=hp.tol, random_state=hp.seed)


class DecisionTree(SklearnAlgorithm):
    """CART decision tree classifier."""
    scale_numeric = False

    name, task = "decision_tree", "classification"

    class Hyperparameters(_Tree):
        criterion: Literal["gini", "entropy", "log_loss"] = "gini"

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(criterion=hp.criterion, max_depth=hp.max_depth,
                                      min_samples_split=hp.min_samples_split, min_samples_leaf=hp.min_samples_leaf,
                                      random_state=hp.seed)


class RandomForest(SklearnAlgorithm):
    """Random forest classifier."""
    scale_numeric = False

    name, task = "random_forest", "classification"

    class Hyperparameters(_Tree):
        n_estimators: int = Field(100, ge=1, le=10_000)
        criterion: Literal["gini", "entropy", "log_loss"] = "gini"
        max_features: Literal["sqrt", "log2"] | None = "sqrt"

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=hp.n_estimators, criterion=hp.criterion, max_depth=hp.max_depth,
                                      min_samples_split=hp.min_samples_split, min_samples_leaf=hp.min_samples_leaf,
                                      max_features=hp.max_features, random_state=hp.seed, n_jobs=1)


class GradientBoosting(SklearnAlgorithm):
    """Gradient-boosted trees (scikit-learn)."""
    scale_numeric = False

    name, task = "gradient_boosting", "classification"

    class Hyperparameters(Hyperparameters):
        n_estimators: int = Field(100, ge=1, le=10_000)
        learning_rate: float = Field(0.1, gt=0, le=10)
        max_depth: int = Field(3, ge=1, le=100)
        subsample: float = Field(1.0, gt=0, le=1)

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(n_estimators=hp.n_estimators, learning_rate=hp.learning_rate,
                                          max_depth=hp.max_depth, subsample=hp.subsample, random_state=hp.seed)


class XGBoostClassifier(SklearnAlgorithm):
    """XGBoost gradient-boosted trees classifier."""
    scale_numeric = False

    name, task, framework = "xgboost", "classification", "xgboost"
    Hyperparameters = _XGB

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from xgboost import XGBClassifier

        return XGBClassifier(**_xgb_kwargs(hp))


# ---------------------------------------------------------------------------------------------
# regression

class LinearRegression(SklearnAlgorithm):
    """Ordinary least squares."""

    name, task = "linear_regression", "regression"

    class Hyperparameters(Hyperparameters):
        fit_intercept: bool = True

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.linear_model import LinearRegression as R

        return R(fit_intercept=hp.fit_intercept)


class LinearSVR(SklearnAlgorithm):
    """Support vector regression with a linear kernel."""

    name, task = "svr", "regression"

    class Hyperparameters(Hyperparameters):
        C: float = Field(1.0, gt=0, le=1e6)
        epsilon: float = Field(0.1, ge=0, le=1e6)
        tol: float = Field(1e-3, gt=0, le=1)

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.svm import SVR

        return SVR(kernel="linear", C=hp.C, epsilon=hp.epsilon, tol=hp.tol)


class MLPRegressor(SklearnAlgorithm):
    """Multi-layer perceptron regressor (adam)."""

    name, task = "mlp_regressor", "regression"
    Hyperparameters = _MLP

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.neural_network import MLPRegressor as R

        return R(**_mlp_kwargs(hp))


class DecisionTreeRegressor(SklearnAlgorithm):
    """CART decision tree regressor."""
    scale_numeric = False

    name, task = "decision_tree_regressor", "regression"

    class Hyperparameters(_Tree):
        criterion: Literal["squared_error", "friedman_mse", "absolute_error", "poisson"] = "squared_error"

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.tree import DecisionTreeRegressor as R

        return R(criterion=hp.criterion, max_depth=hp.max_depth, min_samples_split=hp.min_samples_split,
                 min_samples_leaf=hp.min_samples_leaf, random_state=hp.seed)


class XGBoostRegressor(SklearnAlgorithm):
    """XGBoost gradient-boosted trees regressor."""
    scale_numeric = False

    name, task, framework = "xgboost_regressor", "regression", "xgboost"
    Hyperparameters = _XGB

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from xgboost import XGBRegressor

        return XGBRegressor(**_xgb_kwargs(hp))


# ---------------------------------------------------------------------------------------------
# unsupervised

class KMeans(SklearnAlgorithm):
    """k-means clustering (k-means++ initialisation)."""

    name, task = "kmeans", "clustering"

    class Hyperparameters(Hyperparameters):
        n_clusters: int = Field(8, ge=1, le=10_000)
        n_init: int = Field(1, ge=1, le=1000)
        max_iter: int = Field(300, ge=1, le=100_000)

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.cluster import KMeans as K

        return K(n_clusters=hp.n_clusters, n_init=hp.n_init, max_iter=hp.max_iter, random_state=hp.seed)


class GaussianMixture(SklearnAlgorithm):
    """Gaussian mixture clustering (EM); a point's cluster is its most likely component."""

    name, task = "gaussian_mixture", "clustering"

    class Hyperparameters(Hyperparameters):
        n_components: int = Field(1, ge=1, le=1000)
        covariance_type: Literal["full", "tied", "diag", "spherical"] = "full"
        max_iter: int = Field(100, ge=1, le=100_000)

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.mixture import GaussianMixture as G

        return G(n_components=hp.n_components, covariance_type=hp.covariance_type, max_iter=hp.max_iter,
                 random_state=hp.seed)


class PCA(SklearnAlgorithm):
    """Principal component analysis."""

    name, task = "pca", "dimension-reduction"

    class Hyperparameters(Hyperparameters):
        n_components: int | None = Field(None, ge=1, le=100_000, description="None keeps all components")
        whiten: bool = False

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.decomposition import PCA as P

        return P(n_components=hp.n_components, whiten=hp.whiten, random_state=hp.seed)


class TruncatedSVD(SklearnAlgorithm):
    """Truncated SVD (latent semantic analysis); works on sparse one-hot data."""

    name, task = "truncated_svd", "dimension-reduction"

    class Hyperparameters(Hyperparameters):
        n_components: int = Field(2, ge=1, le=100_000)
        n_iter: int = Field(5, ge=1, le=1000)

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.decomposition import TruncatedSVD as T

        return T(n_components=hp.n_components, n_iter=hp.n_iter, random_state=hp.seed)
