"""JSON Schema per kind, for editors (yaml-language-server) and other tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kiln.algorithms.catalogue import CATALOGUE, Param
from kiln.api import API_VERSION, KINDS


def schema_for(kind: str) -> dict:
    model: Any = KINDS[kind]
    schema = model.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://kiln.dev/schemas/{API_VERSION}/{kind.lower()}.schema.json"
    schema.setdefault("title", kind)
    if kind == "Experiment":
        _algorithm_conditionals(schema["$defs"]["Algorithm"])
    return schema


def param_schema(p: Param) -> dict[str, Any]:
    """JSON Schema of one hyperparameter: its type, bounds or choices, default and meaning."""
    if p.type == "choice":
        body: dict[str, Any] = {"enum": list(p.choices)}
    else:
        body = {"type": _JSON_TYPES[p.type]}
        for attr, key in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum"), ("lt", "exclusiveMaximum")):
            if getattr(p, attr) is not None:
                body[key] = getattr(p, attr)
        if p.choices:
            body = {"anyOf": [body, {"enum": list(p.choices)}]}
    if p.nullable:
        body = {"anyOf": [*body.get("anyOf", [body]), {"type": "null"}]}
    return {**body, "default": p.default, "description": p.help}


_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def _algorithm_conditionals(algo: dict[str, Any]) -> None:
    """Per-algorithm hyperparameters, conditional on ``name`` (if/then), from the catalogue: an
    editor with the YAML language server completes each algorithm's names and flags a typo, a
    word for a number or a value out of range, as ``kiln validate`` does."""
    algo["properties"]["name"]["enum"] = list(CATALOGUE)
    algo["allOf"] = [
        {"if": {"properties": {"name": {"const": a.name}}, "required": ["name"]},
         "then": {"properties": {
             "hyperparameters": {"properties": {p.name: param_schema(p) for p in a.hyperparameters},
                                 "additionalProperties": False},
             "searchSpace": {"propertyNames": {"enum": a.param_names}}}}}
        for a in CATALOGUE.values()]


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        p = out / f"{kind.lower()}.schema.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(schema_for(kind), indent=2) + "\n")
        tmp.replace(p)
        written.append(p)
    return written
