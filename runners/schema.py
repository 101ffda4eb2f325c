"""Validate Argo manifests against Argo v4.1.2's strict JSON Schema before anything runs them.

Why: both runners take plain dicts; a typo such as ``comand:`` would be silently dropped by the
Kubernetes API server (unknown fields are pruned from CRDs) and by a naive local executor, so the
run would do something other than what the spec says. The bundled schema
(``kiln/_data/argo-v4.1.2.schema.strict.json``) is Argo's own ``api/jsonschema/schema.json`` with
its known int-or-string defects fixed and ``additionalProperties: false`` on every object, which is
what ``argo lint --strict`` enforces.

The file's root is a ``oneOf`` over five kinds that only ever says "no match", so we validate
against one kind's definition, chosen by the manifest's ``kind`` (``KINDS`` below). One
``Draft202012Validator`` per kind is built lazily and kept for the process; the schema itself is
not re-checked (``check_schema`` is for the test-suite, it costs ~0.5 s).

Issues come back as ``SchemaIssue(path, message)`` where ``path`` is written the way a user reads a
manifest, e.g. ``spec.templates[2].container.comand``.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from kiln.errors import WorkflowError

SCHEMA_RESOURCE = "argo-v4.1.2.schema.strict.json"

# kind -> schema definition it is validated against; the one registry of supported kinds.
KINDS: dict[str, str] = {
    "Workflow": "io.argoproj.workflow.v1alpha1.Workflow",
    "WorkflowTemplate": "io.argoproj.workflow.v1alpha1.WorkflowTemplate",
    "ClusterWorkflowTemplate": "io.argoproj.workflow.v1alpha1.ClusterWorkflowTemplate",
    "CronWorkflow": "io.argoproj.workflow.v1alpha1.CronWorkflow",
}

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
               dict: "object", type(None): "null"}


@dataclass(frozen=True)
class SchemaIssue:
    """One schema violation: where in the manifest (dotted path) and what is wrong."""

    path: str
    message: str

    def format(self) -> str:
        return f"{self.path or '<document>'}: {self.message}"


class WorkflowSchemaError(WorkflowError):
    """A manifest failed schema validation; ``issues`` keeps them structured for callers."""

    def __init__(self, message: str, issues: list[SchemaIssue]) -> None:
        self.issues = issues
        super().__init__(message, hint="fix the fields above (checked as `argo lint --strict` does)")


@functools.cache
def _schema() -> dict[str, Any]:
    text = resources.files("kiln").joinpath("_data", SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def validator_for(kind: str) -> jsonschema.Draft202012Validator:
    """The (cached) validator for one kind; ``kind`` must be a key of ``KINDS``."""
    schema = _schema()
    root = {
        "$schema": schema["$schema"],
        "definitions": schema["definitions"],
        "$ref": f"#/definitions/{KINDS[kind]}",
    }
    return jsonschema.Draft202012Validator(root)


def format_path(parts: Any) -> str:
    """``['spec', 'templates', 2, 'container']`` -> ``spec.templates[2].container``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _type_name(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _issues_for(error: ValidationError) -> list[SchemaIssue]:
    # oneOf/anyOf only say "not valid under any"; the most relevant branch error is the useful one.
    if error.validator in ("oneOf", "anyOf") and error.context:
        return _issues_for(best_match(error.context))
    path = list(error.absolute_path)
    where = format_path(path)
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
        issues = []
        for extra in sorted(error.instance):
            if extra in known or any(p.search(extra) for p in patterns):
                continue
            close = difflib.get_close_matches(extra, known, n=1, cutoff=0.6)
            if close:
                hint = f"did you mean '{close[0]}'?"
            else:
                shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
                hint = f"valid fields: {shown}"
            issues.append(SchemaIssue(format_path([*path, extra]), f"unknown field '{extra}' ({hint})"))
        return issues or [SchemaIssue(where, error.message)]
    if kind == "required":
        missing = [r for r in error.validator_value if r not in error.instance]
        return [SchemaIssue(format_path([*path, m]), f"missing required field '{m}'") for m in missing]
    if kind == "type":
        expected = error.validator_value
        got = error.instance
        msg = f"must be {'a' if expected != 'array' else 'an'} {expected}, got {_type_name(got)} {json.dumps(got)[:60]}"
        if expected == "string" and isinstance(got, (int, float, bool)):
            msg += f" (quote it: \"{json.dumps(got)}\")"
        return [SchemaIssue(where, msg)]
    if kind == "const":
        return [SchemaIssue(where, f"must be {json.dumps(error.validator_value)}, got {json.dumps(error.instance)[:60]}")]
    if kind == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value)
        return [SchemaIssue(where, f"must be one of {allowed}, got {json.dumps(error.instance)[:60]}")]
    return [SchemaIssue(where, error.message)]


def validate_workflow(manifest: dict[str, Any]) -> list[SchemaIssue]:
    """All schema issues of ``manifest`` (empty when valid), sorted by path.

    Dispatches on ``manifest['kind']`` (one of ``KINDS``).
    """
    if not isinstance(manifest, dict):
        return [SchemaIssue("", f"manifest must be a mapping, got {_type_name(manifest)}")]
    kind = manifest.get("kind")
    if kind not in KINDS:
        valid = ", ".join(KINDS)
        got = "missing" if kind is None else f"'{kind}'"
        return [SchemaIssue("kind", f"kind is {got}; valid kinds: {valid}")]
    issues: list[SchemaIssue] = []
    for error in validator_for(kind).iter_errors(manifest):
        issues.extend(_issues_for(error))
    return sorted(set(issues), key=lambda i: (i.path, i.message))


def manifest_label(manifest: Any) -> str:
    """``Workflow/name`` (or ``generateName-``) for error messages."""
    if not isinstance(manifest, dict):
        return "<manifest>"
    meta = manifest.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name") or meta.get("generateName") or "<unnamed>"
    return f"{manifest.get('kind') or '<no kind>'}/{name}"


def check_workflow(manifest: dict[str, Any]) -> None:
    """Raise ``WorkflowError`` listing every schema issue of ``manifest``; return None if valid."""
    issues = validate_workflow(manifest)
    if not issues:
        return
    n = len(issues)
    lines = [f"{manifest_label(manifest)} is not a valid Argo v4.1.2 manifest ({n} issue{'s' if n != 1 else ''}):"]
    lines += [f"  {i.format()}" for i in issues]
    raise WorkflowSchemaError("\n".join(lines), issues)
