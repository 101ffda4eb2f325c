"""#20 item 2: a Label Studio user (not the admin) reaches nothing beyond the exported items.

Against the session's real server (``label_studio``), started as ``kiln labelstudio start`` starts
it: an annotator of the open-source edition may add local-files storages to any project of the
organisation, so what protects ``.kiln`` (the admin password and token, ``state.db``) is the
document root itself, the server's file modes and its environment.
"""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from kiln.labeling import server
from kiln.labeling.client import ImportItem, LabelingClient, LabelStudioRequestError
from tests.labeling.conftest import PLANTED

ANNOTATOR = "mallory@example.com"


@pytest.fixture(scope="module")
def annotator(label_studio):
    admin = LabelingClient(label_studio.url, label_studio.token, document_root=label_studio.document_root)
    admin.ensure_user(ANNOTATOR)
    ref = admin.ensure_project("security/probe", title="probe", task="classification", classes=["a", "b"])
    token = server.user_token(label_studio.state_dir, ANNOTATOR)
    user = LabelingClient(label_studio.url, token)
    assert user.user_id != admin.user_id
    return {"client": user, "token": token, "project": ref.id, "fx": label_studio}


def _get(url: str, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_an_annotator_cannot_add_a_storage_on_kiln_secrets_or_the_system(annotator) -> None:
    user, pid, fx = annotator["client"], annotator["project"], annotator["fx"]
    repo = fx.state_dir.parent
    for target in (fx.state_dir, repo, Path("/etc")):
        with pytest.raises(LabelStudioRequestError, match="HTTP 400") as e:
            user._call(user.ls.import_storage.local.create, project=pid, path=str(target), title="probe",
                       what=f"add a storage on {target}")
        assert "must be a subdirectory of" in e.value.message  # Label Studio's own check of the root
    assert fx.document_root == server.files_dir(fx.state_dir)
    assert not any(Path(s.path).resolve() in (fx.state_dir, repo)
                   for s in user.ls.import_storage.local.list(project=pid))


def test_an_annotator_cannot_download_the_admin_token(annotator) -> None:
    user, pid, fx, token = annotator["client"], annotator["project"], annotator["fx"], annotator["token"]
    # the widest storages an annotator may try: kiln's folder (refused above, tried anyway so that
    # this test stands alone) and a folder under the root (the root itself Label Studio refuses)
    probe = fx.document_root / "probe"
    probe.mkdir(exist_ok=True)
    for target in (fx.state_dir, probe):
        try:
            user._call(user.ls.import_storage.local.create, project=pid, path=str(target), title="probe",
                       what=f"add a storage on {target}")
        except LabelStudioRequestError:
            assert target != probe
    secret = (fx.state_dir / server.TOKEN_FILE).read_text().strip()
    up = os.path.relpath(fx.state_dir / server.TOKEN_FILE, probe)
    for d in (".kiln/labelstudio.token", f"probe/{up}", str(fx.state_dir / server.TOKEN_FILE),
              f"probe/../../../{server.TOKEN_FILE}", "probe/%2e%2e/%2e%2e/%2e%2e/labelstudio.token"):
        code, body = _get(f"{fx.url}/data/local-files/?d={urllib.parse.quote(d, safe='/%')}", token)
        assert code != 200 and secret.encode() not in body, d
    # what is in the storage's folder is served: the annotator's access works, it is just confined
    (probe / "ok.txt").write_text("exported item")
    assert _get(f"{fx.url}/data/local-files/?d=probe/ok.txt", token) == (200, b"exported item")


def test_the_database_and_data_dir_are_private(label_studio) -> None:
    data = Path(label_studio.info.data_dir)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    db = data / "label_studio.sqlite3"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600  # seeded from a 0644 copy: chmod'ed on start
    assert stat.S_IMODE(Path(label_studio.info.log).stat().st_mode) == 0o600
    for name in (server.TOKEN_FILE, server.PASSWORD_FILE):
        assert stat.S_IMODE((label_studio.state_dir / name).stat().st_mode) == 0o600


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            kids = (task / "children").read_text().split() if (task / "children").exists() else []
            todo.extend(int(k) for k in kids)
    return out


def test_the_server_gets_a_minimal_environment(label_studio) -> None:
    procs = _tree(label_studio.info.pid)
    assert len(procs) >= 1
    for p in procs:
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{p}/environ").read_text().split("\0") if "=" in kv)
        assert not [k for k in env if k.startswith("KILN_")], p
        assert not set(PLANTED) & set(env) and not set(PLANTED.values()) & set(env.values())
        assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(label_studio.document_root)
        assert set(env) <= set(server._PASS_NAMES) | {k for k in env if k.startswith(("LC_", "LABEL_STUDIO_"))} \
            | {"SENTRY_DSN", "FRONTEND_SENTRY_DSN", "XDG_CONFIG_HOME"} | _added_by_label_studio(env)


def _added_by_label_studio(env: dict[str, str]) -> set[str]:
    # what the server's own launcher sets for its children (Django's settings module, Python's path)
    return {k for k in env if k.startswith(("DJANGO_", "PYTHON", "UWSGI_", "SERVER_SOFTWARE", "RUN_MAIN"))}


def test_a_storage_kiln_made_outside_the_root_is_repointed(label_studio) -> None:
    fx = label_studio
    admin = LabelingClient(fx.url, fx.token, document_root=fx.document_root)
    ref = admin.ensure_project("security/repoint", title="repoint", task="classification", classes=["a"])
    old = fx.document_root / "before"
    new_root = fx.document_root / "after"
    (new_root / "data").mkdir(parents=True)
    old.mkdir()
    sid = admin.ensure_local_storage(ref.id, old)
    # the same server seen through a narrower root: kiln's storage at `before` is now outside it
    moved = LabelingClient(fx.url, fx.token, document_root=new_root)
    assert moved.ensure_local_storage(ref.id, new_root / "data") == sid
    (s,) = admin.ls.import_storage.local.list(project=ref.id)
    assert Path(s.path) == (new_root / "data").resolve()


def test_tasks_follow_their_items_when_the_export_folder_moves(label_studio) -> None:
    fx = label_studio
    admin = LabelingClient(fx.url, fx.token, document_root=fx.document_root)
    ref = admin.ensure_project("security/relink", title="relink", task="classification", classes=["a"])
    old, new = fx.document_root / "relink-old", fx.document_root / "relink-new" / "ds"
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / "x.png").write_bytes(b"png")
    admin.ensure_local_storage(ref.id, old)
    admin.import_items(ref.id, [ImportItem(key="x.png", path=old / "x.png")], task="classification")
    # e.g. a shared server's documentRoot moved out of the repository: the items are exported anew
    rep = admin.import_items(ref.id, [ImportItem(key="x.png", path=new / "x.png")], task="classification")
    assert (rep.new, rep.existing, rep.relinked) == (0, 1, 1)
    (task,) = admin.export_tasks(ref.id)
    assert task["data"]["image"] == "/data/local-files/?d=relink-new/ds/x.png"
    again = admin.import_items(ref.id, [ImportItem(key="x.png", path=new / "x.png")], task="classification")
    assert again.relinked == 0
