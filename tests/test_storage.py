"""What kiln keeps on disk (issue #15, storage): `.kiln/` stays out of git, a registered model is
stored once, `kiln gc` removes stale runs and keeps what is referenced, `kiln init`.

One repository (wine + a random-forest experiment applied in two spec variants, so one run is
stale) is built per module with the real CLI, DVC, BentoML's store and the local runner."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import kiln, write
from tests.test_experiment_handler import git_repo

pytest.importorskip("dvc")
pytest.importorskip("bentoml")

WINE = """
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: wine}
spec:
  type: tabular
  task: classification
  format: csv
  source: {sample: wine}
  label: target
  splits: {train: 0.7, validation: 0.15, test: 0.15, seed: 7}
"""


def experiment(depth: int) -> str:
    # when: always: each variant's version takes production, so keepVersions deletes the older
    # one and gc finds its run stale (a plain name moves only when better, #21)
    return f"""
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {{name: wine-rf}}
spec:
  mode: run
  dataset: {{name: wine}}
  algorithm: {{name: random_forest, hyperparameters: {{n_estimators: 40, max_depth: {depth}}}}}
  objective: {{metric: validation_accuracy, direction: maximize}}
  register: {{model: wine-rf, aliases: [{{name: production, when: always}}], keepVersions: 1, export: [onnx]}}
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("storage") / "repo"
    root.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "kiln@example.com"], ["config", "user.name", "kiln test"]):
        _git(root, *args)
    # a user's own .gitignore, without a final newline: kiln appends to it
    write(root, {"specs/wine.yaml": WINE, "kiln.yaml": "gc: {keepRuns: 1}\n"})
    (root / ".gitignore").write_text("*.log")
    for depth in (3, 4):  # two spec variants: two runs, the first one stale
        write(root, {"specs/exp.yaml": experiment(depth)})
        kiln("apply", cwd=root, check=True, timeout=300)
    return root


def _runs(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / ".kiln/workspaces/default/experiments/wine-rf/runs").iterdir())


def _identical_files(root: Path, min_size: int = 16 * 1024) -> list[list[str]]:
    """Groups of distinct files (not hard links of one another) with the same bytes."""
    seen: set[tuple[int, int]] = set()
    groups: dict[tuple[int, str], list[str]] = {}
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = Path(d) / f
            st = p.lstat()
            if p.is_symlink() or st.st_size < min_size or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            groups.setdefault((st.st_size, hashlib.sha256(p.read_bytes()).hexdigest()), []).append(str(p.relative_to(root)))
    return [g for g in groups.values() if len(g) > 1]


def test_after_apply_git_add_all_stages_nothing_under_kiln(repo: Path) -> None:
    lines = (repo / ".gitignore").read_text().splitlines()
    assert lines[0] == "*.log" and lines.count("/.kiln/") == 1  # appended to the user's file
    _git(repo, "add", "-A")
    staged = _git(repo, "diff", "--cached", "--name-only").split()
    assert staged and not [f for f in staged if f.startswith(".kiln")], staged
    # what a repository commits: specs, kiln.yaml, the dataset's DVC pointer and version log, metrics
    assert {"specs/exp.yaml", "kiln.yaml", ".gitignore", "data/default/wine.dvc", "data/default/wine.versions.json",
            "metrics/default/wine-rf.json"} <= set(staged), staged
    # the next verbs do not refuse the checkout (they refuse one where git tracks .kiln/)
    assert kiln("plan", cwd=repo).returncode == 0


def test_a_registered_model_is_stored_once(repo: Path) -> None:
    registered = repo / ".kiln/bentoml/models/wine-rf"
    assert any(p.name == "model.onnx" for p in registered.rglob("*"))
    # the DVC remote kiln defaults to sits under .kiln/ and is a backup of the DVC cache by design
    dups = [g for g in ([p for p in g if not p.startswith("dvc-remote/")] for g in _identical_files(repo / ".kiln"))
            if len(g) > 1]
    assert not dups, dups


def test_kiln_init_writes_gitignore_once(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules/\n")
    first = kiln("init", cwd=tmp_path, check=True)
    assert "added /.kiln/ to .gitignore" in first.stdout and (tmp_path / "specs").is_dir()
    assert "git init" in first.stdout  # not a git repository yet: said, not done
    again = kiln("init", cwd=tmp_path, check=True)
    assert "already" in again.stdout
    text = (tmp_path / ".gitignore").read_text()
    assert text.startswith("node_modules/\n") and text.count("/.kiln/") == 1
    other = tmp_path / "own"
    write(other, {".gitignore": ".kiln\n"})
    kiln("init", cwd=other, check=True)
    assert (other / ".gitignore").read_text() == ".kiln\n"  # already ignored: left alone


def test_gc_refuses_while_apply_holds_the_lock_and_skips_running_objects(repo: Path) -> None:
    from kiln.state import ObjectLock, RepoLock

    with RepoLock(repo, "kiln apply (test)"):
        held = kiln("gc", "--dry-run", cwd=repo)
    assert held.returncode == 3 and "kiln apply (test)" in held.stderr and "Traceback" not in held.stderr
    with ObjectLock(repo, "Experiment/default/wine-rf", "kiln apply (test)"):
        busy = kiln("gc", "--dry-run", cwd=repo, check=True)
    assert f"skipped Experiment/default/wine-rf: its lock is held by pid {os.getpid()}" in busy.stdout
    assert "runs/" not in busy.stdout


def test_gc_shrinks_a_repo_with_stale_runs_and_keeps_what_is_referenced(repo: Path) -> None:
    from kiln.controller.gc import tree_bytes

    record = json.loads(kiln("get", "experiment", "wine-rf", "-o", "json", cwd=repo, check=True).stdout)
    current = Path(record["extra"]["run"]).name
    runs = _runs(repo)
    assert len(runs) == 2 and current in runs
    # what a torch trial leaves behind: checkpoints, only ever read to resume an unfinished trial
    trial = repo / ".kiln/workspaces/default/experiments/wine-rf/runs" / current / "trials/run"
    assert json.loads((trial / "trial.json").read_text())["state"] == "COMPLETE"
    (trial / "checkpoints").mkdir(exist_ok=True)
    (trial / "checkpoints/epoch-0001.pt").write_bytes(os.urandom(256 * 1024))
    before = tree_bytes(repo / ".kiln")

    dry = kiln("gc", "--dry-run", cwd=repo, check=True)
    would = [ln for ln in dry.stdout.splitlines() if ln.startswith("would remove")]
    assert len(would) == 2, dry.stdout
    assert "beyond gc.keepRuns" in would[0] and current not in would[0], dry.stdout
    assert f"{current}/trials/run/checkpoints" in would[1] and "checkpoints of a complete trial" in would[1]
    assert "would free" in dry.stdout
    assert _runs(repo) == runs and tree_bytes(repo / ".kiln") <= before + 64 * 1024  # nothing removed

    done = kiln("gc", cwd=repo, check=True)
    after = tree_bytes(repo / ".kiln")
    assert _runs(repo) == [current], done.stdout
    freed = int(done.stdout.splitlines()[-1].split("(")[1].split()[0])
    assert freed > 256 * 1024 and after < before - 256 * 1024, (before, after, done.stdout)
    assert not (trial / "checkpoints").exists() and (trial / "model").is_dir()
    print(f".kiln/ before gc: {before} bytes, after: {after} bytes, reported freed: {freed}")

    # what is referenced still works: the registered version, kiln infer, and the recorded run
    out = kiln("infer", "wine-rf@production", "wine", cwd=repo, check=True, timeout=180)
    assert "178 predictions" in out.stdout, out.stdout + out.stderr
    assert (repo / ".kiln/workspaces/default/experiments/wine-rf/runs" / current / "registered.json").is_file()
    assert kiln("gc", cwd=repo, check=True).stdout.strip().splitlines()[-1].startswith("freed 0 B")

    # a spec reverted to a collected run's variant trains again (its memoized steps and step
    # progress went with it); gc.afterApply collects the run it replaced right after
    write(repo, {"specs/exp.yaml": experiment(3), "kiln.yaml": "gc: {keepRuns: 1, afterApply: true}\n"})
    again = kiln("apply", cwd=repo, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "workflow: run workflow kiln-exp-wine-rf" in again.stdout, again.stdout
    assert "freed" in again.stdout and len(_runs(repo)) == 1 and current not in _runs(repo), \
        (_runs(repo), current, again.stdout)


def test_a_kiln_folder_made_before_the_first_apply_is_never_staged(tmp_path: Path) -> None:
    """The quickstart starts Label Studio (which makes .kiln/) before its first apply, so the
    repository's .gitignore was never written and `git add -A` staged 4,248 files of .kiln/.
    kiln's folder ignores itself (a .gitignore of `*` inside it), whoever made it first."""
    repo = git_repo(tmp_path / "repo")
    (repo / ".kiln").mkdir()
    (repo / ".kiln" / "labelstudio.json").write_text("{}\n")  # as `kiln labelstudio start` leaves it
    write(repo, {"specs/ws.yaml": "apiVersion: kiln.dev/v1alpha1\nkind: Workspace\nmetadata: {name: team}\n"
                                  "spec: {members: [{user: a@example.com, role: admin}]}\n"})
    out = kiln("apply", cwd=repo, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (repo / ".kiln" / "state.db").is_file()
    _git(repo, "add", "-A")
    staged = _git(repo, "diff", "--cached", "--name-only").split()
    assert "specs/ws.yaml" in staged and not [f for f in staged if f.startswith(".kiln")], staged
