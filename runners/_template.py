"""``{{...}}`` substitution as Argo does it, over a flat scope.

Why a flat scope: Argo resolves simple tags (``{{steps.a.outputs.result}}``) by exact key lookup in
a ``map[string]string``; only ``{{= expr}}`` tags see a nested environment. Keeping the scope flat
makes the common case one dict lookup per tag; the nested view is built only when an expression
tag is met (``nested_env``).

``strict=False`` leaves unknown simple tags and all expression tags untouched: that is how a
composite template is rendered with its inputs before its steps' own references exist.
"""

from __future__ import annotations

from typing import Any

from kiln.runners import _expr


class UnresolvedTag(ValueError):
    """A ``{{...}}`` reference names nothing in scope."""

    def __init__(self, tag: str, message: str | None = None) -> None:
        self.tag = tag
        super().__init__(message or f"failed to resolve {{{{{tag}}}}}")


def nested_env(scope: dict[str, Any]) -> dict[str, Any]:
    """The flat scope as nested dicts for expr-lang (``steps.a.outputs.result``)."""
    env: dict[str, Any] = {}
    for key, value in scope.items():
        parts = key.split(".")
        cur = env
        ok = True
        for p in parts[:-1]:
            nxt = cur.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                cur[p] = nxt
            cur = nxt
        if not ok:
            continue
        last = parts[-1]
        if isinstance(cur.get(last), dict) and not isinstance(value, dict):
            continue  # aggregated JSON string vs. per-name map: keep the map
        cur[last] = value
    return env


def _find_close(s: str, start: int) -> int:
    """Index of the ``}}`` closing an expression tag, skipping braces and quotes inside."""
    depth = 0
    i = start
    quote = ""
    while i < len(s) - 1:
        c = s[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "'\"`":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            if depth == 0 and s[i + 1] == "}":
                return i
            depth -= 1
        i += 1
    return -1


def render(s: str, scope: dict[str, Any], *, strict: bool = True) -> str:
    """Substitute every tag in ``s``."""
    if "{{" not in s:
        return s
    out: list[str] = []
    pos = 0
    env: dict[str, Any] | None = None
    while True:
        i = s.find("{{", pos)
        if i < 0:
            out.append(s[pos:])
            break
        out.append(s[pos:i])
        body_start = i + 2
        is_expr = s[body_start:].lstrip().startswith("=")
        j = _find_close(s, body_start) if is_expr else s.find("}}", body_start)
        if j < 0:
            out.append(s[i:])
            break
        body = s[body_start:j].strip()
        if is_expr:
            if not strict:
                out.append(s[i:j + 2])
            else:
                if env is None:
                    env = nested_env(scope)
                try:
                    out.append(_expr.format_value(_expr.evaluate(body[1:].strip(), env)))
                except _expr.ExprError as exc:
                    raise UnresolvedTag(body, f"failed to evaluate {{{{{body}}}}}: {exc}") from exc
        else:
            v = scope.get(body)
            if isinstance(v, dict) and not strict:
                v = None  # an artifact: a later `from:` reads it from the scope, not from text
            if v is None:
                if strict:
                    raise UnresolvedTag(body)
                out.append(s[i:j + 2])
            else:
                out.append(v if isinstance(v, str) else _expr.format_value(v))
        pos = j + 2
    return "".join(out)


def render_obj(obj: Any, scope: dict[str, Any], *, strict: bool = True) -> Any:
    """``render`` applied to every string inside a JSON-like value (keys untouched)."""
    if isinstance(obj, str):
        return render(obj, scope, strict=strict)
    if isinstance(obj, dict):
        return {k: render_obj(v, scope, strict=strict) for k, v in obj.items()}
    if isinstance(obj, list):
        return [render_obj(v, scope, strict=strict) for v in obj]
    return obj
