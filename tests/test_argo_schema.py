"""Argo manifest validation against the bundled strict v4.1.2 schema (kiln.runners.schema)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from kiln.errors import WorkflowError
from kiln.runners import schema
from kiln.runners.schema import SchemaIssue, check_workflow, validate_workflow

REPO = Path(__file__).resolve().parents[1]


def examples_dir() -> Path | None:
    env = os.environ.get("KILN_ARGO_EXAMPLES")
    # <repo>/../shared/argo/examples for the main checkout; worktrees sit one level deeper
    cands = [REPO.parent / "shared" / "argo" / "examples", REPO.parent.parent / "shared" / "argo" / "examples"]
    for cand in ([Path(env)] if env else cands):
        if cand.is_dir():
            return cand
    return None


EXAMPLES = examples_dir()
EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.yaml")) if EXAMPLES else []


def _hello() -> dict:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "hello"},
        "spec": {
            "entrypoint": "main",
            "arguments": {"parameters": [{"name": "msg", "value": "hi"}]},
            "templates": [
                {"name": "main", "steps": [[{"name": "say", "template": "echo",
                                             "arguments": {"parameters": [{"name": "m", "value": "x"}]}}]]},
                {"name": "echo", "inputs": {"parameters": [{"name": "m"}]},
                 "container": {"image": "busybox", "command": ["echo"], "args": ["{{inputs.parameters.m}}"]}},
            ],
        },
    }


@pytest.mark.skipif(EXAMPLES is None, reason="Argo examples not found (set KILN_ARGO_EXAMPLES or provide ../shared/argo/examples)")
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)) if EXAMPLES else str(p))
def test_every_argo_example_is_valid(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no document"
    for doc in docs:
        assert validate_workflow(doc) == [], path
        check_workflow(doc)  # raises nothing


def test_examples_were_found_when_present() -> None:
    if EXAMPLES is None:
        pytest.skip("Argo examples not found")
    assert len(EXAMPLE_FILES) >= 25


def test_valid_minimal_workflow() -> None:
    assert validate_workflow(_hello()) == []


def test_typo_in_container_reports_path_and_suggestion() -> None:
    wf = _hello()
    c = wf["spec"]["templates"][1]["container"]
    c["comand"] = c.pop("command")
    issues = validate_workflow(wf)
    assert issues == [SchemaIssue("spec.templates[1].container.comand",
                                  "unknown field 'comand' (did you mean 'command'?)")]


def test_unknown_field_without_close_match_lists_valid_fields() -> None:
    wf = _hello()
    wf["spec"]["zzzqqq"] = 1
    [issue] = validate_workflow(wf)
    assert issue.path == "spec.zzzqqq"
    assert "valid fields:" in issue.message and "entrypoint" in issue.message


def test_int_parameter_values_are_rejected() -> None:
    wf = _hello()
    wf["spec"]["arguments"]["parameters"][0]["value"] = 3
    wf["spec"]["templates"][0]["steps"][0][0]["arguments"]["parameters"][0]["value"] = 7
    wf["spec"]["templates"][1]["inputs"]["parameters"][0]["default"] = 1.5
    paths = {i.path: i.message for i in validate_workflow(wf)}
    assert set(paths) == {
        "spec.arguments.parameters[0].value",
        "spec.templates[0].steps[0][0].arguments.parameters[0].value",
        "spec.templates[1].inputs.parameters[0].default",
    }
    assert paths["spec.arguments.parameters[0].value"] == 'must be a string, got integer 3 (quote it: "3")'


def test_yaml_unquoted_number_is_caught() -> None:
    # the common way an int sneaks in: YAML reads `value: 1` as an integer
    wf = yaml.safe_load("""
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: p-}
spec:
  entrypoint: main
  arguments:
    parameters: [{name: n, value: 1}]
  templates:
  - name: main
    container: {image: busybox, command: [echo]}
""")
    assert [i.path for i in validate_workflow(wf)] == ["spec.arguments.parameters[0].value"]


def test_wrong_types_and_missing_required() -> None:
    wf = _hello()
    wf["spec"]["templates"] = {"name": "main"}
    wf["apiVersion"] = "v1"
    del wf["metadata"]
    issues = {i.path: i.message for i in validate_workflow(wf)}
    assert issues["spec.templates"].startswith("must be an array, got object")
    assert issues["apiVersion"] == 'must be "argoproj.io/v1alpha1", got "v1"'
    assert issues["metadata"] == "missing required field 'metadata'"


def test_int_or_string_fields_accept_ints() -> None:
    wf = _hello()
    wf["spec"]["activeDeadlineSeconds"] = 60
    wf["spec"]["templates"][1]["retryStrategy"] = {"limit": 3}
    assert validate_workflow(wf) == []


def test_check_workflow_lists_every_issue() -> None:
    wf = _hello()
    wf["spec"]["entrypoint"] = 5
    wf["spec"]["templates"][1]["container"]["imagee"] = "x"
    with pytest.raises(WorkflowError) as err:
        check_workflow(wf)
    text = str(err.value)
    assert "Workflow/hello" in text and "2 issues" in text
    assert "spec.entrypoint: must be a string" in text
    assert "spec.templates[1].container.imagee: unknown field 'imagee' (did you mean 'image'?)" in text
    assert [i.path for i in err.value.issues] == ["spec.entrypoint", "spec.templates[1].container.imagee"]


def test_other_kinds_dispatch_on_kind() -> None:
    wf = _hello()
    tmpl = {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
            "metadata": {"name": "t"}, "spec": copy.deepcopy(wf["spec"])}
    assert validate_workflow(tmpl) == []
    cron = {"apiVersion": "argoproj.io/v1alpha1", "kind": "CronWorkflow", "metadata": {"name": "c"},
            "spec": {"schedules": ["*/5 * * * *"], "workflowSpec": copy.deepcopy(wf["spec"])}}
    assert validate_workflow(cron) == []
    cron["spec"]["workflowSpec"]["templates"][1]["container"]["comand"] = ["x"]
    cron["spec"]["schedul"] = "x"
    paths = [i.path for i in validate_workflow(cron)]
    assert paths == ["spec.schedul", "spec.workflowSpec.templates[1].container.comand"]
    # a Workflow-only field is rejected in a WorkflowTemplate's metadata-level sibling
    tmpl["status"] = {}
    assert [i.path for i in validate_workflow(tmpl)] == ["status"]


def test_unknown_kind_and_non_mapping() -> None:
    [issue] = validate_workflow({"kind": "Pipeline"})
    assert issue.path == "kind" and "Workflow, WorkflowTemplate" in issue.message
    [issue] = validate_workflow({})
    assert "missing" in issue.message
    [issue] = validate_workflow(["x"])  # type: ignore[arg-type]
    assert "mapping" in issue.message


def test_keys_needing_quotes_are_bracketed() -> None:
    wf = _hello()
    wf["metadata"]["labels"] = {"kiln.dev/x": 1}
    [issue] = validate_workflow(wf)
    assert issue.path == 'metadata.labels["kiln.dev/x"]'


def test_validator_is_built_once_and_schema_is_sound() -> None:
    assert schema.validator_for("Workflow") is schema.validator_for("Workflow")
    # the bundled file itself is a valid 2020-12 schema (slow-ish check done once, here only)
    jsonschema.Draft202012Validator.check_schema(schema.validator_for("Workflow").schema)
