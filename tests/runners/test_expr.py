"""The expr-lang / govaluate subset and the {{...}} substitution used by the local runner."""

from __future__ import annotations

import pytest

from kiln.runners._expr import ExprError, evaluate, evaluate_when, format_value, go_date
from kiln.runners._template import UnresolvedTag, render


@pytest.mark.parametrize("text, env, expected", [
    ("toJson(filter([1, 3], {# > 1}))", {}, "[3]"),
    ("asInt(inputs.parameters.foo) * 10", {"inputs": {"parameters": {"foo": "3"}}}, 30),
    ("asFloat('1.5') + 1", {}, 2.5),
    ("map([1, 2], {# * 2})", {}, [2, 4]),
    ("inputs.parameters['safe-to-retry'] == 'true'", {"inputs": {"parameters": {"safe-to-retry": "true"}}}, True),
    ("lastRetry.message matches 'imminent|deleted'", {"lastRetry": {"message": "pod deleted"}}, True),
    ("1 + 2 * 3 ** 2", {}, 19),
    ("x > 1 ? 'big' : 'small'", {"x": 5}, "big"),
    ("'ab' in ['ab', 'c'] && !('z' in ['ab'])", {}, True),
    ("sprig.upper('a') + sprig.trim('  b ')", {}, "Ab"),
    ("len(split('a,b,c', ','))", {}, 3),
    ("a?.b ?? 'none'", {"a": None}, "none"),
    ("sprig.date('2006-01-02', t)", {"t": "2024-03-05T10:00:00Z"}, "2024-03-05"),
])
def test_evaluate(text, env, expected) -> None:
    assert evaluate(text, env) == expected


@pytest.mark.parametrize("text, expected", [
    ("heads == heads", True),
    ("tails == heads", False),
    ("Failed != Succeeded", True),
    ("even == even", True),
    ("1 < 2 && 3 >= 3", True),
    ("false", False),
    ("true || false", True),
    ("my-value == my-value", True),
    ("abc123 =~ '^abc'", True),
    ("5 == 5.0", True),
])
def test_when(text, expected) -> None:
    assert evaluate_when(text) is expected


@pytest.mark.parametrize("text", ["1 +", "filter(", "a ==", "[1, 2"])
def test_syntax_errors(text) -> None:
    with pytest.raises(ExprError):
        evaluate(text, {"a": 1})


def test_unknown_name_and_non_boolean_when() -> None:
    with pytest.raises(ExprError, match="unknown name 'nope'"):
        evaluate("nope + 1", {})
    with pytest.raises(ExprError, match="does not evaluate to a boolean"):
        evaluate_when("heads")


def test_format_value_matches_argo_rendering() -> None:
    assert format_value(30.0) == "30" and format_value(True) == "true" and format_value([1, "a"]) == '[1,"a"]'
    assert go_date("2006", "2026-01-02T00:00:00Z") == "2026"


def test_render_simple_and_expression_tags() -> None:
    scope = {"inputs.parameters.x": "7", "steps.a.outputs.result": "hi", "item": "3"}
    assert render("{{inputs.parameters.x}}-{{ steps.a.outputs.result }}", scope) == "7-hi"
    assert render("{{=asInt(inputs.parameters.x) + asInt(item)}}", scope) == "10"
    assert render("{{=toJson(filter([1, 3], {# > 1}))}}", scope) == "[3]"
    with pytest.raises(UnresolvedTag, match=r"steps.b.outputs.result"):
        render("{{steps.b.outputs.result}}", scope)
    # lenient: unknown tags and expressions stay for a later pass
    assert render("{{steps.b.outputs.result}} {{=item}}", scope, strict=False) == "{{steps.b.outputs.result}} {{=item}}"
