"""What every registered algorithm is, as plain data: readable without importing an ML library.

Why a second description beside the classes: ``kiln validate``, ``kiln plan``, the JSON Schemas,
``kiln algorithms list/describe`` and docs/algorithms.md must know an algorithm's hyperparameters,
metrics and export abilities in a few milliseconds, and importing the class that trains it costs
scikit-learn, torch or TensorFlow. So the facts are written down here once, as literals, and
``tests/algorithms/test_catalogue.py`` holds the two descriptions together: for every algorithm the
same hyperparameter names, types, defaults, ranges and choices as its pydantic model, the metrics
a tiny fit really reports, and an ONNX exporter exactly where ``onnx`` says so.

Purely data and lookups: no I/O, no imports beyond the standard library and ``kiln.errors``.

Vocabulary
----------
``Param.type``
    ``int``, ``float``, ``bool``, ``str`` or ``choice`` (one of ``choices``). A number type with
    ``choices`` also accepts those words (``max_features: 0.5`` or ``sqrt``); ``nullable`` accepts
    ``null`` (YAML's ``~``), whose meaning ``help`` gives.
``AlgorithmInfo.data_tasks``
    The Dataset tasks it trains on; ``ANY_TASK`` for the unsupervised tabular algorithms, which use
    the feature columns of any table, labelled or not.
``AlgorithmInfo.metrics``
    The names a trial reports while training (what ``objective.metric`` may name): split-prefixed
    metrics of ``kiln.algorithms.metrics`` plus the loop's own (``train_loss``, ``learning_rate``).
``AlgorithmInfo.runtimes``
    Deployment runtimes a registered model of it can be served by: ``native`` (scikit-learn's
    joblib, TorchScript) and ``onnx`` (needs ``register.export: [onnx]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kiln.errors import KilnError

ANY_TASK = "any"


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its YAML name, type, default, bounds or choices, and meaning."""

    name: str
    type: str
    default: Any
    help: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] = ()
    nullable: bool = False

    def range_text(self) -> str:
        """``[1, 10000]``, ``(0, 1]``, ``>= 0``, ``relu | tanh``, or '' when unbounded."""
        if self.type == "choice":
            return " | ".join(map(str, self.choices))
        low = f"[{_num(self.ge)}" if self.ge is not None else (f"({_num(self.gt)}" if self.gt is not None else None)
        high = f"{_num(self.le)}]" if self.le is not None else (f"{_num(self.lt)})" if self.lt is not None else None)
        if low and high:
            text = f"{low}, {high}"
        elif low:
            text = (">= " if low[0] == "[" else "> ") + low[1:]
        elif high:
            text = ("<= " if high[-1] == "]" else "< ") + high[:-1]
        else:
            text = ""
        if self.choices:
            text = " | ".join([text or self.type, *map(str, self.choices)])
        return text

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "default": self.default}
        for k in ("ge", "gt", "le", "lt"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.choices:
            out["choices"] = list(self.choices)
        if self.nullable:
            out["nullable"] = True
        out["help"] = self.help
        return out


def _num(v: float | None) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class AlgorithmInfo:
    """One algorithm of ``kiln.algorithms.registry.ALGORITHMS``, described without importing it."""

    name: str
    task: str
    data_type: str
    framework: str
    summary: str
    hyperparameters: tuple[Param, ...]
    metrics: tuple[str, ...]
    data_tasks: tuple[str, ...]
    onnx: bool
    runtimes: tuple[str, ...]
    # an optional package it imports ('' = none beyond scikit-learn and torch): xgboost and
    # transformers come with kiln[ml], tensorflow with kiln[tf]
    package: str = field(default="")

    def param(self, name: str) -> Param | None:
        return next((p for p in self.hyperparameters if p.name == name), None)

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.hyperparameters]

    def accepts(self, data_type: str, dataset_task: str | None) -> bool:
        """Whether it trains on a Dataset of ``data_type`` and ``dataset_task`` (None: unlabelled)."""
        if data_type != self.data_type:
            return False
        if ANY_TASK in self.data_tasks:
            return True
        # no task in the Dataset: what its items hold is known only once loaded (apply decides)
        return dataset_task is None or dataset_task in self.data_tasks

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "dataType": self.data_type, "framework": self.framework,
                "summary": self.summary, "dataTasks": list(self.data_tasks),
                "hyperparameters": [p.as_dict() for p in self.hyperparameters],
                "metrics": list(self.metrics), "onnx": self.onnx, "runtimes": list(self.runtimes),
                **({"package": self.package} if self.package else {})}


# -- metrics (kiln.algorithms.metrics, prefixed by split) ------------------------------------------

def _splits(*names: str) -> tuple[str, ...]:
    return tuple(f"{s}_{n}" for s in ("train", "validation") for n in names)


_CLS = ("accuracy", "precision", "recall", "f1")
# one-shot scikit-learn fits score the train and validation splits with the task's metrics
TABULAR_METRICS: dict[str, tuple[str, ...]] = {
    "classification": _splits(*_CLS),
    "regression": _splits("rmse", "mae", "r2"),
    # silhouette, Calinski-Harabasz and Davies-Bouldin only where defined (2 <= clusters < rows)
    "clustering": _splits("silhouette", "calinski_harabasz", "davies_bouldin", "n_clusters"),
    "dimension-reduction": _splits("explained_variance"),
}
_EPOCH = ("train_loss", "train_seconds", "learning_rate")
_TORCH_CLS = (*_EPOCH, "train_accuracy", *(f"validation_{m}" for m in ("loss", *_CLS)))
_KERAS_CLS = ("train_loss", "train_seconds", "train_accuracy", *(f"validation_{m}" for m in ("loss", *_CLS)))
_COCO = ("validation_map", "validation_ap50", "validation_ap75")
_TORCH_DET = (*_EPOCH, *_COCO)
# Mask R-CNN: the mask scores are the headline, the box scores are reported beside them
_TORCH_MASK = (*_TORCH_DET, *(f"validation_{kind}_{m}" for kind in ("bbox", "segm") for m in ("map", "ap50", "ap75")))
_SEG = ("validation_mean_iou", "validation_mean_accuracy", "validation_overall_accuracy")
_TORCH_SEG = (*_EPOCH, *_SEG)
_STEPS = ("train_loss", "learning_rate", "epoch", "train_seconds_per_step")
_EM_CLS = (*_STEPS, *(f"validation_{m}" for m in ("loss", *_CLS)))
_EM_SEG = (*_STEPS, *_SEG)
_EM_DET = (*_STEPS, *_COCO)

# The range a metric lives in, for a goal that could never be reached (a percentage for a
# fraction). Metrics not listed are unbounded.
METRIC_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    **{m: (0.0, 1.0) for m in (*_CLS, "map", "ap50", "ap75", "mean_iou", "mean_accuracy", "overall_accuracy",
                               "explained_variance")},
    "rmse": (0.0, None), "mae": (0.0, None), "r2": (None, 1.0), "silhouette": (-1.0, 1.0),
    "calinski_harabasz": (0.0, None), "davies_bouldin": (0.0, None), "loss": (0.0, None),
}
# Where higher is better; the others (losses, errors, Davies-Bouldin) want minimize.
MAXIMIZE = frozenset({*_CLS, "r2", "map", "ap50", "ap75", "mean_iou", "mean_accuracy", "overall_accuracy",
                      "silhouette", "calinski_harabasz", "explained_variance"})


def metric_base(metric: str) -> str:
    """``validation_accuracy`` -> ``accuracy``: the metric without its split."""
    for prefix in ("train_", "validation_", "test_", "bbox_", "segm_"):
        if metric.startswith(prefix):
            metric = metric[len(prefix):]
    return metric


# -- hyperparameters --------------------------------------------------------------------------------

P = Param
SEED = P("seed", "int", 0, "random seed: same seed, same data -> same model")

_TREE = (
    SEED,
    P("max_depth", "int", None, "deepest split level; null grows until leaves are pure", ge=1, le=1000, nullable=True),
    P("min_samples_split", "int", 2, "rows a node needs before it may split", ge=2, le=10000),
    P("min_samples_leaf", "int", 1, "rows each leaf must keep", ge=1, le=10000),
)
_MLP = (
    SEED,
    P("hidden_units", "int", 100, "neurons per hidden layer", ge=1, le=4096),
    P("hidden_layers", "int", 1, "number of hidden layers", ge=1, le=10),
    P("activation", "choice", "relu", "activation of the hidden layers", choices=("relu", "tanh", "logistic", "identity")),
    P("learning_rate", "float", 0.001, "initial learning rate (adam)", gt=0, le=10),
    P("alpha", "float", 0.0001, "L2 penalty", ge=0, le=100),
    P("batch_size", "int", None, "rows per minibatch; null: min(200, rows)", ge=1, le=100000, nullable=True),
    P("max_iter", "int", 200, "epochs", ge=1, le=100000),
    P("early_stopping", "bool", False, "stop when a held-out 10% of the train split stops improving"),
)
_XGB = (
    SEED,
    P("n_estimators", "int", 100, "boosting rounds (trees)", ge=1, le=100000),
    P("max_depth", "int", 6, "depth of each tree", ge=1, le=100),
    P("learning_rate", "float", 0.3, "shrinkage of each tree's contribution (eta)", gt=0, le=1),
    P("subsample", "float", 1.0, "fraction of rows sampled per tree", gt=0, le=1),
    P("colsample_bytree", "float", 1.0, "fraction of columns sampled per tree", gt=0, le=1),
    P("reg_lambda", "float", 1.0, "L2 penalty on leaf weights", ge=0, le=1e6),
    P("reg_alpha", "float", 0.0, "L1 penalty on leaf weights", ge=0, le=1e6),
)
_HISTGB = (
    SEED,
    P("max_iter", "int", 100, "boosting rounds", ge=1, le=100000),
    P("learning_rate", "float", 0.1, "shrinkage of each tree's contribution", gt=0, le=10),
    P("max_leaf_nodes", "int", 31, "leaves per tree; null: unlimited", ge=2, le=100000, nullable=True),
    P("max_depth", "int", None, "depth of each tree; null: unlimited", ge=1, le=1000, nullable=True),
    P("min_samples_leaf", "int", 20, "rows each leaf must keep", ge=1, le=100000),
    P("l2_regularization", "float", 0.0, "L2 penalty on leaf values", ge=0, le=1e6),
    P("early_stopping", "choice", "auto", "stop on a held-out score; auto: on above 10,000 rows",
      choices=("auto", "on", "off")),
)
_DEVICE = P("device", "str", "auto", "auto (cuda when available), cpu, cuda, cuda:N")
_TORCH_LOOP = (
    SEED,
    P("batch_size", "int", 32, "images per optimiser step", ge=1, le=4096),
    P("epochs", "int", 10, "passes over the train split", ge=1, le=10000),
    P("learning_rate", "float", 0.01, "SGD learning rate (cosine schedule)", gt=0, le=10),
    P("momentum", "float", 0.9, "SGD momentum", ge=0, le=1),
    P("weight_decay", "float", 0.0001, "L2 penalty (SGD weight decay)", ge=0, le=1),
    P("num_workers", "int", 0, "DataLoader worker processes", ge=0, le=64),
    _DEVICE,
)
_TORCH_CLS_HP = (*_TORCH_LOOP, P("input_size", "int", 224, "images are resized to input_size x input_size",
                                 ge=8, le=2048))
_TORCH_DET_HP = (
    SEED,
    P("batch_size", "int", 2, "images per optimiser step", ge=1, le=256),
    P("epochs", "int", 10, "passes over the train split", ge=1, le=10000),
    P("learning_rate", "float", 0.005, "SGD learning rate", gt=0, le=10),
    *_TORCH_LOOP[4:],
    P("min_size", "int", 512, "shorter image side inside the model (R-CNN models)", ge=32, le=4096),
    P("max_size", "int", 853, "longer image side cap inside the model (R-CNN models)", ge=32, le=8192),
    P("threshold", "float", 0.5, "score below which predict() drops a detection", ge=0, le=1),
)
_CENTERNET_HP = (
    SEED,
    P("batch_size", "int", 8, "images per optimiser step", ge=1, le=256),
    P("epochs", "int", 30, "passes over the train split", ge=1, le=10000),
    P("learning_rate", "float", 0.005, "AdamW learning rate (cosine schedule)", gt=0, le=10),
    P("weight_decay", "float", 0.0001, "AdamW weight decay", ge=0, le=1),
    P("num_workers", "int", 0, "DataLoader worker processes", ge=0, le=64),
    _DEVICE,
    P("input_size", "int", 64, "images are resized to input_size^2 (a multiple of 4)", ge=16, le=1024),
    P("width", "int", 16, "channels of the first stage (the second has twice, the stride-4 stage four times)",
      ge=4, le=256),
    P("max_detections", "int", 32, "boxes the model outputs per image (best scores)", ge=1, le=1000),
    P("flip", "bool", True, "train on horizontally flipped copies at random (half of the images)"),
    P("threshold", "float", 0.3, "score below which predict() drops a detection", ge=0, le=1),
)
_TORCH_SEG_HP = (
    SEED,
    P("batch_size", "int", 4, "images per step; at least 2: BatchNorm in the heads needs it", ge=2, le=256),
    *_TORCH_LOOP[2:],
    P("input_size", "int", 520, "images and masks are resized to input_size^2", ge=32, le=4096),
    P("aux_loss", "bool", False, "train the auxiliary FCN head on layer3 (loss weight 0.5)"),
)
_KERAS = (
    SEED,
    P("batch_size", "int", 32, "images per optimiser step", ge=1, le=4096),
    P("epochs", "int", 10, "passes over the train split", ge=1, le=10000),
    P("learning_rate", "float", 0.001, "Adam learning rate", gt=0, le=10),
)
# EasyMaker's own tables (NHN Cloud AI EasyMaker built-in algorithms); ``device`` and the image
# size knobs marked "kiln:" are kiln's additions.
_EM_STEPS = (
    P("save_steps", "int", 500, "checkpoint every save_steps optimiser steps", ge=1),
    P("logging_steps", "int", 10, "report train_loss every logging_steps steps", ge=1),
    P("device", "str", "auto", "kiln: auto (cuda when available), cpu, cuda, cuda:N"),
)
_EM_CLS_HP = (
    SEED,
    P("learning_rate", "float", 0.1, "AdamW learning rate", ge=0),
    P("per_device_train_batch_size", "int", 16, "training images per step and device", ge=2),
    P("per_device_eval_batch_size", "int", 16, "evaluation images per step and device", ge=1),
    P("num_train_epochs", "int", 3, "passes over the train split", ge=1),
    *_EM_STEPS,
    P("input_size", "int", 28, "images are resized to input_size x input_size", ge=4),
)
_EM_COMMON = (
    SEED,
    P("learning_rate", "float", 0.0002, "AdamW learning rate", ge=0),
    P("per_device_train_batch_size", "int", 4, "training images per step and device", ge=1),
    P("per_device_eval_batch_size", "int", 4, "evaluation images per step and device", ge=1),
    P("num_train_epochs", "float", 3.0, "passes over the train split (fractions allowed)", gt=0),
    *_EM_STEPS,
)

_CLS_T, _REG_T = ("classification",), ("regression",)
_TAB_RT, _TORCH_RT = ("native", "onnx"), ("native", "onnx")


def _tab(name: str, task: str, summary: str, hps: tuple[Param, ...], framework: str = "sklearn",
         package: str = "") -> AlgorithmInfo:
    data_tasks = {"classification": _CLS_T, "regression": _REG_T}.get(task, (ANY_TASK,))
    return AlgorithmInfo(name, task, "tabular", framework, summary, hps, TABULAR_METRICS[task], data_tasks,
                         onnx=True, runtimes=_TAB_RT, package=package)


def _torch_cls(name: str, summary: str) -> AlgorithmInfo:
    return AlgorithmInfo(name, "classification", "image", "pytorch", summary, _TORCH_CLS_HP, _TORCH_CLS,
                         _CLS_T, onnx=True, runtimes=_TORCH_RT)


def _torch_det(name: str, task: str, summary: str, data_tasks: tuple[str, ...]) -> AlgorithmInfo:
    metrics = _TORCH_MASK if task == "instance-segmentation" else _TORCH_DET
    return AlgorithmInfo(name, task, "image", "pytorch", summary, _TORCH_DET_HP, metrics, data_tasks,
                         onnx=True, runtimes=_TORCH_RT)


def _torch_seg(name: str, summary: str) -> AlgorithmInfo:
    return AlgorithmInfo(name, "semantic-segmentation", "image", "pytorch", summary, _TORCH_SEG_HP, _TORCH_SEG,
                         ("semantic-segmentation",), onnx=True, runtimes=_TORCH_RT)


_CATALOGUE: tuple[AlgorithmInfo, ...] = (
    # tabular classification (scikit-learn, XGBoost)
    _tab("naive_bayes", "classification", "Gaussian naive Bayes.", (
        SEED, P("var_smoothing", "float", 1e-09, "share of the largest variance added to every variance",
                ge=0, le=1))),
    _tab("mlp", "classification", "Multi-layer perceptron classifier (adam).", _MLP),
    _tab("logistic_regression", "classification", "Logistic regression (L2, lbfgs).", (
        SEED,
        P("C", "float", 1.0, "inverse regularisation strength", gt=0, le=1e6),
        P("max_iter", "int", 100, "solver iterations", ge=1, le=100000),
        P("tol", "float", 0.0001, "stopping tolerance", gt=0, le=1))),
    _tab("svm", "classification", "Support vector classifier (libsvm's SMO solver).", (
        SEED,
        P("C", "float", 1.0, "inverse regularisation strength", gt=0, le=1e6),
        P("kernel", "choice", "rbf", "kernel function", choices=("rbf", "linear", "poly", "sigmoid")),
        P("gamma", "choice", "scale", "kernel coefficient: scale (1 / (features x variance)) or auto "
          "(1 / features)", choices=("scale", "auto")),
        P("degree", "int", 3, "degree of the poly kernel", ge=1, le=10),
        P("tol", "float", 0.001, "stopping tolerance", gt=0, le=1))),
    _tab("decision_tree", "classification", "CART decision tree classifier.", (
        *_TREE, P("criterion", "choice", "gini", "split quality measure", choices=("gini", "entropy", "log_loss")))),
    _tab("random_forest", "classification", "Random forest classifier.", (
        *_TREE,
        P("n_estimators", "int", 100, "trees in the forest", ge=1, le=10000),
        P("criterion", "choice", "gini", "split quality measure", choices=("gini", "entropy", "log_loss")),
        P("max_features", "choice", "sqrt", "columns considered per split; null: all",
          choices=("sqrt", "log2"), nullable=True))),
    _tab("gradient_boosting", "classification", "Gradient-boosted trees (scikit-learn).", (
        SEED,
        P("n_estimators", "int", 100, "boosting rounds (trees)", ge=1, le=10000),
        P("learning_rate", "float", 0.1, "shrinkage of each tree's contribution", gt=0, le=10),
        P("max_depth", "int", 3, "depth of each tree", ge=1, le=100),
        P("subsample", "float", 1.0, "fraction of rows sampled per tree", gt=0, le=1))),
    _tab("xgboost", "classification", "XGBoost gradient-boosted trees classifier.", _XGB, "xgboost", "xgboost"),
    _tab("hist_gradient_boosting", "classification", "Histogram gradient-boosted trees classifier "
         "(LightGBM-style; missing values native).", _HISTGB),
    # tabular regression
    _tab("linear_regression", "regression", "Ordinary least squares.", (
        SEED, P("fit_intercept", "bool", True, "fit a constant term (false: the line passes through 0)"))),
    _tab("svr", "regression", "Support vector regression with a linear kernel.", (
        SEED,
        P("C", "float", 1.0, "inverse regularisation strength", gt=0, le=1e6),
        P("epsilon", "float", 0.1, "width of the loss-free tube around the target", ge=0, le=1e6),
        P("tol", "float", 0.001, "stopping tolerance", gt=0, le=1))),
    _tab("mlp_regressor", "regression", "Multi-layer perceptron regressor (adam).", _MLP),
    _tab("decision_tree_regressor", "regression", "CART decision tree regressor.", (
        *_TREE, P("criterion", "choice", "squared_error", "split quality measure",
                  choices=("squared_error", "friedman_mse", "absolute_error", "poisson")))),
    _tab("xgboost_regressor", "regression", "XGBoost gradient-boosted trees regressor.", _XGB, "xgboost", "xgboost"),
    _tab("hist_gradient_boosting_regressor", "regression", "Histogram gradient-boosted trees regressor "
         "(LightGBM-style; missing values native).", _HISTGB),
    _tab("random_forest_regressor", "regression", "Random forest regressor.", (
        *_TREE,
        P("n_estimators", "int", 100, "trees in the forest", ge=1, le=10000),
        P("criterion", "choice", "squared_error", "split quality measure",
          choices=("squared_error", "absolute_error", "friedman_mse", "poisson")),
        P("max_features", "float", 1.0, "columns considered per split: a fraction, sqrt or log2; null: all",
          choices=("sqrt", "log2"), nullable=True))),
    # unsupervised (any table; the label column, if any, is left out)
    _tab("kmeans", "clustering", "k-means clustering (k-means++ initialisation).", (
        SEED,
        P("n_clusters", "int", 8, "clusters to find", ge=1, le=10000),
        P("n_init", "int", 1, "runs with different centroid seeds; the best is kept", ge=1, le=1000),
        P("max_iter", "int", 300, "iterations per run", ge=1, le=100000))),
    _tab("gaussian_mixture", "clustering", "Gaussian mixture clustering (EM); a point's cluster is its most "
         "likely component.", (
        SEED,
        P("n_components", "int", 1, "mixture components (clusters)", ge=1, le=1000),
        P("covariance_type", "choice", "full", "shape of each component's covariance",
          choices=("full", "tied", "diag", "spherical")),
        P("max_iter", "int", 100, "EM iterations", ge=1, le=100000))),
    _tab("pca", "dimension-reduction", "Principal component analysis.", (
        SEED,
        P("n_components", "int", None, "components kept; null keeps all", ge=1, le=100000, nullable=True),
        P("whiten", "bool", False, "scale the components to unit variance"))),
    _tab("truncated_svd", "dimension-reduction", "Truncated SVD (latent semantic analysis); works on sparse "
         "one-hot data.", (
        SEED,
        P("n_components", "int", 2, "components kept", ge=1, le=100000),
        P("n_iter", "int", 5, "randomised SVD iterations", ge=1, le=1000))),
    # image classification (torchvision)
    _torch_cls("resnet18", "ResNet-18 image classifier (torchvision)."),
    _torch_cls("resnet50", "ResNet-50 image classifier (torchvision)."),
    _torch_cls("resnet101", "ResNet-101 image classifier (torchvision)."),
    _torch_cls("densenet121", "DenseNet-121 image classifier (torchvision)."),
    _torch_cls("efficientnet_b0", "EfficientNet-B0 image classifier (torchvision)."),
    _torch_cls("efficientnet_b1", "EfficientNet-B1 image classifier (torchvision)."),
    # image classification (TensorFlow / Keras): served through ONNX only (no TorchScript)
    AlgorithmInfo("keras_resnet50", "classification", "image", "tensorflow",
                  "ResNet-50 image classifier (Keras applications.ResNet50, TensorFlow).",
                  (*_KERAS, P("input_size", "int", 224, "images are resized to input_size x input_size",
                              ge=32, le=2048)),
                  _KERAS_CLS, _CLS_T, onnx=True, runtimes=("onnx",), package="tensorflow"),
    AlgorithmInfo("keras_small_cnn", "classification", "image", "tensorflow",
                  "Small CNN image classifier (Keras, TensorFlow): two conv blocks, a dense layer, dropout.",
                  (*_KERAS,
                   P("input_size", "int", 32, "images are resized to input_size x input_size", ge=8, le=2048),
                   P("filters", "int", 32, "filters of the first conv block (the second has twice)", ge=4, le=512),
                   P("dense_units", "int", 128, "units of the dense layer", ge=8, le=8192),
                   P("dropout", "float", 0.25, "dropout rate before the output layer", ge=0, lt=1)),
                  _KERAS_CLS, _CLS_T, onnx=True, runtimes=("onnx",), package="tensorflow"),
    # detection and instance segmentation (torchvision)
    _torch_det("fasterrcnn_resnet50_fpn", "detection", "Faster R-CNN with a ResNet-50 FPN backbone (torchvision).",
               ("detection", "instance-segmentation")),
    _torch_det("fasterrcnn_mobilenet_v3_large_fpn", "detection", "Faster R-CNN with a MobileNetV3-Large FPN "
               "backbone (torchvision): the quickest detector here on CPU.", ("detection", "instance-segmentation")),
    _torch_det("ssd300_vgg16", "detection", "SSD300 with a VGG16 backbone (torchvision); images are resized to "
               "300x300 inside the model.", ("detection", "instance-segmentation")),
    # a small one-stage detector of kiln's own, from torchvision parts: the example repo's detector
    AlgorithmInfo("tiny_centernet", "detection", "image", "pytorch",
                  "A small one-stage detector (CenterNet-style heatmap head on a stride-4 CNN, torchvision ops): "
                  "learns drawn or simple objects from scratch in about a minute on a CPU.",
                  _CENTERNET_HP, _TORCH_DET, ("detection", "instance-segmentation"), onnx=True, runtimes=_TORCH_RT),
    _torch_det("maskrcnn_resnet50_fpn", "instance-segmentation", "Mask R-CNN with a ResNet-50 FPN backbone "
               "(torchvision); COCO polygons/RLE -> masks.", ("instance-segmentation",)),
    # semantic segmentation (torchvision)
    _torch_seg("deeplabv3_resnet50", "DeepLabV3 with a ResNet-50 backbone (torchvision)."),
    _torch_seg("fcn_resnet50", "FCN with a ResNet-50 backbone (torchvision)."),
    # NHN Cloud AI EasyMaker built-ins (transformers)
    AlgorithmInfo("easymaker-image-classification", "classification", "image", "transformers",
                  "EasyMaker image classification: ResNet-50 (transformers), AdamW, steps-based.",
                  _EM_CLS_HP, _EM_CLS, _CLS_T, onnx=True, runtimes=_TORCH_RT, package="transformers"),
    AlgorithmInfo("easymaker-semantic-segmentation", "semantic-segmentation", "image", "transformers",
                  "EasyMaker semantic segmentation: SegFormer-B3 (transformers), AdamW, steps-based.",
                  (*_EM_COMMON, P("image_size", "int", 512, "kiln: images and masks are resized to image_size^2 "
                                  "(EasyMaker: 512)", ge=32, le=4096)),
                  _EM_SEG, ("semantic-segmentation",), onnx=True, runtimes=_TORCH_RT, package="transformers"),
    # DETR's post-processing is no ONNX graph here: served as TorchScript with it folded in
    AlgorithmInfo("easymaker-object-detection", "detection", "image", "transformers",
                  "EasyMaker object detection: DETR with a ResNet-50 backbone (transformers), AdamW, steps-based.",
                  (*_EM_COMMON,
                   P("threshold", "float", 0.5, "score below which predict() drops a detection", ge=0, le=1),
                   P("image_size", "int", 800, "kiln: images are resized to image_size^2", ge=32, le=4096)),
                  _EM_DET, ("detection", "instance-segmentation"), onnx=False, runtimes=("native",),
                  package="transformers"),
)

# name -> description, in the registry's order (the one lookup table of this module)
CATALOGUE: dict[str, AlgorithmInfo] = {a.name: a for a in _CATALOGUE}

# AutoML without a candidate list: the task's tabular algorithms, in the order they start (the
# time budget may stop the later ones): missing-value-native boosting first, then the quick linear
# baseline, XGBoost where installed, and the forest last: one core per fit, it is the slowest
# (bench/tabular_automl.py, 35,000 train rows at load 9: boosting 12 s, the forest stopped at the
# 60 s budget after 48 s). The catalogue has no LightGBM yet. Each entry is
# (name, the optional package it needs or None); ``registry.automl_defaults`` drops those whose
# package is not installed.
AUTOML_DEFAULTS: dict[str, list[tuple[str, str | None]]] = {
    "classification": [("hist_gradient_boosting", None), ("logistic_regression", None),
                       ("xgboost", "xgboost"), ("random_forest", None)],
    "regression": [("hist_gradient_boosting_regressor", None), ("linear_regression", None),
                   ("xgboost_regressor", "xgboost"), ("random_forest_regressor", None)],
}

# The objective an Experiment ranks its trials by when the spec names none: one that every
# algorithm of the task reports and that is better when larger (Objective's default direction).
# Without it a detector or a regressor would be ranked by validation_accuracy, which it never reports.
TASK_OBJECTIVE: dict[str, str] = {
    "classification": "validation_accuracy", "regression": "validation_r2",
    "clustering": "validation_silhouette", "dimension-reduction": "validation_explained_variance",
    "detection": "validation_map", "instance-segmentation": "validation_map",
    "semantic-segmentation": "validation_mean_iou",
}


def default_objective(name: str | None) -> str | None:
    """The objective metric for algorithm ``name`` when the spec gives none (None: unknown name)."""
    info = CATALOGUE.get(name or "")
    metric = TASK_OBJECTIVE.get(info.task) if info else None
    return metric if info and metric in info.metrics else None


TASKS = ("classification", "regression", "clustering", "dimension-reduction", "detection",
         "instance-segmentation", "semantic-segmentation")


def algorithm_info(name: str) -> AlgorithmInfo:
    """The catalogue entry of ``name``; an unknown name is an error with a did-you-mean."""
    info = CATALOGUE.get(name)
    if info is None:
        from kiln._util.suggest import did_you_mean

        raise KilnError(f"unknown algorithm {name!r}",
                        hint=did_you_mean(name, CATALOGUE) or "`kiln algorithms list` shows them all")
    return info


def algorithms_for(task: str | None = None) -> list[AlgorithmInfo]:
    """Every algorithm, or those of one ``task``."""
    return [a for a in CATALOGUE.values() if task is None or a.task == task]
