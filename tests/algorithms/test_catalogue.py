"""The catalogue (plain data) and the algorithms (code) say the same: hyperparameters, metrics, ONNX.

The catalogue is what validation, the schemas, the CLI and the docs read; the classes are what
trains. Each test here puts one declared fact next to the implementation's: the pydantic model's
fields, the metric names a tiny fit really reports, whether ``export_onnx`` is implemented.
"""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from kiln.algorithms.base import Algorithm, HistoryCallback, TrainData
from kiln.algorithms.catalogue import CATALOGUE, Param, algorithm_info
from kiln.algorithms.registry import ALGORITHMS, get_algorithm, get_algorithm_class
from kiln.errors import KilnError

from .conftest import digits_data


def _skip_missing(name: str) -> None:
    pkg = CATALOGUE[name].package
    if pkg:
        pytest.importorskip("keras" if pkg == "tensorflow" else pkg)


def _implemented_param(name: str, field: Any) -> Param:
    """The catalogue's ``Param`` as the pydantic field defines it."""
    ann, nullable, words = field.annotation, False, ()
    members = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
    kinds = []
    for m in members:
        if m is type(None):
            nullable = True
        elif typing.get_origin(m) is typing.Literal:
            words = typing.get_args(m)
        else:
            kinds.append(m.__name__)
    bounds = {k: getattr(meta, k) for meta in field.metadata for k in ("ge", "gt", "le", "lt")
              if getattr(meta, k, None) is not None}
    return Param(name, kinds[0] if kinds else "choice", field.default, "", choices=tuple(words),
                 nullable=nullable, **bounds)


def test_catalogue_lists_exactly_the_registry_in_its_order() -> None:
    assert list(CATALOGUE) == list(ALGORITHMS)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_declared_hyperparameters_are_the_implemented_ones(name: str) -> None:
    _skip_missing(name)
    cls = get_algorithm_class(name)
    info = CATALOGUE[name]
    assert (info.task, info.data_type, info.framework) == (cls.task, cls.data_type, cls.framework)
    fields = cls.Hyperparameters.model_fields
    assert info.param_names == list(fields), "same names, in the model's order"
    for p in info.hyperparameters:
        impl = _implemented_param(p.name, fields[p.name])
        declared = Param(p.name, p.type, p.default, "", p.ge, p.gt, p.le, p.lt, p.choices, p.nullable)
        assert declared == impl, p.name
        assert p.help, f"{name}.{p.name} needs a one-line meaning"
        # and the implementation accepts the declared default
        cls.hyperparameters({p.name: p.default})
    assert info.onnx == (cls.export_onnx is not Algorithm.export_onnx)
    if getattr(cls, "data_tasks", None):
        assert set(info.data_tasks) == set(cls.data_tasks)  # type: ignore[attr-defined]


# -- the metrics a tiny fit reports ----------------------------------------------------------------

# the smallest fit of each family (one epoch or step, a few small images)
TINY_TORCH_CLS = {"epochs": 1, "batch_size": 10, "input_size": 32}
TINY: dict[str, dict[str, Any]] = {
    "gaussian_mixture": {"n_components": 3},  # one component scores no silhouette
    # few trees: the ONNX export of a 100-round boosted model took 85 s on a loaded 2-core machine
    **{n: {"max_iter": 5} for n in ("hist_gradient_boosting", "hist_gradient_boosting_regressor")},
    **{n: {"n_estimators": 5} for n in ("random_forest", "random_forest_regressor", "gradient_boosting",
                                         "xgboost", "xgboost_regressor")},
    **{n: TINY_TORCH_CLS for n, a in CATALOGUE.items() if a.framework in ("pytorch", "tensorflow")
       and a.task == "classification"},
    **{n: {"epochs": 1, "batch_size": 4, "min_size": 64, "max_size": 64} for n, a in CATALOGUE.items()
       if a.framework == "pytorch" and a.task in ("detection", "instance-segmentation")},
    "tiny_centernet": {"epochs": 1, "batch_size": 4},  # no R-CNN sizes: its own input_size
    **{n: {"epochs": 1, "batch_size": 2, "input_size": 64} for n, a in CATALOGUE.items()
       if a.framework == "pytorch" and a.task == "semantic-segmentation"},
    "easymaker-image-classification": {"num_train_epochs": 1, "per_device_train_batch_size": 10,
                                       "logging_steps": 1},
    "easymaker-semantic-segmentation": {"num_train_epochs": 0.5, "image_size": 64, "logging_steps": 1},
    "easymaker-object-detection": {"num_train_epochs": 0.5, "image_size": 64, "logging_steps": 1},
}


def _reported(name: str, data: TrainData, tmp_path: Path) -> tuple[Algorithm, Any, set[str]]:
    algo = get_algorithm(name)
    hist = HistoryCallback()
    model = algo.train(data, TINY.get(name, {}), callbacks=hist, workdir=tmp_path)
    return algo, model, set().union(*(m.keys() for _, m in hist.history))


TABULAR = [n for n, a in CATALOGUE.items() if a.data_type == "tabular"]
IMAGE = [n for n, a in CATALOGUE.items() if a.data_type == "image"]


@pytest.mark.parametrize("name", TABULAR)
def test_tabular_fit_reports_the_declared_metrics_and_exports_onnx(name: str, wine, diabetes,
                                                                   tmp_path: Path) -> None:
    _skip_missing(name)
    data = diabetes if CATALOGUE[name].task == "regression" else wine
    algo, model, reported = _reported(name, data, tmp_path)
    assert reported == set(CATALOGUE[name].metrics)
    pytest.importorskip("skl2onnx")
    if CATALOGUE[name].framework == "xgboost":
        pytest.importorskip("onnxmltools")
    x, _ = data.table("test")
    assert (algo.export_onnx(model, tmp_path / "m.onnx", x.iloc[:4]) is not None) == CATALOGUE[name].onnx


@pytest.fixture(scope="module")
def image_data(samples_dir: Path, digits_root: Path) -> dict[str, TrainData]:
    from kiln.data.formats import load

    from .conftest import draw_shapes

    coco, seg = samples_dir / "catalogue-coco", samples_dir / "catalogue-seg"
    if not coco.exists():
        draw_shapes(coco, {"train": 4, "validation": 2, "test": 1})
        draw_shapes(seg, {"train": 4, "validation": 2, "test": 1}, layout="segmentation-json")
    return {"classification": digits_data(digits_root, {"train": 20, "validation": 10, "test": 0}),
            "detection": TrainData(load(coco, task="detection")),
            "instance-segmentation": TrainData(load(coco, task="instance-segmentation")),
            "semantic-segmentation": TrainData(load(seg, task="semantic-segmentation"))}


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGE)
def test_image_fit_reports_the_declared_metrics(name: str, image_data: dict[str, TrainData],
                                                tmp_path: Path) -> None:
    _skip_missing(name)
    pytest.importorskip("torchvision")
    _, _, reported = _reported(name, image_data[CATALOGUE[name].task], tmp_path)
    assert reported == set(CATALOGUE[name].metrics)


# -- lookups ----------------------------------------------------------------------------------------

def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(KilnError) as e:
        algorithm_info("random_forrest")
    assert e.value.hint == "did you mean 'random_forest'?"


def test_catalogue_imports_no_ml_library() -> None:
    code = ("import sys, kiln.algorithms.catalogue; "
            "print(','.join(m for m in ('torch', 'sklearn', 'xgboost', 'transformers', 'tensorflow', 'pandas', "
            "'numpy', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_range_text() -> None:
    rf = CATALOGUE["random_forest_regressor"]
    assert rf.param("n_estimators").range_text() == "[1, 10000]"  # type: ignore[union-attr]
    assert rf.param("max_features").range_text() == "float | sqrt | log2"  # type: ignore[union-attr]
    em = CATALOGUE["easymaker-image-classification"]
    assert em.param("learning_rate").range_text() == ">= 0"  # type: ignore[union-attr]
    assert CATALOGUE["keras_small_cnn"].param("dropout").range_text() == "[0, 1)"  # type: ignore[union-attr]
    assert CATALOGUE["svm"].param("kernel").range_text() == "rbf | linear | poly | sigmoid"  # type: ignore[union-attr]
