"""One way to name an object, on every verb: ``KIND/WORKSPACE/NAME``.

Where the verb implies the kind (``kiln data versions``: a Dataset; ``kiln predict``: a
Deployment) ``WORKSPACE/NAME`` and ``NAME`` do too, and the full form is still accepted.
``-w/--workspace WS`` is a shorthand for the workspace on every verb. Without a workspace a name
means the object in the default workspace, or else the only workspace that has one (``resolve``);
in several workspaces it is ambiguous, and the error lists the full names.

``parse_ref`` reads the text (no state); ``resolve`` picks the one key among those that exist.
Both raise one-line errors that show the forms to write.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from kiln.api import KINDS
from kiln.api.common import NAME_RE
from kiln.errors import ConfigError, NotFound

DEFAULT_WORKSPACE = "default"
_NAME = re.compile(NAME_RE)


def canonical_kind(kind: str) -> str | None:
    """``dataset``, ``Datasets`` -> ``Dataset``; None for a word that names no kind."""
    for k in KINDS:
        if kind.lower() in (k.lower(), k.lower() + "s"):
            return k
    return None


@dataclass(frozen=True)
class Ref:
    kind: str
    workspace: str | None  # None: not given (see ``resolve``)
    name: str

    @property
    def key(self) -> str:
        """The state key, taking an unnamed workspace as the default one."""
        return f"{self.kind}/{self.workspace or DEFAULT_WORKSPACE}/{self.name}"

    def __str__(self) -> str:
        return f"{self.kind}/{self.workspace}/{self.name}" if self.workspace else f"{self.kind}/{self.name}"


def forms(kind: str | None) -> str:
    if kind is None:
        return "KIND/NAME or KIND/WORKSPACE/NAME (or -w WORKSPACE)"
    return f"NAME, WORKSPACE/NAME or {kind}/WORKSPACE/NAME (or -w WORKSPACE)"


def parse_ref(text: str, *, kind: str | None = None, workspace: str | None = None) -> Ref:
    """Read ``text`` as an object's name. ``kind``: the kind the verb implies (then a leading
    word that names a kind is read as the kind, and must be this one); ``workspace``: the value
    of ``-w`` (it must agree with a workspace written in the name)."""
    parts = text.split("/")
    if any(not p for p in parts) or len(parts) > 3:
        raise ConfigError(f"cannot read {text!r} as an object name", hint=f"write {forms(kind)}")
    said = canonical_kind(parts[0]) if len(parts) > 1 else None
    if kind is None:
        if said is None:
            why = "it does not start with a kind" if len(parts) > 1 else "it names no kind"
            raise ConfigError(f"cannot read {text!r} as an object name: {why}",
                              hint=f"write {forms(None)}; kinds: {', '.join(KINDS)}")
        kind, parts = said, parts[1:]
    elif said is not None:
        if said != kind:
            raise ConfigError(f"{text!r} names a {said}; this command takes a {kind}", hint=f"write {forms(kind)}")
        parts = parts[1:]
    elif len(parts) == 3:
        raise ConfigError(f"cannot read {text!r} as a {kind} name: {parts[0]!r} is not a kind",
                          hint=f"write {forms(kind)}")
    ws, name = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    if workspace and ws and workspace != ws:
        raise ConfigError(f"{text!r} is in workspace {ws}, but -w says {workspace}", hint="give the workspace once")
    for word in (ws or workspace, name):
        if word is not None and not _NAME.match(word):
            raise ConfigError(f"cannot read {text!r} as an object name: {word!r} is not a name",
                              hint="names are lower-case letters, digits and '-'")
    return Ref(kind, ws or workspace, name)


def resolve(ref: Ref, keys: Iterable[str], *, what: str = "", absent: str = "no {}") -> str:
    """The one key of ``keys`` (``Kind/workspace/name``) that ``ref`` names (module doc).
    ``what`` prefixes the errors (e.g. ``"--target Experiment/x: "``), ``absent`` says that
    there is no such object (``{}``: its key)."""
    known = set(keys)
    if ref.workspace is not None or ref.key in known:
        if ref.key in known:
            return ref.key
        hits = []
    else:
        hits = sorted(k for k in known if k.startswith(f"{ref.kind}/") and k.rsplit("/", 1)[1] == ref.name)
        if len(hits) == 1:
            return hits[0]
    if len(hits) > 1:
        raise NotFound(f"{what}{ref} is ambiguous: {', '.join(short(h) for h in hits)}",
                       hint="name the workspace: KIND/WORKSPACE/NAME or -w WORKSPACE")
    same = sorted(short(k) for k in known if k.startswith(f"{ref.kind}/"))
    hint = f"{ref.kind} objects: {', '.join(same)}" if same else f"there is no {ref.kind} yet"
    raise NotFound(what + absent.format(ref.key), hint=hint)


def short(key: str) -> str:
    """``Kind/name`` for the default workspace, the full key otherwise (how kiln prints names)."""
    kind, ws, name = key.split("/", 2)
    return f"{kind}/{name}" if ws == DEFAULT_WORKSPACE else key


def find_key(text: str, keys: Iterable[str], *, kind: str | None = None, workspace: str | None = None,
             what: str = "", absent: str = "no {}") -> str:
    """``resolve(parse_ref(...))``: the key of the object that ``text`` (and ``-w``) names among
    ``keys``; what every verb calls."""
    return resolve(parse_ref(text, kind=kind, workspace=workspace), keys, what=what, absent=absent)
