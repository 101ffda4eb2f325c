"""Dataset versions with DVC: one ``.dvc`` file per dataset folder, a versions log beside it.

``DatasetRepo(repo_root)`` prepares a git repository for data (idempotently):

- ``dvc init`` when ``.dvc/`` is missing (the folder must be a git repository's root);
- a default remote when none is configured: ``kiln-local`` -> ``<repo>/.kiln/dvc-remote`` (absolute
  path in ``.dvc/config`` so clones on the same machine push/pull the same objects; pass
  ``remote_url`` for a shared one);
- ``cache.type = hardlink,symlink`` (no second copy of every file; DVC then protects workspace files
  read-only: replace a file rather than edit it in place);
- DVC's site cache (its hash index) inside the project, ``<repo>/.kiln/dvc-site-cache``, in
  ``.dvc/config.local`` because it is per-machine.

A version id is the md5 of DVC's ``.dir`` object (the directory listing): the same bytes under the
same names give the same id, so re-adding unchanged content is no new version. The log
``<dataset>.versions.json`` (commit it with the ``.dvc`` file; kiln.data does not commit) holds::

    {"path": "data/pets", "current": "<id>",
     "versions": [{"id": "<md5>", "files": 1200, "size": 5242880,
                   "per_class_counts": {"cat": 600, "dog": 600},
                   "per_split_class_counts": {"train": {"cat": 480, "dog": 480}, ...},
                   "schema": {"rows": ..., "columns": {...}} (tables: kiln.data.schema),
                   "created": "2025-01-01T00:00:00+00:00",
                   "lineage": {"parent": "<content hash>", "ops": [...]} | null,
                   "out": {<the .dvc file's outs[0] entry>}, "pushed": ["kiln-local"]}]}

``out`` lets ``checkout`` restore any logged version without the git history of the ``.dvc`` file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiln._util.fs import write_json_atomic, write_text_atomic
from kiln.data.errors import DatasetFormatError
from kiln.data.formats import load
from kiln.data.versions_log import read_versions_log
from kiln.errors import ConfigError, NotFound

DEFAULT_REMOTE = "kiln-local"


@dataclass(frozen=True)
class Version:
    id: str
    path: str
    files: int
    size: int
    per_class_counts: dict[str, int]
    created: str
    lineage: dict[str, Any] | None = None
    out: dict[str, Any] = field(default_factory=dict, repr=False)
    pushed: list[str] = field(default_factory=list)  # DVC remotes that hold all its objects
    # logs written before kiln counted per split have none: empty, not an error
    per_split_class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # a table's column types, categories and missing counts (kiln.data.schema); {} for images
    schema: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionDiff:
    added: list[str]
    removed: list[str]
    changed: list[str]
    class_counts: dict[str, tuple[int, int]]  # class -> (count in v1, count in v2), changed ones only

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.class_counts)


class DatasetRepo:
    """Versions dataset folders inside one git repository with DVC. Not thread-safe per instance;
    concurrent processes are serialised by DVC's repo lock, which kiln waits for."""

    def __init__(self, repo_root: str | os.PathLike[str], *, remote_url: str | None = None,
                 remote_name: str = DEFAULT_REMOTE) -> None:
        self.root = Path(repo_root).resolve()
        self.remote_url = remote_url
        self.remote_name = remote_name
        self._ready = False

    # -- setup ---------------------------------------------------------------------------------
    def _repo(self):
        from dvc.repo import Repo

        repo = Repo(str(self.root), _wait_for_lock=True)
        repo.scm_context.quiet = True  # its "git add ..." advice is for CLI users; callers commit
        return repo

    def ensure(self) -> None:
        """Initialise DVC and its config for kiln; safe to call any number of times."""
        if self._ready:
            return
        if not (self.root / ".git").exists():
            raise ConfigError(f"{self.root} is not a git repository", hint=f"run `git init {self.root}` first")
        from dvc.repo import Repo

        if not (self.root / ".dvc").is_dir():
            import contextlib
            import sys

            # DVC greets on stdout; a workflow step's stdout is its JSON output
            with contextlib.redirect_stdout(sys.stderr):
                Repo.init(str(self.root)).close()
        kiln_dir = self.root / ".kiln"
        kiln_dir.mkdir(exist_ok=True)
        with self._repo() as repo:
            conf = repo.config
            repo_conf = conf.read("repo")
            with conf.edit("repo") as c:
                if not repo_conf.get("core", {}).get("remote"):
                    url = self.remote_url or str(kiln_dir / "dvc-remote")
                    c["remote"].setdefault(self.remote_name, {})["url"] = url
                    c["core"]["remote"] = self.remote_name
                if "type" not in repo_conf.get("cache", {}):
                    c["cache"]["type"] = "hardlink,symlink"
            with conf.edit("local") as c:
                c["core"]["site_cache_dir"] = str(kiln_dir / "dvc-site-cache")
        self._ignore_kiln_dir()
        self._ready = True

    def _ignore_kiln_dir(self) -> None:
        # DVC walks the workspace for .dvc files on add/push; .kiln/ holds run folders, staging
        # copies and the default local remote (one file per object), none of which it must see.
        f = self.root / ".dvcignore"
        text = f.read_text() if f.is_file() else ""
        if "/.kiln/" not in text.splitlines():
            write_text_atomic(f, text + ("" if not text or text.endswith("\n") else "\n") + "/.kiln/\n")

    # -- paths ---------------------------------------------------------------------------------
    def _rel(self, path: str | os.PathLike[str]) -> str:
        p = Path(path)
        p = (p if p.is_absolute() else self.root / p).resolve()
        if not p.is_relative_to(self.root):
            raise ConfigError(f"dataset path {p} is outside the repository {self.root}")
        return p.relative_to(self.root).as_posix()

    def _dvc_file(self, rel: str) -> Path:
        return self.root / f"{rel}.dvc"

    def _log_file(self, rel: str) -> Path:
        return self.root / f"{rel}.versions.json"

    def _read_log(self, rel: str) -> dict[str, Any]:
        log = read_versions_log(self._log_file(rel))
        return log if log is not None else {"path": rel, "current": None, "versions": []}

    def _write_log(self, rel: str, log: dict[str, Any]) -> None:
        write_json_atomic(self._log_file(rel), log)

    def _read_out(self, rel: str) -> dict[str, Any]:
        import yaml

        data = yaml.safe_load(self._dvc_file(rel).read_text())
        return dict(data["outs"][0])

    # -- verbs ---------------------------------------------------------------------------------
    def add_version(self, path: str | os.PathLike[str], *, content: Any = None,
                    lineage: dict[str, Any] | None = None, push: bool = True,
                    remote: str | None = None) -> Version:
        """Track ``path`` (a folder), push its objects, log it; return the (possibly existing) version.

        ``content`` (a DatasetContent) supplies per-class counts; without it the folder is listed
        with ``kiln.data.load(verify=False)`` and an unknown layout gives empty counts.
        ``remote`` names a configured DVC remote (default: the repository's default remote).
        """
        self.ensure()
        rel = self._rel(path)
        with self._repo() as repo:
            if remote is not None and remote not in repo.config["remote"]:
                known = ", ".join(sorted(repo.config["remote"])) or "none"
                raise ConfigError(f"DVC remote {remote!r} is not configured in {self.root / '.dvc/config'}; "
                                  f"remotes: {known}", hint=f"dvc remote add {remote} URL, or drop versioning.remote")
            repo.add([str(self.root / rel)])
            out = self._read_out(rel)
            vid = str(out["md5"]).removesuffix(".dir")
            remote_name = remote or repo.config["core"].get("remote") or ""
            log = self._read_log(rel)
            entry = next((v for v in log["versions"] if v["id"] == vid), None)
            if push and not (entry and remote_name in entry.get("pushed", [])):
                self._push(repo, rel, vid, remote, remote_name, log)
        log = self._read_log(rel)
        for v in log["versions"]:
            if v["id"] == vid:
                if log["current"] != vid or (push and remote_name not in v.get("pushed", [])):
                    log["current"] = vid
                    if push:
                        v["pushed"] = sorted({*v.get("pushed", []), remote_name})
                    self._write_log(rel, log)
                return Version(**v)
        content = self._content(self.root / rel, content)
        v = Version(id=vid, path=rel, files=int(out.get("nfiles", 1)), size=int(out.get("size", 0)),
                    per_class_counts=dict(content.class_counts()) if content is not None else {},
                    per_split_class_counts=content.split_class_counts() if content is not None else {},
                    schema=content.table.column_schema() if content is not None and content.table is not None else {},
                    created=datetime.now(UTC).isoformat(timespec="seconds"),
                    lineage=lineage if lineage is not None else getattr(content, "lineage", None), out=out,
                    pushed=[remote_name] if push else [])
        log["versions"].append(asdict(v))
        log["current"] = vid
        self._write_log(rel, log)
        return v

    def _push(self, repo, rel: str, vid: str, remote: str | None, remote_name: str, log: dict[str, Any]) -> None:
        """Upload what the remote lacks of version ``vid``.

        After a version that was pushed to the same remote, only the objects that version did not
        have are sent (a re-version after changing 10 of 10,000 files sends 10 files and the listing),
        without asking the remote about the other 9,990: `dvc push` builds an index of every object
        of the target and checks each against the remote, which dominated re-versioning. Without
        such a version (first push, other remote) it is a plain `dvc push` of the target. The
        listing (``.dir``) goes last, so a remote never holds a listing whose files are missing.
        """
        base = next((v for v in reversed(log["versions"])
                     if v["id"] != vid and remote_name in v.get("pushed", [])), None)
        base_listing = None
        if base is not None:
            try:
                base_listing = self._listing(repo, base["id"])
            except NotFound:
                base_listing = None
        if base_listing is None:
            repo.push(targets=[str(self._dvc_file(rel))], remote=remote)
            return
        cache = repo.cache.local
        odb = repo.cloud.get_remote_odb(remote, "push")
        have = set(base_listing.values())
        want = sorted({m for m in self._listing(repo, vid).values() if m not in have})
        if want:
            odb.add([cache.oid_to_path(m) for m in want], cache.fs, want)
        odb.add(cache.oid_to_path(f"{vid}.dir"), cache.fs, f"{vid}.dir")

    @staticmethod
    def _content(folder: Path, content: Any) -> Any:
        """What the counts are taken from: ``content``, else the folder listed (None: no layout)."""
        if content is None:
            try:
                content = load(folder, verify=False)
            except DatasetFormatError:
                return None
        return content

    def versions(self, path: str | os.PathLike[str]) -> list[Version]:
        return [Version(**v) for v in self._read_log(self._rel(path))["versions"]]

    def current(self, path: str | os.PathLike[str]) -> str | None:
        return self._read_log(self._rel(path))["current"]

    def _version(self, rel: str, vid: str) -> Version:
        for v in self._read_log(rel)["versions"]:
            if v["id"] == vid or (len(vid) >= 6 and v["id"].startswith(vid)):
                return Version(**v)
        known = ", ".join(v["id"][:12] for v in self._read_log(rel)["versions"]) or "none"
        raise NotFound(f"dataset {rel} has no version {vid!r}; versions: {known}")

    def checkout(self, path: str | os.PathLike[str], version: str) -> Version:
        """Make the folder hold ``version`` (fetching from the remote if the cache lacks it)."""
        import yaml

        self.ensure()
        rel = self._rel(path)
        v = self._version(rel, version)
        dvcf = self._dvc_file(rel)
        write_text_atomic(dvcf, yaml.safe_dump({"outs": [v.out]}, sort_keys=False))
        with self._repo() as repo:
            repo.pull(targets=[str(dvcf)], force=True)
        log = self._read_log(rel)
        log["current"] = v.id
        self._write_log(rel, log)
        return v

    def pull(self, path: str | os.PathLike[str]) -> None:
        """Fetch and check out what the committed ``.dvc`` file names (e.g. in a fresh clone)."""
        self.ensure()
        rel = self._rel(path)
        with self._repo() as repo:
            repo.pull(targets=[str(self._dvc_file(rel))], force=True)

    def _listing(self, repo, vid: str) -> dict[str, str]:
        """relpath -> md5 for a version, from the local cache or, failing that, a local remote."""
        name = f"{vid}.dir"
        candidates = [Path(repo.cache.local.oid_to_path(name))]
        url = repo.config["remote"].get(repo.config["core"].get("remote", ""), {}).get("url")
        if url and "://" not in url:
            candidates.append(Path(url) / "files" / "md5" / name[:2] / name[2:])
        for c in candidates:
            if c.is_file():
                return {e["relpath"]: e["md5"] for e in json.loads(c.read_text())}
        raise NotFound(f"directory listing {name} is in neither the DVC cache nor the local remote",
                       hint="run DatasetRepo.checkout for that version once to fetch it")

    def resolve(self, path: str | os.PathLike[str], ref: str) -> Version:
        """A logged version by ``latest`` (the current one), ``vN`` (1-based, in log order) or an id
        (prefix of at least 6 hex digits); unknown -> NotFound listing the known ones."""
        rel = self._rel(path)
        log = self._read_log(rel)
        vs = log["versions"]
        if ref == "latest":
            if log["current"] is None:
                raise NotFound(f"dataset {rel} has no versions yet", hint="apply its Dataset spec first")
            ref = log["current"]
        elif ref[:1] == "v" and ref[1:].isdigit():
            n = int(ref[1:])
            if not 1 <= n <= len(vs):
                raise NotFound(f"dataset {rel} has no version {ref}; it has v1..v{len(vs)}" if vs
                               else f"dataset {rel} has no versions yet")
            return Version(**vs[n - 1])
        return self._version(rel, ref)

    def number(self, path: str | os.PathLike[str], vid: str) -> int:
        """1-based position of version ``vid`` in the log (its ``vN``)."""
        for i, v in enumerate(self._read_log(self._rel(path))["versions"]):
            if v["id"] == vid:
                return i + 1
        raise NotFound(f"dataset {self._rel(path)} has no version {vid!r}")

    def materialize(self, path: str | os.PathLike[str], version: str, dest: str | os.PathLike[str],
                    *, link: bool = False) -> Version:
        """Copy the files of a logged version into ``dest`` (which must not exist) from the DVC
        cache or a local remote, without touching the tracked folder: deriving one dataset from
        another, or exporting an old version, must not change what the other one has checked out.

        ``link``: hard links instead of copies, for a reader that never writes (an experiment's
        training data): one copy on disk, as DVC's own checkout (``cache.type = hardlink``)."""
        import shutil

        from kiln._util.fs import link_or_copy

        self.ensure()
        rel = self._rel(path)
        v = self.resolve(rel, version)
        dest = Path(dest)
        if dest.exists():
            raise ConfigError(f"{dest} already exists")
        tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with self._repo() as repo:
            listing = self._listing(repo, v.id)
            cache = repo.cache.local
            url = repo.config["remote"].get(repo.config["core"].get("remote", ""), {}).get("url")
        bases = [lambda m: Path(cache.oid_to_path(m))]
        if url and "://" not in url:
            bases.append(lambda m: Path(url) / "files" / "md5" / m[:2] / m[2:])
        try:
            for relpath, md5 in listing.items():
                src = next((b(md5) for b in bases if b(md5).is_file()), None)
                if src is None:
                    raise NotFound(f"{rel}@{v.id[:12]}: object of {relpath} is in neither the DVC cache nor "
                                   "the local remote", hint=f"dvc pull {rel}.dvc with that version checked out")
                out = tmp / relpath
                out.parent.mkdir(parents=True, exist_ok=True)
                if link:
                    link_or_copy(src, out)
                else:
                    shutil.copyfile(src, out)  # a copy: cache objects are read-only and shared
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return v

    def diff(self, path: str | os.PathLike[str], v1: str, v2: str) -> VersionDiff:
        """Files added/removed/changed from ``v1`` to ``v2`` and per-class count changes."""
        self.ensure()
        rel = self._rel(path)
        a, b = self._version(rel, v1), self._version(rel, v2)
        with self._repo() as repo:
            la, lb = self._listing(repo, a.id), self._listing(repo, b.id)
        added = sorted(set(lb) - set(la))
        removed = sorted(set(la) - set(lb))
        changed = sorted(k for k in set(la) & set(lb) if la[k] != lb[k])
        classes = set(a.per_class_counts) | set(b.per_class_counts)
        counts = {c: (a.per_class_counts.get(c, 0), b.per_class_counts.get(c, 0)) for c in sorted(classes)
                  if a.per_class_counts.get(c, 0) != b.per_class_counts.get(c, 0)}
        return VersionDiff(added=added, removed=removed, changed=changed, class_counts=counts)
