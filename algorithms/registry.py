"""The one registry of training algorithms: spec name -> ``"module:Class"``, imported lazily.

Strings, not classes, so that importing the registry (``kiln plan``, spec validation, ``kiln
algorithms list``) never imports torch, scikit-learn or transformers; ``get_algorithm`` imports
the one module it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kiln.algorithms.catalogue import AUTOML_DEFAULTS
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.algorithms.base import Algorithm

_T = "kiln.algorithms.tabular"
_T2 = "kiln.algorithms.tabular_more"
_V = "kiln.algorithms.vision"
_D = "kiln.algorithms.detection"
_E = "kiln.algorithms.easymaker"
_K = "kiln.algorithms.keras_vision"

ALGORITHMS: dict[str, str] = {
    # tabular classification
    "naive_bayes": f"{_T}:NaiveBayes",
    "mlp": f"{_T}:MLPClassifier",
    "logistic_regression": f"{_T}:LogisticRegression",
    "svm": f"{_T}:SVM",
    "decision_tree": f"{_T}:DecisionTree",
    "random_forest": f"{_T}:RandomForest",
    "gradient_boosting": f"{_T}:GradientBoosting",
    "xgboost": f"{_T}:XGBoostClassifier",
    "hist_gradient_boosting": f"{_T2}:HistGradientBoosting",
    # tabular regression
    "linear_regression": f"{_T}:LinearRegression",
    "svr": f"{_T}:LinearSVR",
    "mlp_regressor": f"{_T}:MLPRegressor",
    "decision_tree_regressor": f"{_T}:DecisionTreeRegressor",
    "xgboost_regressor": f"{_T}:XGBoostRegressor",
    "hist_gradient_boosting_regressor": f"{_T2}:HistGradientBoostingRegressor",
    "random_forest_regressor": f"{_T2}:RandomForestRegressor",
    # unsupervised
    "kmeans": f"{_T}:KMeans",
    "gaussian_mixture": f"{_T}:GaussianMixture",
    "pca": f"{_T}:PCA",
    "truncated_svd": f"{_T}:TruncatedSVD",
    # image classification (torchvision)
    "resnet18": f"{_V}:ResNet18",
    "resnet50": f"{_V}:ResNet50",
    "resnet101": f"{_V}:ResNet101",
    "densenet121": f"{_V}:DenseNet121",
    "efficientnet_b0": f"{_V}:EfficientNetB0",
    "efficientnet_b1": f"{_V}:EfficientNetB1",
    # image classification (TensorFlow / Keras)
    "keras_resnet50": f"{_K}:KerasResNet50",
    "keras_small_cnn": f"{_K}:KerasSmallCNN",
    # detection and instance segmentation (torchvision)
    "fasterrcnn_resnet50_fpn": f"{_D}:FasterRCNN",
    "fasterrcnn_mobilenet_v3_large_fpn": f"{_D}:FasterRCNNMobileNet",
    "ssd300_vgg16": f"{_D}:SSD300",
    "tiny_centernet": f"{_D}:TinyCenterNet",
    "maskrcnn_resnet50_fpn": f"{_D}:MaskRCNN",
    # semantic segmentation (torchvision)
    "deeplabv3_resnet50": f"{_D}:DeepLabV3",
    "fcn_resnet50": f"{_D}:FCN",
    # NHN Cloud AI EasyMaker built-ins (transformers), EasyMaker's names and hyperparameters
    "easymaker-image-classification": f"{_E}:EasyMakerImageClassification",
    "easymaker-semantic-segmentation": f"{_E}:EasyMakerSemanticSegmentation",
    "easymaker-object-detection": f"{_E}:EasyMakerObjectDetection",
}


# What each algorithm needs beyond kiln's core, as (the package to find, the extra that installs it):
# by module, and by name where one class of a module needs more (XGBoost). Found, never imported,
# so that asking costs no torch import; ``kiln[all]`` has every extra.
NEEDS_BY_MODULE: dict[str, tuple[str, str]] = {
    _T: ("sklearn", "data"), _T2: ("sklearn", "data"), _V: ("torchvision", "data"), _D: ("torchvision", "data"),
    _E: ("transformers", "ml"), _K: ("tensorflow", "tf"),
}
NEEDS_BY_NAME: dict[str, tuple[str, str]] = {"xgboost": ("xgboost", "ml"), "xgboost_regressor": ("xgboost", "ml")}


def missing_extra(name: str) -> tuple[str, str] | None:
    """(package, extra) when the package algorithm ``name`` needs is not installed; None when it
    is, or for a name the registry does not know."""
    from importlib.util import find_spec

    target = ALGORITHMS.get(name)
    if target is None:
        return None
    for need in (NEEDS_BY_MODULE.get(target.partition(":")[0]), NEEDS_BY_NAME.get(name)):
        if need is not None and find_spec(need[0]) is None:
            return need
    return None


# AUTOML_DEFAULTS (the candidates AutoML starts without a list) is plain data of the catalogue,
# where validation reads it without this module; re-exported here beside automl_defaults.
__all__ = ["ALGORITHMS", "AUTOML_DEFAULTS", "automl_defaults", "describe", "get_algorithm", "get_algorithm_class"]


def automl_defaults(task: str | None) -> list[str]:
    """The catalogue's AutoML candidates for a tabular ``task`` (classification | regression):
    those registered whose optional package is installed (found, not imported)."""
    from importlib.util import find_spec

    return [name for name, package in AUTOML_DEFAULTS.get(task or "", [])
            if name in ALGORITHMS and (package is None or find_spec(package) is not None)]


def _unknown(name: str) -> KilnError:
    from kiln._util.suggest import did_you_mean

    return KilnError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(ALGORITHMS))}",
                     hint=did_you_mean(name, ALGORITHMS) or "set spec.algorithm.name to one of these")


def get_algorithm_class(name: str) -> type[Algorithm]:
    target = ALGORITHMS.get(name)
    if target is None:
        raise _unknown(name)
    module, _, cls = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        need = missing_extra(name)
        raise KilnError(f"algorithm {name!r} needs a package that is not installed: {e.name}",
                        hint=f"pip install 'kiln[{need[1] if need else 'all'}]'") from None
    return getattr(mod, cls)


def get_algorithm(name: str) -> Algorithm:
    """An instance of the algorithm registered as ``name``; unknown names list the valid ones."""
    return get_algorithm_class(name)()


def describe(name: str) -> dict[str, Any]:
    """Task, data type, framework and hyperparameters (type, default, range) of ``name``."""
    return get_algorithm_class(name).describe()
