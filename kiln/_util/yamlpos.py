"""Find where a value sits in a YAML file, for error messages.

Loading specs takes the fast path (PyYAML's C loader straight to Python objects, no positions).
Only when something is wrong do we compose the file again into nodes and walk them to the line
and column of the offending path, so a clean ``kiln plan`` never pays for positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import yaml

# libyaml's C loader when PyYAML was built with it (the usual wheels are)
_Base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """The safe loader, refusing a key given twice in one mapping: YAML would keep the last one
    silently (a second `spec:` or `hyperparameters:` drops the first without a word). YAML 1.1
    reads an unquoted ``2026-01-01`` as a date object, which JSON (the state store, the spec hash,
    the workflow's ``--spec``) cannot hold, while the quoted one is text: a spec date stays the text
    written, and the models parse it where a date is allowed (``Workspace.spec.period``), so quoting
    it or not makes the same document and hash (#25)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if (key.tag, key.value) in seen:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"found duplicate key {key.value!r}", key.start_mark)
                    seen.add((key.tag, key.value))
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))


@lru_cache(maxsize=256)
def _nodes(text: str) -> tuple[yaml.Node, ...]:
    return tuple(yaml.compose_all(text, Loader=_Loader))


def document_line(text: str, index: int) -> int:
    """1-based line where the ``index``-th document of ``text`` starts."""
    try:
        return _nodes(text)[index].start_mark.line + 1
    except (IndexError, yaml.YAMLError):
        return 1


def locate(text: str, index: int, path: Sequence[str | int]) -> tuple[int, int, list[str | int]]:
    """(line, column, matched path) of ``path`` in document ``index``, 1-based.

    Path elements that are not keys or indices in the YAML (pydantic's union tags, for example)
    are skipped; when the path goes past what exists (a missing field), the position is that of
    the deepest node that does exist.
    """
    try:
        node = _nodes(text)[index]
    except (IndexError, yaml.YAMLError):
        return 1, 1, list(path)
    mark = node.start_mark
    matched: list[str | int] = []
    for i, part in enumerate(path):
        child = None
        key_mark = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    child, key_mark = v, k.start_mark
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        if child is None:
            if isinstance(part, str) and _is_tag(part):
                continue  # a pydantic union tag, not a key in the file
            matched.extend(path[i:])  # a missing field: point at its parent
            break
        matched.append(part)
        node = child
        # Point at the key ("maxTrials: ten" -> the key's column); list items at the item.
        mark = key_mark if key_mark is not None else child.start_mark
    return mark.line + 1, mark.column + 1, matched


def find(text: str, index: int, path: Sequence[str | int]) -> tuple[int, int] | None:
    """(line, column) of ``path`` in document ``index`` when the document has all of it, else
    None (``locate`` would point at the nearest parent instead)."""
    path = [p for p in path if not (isinstance(p, str) and _is_tag(p))]
    line, col, matched = locate(text, index, path)
    try:
        node = _nodes(text)[index]
    except (IndexError, yaml.YAMLError):
        return None
    for part in path:  # locate reports a missing tail as matched: walk it for real
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        if child is None:
            return None
        node = child
    return line, col


def _is_tag(part: str) -> bool:
    # pydantic union members in error locations: "literal['auto']", "int", "FloatParam", "function-after[...]"
    return part[:1].isupper() or "[" in part or part in {"int", "float", "str", "bool", "list", "dict", "none"}


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out
