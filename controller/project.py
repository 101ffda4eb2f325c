"""The verbs behind the CLI, callable (and tested) directly: validate, plan, apply, status.

``kiln/cli.py`` parses arguments and prints; the work is here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kiln.api import KINDS, refs
from kiln.api.refs import find_key
from kiln.config import KilnConfig
from kiln.controller.apply import ApplyResult, Locking, Origin, apply_plan
from kiln.controller.events import Listener, printing
from kiln.controller.plan import Plan, make_plan
from kiln.errors import ConfigError, NotFound, SpecErrors, SpecIssue
from kiln.loader import SpecSet, load_specs, spec_cache_dir
from kiln.state import RepoLock
from kiln.state.snapshot import recorded_objects
from kiln.validate import dependencies, validate

# seconds any command waits for the repository lock, which others hold only while they plan
PLAN_LOCK_WAIT = 30.0


def load_valid(config: KilnConfig, path: str | os.PathLike[str] | None = None) -> SpecSet:
    """Load and validate; raise ``SpecErrors`` listing every problem."""
    refuse_committed_private_files(config)
    # the parse cache lives in the user's cache folder, and only once the repo has been used
    specs = load_specs(Path(path) if path else config.specs_dir(), config.templates_dir(),
                       cache_dir=spec_cache_dir(config.repo) if config.kiln_dir().is_dir() else None)
    issues = validate(specs, config.datasets, config.repo)
    if config.runner == "local":  # on a cluster, kiln's image trains and has every extra
        issues = sorted([*issues, *missing_extras(specs)], key=SpecIssue.sort_key)
    if issues:
        raise SpecErrors(issues=issues)
    return specs


def missing_extras(specs: SpecSet) -> list[SpecIssue]:
    """An Experiment whose algorithm (or AutoML candidate) needs a package this machine lacks, as
    an issue naming the extra to install: at validate, not minutes later in the training task
    (the quickstart installs only the extras the example repo uses)."""
    from kiln.algorithms.registry import missing_extra

    out = []
    for s in specs.specs:
        if s.kind != "Experiment":
            continue
        spec = s.obj.spec
        named: list[tuple[list[str | int], str]] = []
        if spec.algorithm is not None:
            named.append((["spec", "algorithm", "name"], spec.algorithm.name))
        if spec.automl is not None:
            named += [(["spec", "automl", "candidates", i, "name"], c.name) for i, c in enumerate(spec.automl.candidates)]
        for path, name in named:
            need = missing_extra(name)
            if need is not None:
                out.append(s.issue(path, f"{s.ref}: algorithm {name!r} needs {need[0]}, which is not installed here",
                                   f"pip install 'kiln[{need[1]}]', or kiln[all] for every algorithm"))
    return out


def refuse_committed_private_files(config: KilnConfig) -> None:
    """``.kiln/`` is kiln's own state (the SQLite store, workspaces' data, locks). A commit that
    carries files there would have kiln read what a pull request wrote as if kiln had written it
    (a forged state makes the plan lie), so validate, plan and apply refuse such a checkout."""
    import subprocess

    if not (config.repo / ".git").exists():
        return
    try:
        out = subprocess.run(["git", "-C", str(config.repo), "ls-files", "-z", "--", ".kiln"],
                             capture_output=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return  # no git: nothing is committed that we could tell
    tracked = [f for f in out.decode(errors="replace").split("\0") if f]
    if tracked:
        shown = ", ".join(tracked[:3]) + (f" and {len(tracked) - 3} more" if len(tracked) > 3 else "")
        raise ConfigError(f"kiln's private folder .kiln/ is committed to git ({shown}); kiln never "
                          "reads its state from a commit",
                          hint="git rm -r --cached .kiln && echo .kiln/ >> .gitignore, then commit")


def applied_from(config: KilnConfig) -> Origin:
    """The git HEAD the specs are applied from and its author (``kiln events``); the sha gets
    ``-dirty`` when the specs or templates differ from it (uncommitted edits). Empty outside git
    or before the first commit: history then says so rather than guess."""
    import subprocess

    def git(*args: str) -> str:
        try:
            p = subprocess.run(["git", "-C", str(config.repo), *args], capture_output=True, text=True,
                               timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return p.stdout.strip() if p.returncode == 0 else ""

    if not (config.repo / ".git").exists():
        return Origin()
    head = git("log", "-1", "--format=%H%x00%an <%ae>")
    if not head:
        return Origin()
    sha, _, author = head.partition("\0")
    dirty = git("status", "--porcelain", "--", *(str(p) for p in (config.specs_dir(), config.templates_dir())
                                                  if p.exists()))
    return Origin(commit=sha + ("-dirty" if dirty else ""), author=author)


def canonical_kind(kind: str) -> str:
    k = refs.canonical_kind(kind)
    if k is None:
        raise NotFound(f"unknown kind {kind!r}", hint=f"one of {', '.join(KINDS)}")
    return k


def parse_ref(ref: str, workspace: str | None = None) -> tuple[str, str, str]:
    """KIND/NAME or KIND/WORKSPACE/NAME (``kiln.api.refs``) -> (kind, workspace, name); a missing
    workspace is the default one (``find_key`` also looks in the others)."""
    r = refs.parse_ref(ref, workspace=workspace)
    return r.kind, r.workspace or refs.DEFAULT_WORKSPACE, r.name


def _scope(config: KilnConfig, path: str | os.PathLike[str] | None) -> str:
    target = Path(path).resolve() if path else config.specs_dir().resolve()
    try:
        rel = target.relative_to(Path.cwd())
    except ValueError:
        rel = target
    return "" if str(rel) == "." else str(rel)


def open_state(config: KilnConfig, *, read_only: bool = False):  # -> StateStore
    """The repository's state store; ``read_only`` never creates one (see ``open_store``)."""
    # kiln.state.store imports SQLAlchemy (~150 ms): only the commands that open the store pay
    from kiln.state import open_store

    return open_store(config.state_url(), config.repo, max_attempts=config.historyLimit, read_only=read_only)


def target_keys(specs: SpecSet, records: list, targets: Sequence[str], workspace: str | None = None) -> set[str]:
    """The objects named in ``targets`` (``kiln.api.refs``: ``Kind/name``, ``Kind/workspace/name``,
    ``-w``) and what they need first, transitively (``kiln.validate.dependencies``: their
    workspace, the datasets they read, the experiment a deployment serves). This is how CI trains
    only what a pull request changed without applying the rest of the repository. A target may
    name a recorded object whose spec was removed: ``--prune`` deletes it, and nothing else.

    An unknown target is an error that lists the objects that exist."""
    by_key = specs.by_key()
    known = set(by_key) | {r.key for r in records}
    wanted = [find_key(t, known, workspace=workspace, what=f"--target {t}: ", absent="no spec defines {}")
              for t in targets]
    keep: set[str] = set()
    while wanted:
        key = wanted.pop()
        if key in keep:
            continue
        keep.add(key)
        if key in by_key:  # a missing dependency was already reported by validate
            wanted += list(dependencies(by_key[key]))
    return keep


def _targeted(specs: SpecSet, records: list, keys: set[str] | None) -> tuple[SpecSet, list]:
    """With targets, the records of other objects are left out too, so the plan neither deletes
    nor notes objects that merely were not selected."""
    if keys is None:
        return specs, records
    return replace(specs, specs=[s for s in specs.specs if s.key in keys]), [r for r in records if r.key in keys]


def plan(config: KilnConfig, path: str | os.PathLike[str] | None = None, *, prune: bool = False,
         targets: Sequence[str] | None = None, workspace: str | None = None) -> Plan:
    specs, records = load_valid(config, path), read_records(config)
    keys = target_keys(specs, records, targets, workspace) if targets else None
    specs, records = _targeted(specs, records, keys)
    return make_plan(specs, records, scope=_scope(config, path), prune=prune, config=config)


def read_records(config: KilnConfig) -> list:
    """Every recorded object, read-only (never creates a state database)."""
    return recorded_objects(config.state_url(), config.repo)


@dataclass
class Applied:
    plan: Plan
    result: ApplyResult


def apply(config: KilnConfig, path: str | os.PathLike[str] | None = None, *, prune: bool = False,
          echo: Callable[[str], None] = print, wait_lock: float = 0.0, command: str = "kiln apply",
          targets: Sequence[str] | None = None, review: Callable[[Any, Any], bool] | None = None,
          on_event: Listener | None = None, workspace: str | None = None,
          write: Callable[[str], None] | None = None) -> Applied:
    """Reconcile the specs under ``path`` (default: all); with ``targets``, only those objects and
    their dependencies (``target_keys``; ``workspace``: ``-w``). ``review(plan, store)``, called under the lock
    between planning and applying, may look at (and mark) what is about to change; returning
    False applies nothing (``kiln controller`` uses it to log drift and skip quiet intervals).
    What apply does goes to ``on_event`` as typed events (``kiln.controller.events``), or, without
    it, to ``echo`` as the lines ``kiln apply`` prints; ``write`` (text without a newline, on a
    terminal) shows progress as a line rewritten in place (``events.Console``)."""
    specs = load_valid(config, path)  # nothing is touched when the specs are invalid
    # unknown targets fail before the lock is taken
    keys = target_keys(specs, read_records(config), targets, workspace) if targets else None
    first = not config.kiln_dir().exists()
    # The repository lock covers planning only (and `review`'s marks): a few seconds at most, so
    # it is waited for; the objects' work runs under their own locks (kiln.controller.apply).
    with RepoLock(config.repo, command, wait=max(wait_lock, PLAN_LOCK_WAIT)):
        if first:  # the first apply makes .kiln/: keep it out of `git add -A` from the start
            from kiln.controller.scaffold import GITIGNORE_ENTRY, ensure_gitignore

            if ensure_gitignore(config.repo) and on_event is None:
                echo(f"added {GITIGNORE_ENTRY} to .gitignore: kiln's private files stay out of git")
        store = open_state(config)
        try:
            specs, records = _targeted(specs, store.all_objects(), keys)
            p = make_plan(specs, records, scope=_scope(config, path), prune=prune, config=config)
            go = review is None or review(p, store)
        except BaseException:
            store.close()
            raise
    try:
        if not go:
            return Applied(p, ApplyResult())
        locking = Locking(config.repo, command, wait=wait_lock)
        done = Applied(p, apply_plan(p, config, store,
                                       on_event or printing(echo, terminal=write is not None, write=write),
                                       locking, applied_from(config)))
    finally:
        store.close()
    if config.gc.afterApply:
        _collect_after_apply(config, echo)
    return done


def _collect_after_apply(config: KilnConfig, echo: Callable[[str], None]) -> None:
    """``gc.afterApply``: retention after the objects' work, under the repository lock like
    `kiln gc` (objects another apply is working on are skipped by their locks). A lock held
    past the wait only postpones collection to the next apply or `kiln gc`."""
    from kiln.controller.gc import gc
    from kiln.errors import LockHeld

    try:
        report = gc(config, wait_lock=PLAN_LOCK_WAIT)
    except LockHeld as e:
        echo(f"gc.afterApply skipped: {e}")
        return
    if report.removed or report.shared_bytes:
        echo(list(report.lines(config.repo))[-1])
