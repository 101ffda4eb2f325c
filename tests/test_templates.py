"""Template composition: the plain path (kiln.templates.compose_plain) composes exactly what
hydra composes, and leaves to hydra what it cannot be sure of."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kiln.templates import _NotPlain, compose, compose_hydra, compose_plain
from tests.helpers import ROOT, write

TEMPLATES = {
    "base.yaml": """
        spec:
          mode: run
          algorithm:
            name: resnet18
            hyperparameters: {batch_size: 32, epochs: 8, learning_rate: 0.01}
          objective: {metric: validation_accuracy, direction: maximize}
          checkpoint: {every: 1, unit: epoch}
          tags: [a, b]
        """,
    "fast.yaml": """
        spec:
          algorithm:
            hyperparameters: {epochs: 1}
          tags: [c]
          resources: {preset: cpu-small}
        """,
}
DOC = {"apiVersion": "kiln.dev/v1alpha1", "kind": "Experiment", "metadata": {"name": "x"},
       "spec": {"dataset": {"name": "d"}, "algorithm": {"hyperparameters": {"learning_rate": 0.1}}}}


@pytest.mark.parametrize("defaults, overrides", [
    (["base"], []),
    (["base", "fast"], []),                          # nested merge, lists replaced
    (["_self_", "base"], []),                        # the templates win over the document
    (["base", "_self_", "fast"], []),
    (["base"], ["spec.algorithm.hyperparameters.epochs=3", "+spec.algorithm.hyperparameters.input_size=32",
                "spec.algorithm.name=resnet50", "~spec.checkpoint", "spec.objective.metric=val_loss",
                "+spec.algorithm.pretrained=null", "spec.algorithm.hyperparameters.learning_rate=0.5",
                "+spec.flag=TRUE"]),
])
def test_plain_composition_is_hydras(tmp_path: Path, defaults: list, overrides: list) -> None:
    tdir = write(tmp_path / "templates", TEMPLATES)
    doc = {**DOC, "defaults": defaults, "overrides": overrides}
    plain = compose_plain(doc, tdir)
    assert plain == compose_hydra(doc, tdir)
    assert compose(doc, tdir) == plain


def test_the_example_repository_composes_the_plain_way() -> None:
    doc = next(yaml.safe_load_all((ROOT / "specs/experiments/digits-resnet.yaml").read_text()))
    tdir = ROOT / "specs/templates"
    assert compose_plain(doc, tdir) == compose_hydra(doc, tdir)


@pytest.mark.parametrize("template, overrides", [
    ("spec: {algorithm: {hyperparameters: {learning_rate: 1e-3}}}", []),   # a float to OmegaConf, a string to PyYAML
    ("spec: {mode: run, objective: {metric: '${spec.mode}'}}", []),        # an interpolation
    ("spec: {period: {start: 2030-01-01}}", []),                           # a date to PyYAML, a string to OmegaConf
    ("spec: {mode: run}", ["spec.algorithm.hyperparameters.lr=[1, 2]"]),   # hydra's grammar
    ("spec: {mode: run}", ["spec.nope=1"]),                                # hydra's error
])
def test_anything_else_is_left_to_hydra(tmp_path: Path, template: str, overrides: list) -> None:
    tdir = write(tmp_path / "templates", {"t.yaml": template})
    doc = {**DOC, "defaults": ["t"], "overrides": overrides}
    with pytest.raises(_NotPlain):
        compose_plain(doc, tdir)
    try:
        expected = compose_hydra(doc, tdir)
    except Exception as exc:  # hydra's refusal is compose's too
        with pytest.raises(type(exc)):
            compose(doc, tdir)
    else:
        assert compose(doc, tdir) == expected
