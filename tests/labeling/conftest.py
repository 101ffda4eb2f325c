"""One real Label Studio server for the test session.

A cold start runs ~1 min of database migrations; so the first session migrates a *template* data dir
once (``$KILN_LS_TEMPLATE`` or ``~/.cache/kiln/label-studio-template-<version>``, with its admin token
beside the database) and every session starts from a copy of it in ~5-10 s. The server itself is
installed into its own venv on first use (``scripts/labelstudio-install.sh`` does it ahead of time).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.labeling import server


@dataclass
class LabelStudioFixture:
    info: server.ServerInfo
    state_dir: Path  # the test repository's .kiln
    document_root: Path  # the server's local-files root: exported items only
    repos: Path  # where tests make their repositories: beside the document root, never in it
    token: str

    @property
    def url(self) -> str:
        return self.info.url


def template_dir() -> Path:
    return Path(os.environ.get("KILN_LS_TEMPLATE")
                or Path.home() / ".cache" / "kiln" / f"label-studio-template-{server.LS_VERSION}")


def ensure_template() -> Path:
    """A migrated data dir holding ``labelstudio.token``/``.password`` (built once, atomically)."""
    tpl = template_dir()
    if (tpl / "label_studio.sqlite3").is_file() and (tpl / server.TOKEN_FILE).is_file():
        return tpl
    tpl.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".template-", dir=tpl.parent))
    state, data = work / "state", work / "data"
    server.start(state, data_dir=data, timeout=600)
    server.stop(state)
    for name in (server.TOKEN_FILE, server.PASSWORD_FILE):
        shutil.copy2(state / name, data / name)
    shutil.rmtree(data.parent / "data" / "config", ignore_errors=True)
    try:
        os.replace(data, tpl)
    except OSError:  # another session built it meanwhile
        pass
    shutil.rmtree(work, ignore_errors=True)
    return tpl


# planted in kiln's environment while the session's server starts: it must see neither
# (tests/labeling/test_security.py)
PLANTED = {"KILN_STATE_URL": "postgresql://kiln:planted-db-password@db/kiln",
           "WINE_DEPLOYMENT_TOKEN": "planted-deployment-token"}


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioFixture]:
    pytest.importorskip("label_studio_sdk")
    base = tmp_path_factory.mktemp("labelstudio")
    state = base / "repo" / ".kiln"
    (base / "repos").mkdir()
    tpl = ensure_template()
    mp = pytest.MonkeyPatch()
    for k, v in PLANTED.items():
        mp.setenv(k, v)
    try:
        # as `kiln labelstudio start` does it: the default document root
        info = server.start(state, data_dir=base / "data", seed_from=tpl)
    finally:
        mp.undo()
    try:
        yield LabelStudioFixture(info=info, state_dir=state, document_root=Path(info.document_root),
                                 repos=base / "repos", token=server.read_token(state))
    finally:
        server.stop(state)
