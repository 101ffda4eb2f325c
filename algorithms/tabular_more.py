"""Tabular algorithms beyond AI Studio's list, for AutoML's defaults: scikit-learn's
histogram gradient boosting (missing values handled natively: a NaN goes down the branch
learnt for it, where the other estimators refuse the table) and a random forest regressor.
Same pipeline, save layout and ONNX export as ``kiln.algorithms.tabular``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from kiln.algorithms.base import Hyperparameters
from kiln.algorithms.tabular import RandomForest, SklearnAlgorithm


class _HistGB(Hyperparameters):
    max_iter: int = Field(100, ge=1, le=100_000, description="boosting rounds")
    learning_rate: float = Field(0.1, gt=0, le=10)
    max_leaf_nodes: int | None = Field(31, ge=2, le=100_000)
    max_depth: int | None = Field(None, ge=1, le=1000)
    min_samples_leaf: int = Field(20, ge=1, le=100_000)
    l2_regularization: float = Field(0.0, ge=0, le=1e6)
    early_stopping: Literal["auto", "on", "off"] = Field("auto", description="auto: on above 10,000 rows")


def _hgb_kwargs(hp: _HistGB) -> dict[str, Any]:
    stop = {"auto": "auto", "on": True, "off": False}[hp.early_stopping]
    return dict(max_iter=hp.max_iter, learning_rate=hp.learning_rate, max_leaf_nodes=hp.max_leaf_nodes,
                max_depth=hp.max_depth, min_samples_leaf=hp.min_samples_leaf,
                l2_regularization=hp.l2_regularization, early_stopping=stop, random_state=hp.seed)


class HistGradientBoosting(SklearnAlgorithm):
    """Histogram gradient-boosted trees classifier (LightGBM-style; missing values native)."""
    scale_numeric = False

    name, task = "hist_gradient_boosting", "classification"
    Hyperparameters = _HistGB

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(**_hgb_kwargs(hp))


class HistGradientBoostingRegressor(SklearnAlgorithm):
    """Histogram gradient-boosted trees regressor (LightGBM-style; missing values native)."""
    scale_numeric = False

    name, task = "hist_gradient_boosting_regressor", "regression"
    Hyperparameters = _HistGB

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.ensemble import HistGradientBoostingRegressor as R

        return R(**_hgb_kwargs(hp))


class RandomForestRegressor(SklearnAlgorithm):
    """Random forest regressor."""
    scale_numeric = False

    name, task = "random_forest_regressor", "regression"

    class Hyperparameters(RandomForest.Hyperparameters):  # type: ignore[name-defined]
        criterion: Literal["squared_error", "absolute_error", "friedman_mse", "poisson"] = "squared_error"  # type: ignore[assignment]
        max_features: Literal["sqrt", "log2"] | float | None = 1.0  # type: ignore[assignment]

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.ensemble import RandomForestRegressor as R

        return R(n_estimators=hp.n_estimators, criterion=hp.criterion, max_depth=hp.max_depth,
                 min_samples_split=hp.min_samples_split, min_samples_leaf=hp.min_samples_leaf,
                 max_features=hp.max_features, random_state=hp.seed, n_jobs=1)
