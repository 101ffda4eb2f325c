"""`kiln labelstudio start|status|token|stop` on a second real server (seeded from the template)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from click.testing import CliRunner

from kiln.cli import cli
from kiln.labeling import server
from tests.labeling.conftest import ensure_template


def test_start_status_token_stop(tmp_path: Path) -> None:
    tpl = ensure_template()
    repo, docs = tmp_path / "repo", tmp_path / "docs"
    (repo / ".kiln").mkdir(parents=True)
    docs.mkdir()
    data = repo / ".kiln" / "labelstudio" / "data"
    shutil.copytree(tpl, data)  # a migrated database: the token it was created with must be reused
    for name in (server.TOKEN_FILE, server.PASSWORD_FILE):
        shutil.copy2(tpl / name, repo / ".kiln" / name)
    token = (tpl / server.TOKEN_FILE).read_text().strip()
    run = CliRunner().invoke
    env = {k: v for k, v in os.environ.items() if k != server.TOKEN_ENV}
    try:
        r = run(cli, ["-C", str(repo), "labelstudio", "start", "--document-root", str(docs)], env=env)
        assert r.exit_code == 0, r.output
        assert "Label Studio 1.23.2 at http://127.0.0.1:" in r.output and token not in r.output
        state = json.loads((repo / ".kiln" / server.STATE_FILE).read_text())
        assert state["token_env"] == server.TOKEN_ENV and token not in json.dumps(state)
        assert state["document_root"] == str(docs.resolve()) and server.health(state["url"])
        assert stat.S_IMODE((repo / ".kiln" / server.TOKEN_FILE).stat().st_mode) == 0o600
        # a second start finds it running
        r2 = run(cli, ["-C", str(repo), "labelstudio", "start"], env=env)
        assert r2.exit_code == 0 and f"(pid {state['pid']})" in r2.output
        r = run(cli, ["-C", str(repo), "labelstudio", "status"], env=env)
        assert r.exit_code == 0 and f"at {state['url']}" in r.output and ": up;" in r.output
        r = run(cli, ["-C", str(repo), "labelstudio", "token"], env=env)
        assert r.output.strip() == token
        # a server kiln started before #20 served the repository: start moves it onto the export folder
        state["document_root"] = str(repo.resolve())
        (repo / ".kiln" / server.STATE_FILE).write_text(json.dumps(state))
        r = run(cli, ["-C", str(repo), "labelstudio", "start"], env=env)
        assert r.exit_code == 0, r.output
        files = repo.resolve() / ".kiln" / "labelstudio" / "files"
        assert f"served {repo.resolve()} is the repository {repo.resolve()}; restarting it onto {files}" in r.output
        assert not server._alive(state["pid"])
        state = json.loads((repo / ".kiln" / server.STATE_FILE).read_text())
        assert state["document_root"] == str(files) and server.health(state["url"])
        environ = Path(f"/proc/{state['pid']}/environ").read_bytes()
        assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={files}".encode() in environ.split(b"\0")
    finally:
        r = run(cli, ["-C", str(repo), "labelstudio", "stop"], env=env)
    assert r.exit_code == 0 and "stopped Label Studio" in r.output
    assert not server.health(state["url"]) and not server._alive(state["pid"])
    r = run(cli, ["-C", str(repo), "labelstudio", "status"], env=env)
    assert r.exit_code == 1 and "not running" in r.output


def test_missing_token_for_existing_database_is_a_clear_error(tmp_path: Path, capsys) -> None:
    from kiln.cli import main

    tpl = ensure_template()
    data = tmp_path / "data"
    shutil.copytree(tpl, data)
    rc = main(["-C", str(tmp_path), "labelstudio", "start", "--data-dir", str(data)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"{data} has a database but {tmp_path / '.kiln' / server.TOKEN_FILE} is missing" in err
    assert "restore the token file" in err
