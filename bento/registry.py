"""Model registry on BentoML's model store: integer versions, aliases, retention, an audit log.

Why BentoML's store: a Bento built from a deployment packages the model from this store, and
``bentoml serve`` loads it from there; kiln adds what the store lacks (ordered integer versions
that specs can name, aliases, retention that knows what is in use, and who did what).

Layout, under ``<repo>/.kiln/bentoml`` (the ``BENTOML_HOME`` of the repository)::

    models/<name>/v<N>/           BentoML model dirs (tag ``<name>:v<N>``); the model files plus
                                  ``kiln-serving.json`` (how to serve it, see kiln.bento.runtime)
    kiln-registry.json            {"aliases": {"<name>": {"<alias>": <N>}},
                                   "last_version": {"<name>": <N>}}   (atomic replace; numbers
                                  are never reused, even after the newest version is deleted)
    kiln-audit.jsonl              one line per change:
                                  {"time": "...Z", "who": "<git user.email or $USER>",
                                   "action": "register|annotate|add_file|set_alias|delete_alias|delete|export",
                                   "model": "<name>", "version": N, ...}   set_alias by the
                                  register step adds "reason", "previous", "commit", "experiment"
    kiln-registry.lock            fcntl lock: version numbering and alias edits are serialised

BentoML labels carry ``experiment``, ``dataset_version``, ``framework``; metadata carries
``metrics``, ``params``, ``tags``, ``description``. ``import kiln.bento.registry`` does not import
BentoML (about 1 s); the first store operation does.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kiln._util.clock import utcnow
from kiln._util.fs import write_bytes_atomic, write_json_atomic, write_text_atomic
from kiln.errors import ConfigError, KilnError, NotFound

__all__ = ["FRAMEWORKS", "Registry", "ModelVersion", "default_home", "SERVING_FILE"]

SERVING_FILE = "kiln-serving.json"
# framework -> the file a registered object is written to (directories are copied as they are)
FRAMEWORKS: dict[str, str] = {"sklearn": "model.joblib", "torch": "model.pt", "onnx": "model.onnx"}
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_VERSION_RE = re.compile(r"^v(\d+)$")


def default_home(repo: str | os.PathLike[str] | None = None) -> Path:
    """The repository's model store (``BENTOML_HOME``)."""
    return Path(repo or os.getcwd()).resolve() / ".kiln" / "bentoml"


def who() -> str:
    """The actor recorded in the audit log: git's user.email, else $USER."""
    try:
        out = subprocess.run(["git", "config", "user.email"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"


class ModelVersion(dict):
    """``describe`` result: a plain dict (JSON-ready) with attribute access for the common keys."""

    @property
    def version(self) -> int:
        return int(self["version"])

    @property
    def path(self) -> Path:
        return Path(self["path"])


class Registry:
    """Registered models of one repository. Safe to use from several processes."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home) if home else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "models").mkdir(exist_ok=True)
        self._store_obj = None

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def _store(self):
        if self._store_obj is None:
            from bentoml._internal.models.model import ModelStore

            self._store_obj = ModelStore(str(self.home / "models"))
        return self._store_obj

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.home / "kiln-registry.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _state(self) -> dict[str, Any]:
        p = self.home / "kiln-registry.json"
        if not p.is_file():
            return {"aliases": {}, "last_version": {}}
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON ({e})", hint="restore it from a backup or delete it (aliases are lost)") from None

    def _save_state(self, state: dict[str, Any]) -> None:
        write_json_atomic(self.home / "kiln-registry.json", state, fsync=True, mkdir=False, mode=0o600)

    def _audit(self, action: str, model: str, version: int | None = None, **extra: Any) -> None:
        rec = {"time": utcnow(), "who": who(), "action": action, "model": model}
        if version is not None:
            rec["version"] = version
        rec.update(extra)
        line = json.dumps(rec, sort_keys=True) + "\n"
        # one write() on an O_APPEND file: lines from concurrent processes do not interleave
        fd = os.open(self.home / "kiln-audit.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"model name {name!r} is not valid",
                              hint="use lower-case letters, digits and '-', at most 63 characters")

    def _versions(self, name: str) -> list[int]:
        d = self.home / "models" / name
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            m = _VERSION_RE.match(p.name)
            if m and (p / "model.yaml").is_file():
                out.append(int(m.group(1)))
        return sorted(out)

    # -- public API ----------------------------------------------------------------------------
    def register(self, name: str, model: Any, framework: str, *, labels: dict[str, str] | None = None,
                 metadata: dict[str, Any] | None = None, tags: Iterable[str] = (), description: str = "",
                 serving: dict[str, Any] | None = None,
                 preprocess_from: str | os.PathLike[str] | None = None) -> int:
        """Store ``model`` (a directory of model files, or an sklearn estimator / torch module /
        ONNX ModelProto / file path) as the next version of ``name``; returns that version.

        ``serving`` (task, input, features, labels, image ...) is written to ``kiln-serving.json``;
        ``preprocess_from`` is a dataset directory whose fitted preprocessing
        (``.kiln/preprocess.joblib``) is copied in and applied to tabular rows at serving time.
        """
        self._check_name(name)
        if framework not in FRAMEWORKS:
            raise ConfigError(f"model {name}: unknown framework {framework!r}", hint=f"valid: {', '.join(sorted(FRAMEWORKS))}")
        labels = {str(k): str(v) for k, v in (labels or {}).items() if v is not None}
        labels["framework"] = framework
        meta = {"metrics": {}, "params": {}, **(metadata or {}), "tags": sorted(tags), "description": description}
        if serving is None and isinstance(model, (str, os.PathLike)) and (Path(model) / SERVING_FILE).is_file():
            serving = json.loads((Path(model) / SERVING_FILE).read_text())  # re-registering a version's dir
        serving = dict(serving or {})
        serving.setdefault("framework", framework)
        with self._lock():
            st = self._state()
            last = st.setdefault("last_version", {})
            # never reuse a number, even after the newest version was deleted
            version = max((self._versions(name) or [0])[-1], last.get(name, 0)) + 1
            import bentoml

            with bentoml.models.create(f"{name}:v{version}", labels=labels, metadata=meta,
                                       _model_store=self._store) as m:
                dest = Path(m.path)
                self._write_model(model, framework, dest, serving)
                if preprocess_from is not None:
                    src = Path(preprocess_from) / ".kiln" / "preprocess.joblib"
                    if not src.is_file():
                        raise NotFound(f"{preprocess_from}: no fitted preprocessing (.kiln/preprocess.joblib)",
                                       hint="version the dataset with its preprocessing ops first")
                    (dest / "preprocess" / ".kiln").mkdir(parents=True)
                    shutil.copy2(src, dest / "preprocess" / ".kiln" / "preprocess.joblib")
                    serving["preprocess"] = "preprocess"
                (dest / SERVING_FILE).write_text(json.dumps(serving, indent=1, sort_keys=True))
            last[name] = version
            self._save_state(st)
            self._audit("register", name, version, framework=framework, labels=labels)
        return version

    @staticmethod
    def _write_model(model: Any, framework: str, dest: Path, serving: dict[str, Any]) -> None:
        target = FRAMEWORKS[framework]
        if isinstance(model, (str, os.PathLike)):
            src = Path(model)
            if src.is_dir():
                # model.yaml is BentoML's own record of the source version: it writes a new one
                shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.yaml"))
                if "file" not in serving and not (dest / target).exists():
                    raise ConfigError(f"{src}: no {target} in the model directory",
                                      hint=f"name the model file with serving={{'file': ...}} or save it as {target}")
                return
            if not src.is_file():
                raise NotFound(f"model file {src} does not exist")
            shutil.copy2(src, dest / target)
            return
        if framework == "sklearn":
            import joblib

            joblib.dump(model, dest / target)
        elif framework == "onnx":
            data = model if isinstance(model, bytes) else model.SerializeToString()
            (dest / target).write_bytes(data)
        elif framework == "torch":
            import torch

            scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.script(model)
            scripted.save(str(dest / target))

    def versions(self, name: str) -> list[int]:
        return self._versions(name)

    def names(self) -> list[str]:
        return sorted(p.name for p in (self.home / "models").iterdir() if p.is_dir() and self._versions(p.name))

    def resolve(self, name: str, version: int | None = None, alias: str | None = None) -> int:
        """A version number from a version, an alias or (neither) the latest."""
        vs = self._versions(name)
        if not vs:
            raise NotFound(f"model {name} is not registered", hint=f"registered: {', '.join(self.names()) or 'none'}")
        if alias is not None:
            aliases = self._state()["aliases"].get(name, {})
            if alias not in aliases:
                raise NotFound(f"model {name} has no alias {alias!r}", hint=f"aliases: {', '.join(sorted(aliases)) or 'none'}")
            version = aliases[alias]
        if version is None:
            return vs[-1]
        if version not in vs:
            raise NotFound(f"model {name} has no version {version}", hint=f"versions: {', '.join(map(str, vs))}")
        return version

    def path(self, name: str, version: int) -> Path:
        return self.home / "models" / name / f"v{self.resolve(name, version)}"

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self._state()["aliases"].get(name, {}))

    def set_alias(self, name: str, alias: str, version: int, **why: Any) -> None:
        """Point ``alias`` at ``version``. ``why`` goes into the audit line (``history``): the
        register step records the rule's reason, the previous version and the commit."""
        self._check_name(alias)
        with self._lock():
            self.resolve(name, version)
            st = self._state()
            st["aliases"].setdefault(name, {})[alias] = version
            self._save_state(st)
            self._audit("set_alias", name, version, alias=alias, **{k: v for k, v in why.items() if v not in (None, "")})

    def delete_alias(self, name: str, alias: str) -> None:
        with self._lock():
            st = self._state()
            if alias not in st["aliases"].get(name, {}):
                raise NotFound(f"model {name} has no alias {alias!r}")
            version = st["aliases"][name].pop(alias)
            self._save_state(st)
            self._audit("delete_alias", name, version, alias=alias)

    def delete(self, name: str, version: int, *, in_use: Iterable[int] = ()) -> None:
        """Delete one version; refused when an alias or a deployment (``in_use``) uses it."""
        with self._lock():
            self._delete(name, version, set(in_use))

    def _delete(self, name: str, version: int, in_use: set[int]) -> None:
        self.resolve(name, version)
        held = {a for a, v in self._state()["aliases"].get(name, {}).items() if v == version}
        if held or version in in_use:
            why = f"alias {', '.join(sorted(held))}" if held else "a deployment"
            raise KilnError(f"model {name} version {version} is in use by {why}", hint="move the alias or deployment first")
        self._store.delete(f"{name}:v{version}")
        self._audit("delete", name, version)

    def annotate(self, name: str, version: int, *, tags: Iterable[str] | None = None,
                 description: str | None = None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Change a version's tags, description or other metadata in place (the model files stay
        as they are; ``None`` leaves a field alone). Returns what changed, ``{field: [old, new]}``."""
        new: dict[str, Any] = dict(metadata or {})
        if tags is not None:
            new["tags"] = sorted(tags)
        if description is not None:
            new["description"] = description
        with self._lock():
            v = self.resolve(name, version)
            m = self._store.get(f"{name}:v{v}")
            changed = {k: [m.info.metadata.get(k), x] for k, x in new.items() if m.info.metadata.get(k) != x}
            if not changed:
                return {}
            m.info.metadata.update({k: x for k, (_, x) in changed.items()})
            # a new file renamed into place: a built Bento's copy of model.yaml is a hard link to
            # this one (deployment build shares identical files), and must keep what it shipped
            buf = io.StringIO()
            m.info.dump(buf)
            write_text_atomic(Path(m.path) / "model.yaml", buf.getvalue(), mkdir=False)
            self._audit("annotate", name, v, changed=sorted(changed))
        return changed

    def add_file(self, name: str, version: int, src: str | os.PathLike[str], dest: str) -> Path:
        """Add an artefact (an ONNX export of the version's model) to an existing version, by a
        new file renamed into place; the files the version is served from stay as they are."""
        with self._lock():
            v = self.resolve(name, version)
            target = self.home / "models" / name / f"v{v}" / dest
            write_bytes_atomic(target, Path(src).read_bytes(), mkdir=False)
            self._audit("add_file", name, v, file=dest)
        return target

    def keep_versions(self, name: str, n: int, *, in_use: Iterable[int] = ()) -> list[int]:
        """Keep the newest ``n`` versions; delete older ones except those an alias or a deployment
        uses (deleting a version a Bento references breaks that Bento at start-up). Returns the
        deleted versions."""
        if n < 0:
            raise ConfigError(f"keep_versions({name!r}, {n}): n must be >= 0")
        used = set(in_use)
        with self._lock():
            vs = self._versions(name)
            used |= set(self._state()["aliases"].get(name, {}).values())
            doomed = [v for v in (vs[:-n] if n else vs) if v not in used]
            for v in doomed:
                self._delete(name, v, used)
        return doomed

    def describe(self, name: str, version: int | None = None) -> ModelVersion:
        v = self.resolve(name, version)
        m = self._store.get(f"{name}:v{v}")
        path = Path(m.path)
        serving_file = path / SERVING_FILE
        info = m.info
        return ModelVersion(
            name=name, version=v, tag=f"{name}:v{v}", path=str(path),
            created=info.creation_time.isoformat(), labels=dict(info.labels), metadata=dict(info.metadata),
            aliases=sorted(a for a, av in self.aliases(name).items() if av == v),
            serving=json.loads(serving_file.read_text()) if serving_file.is_file() else {},
            size_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
            files=sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()),
        )

    def list(self, name: str | None = None) -> list[ModelVersion]:
        names = [name] if name else self.names()
        return [self.describe(n, v) for n in names for v in self._versions(n)]

    def export(self, name: str, version: int | None, path: str | os.PathLike[str]) -> Path:
        """Write the version as a BentoML model archive (``.bentomodel``, importable with
        ``bentoml models import``)."""
        import bentoml

        v = self.resolve(name, version)
        out = Path(path)
        if out.is_dir():
            out = out / f"{name}-v{v}.bentomodel"
        elif out.suffix != ".bentomodel":  # BentoML appends it anyway
            out = out.with_name(out.name + ".bentomodel")
        out.parent.mkdir(parents=True, exist_ok=True)
        bentoml.models.export_model(f"{name}:v{v}", str(out), _model_store=self._store)
        self._audit("export", name, v, path=str(out))
        return out

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every alias move of ``name``, oldest first: the audit log's set_alias and delete_alias
        lines (with the reason and commit the register step recorded)."""
        return [r for r in self.audit_log() if r.get("model") == name and r.get("action") in ("set_alias", "delete_alias")]

    def audit_log(self) -> list[dict[str, Any]]:
        p = self.home / "kiln-audit.jsonl"
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
