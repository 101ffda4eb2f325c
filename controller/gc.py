"""``kiln gc``: remove what nothing under ``.kiln/`` refers to any more, and keep one copy of each
model on disk.

What goes (each only when its object is not being worked on, see ``_busy``):

- experiment runs (``.kiln/workspaces/<ws>/experiments/<name>/runs/<hash>[-<data>]``) beyond the
  newest ``gc.keepRuns`` of the experiment, unless the object's record points at the run or the
  run registered a model version the registry still holds (its lineage); every run of an
  experiment that has no record (pruned) and registered nothing still held;
- the experiment's materialised dataset versions (``data/<version>``) that no kept run trains on;
- checkpoints of finished trials in the runs that stay (only an unfinished trial resumes);
- dataset staging folders (``staging/<spec-hash>``), left behind by failed or interrupted runs;
- local runner workflow folders (``.kiln/runs/<workflow>``) that no record names;
- a deployment's Bento builds of model versions other than the one it serves now;
- memoized step results of the objects above (a memo of a step whose files are gone would skip
  the step the next time that spec is applied).

What is shared rather than removed: a trial's or a built Bento's file with the same bytes as a
registered model's file becomes a hard link to it (registrations before this code, Bentos).

Why the repository lock: ``kiln apply`` holds it while it plans, runs and records, so a collection
never sees half an apply; objects whose workflow still runs or whose object lock is held (work
that outlives the repository lock) are skipped and named.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from kiln._util.fs import read_json, share_identical
from kiln.config import KilnConfig
from kiln.controller.project import read_records
from kiln.state import RepoLock
from kiln.state.lock import current_holder

MEMO_DIR = ("cache", "kiln-step-cache")  # the local runner's memoize cache (Argo's ConfigMap name)


@dataclass
class Removal:
    path: Path
    bytes: int
    why: str


@dataclass
class GcReport:
    removed: list[Removal] = field(default_factory=list)
    shared_bytes: int = 0  # freed by turning equal files into hard links
    skipped: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def freed(self) -> int:
        return sum(r.bytes for r in self.removed) + self.shared_bytes

    def lines(self, repo: Path) -> Iterator[str]:
        verb = "would remove" if self.dry_run else "removed"
        for r in self.removed:
            yield f"{verb} {_rel(r.path, repo)}  {_human(r.bytes)}  ({r.why})"
        if self.shared_bytes:
            yield (f"{'would share' if self.dry_run else 'shared'} model files with the registry "
                   f"(hard links): {_human(self.shared_bytes)}")
        for s in self.skipped:
            yield f"skipped {s}"
        yield (f"{'would free' if self.dry_run else 'freed'} {_human(self.freed)} ({self.freed} bytes) "
               f"in {len(self.removed)} folder(s)")


def _rel(p: Path, repo: Path) -> str:
    try:
        return str(p.relative_to(repo))
    except ValueError:
        return str(p)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def freed_bytes(path: Path) -> int:
    """What deleting ``path`` frees: files with no other hard link (a trial file shared with the
    registry stays on disk through the registry's link)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            if st.st_nlink == 1:
                total += st.st_size
    return total


def tree_bytes(path: Path) -> int:
    """Bytes on disk under ``path``, each hard-linked file once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _workflows(kiln_dir: Path) -> dict[str, dict]:
    """Local runner workflow folder name -> its workflow.json (``{}`` when unreadable)."""
    out = {}
    for d in sorted((kiln_dir / "runs").glob("*")) if (kiln_dir / "runs").is_dir() else []:
        if d.is_dir():
            out[d.name] = read_json(d / "workflow.json") or {}
    return out


def _running(doc: dict) -> bool:
    """A workflow that may still be running: its phase says so and its runner lives (a runner
    killed with the machine leaves ``Running`` behind forever)."""
    if not doc:
        return True  # being written, or unreadable: not ours to judge
    if (doc.get("status") or {}).get("phase") not in (None, "", "Running", "Pending"):
        return False
    ann = (doc.get("metadata") or {}).get("annotations") or {}
    pid, host = ann.get("kiln.dev/runner-pid"), ann.get("kiln.dev/runner-host")
    if pid and host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
    return True


def _object_of(doc: dict) -> str | None:
    return ((doc.get("metadata") or {}).get("annotations") or {}).get("kiln.dev/object")


def _busy(kiln_dir: Path, workflows: dict[str, dict]) -> dict[str, str]:
    """Object key -> why gc must leave it alone now."""
    busy = {}
    for name, doc in workflows.items():
        key = _object_of(doc)
        if key and _running(doc):
            busy[key] = f"its workflow {name} is running"
    for p in sorted((kiln_dir / "locks").glob("*.lock")) if (kiln_dir / "locks").is_dir() else []:
        holder = current_holder(p)
        if holder is not None:
            busy[unquote(p.name[: -len(".lock")])] = f"its lock is held by pid {holder.get('pid', '?')}"
    return busy


def _registered_versions(config: KilnConfig) -> dict[str, set[int]]:
    from kiln.bento.registry import Registry, default_home

    home = default_home(config.repo)
    if not (home / "models").is_dir():
        return {}
    reg = Registry(home)
    return {n: set(reg.versions(n)) for n in reg.names()}


def _finished_checkpoints(run: Path, out: GcReport) -> None:
    """Checkpoints exist to resume a trial that did not finish; a COMPLETE or PRUNED trial is
    never trained again (``training.run_trial`` returns its record), so its checkpoints (model
    plus optimizer state, twice a ResNet's size each) are dead weight."""
    for ck in sorted(run.glob("trials/*/checkpoints")):
        state = (read_json(ck.parent / "trial.json") or {}).get("state")
        if state in ("COMPLETE", "PRUNED") and ck.is_dir() and any(ck.iterdir()):
            out.removed.append(Removal(ck, freed_bytes(ck), f"checkpoints of a {state.lower()} trial"))


def _experiment(home: Path, record_run: str | None, keep: int, held: dict[str, set[int]],
                out: GcReport) -> list[str] | None:
    """Runs and data copies of one experiment; the spec hashes of the runs that go (a run folder
    is ``<spec-hash>`` or ``<spec-hash>-<data>``), or None when nothing goes."""
    runs = sorted((d for d in (home / "runs").glob("*") if d.is_dir()) if (home / "runs").is_dir() else [],
                  key=lambda d: d.stat().st_mtime, reverse=True)
    kept: list[Path] = []
    gone: list[str] = []
    n_before = len(out.removed)
    for i, run in enumerate(runs):
        reg = read_json(run / "registered.json") or {}
        if record_run and Path(record_run) == run:
            kept.append(run)
        elif reg.get("version") in held.get(reg.get("model", ""), set()):
            kept.append(run)
        elif record_run is not None and i < keep:
            kept.append(run)
        else:
            why = "beyond gc.keepRuns" if record_run is not None else "experiment has no record"
            out.removed.append(Removal(run, freed_bytes(run), why))
            gone.append(run.name.split("-")[0])
    for run in kept:
        _finished_checkpoints(run, out)
    used = {(read_json(r / "data.json") or {}).get("version") for r in kept}
    for d in sorted((home / "data").glob("*")) if (home / "data").is_dir() else []:
        if d.is_dir() and d.name not in used:
            out.removed.append(Removal(d, freed_bytes(d), "dataset version no kept run trains on"))
    return gone if len(out.removed) > n_before else None


def collect(config: KilnConfig, *, dry_run: bool = False) -> GcReport:
    """Find (and, unless ``dry_run``, remove) what nothing refers to. The caller holds the
    repository lock (``gc`` takes it)."""
    kiln_dir = config.kiln_dir()
    out = GcReport(dry_run=dry_run)
    if not kiln_dir.is_dir():
        return out
    records = {r.key: r for r in read_records(config)}
    workflows = _workflows(kiln_dir)
    busy = _busy(kiln_dir, workflows)
    held = _registered_versions(config)
    touched: set[str] = set()  # objects whose memoized steps must go with their files
    forget: dict[str, tuple[list[str], str]] = {}  # object -> (spec hashes, run key in use)
    for home in sorted((kiln_dir / "workspaces").glob("*/experiments/*")):
        key = f"Experiment/{home.parent.parent.name}/{home.name}"
        if key in busy:
            out.skipped.append(f"{key}: {busy[key]}")
            continue
        rec = records.get(key)
        record_run = str((rec.extra or {}).get("run") or "") if rec is not None else None
        gone = _experiment(home, record_run, config.gc.keepRuns, held, out)
        if gone is not None:
            touched.add(key)
            forget[key] = (gone, str((rec.extra or {}).get("runKey") or rec.spec_hash) if rec is not None else "")
    for staging in sorted((kiln_dir / "workspaces").glob("*/datasets/*/staging/*")):
        ds = staging.parent.parent
        key = f"Dataset/{ds.parent.parent.name}/{ds.name}"
        if key in busy:
            if f"{key}: {busy[key]}" not in out.skipped:
                out.skipped.append(f"{key}: {busy[key]}")
            continue
        out.removed.append(Removal(staging, freed_bytes(staging), "dataset staging left by an unfinished run"))
        touched.add(key)
    for dep in sorted((kiln_dir / "deployments").glob("*/*")):
        key = f"Deployment/{dep.parent.name}/{dep.name}"
        current = f"home-build-v{(read_json(dep / 'build.json') or {}).get('version')}"
        for build in sorted(dep.glob("home-build-v*")) if key not in busy else []:
            if build.name != current:  # servers run from home-v<N>; these Bentos are only for shipping
                out.removed.append(Removal(build, freed_bytes(build), "Bento of a model version no longer served"))
    named = {str(i.get("id")) for r in records.values() for i in r.inventory if i.get("kind") == "workflow"}
    named |= {str(((r.extra or {}).get("workflow") or {}).get("name")) for r in records.values()}
    for name, doc in workflows.items():
        if name not in named and not _running(doc) and _object_of(doc) not in busy:
            out.removed.append(Removal(kiln_dir / "runs" / name, freed_bytes(kiln_dir / "runs" / name),
                                       "workflow of no recorded object"))
            touched.add(_object_of(doc) or "")
    out.shared_bytes = _share_models(kiln_dir, {r.path for r in out.removed}, dry_run)
    if not dry_run:
        for r in out.removed:
            shutil.rmtree(r.path, ignore_errors=True)
        _drop_memos(kiln_dir, {name for name, doc in workflows.items() if _object_of(doc) in touched})
        _forget_steps(config, {k: v for k, v in forget.items() if v[0]})
    return out


def _forget_steps(config: KilnConfig, forget: dict[str, tuple[list[str], str]]) -> None:
    """Without this, applying a collected run's spec again would find its steps "done before"
    in the state store and record a run folder that no longer exists. Step progress is keyed on
    the spec hash plus a hash of the input versions (``handlers.base.run_key``); the run key the
    record uses now stays."""
    if not forget:
        return
    from kiln.controller.project import open_state

    store = open_state(config)
    try:
        for key, (hashes, in_use) in forget.items():
            stale = {sp.spec_hash for sp in store.steps(key)
                     if sp.spec_hash.split("-")[0] in hashes and sp.spec_hash != in_use}
            store.forget_steps(key, sorted(stale))
    finally:
        store.close()


def _share_models(kiln_dir: Path, going: set[Path], dry_run: bool) -> int:
    """Trial and Bento files equal to a registered model's file become hard links to it."""
    store = kiln_dir / "bentoml" / "models"
    if not store.is_dir():
        return 0
    globs = ("workspaces/*/experiments/*/runs/*/trials", "deployments/*/*/home-build-*/bentos")
    roots = [d for g in globs for d in kiln_dir.glob(g) if not any(d.is_relative_to(p) for p in going)]
    files = [f for d in roots for f in d.rglob("*") if f.is_file() and not f.is_symlink()
             and f.stat().st_size >= 64 * 1024]
    return share_identical(files, store, dry_run=dry_run) if files else 0


def _drop_memos(kiln_dir: Path, workflows: set[str]) -> None:
    memo = kiln_dir.joinpath(*MEMO_DIR)
    if not workflows or not memo.is_dir():
        return
    for f in memo.glob("*.json"):
        try:
            wf = json.loads(f.read_text()).get("workflow")
        except (OSError, json.JSONDecodeError):
            continue
        if wf in workflows:
            f.unlink(missing_ok=True)


def gc(config: KilnConfig, *, dry_run: bool = False, wait_lock: float = 0.0) -> GcReport:
    """``kiln gc``: under the repository lock (refused while an apply holds it)."""
    with RepoLock(config.repo, "kiln gc" + (" --dry-run" if dry_run else ""), wait=wait_lock):
        return collect(config, dry_run=dry_run)
