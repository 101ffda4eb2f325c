"""JSON Schema per kind, for editors (yaml-language-server) and other tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kiln.api import API_VERSION, KINDS


def schema_for(kind: str) -> dict:
    model: Any = KINDS[kind]
    schema = model.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://kiln.dev/schemas/{API_VERSION}/{kind.lower()}.schema.json"
    schema.setdefault("title", kind)
    return schema


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
