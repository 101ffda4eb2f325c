"""Read every spec under a folder into validated models, or report every problem at once.

Fast path: each file is read once and parsed with PyYAML's C loader straight into Python objects.
Positions (file:line:col) are only computed for the documents that have problems, by composing
that file again (``kiln._util.yamlpos``). Documents with a ``defaults:`` list are composed from
templates with hydra first (``kiln.templates``).

Skipped: folders whose name starts with ``.`` or ``_``, the templates folder, and documents whose
``apiVersion`` belongs to another tool (a Kubernetes manifest kept beside the specs, say).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

import kiln
import kiln.api
from kiln._util.fs import write_bytes_atomic
from kiln._util.suggest import closest, did_you_mean
from kiln._util.yamlpos import _is_tag, _Loader, document_line, find, format_path, locate
from kiln.api import API_VERSION, KINDS
from kiln.errors import SpecIssue
from kiln.templates import template_file

SPEC_SUFFIXES = (".yaml", ".yml")

# Limits on what one spec may be, checked before anything else reads it (docs/security.md): a
# pull request must not be able to exhaust memory in validate, plan or apply.
MAX_FILE_BYTES = 1024 * 1024       # a spec file; data belongs in a dataset source, not in a spec
MAX_NODES = 100_000                # values in one document, every alias counted where it is used
MAX_DEPTH = 64                     # nesting of mappings and lists
# A document's spec travels to each workflow task as one argument (`kiln step --spec`), and Linux
# caps one argument at 128 KiB: refuse it here, with its file and line, rather than in apply.
MAX_DOC_JSON = 96 * 1024


@dataclass
class SourceFile:
    path: Path          # as shown to the user (relative to the cwd when possible)
    text: str


@dataclass
class LoadedSpec:
    """One validated spec document."""

    kind: str
    name: str
    workspace: str
    obj: Any                       # the kind's pydantic model
    doc: dict[str, Any]            # the document as composed (templates applied)
    source: SourceFile
    index: int                     # document index within the file
    composed: bool = False         # came from templates
    # a document that failed its own validation, kept without the values at these paths (see
    # ``_partial``): checked across specs, never planned or applied
    pruned: list[list[str | int]] | None = None
    _hash: str | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.workspace}/{self.name}"

    @property
    def ref(self) -> str:
        """How the user names it: Kind/name, or Kind/workspace/name outside the default workspace."""
        return f"{self.kind}/{self.name}" if self.workspace == "default" else self.key

    @property
    def spec_hash(self) -> str:
        if self._hash is None:
            self._hash = hashlib.sha256(_canonical(self.doc).encode()).hexdigest()[:16]
        return self._hash

    def where(self, path: list[str | int] | tuple = ()) -> tuple[int, int]:
        if self.composed:  # a value from a template: at the document's start
            return find(self.source.text, self.index, list(path)) or (document_line(self.source.text, self.index), 1)
        line, col, _ = locate(self.source.text, self.index, list(path))
        return line, col

    def location(self) -> str:
        return f"{self.source.path}:{self.where()[0]}"

    def issue(self, path: list[str | int] | tuple, message: str, hint: str | None = None) -> SpecIssue:
        line, col = self.where(path)
        return SpecIssue(str(self.source.path), line, col, format_path(path), message, hint)


@dataclass
class SpecSet:
    root: Path
    specs: list[LoadedSpec] = field(default_factory=list)
    issues: list[SpecIssue] = field(default_factory=list)
    # documents of a known kind that failed validation, as written (kind, workspace, name, doc):
    # cross-spec checks treat them as present so that one spec's error does not cascade into a
    # second, misleading one (a deployment's model reference "dangling")
    invalid: list[tuple[str, str, str, dict]] = field(default_factory=list)
    # the invalid documents that still validate without their bad values (``LoadedSpec.pruned``):
    # ``kiln.validate`` checks their references too, so one run reports every problem at once
    partial: list[LoadedSpec] = field(default_factory=list)
    files: int = 0
    ignored: int = 0

    def by_key(self) -> dict[str, LoadedSpec]:
        return {s.key: s for s in self.specs}


def _display(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def iter_spec_files(root: Path, skip: frozenset[Path] | set[Path] = frozenset()) -> list[Path]:
    if root.is_file():
        return [root]
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames
                             if not n.startswith((".", "_")) and (d / n).resolve() not in skip)
        out += [d / f for f in sorted(filenames) if f.endswith(SPEC_SUFFIXES)]
    return out


def load_specs(root: str | os.PathLike[str], templates: str | os.PathLike[str] | None = None,
               cache_dir: str | os.PathLike[str] | None = None) -> SpecSet:
    """Load and validate (per document) every spec under ``root``. Never raises for spec problems:
    they are collected in ``SpecSet.issues``; cross-references are checked by ``kiln.validate``.

    With ``cache_dir``, files whose exact bytes were parsed and validated before are taken from
    a content-addressed cache instead of being parsed again (see ``_ParseCache``)."""
    root = Path(root)
    tdir = Path(templates) if templates else (root / "templates" if root.is_dir() else None)
    result = SpecSet(root=root)
    if not root.exists():
        result.issues.append(SpecIssue(str(root), 0, 0, "", "no such file or folder"))
        return result
    skip = {tdir.resolve()} if tdir else set()
    cache = _ParseCache(Path(cache_dir)) if cache_dir else None
    for path in iter_spec_files(root, skip):
        result.files += 1
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                result.issues.append(SpecIssue(
                    str(_display(path)), 1, 1, "", f"spec file is {size / 2**20:.1f} MiB, more than the "
                    f"{MAX_FILE_BYTES // 2**20} MiB a spec file may be",
                    "keep data out of specs: put it in a file and name it in a Dataset's source"))
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            result.issues.append(SpecIssue(str(_display(path)), 1, 1, "", f"cannot read: {exc}"))
            continue
        src = SourceFile(_display(path), text)
        if cache is not None:
            hit = cache.get(text)
            if hit is not None:
                result.ignored += hit.ignored
                result.specs += [LoadedSpec(kind=k, name=o.metadata.name, workspace=o.metadata.workspace,
                                            obj=o, doc=d, source=src, index=i) for i, k, d, o in hit.specs]
                continue
            before = (len(result.specs), len(result.issues), result.ignored)
        try:
            docs = list(yaml.load_all(text, Loader=_Loader))
        except RecursionError:
            result.issues.append(SpecIssue(str(src.path), 1, 1, "",
                                           f"the document is nested more than {MAX_DEPTH} levels deep"))
            continue
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            problem = getattr(exc, "problem", None) or str(exc)
            context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
            if context and cmark is not None and cmark is not mark:
                problem += f" ({context} at line {cmark.line + 1})"
            result.issues.append(SpecIssue(
                str(src.path), line, col, "", f"YAML syntax error: {problem}",
                "merge the two, or remove one (YAML would silently keep only the last)" if "duplicate key" in problem
                else "check the brackets, quotes and indentation up to this line"))
            continue
        for index, doc in enumerate(docs):
            if doc is None:
                continue
            spec = _load_document(doc, src, index, tdir, result)
            if spec is not None:
                result.specs.append(spec)
        if cache is not None:
            new = result.specs[before[0]:]
            if len(result.issues) == before[1] and not any(s.composed for s in new):
                cache.put(text, _Entry([(s.index, s.kind, s.doc, s.obj) for s in new],
                                       result.ignored - before[2]))
    if cache is not None:
        cache.save()
    return result


@dataclass
class _Entry:
    specs: list[tuple[int, str, dict[str, Any], Any]]
    ignored: int


def spec_cache_dir(repo: Path) -> Path | None:
    """Where the parse cache of the repository ``repo`` lives: in the user's cache folder
    (``$KILN_SPEC_CACHE_DIR``, else ``$XDG_CACHE_HOME/kiln/spec-cache``, else
    ``~/.cache/kiln/spec-cache``), one folder per repository path, never inside the repository:
    a pull request can add any file to the repository, so nothing there may be deserialised
    (docs/security.md)."""
    base = os.environ.get("KILN_SPEC_CACHE_DIR") or (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln" / "spec-cache")
    try:
        key = hashlib.sha256(str(Path(repo).resolve()).encode()).hexdigest()[:24]
    except OSError:
        return None
    return Path(base) / key


class _ParseCache:
    """Parsed and validated documents by the SHA-256 of their file's bytes.

    Content-addressed, so an edited file can never be served stale (no mtime races). Files with
    problems or templates are never cached: they are parsed every time (templates can change
    under them). The cache is keyed by kiln's version and the spec models' source, and is
    rewritten atomically only when something changed; a damaged cache is ignored.

    The file is a pickle (validated pydantic models load ~4x faster than re-validating), so it
    is only ever read after its HMAC-SHA256 checks out under a key that kiln created in the
    user's own cache folder (0600): a cache that kiln did not write itself, for this user, is
    never unpickled. The folder comes from :func:`spec_cache_dir`, outside the repository.
    """

    FILE = "specs.pickle"
    MAGIC = b"kiln-spec-cache/1\n"

    def __init__(self, folder: Path) -> None:
        self.path = folder / self.FILE
        self.stamp = _models_stamp()
        self.old: dict[str, _Entry] = {}
        self.new: dict[str, _Entry] = {}
        self.dirty = False
        self.key = _cache_key(folder.parent)
        if self.key is None:
            return
        try:
            blob = self.path.read_bytes()
        except OSError:
            return
        payload = self._verified(blob)
        if payload is None:
            return
        try:
            import pickle

            stamp, entries = pickle.loads(payload)  # authenticated above: written by this user's kiln
            if stamp == self.stamp:
                self.old = entries
        except Exception:  # damaged or from another kiln: parse afresh
            pass

    def _verified(self, blob: bytes) -> bytes | None:
        import hmac

        assert self.key is not None
        head = len(self.MAGIC) + 32
        if len(blob) < head or not blob.startswith(self.MAGIC):
            return None
        mac, payload = blob[len(self.MAGIC):head], blob[head:]
        good = hmac.new(self.key, payload, hashlib.sha256).digest()
        return payload if hmac.compare_digest(mac, good) else None

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, text: str) -> _Entry | None:
        k = self._key(text)
        hit = self.old.get(k)
        if hit is not None:
            self.new[k] = hit
        return hit

    def put(self, text: str, entry: _Entry) -> None:
        self.new[self._key(text)] = entry
        self.dirty = True

    def save(self) -> None:
        if self.key is None or (not self.dirty and len(self.new) == len(self.old)):
            return
        import hmac
        import pickle

        payload = pickle.dumps((self.stamp, self.new), protocol=pickle.HIGHEST_PROTOCOL)
        mac = hmac.new(self.key, payload, hashlib.sha256).digest()
        try:
            write_bytes_atomic(self.path, self.MAGIC + mac + payload)
        except OSError:
            pass  # a read-only home still plans, just without the cache


def _cache_key(folder: Path) -> bytes | None:
    """The secret that authenticates this user's parse caches: 32 random bytes in
    ``<cache>/spec-cache/key``, created 0600 in a 0700 folder on first use. None when it cannot
    be had safely (unwritable home, a key file readable by others): then nothing is cached."""
    import secrets
    import stat

    path = folder / "key"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        st = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077 or st.st_uid != os.getuid():
            return None
        key = path.read_bytes()
    except OSError:
        return None
    return key if len(key) == 32 else None


def _models_stamp() -> str:
    api = Path(kiln.api.__file__).parent
    parts = [kiln.__version__] + [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                  for p in sorted(api.glob("*.py"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _load_document(doc: Any, src: SourceFile, index: int, tdir: Path | None,
                   result: SpecSet) -> LoadedSpec | None:
    def issue(path: list[str | int], message: str, hint: str | None = None) -> None:
        line, col, _ = locate(src.text, index, path)
        result.issues.append(SpecIssue(str(src.path), line, col, format_path(path), message, hint))

    if not isinstance(doc, dict):
        issue([], f"expected a mapping with apiVersion, kind, metadata, spec; got {type(doc).__name__}")
        return None
    too_big = _too_big(doc)
    if too_big is not None:
        issue([], too_big, "YAML anchors and aliases are expanded where they are used; write the values out")
        return None
    api = doc.get("apiVersion")
    if api is None:
        issue([], "missing apiVersion", f"add `apiVersion: {API_VERSION}`")
        return None
    if not isinstance(api, str) or not api.startswith("kiln.dev/"):
        result.ignored += 1  # another tool's manifest kept beside the specs
        return None
    if api != API_VERSION:
        issue(["apiVersion"], f"unsupported apiVersion {api!r}", f"use {API_VERSION}")
        return None
    kind = doc.get("kind")
    if kind not in KINDS:
        close = closest(kind, KINDS)
        issue(["kind"], f"unknown kind {kind!r}",
              f"did you mean {close}?" if close else f"one of {', '.join(KINDS)}")
        return None
    composed = False
    if "defaults" in doc or "overrides" in doc:
        from kiln.templates import TemplateError, compose  # hydra only when templates are used

        raw = doc
        try:
            doc = compose(doc, tdir)
            composed = True
        except TemplateError as exc:
            result.issues += _template_issues(raw, src, index, tdir, exc)
            return None
    model: type[BaseModel] = KINDS[kind]
    try:
        obj = model.model_validate(doc)
    except ValidationError as exc:
        md_doc = doc.get("metadata")
        if isinstance(md_doc, dict) and isinstance(md_doc.get("name"), str):
            result.invalid.append((kind, str(md_doc.get("workspace") or "default"), md_doc["name"], doc))
        errors = exc.errors(include_url=False)
        for err in errors:
            loc = _error_loc(err)
            msg, hint = _explain(model, dict(err))
            if composed:
                result.issues.append(_composed_issue(raw, src, index, tdir, _strip_tags(loc), msg, hint))
            else:
                line, col, matched = locate(src.text, index, loc)
                result.issues.append(SpecIssue(str(src.path), line, col, format_path(matched), msg, hint))
        partial = _partial(model, doc, [_error_loc(e) for e in errors])
        if partial is not None:
            obj, pruned = partial
            result.partial.append(LoadedSpec(kind=kind, name=obj.metadata.name, workspace=obj.metadata.workspace,
                                             obj=obj, doc=doc, source=src, index=index, composed=composed,
                                             pruned=pruned))
        return None
    md = obj.metadata  # type: ignore[attr-defined]  # every kind has metadata
    spec = LoadedSpec(kind=kind, name=md.name, workspace=md.workspace, obj=obj, doc=doc,
                      source=src, index=index, composed=composed)
    canon = _canonical(doc)
    if len(canon) > MAX_DOC_JSON:
        issue([], f"{kind}/{md.name} is {len(canon) // 1024} KiB as JSON, more than the "
              f"{MAX_DOC_JSON // 1024} KiB a spec may be (it is passed to each workflow task)",
              "move large values (lists of files, data) into a file the spec names")
        return None
    spec._hash = hashlib.sha256(canon.encode()).hexdigest()[:16]
    return spec


def _composed_issue(raw: dict[str, Any], src: SourceFile, index: int, tdir: Path | None,
                    loc: list[str | int], msg: str, hint: str | None) -> SpecIssue:
    """An error in a document composed from templates, placed where its value was written:
    an override that sets it, the document itself, or the last template (hydra's order) that
    has it, in that template's file. Only when none has it, at the document's first line."""
    where = format_path(loc)
    dotted = ".".join(map(str, loc))
    for i, o in enumerate(raw.get("overrides") or []):
        key = str(o).lstrip("+~").split("=", 1)[0]
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            line, col, _ = locate(src.text, index, ["overrides", i])
            return SpecIssue(str(src.path), line, col, where, f"{msg} (set by override {o!r})", hint)
    found = find(src.text, index, loc)
    if found is not None:
        return SpecIssue(str(src.path), *found, where, msg, hint)
    used_at = f"{src.path}:{document_line(src.text, index)}"
    names = [d for d in (raw.get("defaults") or []) if isinstance(d, str) and d != "_self_"]
    for name in reversed(names):  # the last template listed wins
        f = template_file(tdir, name)
        try:
            text = f.read_text(encoding="utf-8") if f is not None else None
        except (OSError, UnicodeDecodeError):
            text = None
        found = find(text, 0, loc) if text is not None else None
        if f is not None and found is not None:
            return SpecIssue(str(_display(f)), *found, where, f"{msg} (in template {name!r}, used by {used_at})", hint)
    return SpecIssue(str(src.path), document_line(src.text, index), 1, where, msg + " (after applying templates)", hint)


def _template_issues(raw: dict[str, Any], src: SourceFile, index: int, tdir: Path | None,
                     exc: Any) -> list[SpecIssue]:
    """Why composition failed, located in the file that caused it: a ``defaults`` entry naming
    no template (did you mean), a template that is no YAML mapping (its own file and line), or
    the override that hydra refuses; hydra's own message otherwise."""
    from kiln.templates import TemplateError, compose

    def at(path: list[str | int], message: str, hint: str | None) -> SpecIssue:
        line, col, matched = locate(src.text, index, path)
        return SpecIssue(str(src.path), line, col, format_path(matched), message, hint)

    defaults = raw.get("defaults")
    names = sorted(p.stem for p in tdir.glob("*.yaml")) if tdir is not None and tdir.is_dir() else []
    out: list[SpecIssue] = []
    for i, d in enumerate(defaults if isinstance(defaults, list) else []):
        if not isinstance(d, str) or d == "_self_":
            continue
        f = template_file(tdir, d)
        if f is None:
            out.append(at(["defaults", i], f"unknown template {d!r}" + (f" in {_display(tdir)}" if tdir else ""),
                          did_you_mean(d, names) or (f"templates: {', '.join(names)}" if names else
                                                     "create it in the templates folder (kiln.yaml `templates:`)")))
            continue
        try:
            tdoc = yaml.load(f.read_text(encoding="utf-8"), Loader=_Loader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            out.append(SpecIssue(str(_display(f)), mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, "",
                                 f"YAML syntax error in template {d!r}: {getattr(e, 'problem', None) or e} "
                                 f"(used by {src.path}:{document_line(src.text, index)})", "fix the template's YAML"))
            continue
        except (OSError, UnicodeDecodeError) as e:
            out.append(at(["defaults", i], f"cannot read template {d!r}: {e}", "check the file's permissions and encoding"))
            continue
        if tdoc is not None and not isinstance(tdoc, dict):
            out.append(SpecIssue(str(_display(f)), 1, 1, "", f"template {d!r} is a {type(tdoc).__name__}, not a mapping "
                                 f"(used by {src.path}:{document_line(src.text, index)})",
                                 "a template is part of a spec: `spec: {...}` and the like"))
    if out:
        return out
    overrides = raw.get("overrides")
    if isinstance(overrides, list) and overrides:
        bad = []
        for i, o in enumerate(overrides):
            try:
                compose({**raw, "overrides": [o]}, tdir)
            except TemplateError as e:
                bad.append(at(["overrides", i], f"override {o!r}: {e.message.removeprefix('cannot compose templates: ')}",
                              "write it as KEY=VALUE with a dotted key, e.g. spec.hpo.maxTrials=20 "
                              "(+KEY=VALUE adds a key the templates do not have)"))
        if bad:
            return bad
    return [at(["defaults"], str(exc.message), exc.hint)]


def _error_loc(err: Any) -> list[str | int]:
    """Where a pydantic error is: its location, and below it the field a model validator named
    (``kiln.api.common.FieldProblem``)."""
    from kiln.api.common import FieldProblem

    cause = (err.get("ctx") or {}).get("error")
    return list(err["loc"]) + (list(cause.at) if isinstance(cause, FieldProblem) else [])


# Values that identify a document: without them it is not worth checking further.
_KEEP = (["apiVersion"], ["kind"], ["metadata"], ["metadata", "name"], ["metadata", "workspace"], ["spec"])


def _partial(model: type[BaseModel], doc: dict[str, Any],
             locs: list[list[str | int]]) -> tuple[Any, list[list[str | int]]] | None:
    """The document without the values its errors are about, validated; None when what is left
    is not a document (its name, or its whole spec, had to go).

    This is how ``kiln validate`` reports every problem in one run: the errors of a document
    hide nothing else in it, its references and roles are checked from what remains. A value
    whose removal leaves a required field missing takes its parent with it (the next round's
    errors say so); an item of a list takes the whole list, so that the positions of the other
    items still name their lines. Defaults that fill the gaps are never reported
    (``kiln.validate`` drops findings under a pruned path)."""
    import copy

    work = copy.deepcopy(doc)
    pruned: list[list[str | int]] = []
    for _ in range(8):
        for loc in locs:
            path = _strip_tags(loc)
            cut = next((i for i, p in enumerate(path) if isinstance(p, int)), len(path))
            path = path[:cut]
            node: Any = work
            found: list[str | int] = []
            for p in path:
                if not (isinstance(node, dict) and p in node):
                    break
                found.append(p)
                node = node[p]
            if found != path or not path:  # absent (a required field): its parent goes
                path = found
            if path in _KEEP or not path:
                return None
            parent: Any = work
            for p in path[:-1]:
                parent = parent[p]
            parent.pop(path[-1], None)
            pruned.append(path)
        try:
            return model.model_validate(work), pruned
        except ValidationError as exc:
            locs = [_error_loc(e) for e in exc.errors(include_url=False)]
    return None


def _canonical(doc: dict[str, Any]) -> str:
    """The document as the spec hash sees it (sorted keys, no spaces)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)


def _too_big(doc: Any) -> str | None:
    """Why a parsed document is too large or too deep to handle safely, or None. PyYAML shares
    an anchored value between its aliases, so a 1 KB "billion laughs" document parses into a few
    objects but expands into billions of values in anything that copies or serialises it; sizes
    are therefore counted with every alias expanded, memoised per object so that the count itself
    stays linear. A recursive alias (``&a [*a]``) can never be expanded."""
    sizes: dict[int, tuple[int, int]] = {}   # id -> (expanded values, depth)
    active: set[int] = set()

    def walk(node: Any) -> tuple[int, int]:
        if not isinstance(node, (dict, list)):
            return 1, 0
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Recursive
        active.add(key)
        children = list(node.values()) if isinstance(node, dict) else node
        count, depth = 1 + (len(node) if isinstance(node, dict) else 0), 0
        for child in children:
            n, d = walk(child)
            count, depth = count + n, max(depth, d + 1)
            if count > MAX_NODES or depth > MAX_DEPTH:
                break
        active.discard(key)
        sizes[key] = (count, depth)
        return count, depth

    try:
        count, depth = walk(doc)
    except _Recursive:
        return "the document refers to itself through a YAML alias"
    except RecursionError:
        return f"the document is nested more than {MAX_DEPTH} levels deep"
    if depth > MAX_DEPTH:
        return f"the document is nested more than {MAX_DEPTH} levels deep"
    if count > MAX_NODES:
        return f"the document expands to more than {MAX_NODES:,} values"
    return None


class _Recursive(Exception):
    pass


def _strip_tags(loc: list[str | int]) -> list[str | int]:
    return [p for p in loc if not (isinstance(p, str) and _is_tag(p))]


def _explain(model: type[BaseModel], err: dict[str, Any]) -> tuple[str, str | None]:
    """A pydantic error as a sentence, with the value that was given and a hint where we can."""
    typ, msg, loc = err["type"], err["msg"], err["loc"]
    if typ == "extra_forbidden":
        fields = _fields_at(model, list(loc[:-1]))
        hint = did_you_mean(loc[-1], fields) or (f"valid fields: {', '.join(fields)}" if fields else None)
        return f"unknown field {loc[-1]!r}", hint
    if typ == "missing":
        return "required field is missing", f"add `{loc[-1]}:`" if loc else None
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, "):]
    given = err.get("input")
    if typ not in ("value_error", "assertion_error") and not isinstance(given, (dict, list)):
        msg = f"{msg[0].lower()}{msg[1:]}, got {given!r}"
    return msg, getattr((err.get("ctx") or {}).get("error"), "hint", None) or _type_hint(typ, err.get("ctx") or {}, given)


# pydantic error type -> the fix, for the mistakes of hand-written YAML
_TYPE_HINTS = {
    "int_parsing": "write a whole number, without quotes", "int_type": "write a whole number, without quotes",
    "int_from_float": "write a whole number", "float_parsing": "write a number, e.g. 0.5",
    "float_type": "write a number, e.g. 0.5", "bool_parsing": "write true or false",
    "bool_type": "write true or false", "string_type": "write text; quote it if YAML reads it as a number or date",
    "list_type": "write a list: [a, b] or one '- item' per line", "dict_type": "write a mapping: {key: value}",
    "model_type": "write a mapping of its fields: {field: value}", "model_attributes_type": "write a mapping: {field: value}",
    "date_from_datetime_parsing": "write a date as YYYY-MM-DD",
}


def _type_hint(typ: str, ctx: dict[str, Any], given: Any) -> str | None:
    if typ == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return did_you_mean(given, choices) if isinstance(given, str) else None
    if typ == "string_pattern_mismatch":
        from kiln.api.common import NAME_RE

        if ctx.get("pattern") == NAME_RE:
            return "a name is lower-case letters, digits and '-' (at most 63), e.g. " + (
                re.sub(r"[^a-z0-9-]+", "-", str(given).lower()).strip("-")[:63] or "my-name")
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
              "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
    if typ in bounds:
        op, key = bounds[typ]
        return f"use a value {op} {ctx.get(key)}"
    if typ == "too_short":
        return f"give at least {ctx.get('min_length')}"
    return _TYPE_HINTS.get(typ)


def _fields_at(model: type[BaseModel], loc: list[str | int]) -> list[str]:
    """Field names of the model found at ``loc`` (best effort, for 'did you mean')."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            current = _unwrap(current, part)
            continue
        f = current.model_fields.get(str(part)) or next(
            (f for f in current.model_fields.values() if f.alias == part), None)
        if f is None:
            return []
        current = _unwrap(f.annotation, None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _unwrap(tp: Any, part: Any) -> Any:
    import typing

    for _ in range(5):
        origin = typing.get_origin(tp)
        if origin is None:
            return tp
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if origin in (list, tuple, set):
            tp = args[0] if args else tp
        elif origin is dict:
            tp = args[-1] if args else tp
        elif origin is typing.Annotated:
            tp = args[0]
        else:  # Union / Optional: the first model among the members
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            tp = models[0] if models else (args[0] if args else tp)
    return tp
