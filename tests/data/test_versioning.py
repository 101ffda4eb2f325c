"""DVC versioning on real temporary git repositories with a local remote."""

from __future__ import annotations

import filecmp
import subprocess

import pytest

pytest.importorskip("dvc")

from kiln.data import load  # noqa: E402
from kiln.data.versioning import DatasetRepo  # noqa: E402
from kiln.errors import ConfigError, NotFound  # noqa: E402

from .conftest import make_image_folder, np, save  # noqa: E402


def git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def replace_file(path, arr):
    path.unlink()  # the cache protects linked workspace files read-only: replace, never edit in place
    save(arr, path)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    make_image_folder(root / "data" / "pets", n=2)
    return root


def test_add_readd_change_push_clone_pull_diff_checkout(repo, tmp_path):
    dr = DatasetRepo(repo)
    v1 = dr.add_version("data/pets")
    assert len(v1.id) == 32 and v1.files == 12
    assert v1.per_class_counts == {"blue": 4, "green": 4, "red": 4}
    assert (repo / "data" / "pets.dvc").read_text().count(v1.id) == 1
    assert (repo / ".kiln" / "dvc-remote" / "files" / "md5").is_dir()  # pushed

    # unchanged: same id, no new version
    assert dr.add_version(repo / "data" / "pets").id == v1.id
    assert [v.id for v in dr.versions("data/pets")] == [v1.id]

    # change one file and add one -> a new id
    changed = repo / "data" / "pets" / "train" / "red" / "train_red_0.png"
    old_bytes = changed.read_bytes()
    replace_file(changed, np.zeros((16, 16, 3), np.uint8))
    save(np.ones((16, 16, 3), np.uint8), repo / "data" / "pets" / "train" / "red" / "extra.png")
    v2 = dr.add_version("data/pets", lineage={"parent": v1.id, "ops": []})
    assert v2.id != v1.id and v2.files == 13 and v2.lineage == {"parent": v1.id, "ops": []}
    assert [v.id for v in dr.versions("data/pets")] == [v1.id, v2.id]

    d = dr.diff("data/pets", v1.id, v2.id)
    assert d.added == ["train/red/extra.png"]
    assert d.changed == ["train/red/train_red_0.png"] and d.removed == []
    assert d.class_counts == {"red": (4, 5)}
    assert dr.diff("data/pets", v2.id, v2.id).empty

    # a fresh clone pulls v2 from the local remote
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "data v2")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "data" / "pets").exists()
    DatasetRepo(clone).pull("data/pets")
    cmp = filecmp.dircmp(repo / "data" / "pets", clone / "data" / "pets")
    assert load(clone / "data" / "pets").content_hash() == load(repo / "data" / "pets").content_hash()
    assert not cmp.diff_files

    # checking out v1 restores the old bytes and drops the added file
    dr.checkout("data/pets", v1.id[:8])
    assert changed.read_bytes() == old_bytes
    assert not (repo / "data" / "pets" / "train" / "red" / "extra.png").exists()
    assert dr.current("data/pets") == v1.id


def test_unknown_version_lists_known(repo):
    dr = DatasetRepo(repo)
    v = dr.add_version("data/pets", push=False)
    with pytest.raises(NotFound) as e:
        dr.checkout("data/pets", "deadbeef")
    assert v.id[:12] in str(e.value)


def test_not_a_git_repo(tmp_path):
    with pytest.raises(ConfigError) as e:
        DatasetRepo(tmp_path).ensure()
    assert "not a git repository" in str(e.value)
