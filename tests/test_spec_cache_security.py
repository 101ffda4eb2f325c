"""A pull request cannot make kiln run code or read forged state through kiln's private files,
and looking at a folder never writes kiln state into it.

The parse cache of validated specs is a pickle (for speed). It used to live in the repository
(``.kiln/cache/specs.pickle``), so a pull request that added that file ran code in ``kiln
validate`` / ``kiln plan``, i.e. in CI. Now the cache lives in the user's cache folder, is only
unpickled after its HMAC checks out under a key kiln made there, and a checkout that commits
``.kiln/`` is refused. Each attack below writes a pickle that creates a marker file when loaded.
"""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import pytest

from kiln.loader import _ParseCache, load_specs, spec_cache_dir
from tests.helpers import kiln, write

WORKSPACE = """
    apiVersion: kiln.dev/v1alpha1
    kind: Workspace
    metadata: {name: team}
    spec:
      members: [{user: ada@example.com, role: admin}]
"""


class _Touch:
    """Unpickling this creates ``path``: proof that kiln deserialised attacker data."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # the pickle protocol: what loading it calls
        return (Path.touch, (self.path,))


def _evil(marker: Path) -> bytes:
    return pickle.dumps(_Touch(marker))


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write(root, {"specs/team.yaml": WORKSPACE})
    _git(root, "init", "-q")
    _git(root, "add", "specs")
    _git(root, "commit", "-qm", "specs")
    return root


def test_a_parse_cache_inside_the_repo_is_never_read(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (repo / ".kiln" / "cache").mkdir(parents=True)
    (repo / ".kiln" / "cache" / "specs.pickle").write_bytes(_evil(marker))
    for verb in ("validate", "plan"):
        p = kiln(verb, cwd=repo)
        assert p.returncode in (0, 2), p.stdout + p.stderr
    assert not marker.exists()


def test_a_committed_kiln_folder_is_refused_without_reading_it(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (repo / ".kiln" / "cache").mkdir(parents=True)
    (repo / ".kiln" / "cache" / "specs.pickle").write_bytes(_evil(marker))
    _git(repo, "add", "-f", ".kiln")
    _git(repo, "commit", "-qm", "a pull request that carries kiln's private files")
    for verb in ("validate", "plan", "apply"):
        p = kiln(verb, cwd=repo)
        assert p.returncode == 1, (verb, p.stdout, p.stderr)
        out = p.stdout + p.stderr
        assert ".kiln/ is committed to git (.kiln/cache/specs.pickle)" in out
        assert "git rm -r --cached .kiln" in out
        assert "Traceback" not in out
    assert not marker.exists()
    assert not (repo / ".kiln" / "state.db").exists()  # apply stopped before opening any state


def test_the_cache_lives_outside_the_repo_and_is_used(repo: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SPEC_CACHE_DIR", str(tmp_path / "cache"))
    folder = spec_cache_dir(repo)
    assert folder is not None and repo not in folder.parents
    first = load_specs(repo / "specs", cache_dir=folder)
    assert [s.key for s in first.specs] == ["Workspace/default/team"]
    blob = (folder / _ParseCache.FILE).read_bytes()
    assert blob.startswith(_ParseCache.MAGIC)
    key = folder.parent / "key"
    assert key.stat().st_mode & 0o777 == 0o600 and folder.parent.stat().st_mode & 0o077 == 0
    cache = _ParseCache(folder)
    assert len(cache.old) == 1  # the next load is served from it
    again = load_specs(repo / "specs", cache_dir=folder)
    assert [s.obj for s in again.specs] == [s.obj for s in first.specs]


def test_a_forged_or_tampered_cache_is_never_unpickled(repo: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SPEC_CACHE_DIR", str(tmp_path / "cache"))
    folder = spec_cache_dir(repo)
    assert folder is not None
    load_specs(repo / "specs", cache_dir=folder)  # makes the key and a genuine cache
    marker = tmp_path / "pwned"
    path = folder / _ParseCache.FILE
    # 1. the right header and a MAC made with another key
    path.write_bytes(_ParseCache.MAGIC + b"\0" * 32 + _evil(marker))
    assert _ParseCache(folder).old == {}
    # 2. a genuine file with its payload swapped
    load_specs(repo / "specs", cache_dir=folder)
    genuine = path.read_bytes()
    head = len(_ParseCache.MAGIC) + 32
    path.write_bytes(genuine[:head] + _evil(marker))
    assert _ParseCache(folder).old == {}
    # 3. a key that others can read is not trusted: nothing is read or written with it
    load_specs(repo / "specs", cache_dir=folder)
    (folder.parent / "key").chmod(0o644)
    assert _ParseCache(folder).key is None
    assert not marker.exists()
    specs = load_specs(repo / "specs", cache_dir=folder)  # still loads, from the files
    assert [s.key for s in specs.specs] == ["Workspace/default/team"]


def test_read_only_verbs_never_create_state(tmp_path: Path) -> None:
    """`kiln status` run in any folder used to leave a `.kiln/state.db` there."""
    for args in (("status",), ("status", "-o", "json"), ("get", "datasets"), ("describe", "Dataset/wine"),
                 ("get", "datasets", "-o", "json"), ("events",), ("events", "-w", "team")):
        p = kiln(*args, cwd=tmp_path)
        assert p.returncode in (0, 1) and "Traceback" not in p.stderr, (args, p.stderr)
    assert list(tmp_path.iterdir()) == []
