"""The kind registries of each layer describe the same kinds, and each kind's pipeline only
names steps that exist in its own step namespace."""

from __future__ import annotations

import kiln.api
from kiln.api.kinds import ALL
from kiln.controller.handlers import HANDLERS, KINDS, PIPELINES
from kiln.controller.render import KIND_SHORT
from kiln.controller.steps import STEPS
from kiln.loader import load_specs
from kiln.validate import SPEC_KINDS
from tests.helpers import ROOT


def test_every_layer_knows_the_same_kinds_in_the_same_order() -> None:
    names = [k.name for k in ALL]
    assert list(kiln.api.KINDS) == names
    assert list(SPEC_KINDS) == names
    assert list(KINDS) == names
    assert list(HANDLERS) == list(PIPELINES) == list(KIND_SHORT) == names
    for name, kind in KINDS.items():
        assert kind.spec is SPEC_KINDS[name] and kind.handler.kind == name
        assert kiln.api.KINDS[name] is kind.spec.info.model


def test_pipelines_name_steps_of_their_own_kind() -> None:
    specs = load_specs(ROOT / "specs", ROOT / "specs" / "templates")
    seen = set()
    for s in specs.specs:
        kind = KINDS[s.kind]
        for task in kind.pipeline(s):
            assert task.step in STEPS, (s.ref, task.step)
            assert task.step.startswith(kind.steps + "."), (s.ref, task.step)
        seen.add(s.kind)
    assert seen == set(KINDS)


def test_a_field_view_writes_through_to_the_registry() -> None:
    before = KINDS["Dataset"]
    try:
        HANDLERS["Dataset"] = HANDLERS["Workspace"]
        assert KINDS["Dataset"].handler is HANDLERS["Workspace"] and KINDS["Dataset"].pipeline is before.pipeline
    finally:
        KINDS["Dataset"] = before


def _field(model: type, name: str):
    """The pydantic field a spec document calls ``name`` (its alias, e.g. ``register``)."""
    return next((f for n, f in model.model_fields.items() if (f.alias or n) == name), None)


def test_every_declared_update_class_names_a_real_field() -> None:
    """A typo in a kind's update table would leave that field on the safe default (re-run) and
    the cheap path silently unused: each declared prefix must be a field of the kind's model."""
    import typing

    from pydantic import BaseModel

    from kiln.api.kinds import UPDATE_CLASSES

    for info in ALL:
        for path, update in info.updates:
            assert update in UPDATE_CLASSES, (info.name, path)
            model: typing.Any = info.model
            for part in path.split("."):
                f = _field(model, part)
                if f is None and part == "description" and path.startswith("metadata."):
                    break  # metadata.description: declared for every kind, as the ops work adds it
                assert f is not None, f"{info.name}: {path}: no field {part!r} in {model.__name__}"
                model = next((a for a in typing.get_args(f.annotation) or (f.annotation,)
                              if isinstance(a, type) and issubclass(a, BaseModel)), None)
                if model is None:
                    break


def test_update_class_is_the_longest_declared_prefix_and_unknown_fields_re_run() -> None:
    from kiln.controller.diff import FieldChange, classify

    exp = {k.name: k for k in ALL}["Experiment"]
    assert exp.update_class("spec.register.tags.team") == "re-register"
    assert exp.update_class("spec.register.aliases[0]") == "re-register"
    assert exp.update_class("spec.register") == "re-select"  # the whole block: register the chosen trial
    assert exp.update_class("spec.registerX") == "re-run"  # a prefix of the name is not a parent
    assert exp.update_class("spec.algorithm.hyperparameters.lr") == "re-run"
    assert exp.update_class("spec.someFutureField") == "re-run"
    worst, fields = classify("Experiment", [FieldChange("spec.register.tags.team", "a", "b"),
                                            FieldChange("metadata.labels.x", None, "y")])
    assert worst == "re-register" and [f.update for f in fields] == ["re-register", "metadata"]
    assert classify("Experiment", [FieldChange("spec.selectTrial", 1, 2),
                                   FieldChange("spec.objective.metric", "a", "b")])[0] == "re-run"
    assert classify("Experiment", [])[0] == "re-run"  # only the hash moved: nothing says cheaper
    assert classify("Deployment", [FieldChange("spec.workers", 1, 2)])[0] == "restart"
    assert classify("Deployment", [FieldChange("spec.model.version", 1, 2)])[0] == "re-run"
