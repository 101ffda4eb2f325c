"""Server-free parts of #20 item 2: which document roots kiln refuses, and how items are exported
into the one it uses (hard links, never symlinks, nothing from outside the dataset)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.labeling import server


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / ".kiln").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


@pytest.mark.parametrize("where", ["repo", "parent", "kiln", "inside", "data-parent"])
def test_start_refuses_a_document_root_over_the_repository_or_the_database(tmp_path: Path, capsys, where) -> None:
    from kiln.cli import main

    repo = _repo(tmp_path)
    (repo / "data").mkdir()
    data = tmp_path / "ls" / "data"
    root = {"repo": repo, "parent": tmp_path, "kiln": repo / ".kiln", "inside": repo / "data",
            "data-parent": tmp_path / "ls"}[where]
    root.mkdir(parents=True, exist_ok=True)
    rc = main(["-C", str(repo), "labelstudio", "start", "--document-root", str(root), "--data-dir", str(data)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert f"Label Studio document root {root.resolve()}" in err and "every Label Studio user could read it" in err
    assert "leave --document-root out" in err
    assert not (repo / ".kiln" / server.STATE_FILE).exists() and not data.exists()  # nothing started or written


def test_the_steps_refuse_a_server_that_serves_the_repository(tmp_path: Path, monkeypatch) -> None:
    from kiln.config import load_config
    from kiln.controller.labeling_steps import connection

    repo = _repo(tmp_path)
    # recorded by kiln before #20: the server's root is the repository
    (repo / ".kiln" / server.STATE_FILE).write_text(json.dumps({
        "url": "http://127.0.0.1:9", "pid": 1, "port": 9, "token_env": server.TOKEN_ENV, "admin": server.ADMIN_EMAIL,
        "data_dir": str(repo / ".kiln/labelstudio/data"), "document_root": str(repo), "log": "x"}))
    with pytest.raises(ConfigError, match=f"has document root {repo} is the repository") as e:
        connection(load_config(repo))
    assert "kiln labelstudio start" in (e.value.hint or "")
    # kiln.yaml: a shared server whose documentRoot holds the repository
    monkeypatch.setenv("KILN_T_TOKEN", "t")
    (repo / "kiln.yaml").write_text(f"labelStudio: {{url: 'http://x', tokenEnv: KILN_T_TOKEN, documentRoot: '{tmp_path}'}}\n")
    with pytest.raises(ConfigError, match=f"documentRoot {tmp_path} contains the repository"):
        connection(load_config(repo))
    # a folder of its own: this repository's items go to a subfolder named after it
    (repo / "kiln.yaml").write_text(f"labelStudio: {{url: 'http://x', tokenEnv: KILN_T_TOKEN, "
                                    f"documentRoot: '{tmp_path / 'ls-files'}'}}\n")
    conn = connection(load_config(repo))
    assert conn.export_root is not None and conn.export_root.parent == tmp_path / "ls-files"
    assert conn.export_root.name.startswith("repo-")


def test_export_places_hard_links_and_refuses_what_leaves_the_dataset(tmp_path: Path) -> None:
    src, dest = tmp_path / "ds", tmp_path / "files" / "data" / "ds"
    src.mkdir()
    (src / "a.png").write_bytes(b"a")
    (src / "sub").mkdir()
    (src / "sub" / "b.png").write_bytes(b"b")
    items = [(src / "a.png", "a.png"), (src / "sub" / "b.png", "sub/b.png")]
    assert server.export(items, dest) == 2
    assert os.path.samefile(dest / "a.png", src / "a.png") and not (dest / "a.png").is_symlink()
    assert server.export(items, dest) == 0  # already there: nothing to do on every reconcile
    # a symlink someone left in the export folder is replaced by the file itself
    (dest / "a.png").unlink()
    (dest / "a.png").symlink_to("/etc/hostname")
    assert server.export(items, dest) == 1 and not (dest / "a.png").is_symlink()
    assert (dest / "a.png").read_bytes() == b"a"
    with pytest.raises(ConfigError, match="must be a relative path inside its dataset"):
        server.export([(src / "a.png", "../a.png")], dest)
    with pytest.raises(ConfigError, match="is not a regular file"):
        server.export([(src / "sub", "sub")], dest)


def test_the_import_step_refuses_an_item_that_links_out_of_the_dataset(tmp_path: Path, monkeypatch) -> None:
    from kiln.config import load_config
    from kiln.controller.labeling_steps import Items, export_items
    from kiln.data.model import DatasetContent, Item

    repo = _repo(tmp_path)
    (repo / ".kiln" / "labelstudio.token").write_text("secret\n")
    ds = repo / "data" / "default" / "shapes"
    ds.mkdir(parents=True)
    (ds / "0001.png").write_bytes(b"png")
    (ds / "0002.png").symlink_to(repo / ".kiln" / "labelstudio.token")
    monkeypatch.setenv("KILN_T_TOKEN", "t")
    (repo / "kiln.yaml").write_text(f"labelStudio: {{url: 'http://x', tokenEnv: KILN_T_TOKEN, "
                                    f"documentRoot: '{tmp_path / 'ls-files'}'}}\n")
    content = DatasetContent(items=[Item(path="0001.png"), Item(path="0002.png")], task="detection")
    items = Items("default/shapes", "v", 1, ds, content)
    with pytest.raises(ConfigError, match="item '0002.png' leads outside the dataset folder"):
        export_items(load_config(repo), items)
    assert not list((tmp_path / "ls-files").rglob("labelstudio.token"))
    content.items.pop()
    out = export_items(load_config(repo), items)
    assert out.relative_to(tmp_path / "ls-files").parts[1:] == ("data", "default", "shapes")
    assert os.path.samefile(out / "0001.png", ds / "0001.png")
