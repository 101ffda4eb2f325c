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
