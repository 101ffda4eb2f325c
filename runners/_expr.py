"""A small evaluator for the expression languages that appear in Argo manifests.

Why hand-written: Argo evaluates ``{{= ...}}`` tags, ``retryStrategy.expression`` and output
``valueFrom.expression`` with expr-lang (Go), and ``when`` with govaluate. No maintained
pure-Python library implements either, so this module parses the subset that Argo workflows use
with one recursive-descent parser and two modes:

- ``evaluate(text, env)``: expr-lang. Literals (numbers, '..'/".." strings, true/false/nil,
  arrays, maps), member access ``a.b``/``a?.b``/``a['b']``, calls, closures ``{# > 1}``,
  ``! not - +``, ``** * / % + - ..``, comparisons, ``in``/``not in``, ``matches contains
  startsWith endsWith``, ``&& and || or ??``, ternary ``c ? a : b``; builtins ``filter map all any
  none count find len string int float asInt asFloat toJson fromJson upper lower trim split join
  keys values abs max min`` and ``sprig.*`` (date, upper, lower, trim, replace, contains ...).
- ``evaluate_when(text)``: govaluate after ``{{...}}`` substitution. Same grammar plus ``=~``/``!~``,
  but an unknown bare word (``heads``, ``Succeeded``, ``my-value``) is the string itself.

Errors raise ``ExprError`` with the expression text, so callers can name the field.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import Any


class ExprError(ValueError):
    """The expression cannot be parsed or evaluated."""


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<num>\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?|\.\d+)
   |(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`)
   |(?P<op>\?\?|\?\.|\.\.|\*\*|==|!=|<=|>=|=~|!~|&&|\|\||[-+*/%^<>!?:.,()\[\]{}\#])
   |(?P<name>[A-Za-z_$][\w$]*)
    )""",
    re.VERBOSE,
)
# govaluate mode: bare words may carry '-', '.', '/' (values substituted into `when`)
_BARE = re.compile(r"\s*(?P<name>[A-Za-z_][\w\-./]*)")

_WORD_OPS = {"and": "&&", "or": "||", "not": "!", "in": "in", "matches": "matches",
             "contains": "contains", "startsWith": "startsWith", "endsWith": "endsWith"}


def _tokenize(text: str, bare: bool) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    n = len(text)
    while pos < n:
        if text[pos:].strip() == "":
            break
        if bare:
            m = _BARE.match(text, pos)
            if m and not re.match(r"\s*\d", text[pos:]):
                word = m.group("name")
                if word in _WORD_OPS:
                    out.append(("op", _WORD_OPS[word]))
                else:
                    out.append(("name", word))
                pos = m.end()
                continue
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected character {text[pos:].strip()[:1]!r} in expression {text!r}")
        pos = m.end()
        if m.group("num") is not None:
            s = m.group("num")
            out.append(("lit", float(s) if any(c in s for c in ".eE") else int(s)))
        elif m.group("str") is not None:
            s = m.group("str")
            if s[0] == "`":
                out.append(("lit", s[1:-1]))
            else:
                body = s[1:-1]
                out.append(("lit", re.sub(r"\\(.)", lambda mm: {"n": "\n", "t": "\t"}.get(mm.group(1), mm.group(1)), body)))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            word = m.group("name")
            out.append(("op", _WORD_OPS[word]) if word in _WORD_OPS else ("name", word))
    out.append(("end", None))
    return out


class _Closure:
    __slots__ = ("node",)

    def __init__(self, node: Any) -> None:
        self.node = node


_MISSING = object()

# binary operator precedence (higher binds tighter)
_BINARY = {
    "??": 1, "||": 2, "&&": 3,
    "==": 4, "!=": 4, "<": 4, ">": 4, "<=": 4, ">=": 4, "=~": 4, "!~": 4,
    "in": 4, "not in": 4, "matches": 4, "contains": 4, "startsWith": 4, "endsWith": 4,
    "..": 5, "+": 6, "-": 6, "*": 7, "/": 7, "%": 7, "**": 8, "^": 8,
}


class _Parser:
    def __init__(self, text: str, bare: bool) -> None:
        self.text = text
        self.toks = _tokenize(text, bare)
        self.i = 0

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.i]

    def next(self) -> tuple[str, Any]:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, op: str) -> None:
        t = self.next()
        if t != ("op", op):
            raise ExprError(f"expected {op!r} but found {t[1]!r} in expression {self.text!r}")

    def parse(self) -> Any:
        node = self.ternary()
        if self.peek()[0] != "end":
            raise ExprError(f"unexpected {self.peek()[1]!r} in expression {self.text!r}")
        return node

    def ternary(self) -> Any:
        cond = self.binary(1)
        if self.peek() == ("op", "?"):
            self.next()
            a = self.ternary()
            self.expect(":")
            b = self.ternary()
            return ("?:", cond, a, b)
        return cond

    def _binop(self) -> str | None:
        kind, val = self.peek()
        if kind != "op":
            return None
        if val == "!" and self.toks[self.i + 1] == ("op", "in"):
            return "not in"
        return val if val in _BINARY else None

    def binary(self, min_prec: int) -> Any:
        left = self.unary()
        while True:
            op = self._binop()
            if op is None or _BINARY[op] < min_prec:
                return left
            self.next()
            if op == "not in":
                self.next()
            right_prec = _BINARY[op] if op in ("**", "^") else _BINARY[op] + 1
            right = self.binary(right_prec)
            left = ("bin", op, left, right)

    def unary(self) -> Any:
        t = self.peek()
        if t in (("op", "!"), ("op", "-"), ("op", "+")):
            self.next()
            return ("un", t[1], self.unary())
        return self.postfix(self.primary())

    def postfix(self, node: Any) -> Any:
        while True:
            t = self.peek()
            if t in (("op", "."), ("op", "?.")):
                self.next()
                kind, name = self.next()
                if kind not in ("name", "op") or not isinstance(name, str):
                    raise ExprError(f"expected a field name after '.' in {self.text!r}")
                node = ("get", node, ("lit", name), t[1] == "?.")
            elif t == ("op", "["):
                self.next()
                if self.peek() == ("op", ":"):
                    self.next()
                    hi = self.ternary() if self.peek() != ("op", "]") else None
                    self.expect("]")
                    node = ("slice", node, None, hi)
                    continue
                idx = self.ternary()
                if self.peek() == ("op", ":"):
                    self.next()
                    hi = self.ternary() if self.peek() != ("op", "]") else None
                    self.expect("]")
                    node = ("slice", node, idx, hi)
                    continue
                self.expect("]")
                node = ("get", node, idx, False)
            elif t == ("op", "("):
                self.next()
                node = ("call", node, self.args(")"))
            else:
                return node

    def args(self, close: str) -> list[Any]:
        args: list[Any] = []
        while self.peek() != ("op", close):
            args.append(self.ternary())
            if self.peek() == ("op", ","):
                self.next()
            elif self.peek() != ("op", close):
                raise ExprError(f"expected ',' or {close!r} in expression {self.text!r}")
        self.next()
        return args

    def primary(self) -> Any:
        kind, val = self.next()
        if kind == "lit":
            return ("lit", val)
        if kind == "name":
            if val in ("true", "false"):
                return ("lit", val == "true")
            if val in ("nil", "null"):
                return ("lit", None)
            return ("var", val)
        if val == "(":
            node = self.ternary()
            self.expect(")")
            return node
        if val == "[":
            return ("list", self.args("]"))
        if val == "#":
            if self.peek() == ("name", "index"):
                self.next()
                return ("var", "#index")
            return ("var", "#")
        if val == "{":
            if self.peek() == ("op", "}"):
                self.next()
                return ("map", [])
            first = self.ternary()
            if self.peek() == ("op", ":"):
                items = []
                self.next()
                items.append((first, self.ternary()))
                while self.peek() == ("op", ","):
                    self.next()
                    if self.peek() == ("op", "}"):
                        break
                    k = self.ternary()
                    self.expect(":")
                    items.append((k, self.ternary()))
                self.expect("}")
                return ("map", items)
            self.expect("}")
            return ("closure", first)
        raise ExprError(f"unexpected {val!r} in expression {self.text!r}")


def _truthy(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise ExprError(f"expected a boolean, got {v!r}")


def _num(v: Any) -> int | float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ExprError(f"expected a number, got {v!r}")
    return v


def _int(v: Any) -> int:
    """A range bound: expr-lang's ``..`` takes integers (a float here was a TypeError before)."""
    n = _num(v)
    if not isinstance(n, int):
        raise ExprError(f"a range bound must be an integer, got {v!r}")
    return n


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b
    return type(a) is type(b) and a == b or (a is None and b is None)


def format_value(v: Any) -> str:
    """How Argo renders an expression result into a parameter string."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e21:
            return str(int(v))
        return repr(v)
    if isinstance(v, int):
        return str(v)
    return to_json(v)


def to_json(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def _as_int(v: Any) -> int:
    try:
        if isinstance(v, str):
            return int(v.strip()) if re.fullmatch(r"\s*[-+]?\d+\s*", v) else int(float(v))
        return int(v)
    except (TypeError, ValueError) as exc:
        raise ExprError(f"asInt: cannot convert {v!r} to an integer") from exc


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError) as exc:
        raise ExprError(f"asFloat: cannot convert {v!r} to a number") from exc


# Go reference-time layout tokens -> strftime, longest first
_GO_LAYOUT = [("2006", "%Y"), ("January", "%B"), ("Monday", "%A"), ("Jan", "%b"), ("Mon", "%a"),
              ("MST", "%Z"), ("01", "%m"), ("02", "%d"), ("15", "%H"), ("03", "%I"), ("04", "%M"),
              ("05", "%S"), ("06", "%y"), ("PM", "%p"), ("-0700", "%z"), ("Z07:00", "%z")]


def go_date(layout: str, value: Any) -> str:
    """sprig.date: format a time with a Go reference layout (``2006-01-02``)."""
    if isinstance(value, str):
        try:
            t = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ExprError(f"sprig.date: {value!r} is not a timestamp") from exc
    elif isinstance(value, (int, float)):
        t = _dt.datetime.fromtimestamp(value, _dt.UTC)
    elif isinstance(value, _dt.datetime):
        t = value
    else:
        raise ExprError(f"sprig.date: {value!r} is not a timestamp")
    out, i = [], 0
    while i < len(layout):
        for tok, fmt in _GO_LAYOUT:
            if layout.startswith(tok, i):
                out.append(t.strftime(fmt))
                i += len(tok)
                break
        else:
            out.append(layout[i])
            i += 1
    return "".join(out)


def _sprig_default(default: Any, *given: Any) -> Any:
    v = given[0] if given else None
    return default if v in (None, "", [], {}, 0, False) else v


_SPRIG: dict[str, Callable[..., Any]] = {
    "date": go_date,
    "now": lambda: _dt.datetime.now(_dt.UTC),
    "upper": lambda s: str(s).upper(),
    "lower": lambda s: str(s).lower(),
    "title": lambda s: str(s).title(),
    "trim": lambda s: str(s).strip(),
    "trimAll": lambda c, s: str(s).strip(c),
    "trimPrefix": lambda p, s: str(s)[len(p):] if str(s).startswith(p) else str(s),
    "trimSuffix": lambda p, s: str(s)[: -len(p)] if p and str(s).endswith(p) else str(s),
    "replace": lambda old, new, s: str(s).replace(old, new),
    "contains": lambda sub, s: sub in str(s),
    "hasPrefix": lambda p, s: str(s).startswith(p),
    "hasSuffix": lambda p, s: str(s).endswith(p),
    "repeat": lambda n, s: str(s) * int(n),
    "trunc": lambda n, s: str(s)[: int(n)] if int(n) >= 0 else str(s)[int(n):],
    "quote": lambda *a: " ".join(json.dumps(format_value(x)) for x in a),
    "squote": lambda *a: " ".join(f"'{format_value(x)}'" for x in a),
    "split": lambda sep, s: {f"_{i}": p for i, p in enumerate(str(s).split(sep))},
    "splitList": lambda sep, s: str(s).split(sep),
    "join": lambda sep, lst: sep.join(format_value(x) for x in lst),
    "int": _as_int,
    "int64": _as_int,
    "atoi": _as_int,
    "float64": _as_float,
    "toString": format_value,
    "toJson": to_json,
    "fromJson": json.loads,
    "b64enc": lambda s: base64.b64encode(str(s).encode()).decode(),
    "b64dec": lambda s: base64.b64decode(str(s)).decode(),
    "sha256sum": lambda s: hashlib.sha256(str(s).encode()).hexdigest(),
    "sha1sum": lambda s: hashlib.sha1(str(s).encode()).hexdigest(),
    "default": _sprig_default,
    "empty": lambda v: v in (None, "", [], {}, 0, False),
    "list": lambda *a: list(a),
    "first": lambda lst: lst[0] if lst else None,
    "last": lambda lst: lst[-1] if lst else None,
    "add": lambda *a: sum(_as_int(x) for x in a),
    "sub": lambda a, b: _as_int(a) - _as_int(b),
    "mul": lambda *a: math.prod(_as_int(x) for x in a),
    "div": lambda a, b: _as_int(a) // _as_int(b),
    "mod": lambda a, b: _as_int(a) % _as_int(b),
    "max": lambda *a: max(_as_int(x) for x in a),
    "min": lambda *a: min(_as_int(x) for x in a),
    "regexMatch": lambda r, s: re.search(r, str(s)) is not None,
    "regexFind": lambda r, s: (m.group(0) if (m := re.search(r, str(s))) else ""),
    "regexReplaceAll": lambda r, s, rep: re.sub(r, re.sub(r"\$\{?(\d+)\}?", r"\\\1", rep), str(s)),
    "nospace": lambda s: re.sub(r"\s", "", str(s)),
    "cat": lambda *a: " ".join(format_value(x) for x in a if x is not None),
}


_JP_STEP = re.compile(r"""\.\.|\.(\*|[\w\-]+)|\[\s*(\*|\?\((.*?)\)|-?\d*\s*:\s*-?\d*|-?\d+|'[^']*'|"[^"]*")\s*\]""")


def jsonpath(data: Any, path: str) -> Any:
    """Argo's ``jsonpath(json, path)`` (PaesslerAG/jsonpath): ``$``, ``.key``, ``['key']``,
    ``[n]``, ``[a:b]``, ``[*]``, ``.*`` and filters ``[?(@.age > 42 && @.name == "x")]``, the
    filter being an expr-lang expression over ``@``. A path through a wildcard, slice or filter
    gives a list; a plain path gives the value itself."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ExprError(f"jsonpath: not JSON: {data[:80]!r}") from exc
    text = str(path).strip()
    if not text.startswith("$"):
        raise ExprError(f"jsonpath: path {path!r} must start with $")
    pos, cur, many = 1, [data], False
    while pos < len(text):
        m = _JP_STEP.match(text, pos)
        if not m:
            raise ExprError(f"jsonpath: cannot parse {path!r} at {text[pos:]!r}")
        pos = m.end()
        key, sel, flt = m.group(1), m.group(2), m.group(3)
        nxt: list[Any] = []
        if m.group(0) == "..":
            raise ExprError(f"jsonpath: recursive descent (..) is not supported in {path!r}")
        for v in cur:
            if key == "*" or sel == "*":
                many = True
                nxt.extend(v.values() if isinstance(v, dict) else v if isinstance(v, list) else [])
            elif key is not None or (sel and sel[0] in "'\""):
                k = key if key is not None else sel[1:-1]
                if isinstance(v, dict) and k in v:
                    nxt.append(v[k])
            elif flt is not None:
                many = True
                cond = flt.replace("@", "_at")
                for x in v if isinstance(v, list) else v.values() if isinstance(v, dict) else []:
                    try:
                        if _truthy(evaluate(cond, {"_at": x})):
                            nxt.append(x)
                    except ExprError:
                        continue
            elif ":" in sel:
                many = True
                a, _, b = sel.partition(":")
                if isinstance(v, list):
                    nxt.extend(v[int(a) if a.strip() else None:int(b) if b.strip() else None])
            elif isinstance(v, list):
                i = int(sel)
                if -len(v) <= i < len(v):
                    nxt.append(v[i])
        cur = nxt
    if many:
        return cur
    if not cur:
        raise ExprError(f"jsonpath: {path!r} matches nothing")
    return cur[0]


def _builtin_len(v: Any) -> int:
    try:
        return len(v)
    except TypeError as exc:
        raise ExprError(f"len: {v!r} has no length") from exc


_PLAIN: dict[str, Callable[..., Any]] = {
    "len": _builtin_len,
    "jsonpath": jsonpath,
    "string": format_value,
    "int": _as_int,
    "float": _as_float,
    "asInt": _as_int,
    "asFloat": _as_float,
    "toJson": to_json,
    "toJSON": to_json,
    "fromJson": json.loads,
    "fromJSON": json.loads,
    "upper": lambda s: str(s).upper(),
    "lower": lambda s: str(s).lower(),
    "trim": lambda s, c=None: str(s).strip(c),
    "trimPrefix": lambda s, p: s[len(p):] if s.startswith(p) else s,
    "trimSuffix": lambda s, p: s[: -len(p)] if p and s.endswith(p) else s,
    "split": lambda s, sep: str(s).split(sep),
    "join": lambda lst, sep="": sep.join(format_value(x) for x in lst),
    "replace": lambda s, old, new: str(s).replace(old, new),
    "keys": lambda m: list(m.keys()),
    "values": lambda m: list(m.values()),
    "abs": lambda x: abs(_num(x)),
    "max": lambda *a: max(a[0] if len(a) == 1 else a),
    "min": lambda *a: min(a[0] if len(a) == 1 else a),
    "first": lambda lst: lst[0] if lst else None,
    "last": lambda lst: lst[-1] if lst else None,
    "reverse": lambda lst: list(reversed(lst)),
    "sort": lambda lst: sorted(lst),
    "now": lambda: _dt.datetime.now(_dt.UTC).isoformat(),
}

_PREDICATES = {"filter", "map", "all", "any", "none", "one", "count", "find", "findIndex", "sum"}

BUILTIN_NAMES = sorted(set(_PLAIN) | _PREDICATES | {"sprig"})


class _Evaluator:
    def __init__(self, env: dict[str, Any], bare: bool, text: str) -> None:
        self.env = env
        self.bare = bare
        self.text = text

    def ev(self, node: Any, ptr: Any = _MISSING, idx: int = 0) -> Any:
        tag = node[0]
        if tag == "lit":
            return node[1]
        if tag == "var":
            name = node[1]
            if name == "#":
                if ptr is _MISSING:
                    raise ExprError(f"'#' used outside a predicate in {self.text!r}")
                return ptr
            if name == "#index":
                return idx
            if name in self.env:
                return self.env[name]
            if name == "sprig":
                return _SPRIG
            if name in _PLAIN or name in _PREDICATES:
                return ("builtin", name)
            if self.bare:
                return name
            raise ExprError(f"unknown name {name!r} in expression {self.text!r}")
        if tag == "list":
            return [self.ev(x, ptr, idx) for x in node[1]]
        if tag == "map":
            return {format_value(self.ev(k, ptr, idx)) if k[0] != "var" else k[1]: self.ev(v, ptr, idx) for k, v in node[1]}
        if tag == "closure":
            return _Closure(node[1])
        if tag == "get":
            obj = self.ev(node[1], ptr, idx)
            key = self.ev(node[2], ptr, idx)
            if obj is None and node[3]:
                return None
            if isinstance(obj, dict):
                if key not in obj:
                    if node[3]:
                        return None
                    raise ExprError(f"no field {key!r} in expression {self.text!r}")
                return obj[key]
            if isinstance(obj, (list, str)) and isinstance(key, int) and not isinstance(key, bool):
                try:
                    return obj[key]
                except IndexError as exc:
                    raise ExprError(f"index {key} out of range in {self.text!r}") from exc
            raise ExprError(f"cannot read {key!r} of {obj!r} in expression {self.text!r}")
        if tag == "slice":
            obj = self.ev(node[1], ptr, idx)
            lo = self.ev(node[2], ptr, idx) if node[2] is not None else None
            hi = self.ev(node[3], ptr, idx) if node[3] is not None else None
            return obj[lo:hi]
        if tag == "un":
            v = self.ev(node[2], ptr, idx)
            if node[1] == "!":
                return not _truthy(v)
            return -_num(v) if node[1] == "-" else _num(v)
        if tag == "?:":
            return self.ev(node[2], ptr, idx) if _truthy(self.ev(node[1], ptr, idx)) else self.ev(node[3], ptr, idx)
        if tag == "bin":
            return self.binop(node, ptr, idx)
        if tag == "call":
            return self.call(node, ptr, idx)
        raise ExprError(f"cannot evaluate {self.text!r}")

    def binop(self, node: Any, ptr: Any, idx: int) -> Any:
        op = node[1]
        if op == "&&":
            return _truthy(self.ev(node[2], ptr, idx)) and _truthy(self.ev(node[3], ptr, idx))
        if op == "||":
            return _truthy(self.ev(node[2], ptr, idx)) or _truthy(self.ev(node[3], ptr, idx))
        if op == "??":
            try:
                a = self.ev(node[2], ptr, idx)
            except ExprError:
                a = None
            return a if a is not None else self.ev(node[3], ptr, idx)
        a = self.ev(node[2], ptr, idx)
        b = self.ev(node[3], ptr, idx)
        if op == "==":
            return _eq(a, b)
        if op == "!=":
            return not _eq(a, b)
        if op in ("<", ">", "<=", ">="):
            if isinstance(a, str) and isinstance(b, str):
                pass
            else:
                a, b = _num(a), _num(b)
            return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
        if op in ("=~", "matches"):
            return re.search(str(b), str(a)) is not None
        if op == "!~":
            return re.search(str(b), str(a)) is None
        if op == "contains":
            return str(b) in str(a)
        if op == "startsWith":
            return str(a).startswith(str(b))
        if op == "endsWith":
            return str(a).endswith(str(b))
        if op in ("in", "not in"):
            found = (a in b) if isinstance(b, dict) else any(_eq(a, x) for x in b) if isinstance(b, list) else str(a) in str(b)
            return found if op == "in" else not found
        if op == "..":
            return list(range(_int(a), _int(b) + 1))
        if op == "+":
            if isinstance(a, str) and isinstance(b, str):
                return a + b
            if isinstance(a, list) and isinstance(b, list):
                return a + b
            return _num(a) + _num(b)
        a, b = _num(a), _num(b)
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            if b == 0:
                raise ExprError(f"division by zero in {self.text!r}")
            return a / b
        if op == "%":
            return int(a) % int(b)
        return a ** b

    def call(self, node: Any, ptr: Any, idx: int) -> Any:
        fn = self.ev(node[1], ptr, idx)
        if isinstance(fn, tuple) and fn and fn[0] == "builtin" and fn[1] in _PREDICATES:
            return self.predicate(fn[1], node[2], ptr, idx)
        args = [self.ev(a, ptr, idx) for a in node[2]]
        if isinstance(fn, tuple) and fn and fn[0] == "builtin":
            fn = _PLAIN[fn[1]]
        if not callable(fn):
            raise ExprError(f"{fn!r} is not a function in expression {self.text!r}")
        try:
            return fn(*args)
        except ExprError:
            raise
        except Exception as exc:  # a builtin given the wrong kind of value
            raise ExprError(f"{exc} in expression {self.text!r}") from exc

    def predicate(self, name: str, argn: list[Any], ptr: Any, idx: int) -> Any:
        if len(argn) != 2 and not (name == "sum" and len(argn) == 1):
            raise ExprError(f"{name}() takes a collection and a predicate in {self.text!r}")
        coll = self.ev(argn[0], ptr, idx)
        if not isinstance(coll, list):
            raise ExprError(f"{name}() needs a list, got {coll!r} in {self.text!r}")
        if name == "sum" and len(argn) == 1:
            return sum(_num(x) for x in coll)
        body = argn[1][1] if argn[1][0] == "closure" else argn[1]
        res = [self.ev(body, x, i) for i, x in enumerate(coll)]
        if name == "filter":
            return [x for x, r in zip(coll, res) if _truthy(r)]
        if name == "map":
            return res
        if name == "all":
            return all(_truthy(r) for r in res)
        if name == "any":
            return any(_truthy(r) for r in res)
        if name == "none":
            return not any(_truthy(r) for r in res)
        if name == "one":
            return sum(1 for r in res if _truthy(r)) == 1
        if name == "count":
            return sum(1 for r in res if _truthy(r))
        if name == "sum":
            return sum(_num(r) for r in res)
        for i, (x, r) in enumerate(zip(coll, res)):
            if _truthy(r):
                return x if name == "find" else i
        return None if name == "find" else -1


_CACHE: dict[tuple[str, bool], Any] = {}


def _parsed(text: str, bare: bool) -> Any:
    key = (text, bare)
    node = _CACHE.get(key)
    if node is None:
        if not text.strip():
            raise ExprError("empty expression")
        node = _Parser(text, bare).parse()
        if len(_CACHE) < 4096:
            _CACHE[key] = node
    return node


def check(text: str) -> None:
    """Parse ``text`` as expr-lang, raising ExprError on a syntax error."""
    _parsed(text, False)


def evaluate(text: str, env: dict[str, Any]) -> Any:
    """Evaluate an expr-lang expression against ``env`` (nested dicts)."""
    try:
        return _Evaluator(env, False, text).ev(_parsed(text, False))
    except RecursionError as exc:
        raise ExprError(f"expression too deeply nested: {text!r}") from exc


def evaluate_when(text: str) -> bool:
    """Evaluate a ``when`` condition the way govaluate does after substitution."""
    v = _Evaluator({}, True, text).ev(_parsed(text, True))
    if not isinstance(v, bool):
        raise ExprError(f"'when' expression {text!r} does not evaluate to a boolean (got {format_value(v)!r})")
    return v
