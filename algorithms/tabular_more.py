"""Tabular algorithms beyond AI Studio's list, for AutoML's defaults: scikit-learn's
histogram gradient boosting (missing values handled natively: a NaN goes down the branch
learnt for it, where the other estimators refuse the table) and a random forest regressor.
Same pipeline, save layout and ONNX export as ``kiln.algorithms.tabular``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kiln.algorithms.base import Hyperparameters
from kiln.algorithms.tabular import RandomForest, SklearnAlgorithm


@contextmanager
def _int_missing_flags() -> Iterator[None]:
    """skl2onnx 1.20's HistGradientBoosting converter passes each node's NaN direction as a bool
    (a Python one at leaves), which onnx >= 1.23 refuses in an int list ("Expected an int, got a
    boolean"): the conversion fails for every model. The flags are given to ONNX as 0/1 during the
    conversion only; the NaN routing is kept (the parity check compares rows with NaN)."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = False, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(bool(nodes_missing_value_tracks_true)), **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


class _HistGBExport(SklearnAlgorithm):
    def export_onnx(self, model: Any, path: Path, sample: Any) -> Path | None:
        with _int_missing_flags():
            return super().export_onnx(model, path, sample)


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


class HistGradientBoosting(_HistGBExport):
    """Histogram gradient-boosted trees classifier (LightGBM-style; missing values native)."""
    scale_numeric = False

    name, task = "hist_gradient_boosting", "classification"
    Hyperparameters = _HistGB

    def build(self, hp: Any, n_classes: int | None = None) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(**_hgb_kwargs(hp))


class HistGradientBoostingRegressor(_HistGBExport):
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
