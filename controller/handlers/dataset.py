"""Dataset handler: a Dataset's work is its workflow (fetch -> validate -> preprocess-<i> ->
split -> version, steps in ``kiln.controller.dataset_steps``); this class adds what the
controller keeps about it.

Versions live in the user's repository, not in the state store: ``data/<ws>/<name>.dvc`` and
``data/<ws>/<name>.versions.json`` (see ``kiln.data.versioning``). The record's ``extra`` mirrors
the current one for ``kiln status``/``describe``::

    {"version": "<dvc md5>", "number": "v2", "versions": 2, "files": 1797, "size": 1437600,
     "classes": {"0": 178, ...}, "path": "data/vision/digits",
     "schema": {...}  (tables: column types, categories, missing counts; kiln.data.schema)
     "info": "v2 3f2a9c1b0d4e 1797 files 1.4 MB"}

Re-applying an unchanged spec does nothing (plan: unchanged). A changed spec runs the workflow
again; whether that makes a new version is DVC's call: the same bytes give the same id.

Delete (``apply --prune``) stops tracking: ``dvc remove`` of the ``.dvc`` file (its .gitignore
entry goes too) and removal of the checked-out folder and staging area. The versions log stays
(history, ``kiln data versions``), and so do the objects in the DVC cache and remote: other
clones, experiments and old commits may still refer to them; ``dvc gc`` is the user's decision.
With ``versioning.commit: auto`` the removal is committed.
"""

from __future__ import annotations

# Step modules are imported inside the methods that use them: see LAZY_STEP_IMPORTS in base.py.
import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.controller.handlers.base import Context
from kiln.controller.handlers.workflow import WorkflowHandler

if TYPE_CHECKING:
    from kiln.config import KilnConfig
    from kiln.loader import LoadedSpec


def source_fingerprint(config: KilnConfig, workspace: str, src: Any) -> tuple[str, str] | None:
    """``("source:<what>", fingerprint)`` of a Dataset's local source (a path or archive, or a
    Deployment's capture folder), so that new or edited files re-version an unchanged spec.
    Path, size and mtime of every file, as DVC's own state cache does: no file is read, so plan
    stays cheap (10,000 files: a few tens of ms). A missing source has no fingerprint (apply
    reports it)."""
    if src.path or src.archive:
        what, root = ("path", src.path) if src.path else ("archive", src.archive)
        assert root is not None
        top = Path(root) if Path(root).is_absolute() else config.repo / root
    elif src.capture:
        what, root = "capture", src.capture
        top = config.kiln_dir() / "deployments" / workspace / src.capture / "capture"
    else:
        return None
    h = hashlib.sha256()
    try:
        if top.is_file():
            st = top.stat()
            h.update(f"{st.st_size} {st.st_mtime_ns}".encode())
        elif top.is_dir():
            for d, dirs, files in os.walk(top):
                dirs[:] = sorted(x for x in dirs if x not in (".git", ".dvc"))
                for f in sorted(files):
                    st = os.stat(os.path.join(d, f))
                    h.update(f"{os.path.relpath(os.path.join(d, f), top)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            return None
    except OSError:
        return None
    return f"source:{what}:{root}", h.hexdigest()[:16]


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


class DatasetHandler(WorkflowHandler):
    kind = "Dataset"

    @classmethod
    def unavailable(cls, spec: Any) -> str | None:
        src = spec.obj.spec.source
        if src.capture:
            repo = cls.repo_of(spec)
            cap = repo / ".kiln" / "deployments" / spec.workspace / src.capture / "capture"
            if not (cap / "index.jsonl").is_file():
                return (f"source.capture {src.capture!r}: Deployment {src.capture!r} has captured nothing yet "
                        f"(apply it with capture: and send it requests; looked in {cap})")
        return None

    @classmethod
    def followed(cls, spec: LoadedSpec) -> list[tuple[str, str]]:
        """A derived Dataset follows its parent."""
        parent = spec.obj.spec.source.dataset
        if parent is None or parent.version != "latest":
            return []
        return [(parent.workspace or spec.workspace, parent.name)]

    @classmethod
    def source_inputs(cls, config: KilnConfig, spec: LoadedSpec) -> dict[str, str]:
        found = source_fingerprint(config, spec.workspace, spec.obj.spec.source)
        return {} if found is None else {found[0]: found[1]}

    def inventory_from(self, spec: Any, outputs: dict[str, Any]) -> list[dict[str, Any]]:
        out = outputs.get("version")
        if not isinstance(out, dict) or "version" not in out:
            return []
        return [{"kind": "dvc", "id": out["path"], "version": out["version"]}]

    def extra(self, ctx: Context) -> dict[str, Any]:
        from kiln.controller.dataset_steps import data_rel
        from kiln.data.versioning import DatasetRepo

        spec = ctx.spec
        assert spec is not None
        rel = data_rel(spec.workspace, spec.name)
        dr = DatasetRepo(ctx.repo)
        vid = dr.current(rel)
        if vid is None:
            return {}
        versions = dr.versions(rel)
        n = next(i + 1 for i, v in enumerate(versions) if v.id == vid)
        v = versions[n - 1]
        return {"version": v.id, "number": f"v{n}", "versions": len(versions), "files": v.files,
                "size": v.size, "classes": v.per_class_counts, "classesPerSplit": v.per_split_class_counts,
                "path": rel, **({"schema": v.schema} if v.schema else {}),
                "info": f"v{n} {v.id[:12]} {v.files} files {human_size(v.size)}"}

    def delete(self, ctx: Context) -> list[str]:
        from kiln.controller.dataset_steps import dataset_home, git_commit

        assert ctx.record is not None
        done = super().delete(ctx)
        rec = ctx.record
        for item in rec.inventory:
            if item.get("kind") != "dvc":
                continue
            rel = item["id"]
            dvc_file = ctx.repo / f"{rel}.dvc"
            if dvc_file.is_file():
                from dvc.repo import Repo

                with Repo(str(ctx.repo), _wait_for_lock=True) as repo:
                    repo.remove(str(dvc_file))  # the .dvc file and its .gitignore entry
                done.append(f"stop tracking {rel} (dvc remove {rel}.dvc; cache and remote objects kept)")
            folder = ctx.repo / rel
            if folder.exists():
                shutil.rmtree(folder)
                done.append(f"remove checked-out {rel}/")
            commit = ((rec.spec.get("spec") or {}).get("versioning") or {}).get("commit", "manual")
            if commit == "auto":
                sha = git_commit(ctx.repo, [f"{rel}.dvc", f"{Path(rel).parent}/.gitignore"],
                                 f"kiln: stop tracking dataset {rec.workspace}/{rec.name}")
                if sha:
                    done.append(f"commit {sha[:12]}")
        home = dataset_home(ctx.config, rec.workspace, rec.name)
        if home.exists():
            shutil.rmtree(home)
            done.append(f"remove {home.relative_to(ctx.repo)}")
        return done
