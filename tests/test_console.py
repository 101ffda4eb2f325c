"""The read-only web console (#17).

Fast: the access rules over a state store written directly (Starlette's test client, and the
controller's own HTTP server under /ui): only GET and HEAD, a token beyond loopback (hashed, as
the deployments' are), secrets and files outside a dataset never served.

Slow: a real headless Chromium (Debian's chromium through Selenium and chromedriver) over a
repository after a real tiny apply (the wine sample: a dataset, a command experiment reporting
per step, an HPO experiment registering a model): each page loads without console errors and
shows what ``kiln get -o json`` reports, and the live curve of a training gains points while it
trains. Screenshots of each page land in the test's tmp folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import KILN, kill_deployment_servers, kiln, write

pytest.importorskip("starlette")


# -- a state store written directly ----------------------------------------------------------------

SECRET = "hunter2-do-not-show"


def _store_repo(tmp: Path) -> Any:
    from kiln.config import load_config
    from kiln.state import ObjectRecord, open_store

    repo = tmp / "repo"
    repo.mkdir()
    config = load_config(repo)
    store = open_store(None, repo)
    try:
        store.put(
            ObjectRecord(
                key="Dataset/default/wine",
                sync="Synced",
                health="Healthy",
                extra={"number": "v1", "rows": 178, "info": "v1 wine"},
            )
        )
        store.put(
            ObjectRecord(
                key="Deployment/default/api",
                sync="Synced",
                health="Degraded",
                extra={"url": f"http://kiln:{SECRET}@127.0.0.1:9/", "model": "wine", "version": 1},
            )
        )
        store.put(
            ObjectRecord(
                key="Experiment/default/exp",
                sync="Synced",
                health="Healthy",
                extra={"mode": "run", "workflow": {"name": "kiln-exp-exp", "phase": "Succeeded"}},
            )
        )
    finally:
        store.close()
    logs = repo / ".kiln/runs/kiln-exp-exp/logs"
    logs.mkdir(parents=True)
    (logs / "train.log").write_text(f"fetching https://bob:{SECRET}@data.example.com/x.csv\nepoch 1 done\n")
    return config


def test_the_console_only_reads_and_never_shows_a_secret(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from kiln.controller.console.app import create_app
    from kiln.controller.console.read import sample_file

    config = _store_repo(tmp_path)
    client = TestClient(create_app(config), base_url="http://127.0.0.1")
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in ("wine", "api", "exp", "Degraded"):
        assert name in page.text
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/", "/experiments/default/exp", "/static/console.js"):
            r = client.request(method, path)
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD", (method, path)
            assert "read-only" in r.text
    before = (config.repo / ".kiln/state.db").read_bytes()
    exp = client.get("/experiments/default/exp")
    assert exp.status_code == 200 and "epoch 1 done" in exp.text  # the step's log is shown ...
    deps = client.get("/deployments")
    for r in (page, exp, deps, client.get("/experiments/default/exp/curves.json")):
        assert SECRET not in r.text  # ... with the URL's password masked, as the deployment's URL
    assert "***" in exp.text and "***" in deps.text
    assert (config.repo / ".kiln/state.db").read_bytes() == before  # looking wrote nothing
    gone = client.get("/experiments/default/nope")
    assert gone.status_code == 404 and "Experiment/default/nope has not been applied" in gone.text
    # a dataset's images only: nothing outside its folder, nothing that is not an image
    (config.repo / "data/default/wine/a").mkdir(parents=True)
    (config.repo / "data/default/wine/a/0.png").write_bytes(b"\x89PNG")
    assert sample_file(config, "default", "wine", "a/0.png", None) is not None
    for rel in ("../../../.kiln/state.db", "../../../.kiln/runs/kiln-exp-exp/logs/train.log", "a/../../x.png"):
        assert sample_file(config, "default", "wine", rel, None) is None, rel
    assert client.get("/files/default/wine/a/0.png").content == b"\x89PNG"
    # on loopback, a name rebound to 127.0.0.1 by another site is not answered
    assert TestClient(create_app(config), base_url="http://evil.example").get("/").status_code == 400


def test_the_dataset_page_shows_versions_class_counts_their_diff_and_boxed_samples(tmp_path: Path) -> None:
    """A detection dataset as the data layer leaves it (the shapes sample's COCO file and PNGs, a
    version log of two versions): counts per class and their change, thumbnails with their boxes."""
    pytest.importorskip("PIL")
    from starlette.testclient import TestClient

    from kiln.controller.console.app import create_app
    from kiln.data.samples import materialize_sample
    from kiln.state import ObjectRecord, open_store

    config = _store_repo(tmp_path)
    data = config.repo / "data/default/shapes"
    materialize_sample("shapes", data)
    coco = json.loads((data / "_annotations.coco.json").read_text())
    counts = {"v1": {"circle": 20, "square": 25}, "v2": {"circle": 22, "square": 25, "triangle": 9}}
    log = {
        "current": "b" * 32,
        "versions": [
            {
                "id": "a" * 32,
                "files": 40,
                "out": {"size": 50_000},
                "per_class_counts": counts["v1"],
                "lineage": {"source": "sample:shapes", "parent": None, "ops": []},
            },
            {
                "id": "b" * 32,
                "files": 61,
                "out": {"size": 80_000},
                "per_class_counts": counts["v2"],
                "lineage": {"source": "sample:shapes", "parent": "a" * 32, "ops": [{"op": "Resize"}]},
            },
        ],
    }
    (config.repo / "data/default/shapes.versions.json").write_text(json.dumps(log))
    store = open_store(None, config.repo)
    store.put(
        ObjectRecord(
            key="Dataset/default/shapes",
            sync="Synced",
            health="Healthy",
            spec={"spec": {"type": "image", "task": "detection"}},
            extra={"number": "v2"},
        )
    )
    store.close()
    client = TestClient(create_app(config), base_url="http://127.0.0.1")
    text = client.get("/datasets/default/shapes").text
    assert "v2 (current)" in text and "78.1 KB" in text and "Resize" in text
    bars = json.loads(text.split('id="class-counts-data">')[1].split("</script>")[0])
    assert dict(zip(bars["labels"], bars["values"])) == counts["v2"]
    # v1 -> v2 per class, from the version log (no DVC needed)
    diff = text.split('<table class="diff">')[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td><td>(\d+)</td><td>([+-]\d+)</td></tr>", diff) == [
        ("circle", "20", "22", "+2"),
        ("square", "25", "25", "+0"),
        ("triangle", "0", "9", "+9"),
    ]
    # the first thumbnails: each image's boxes as the COCO file has them, with their category
    first = sorted(coco["images"], key=lambda im: im["file_name"])[0]
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    boxes = [a for a in coco["annotations"] if a["image_id"] == first["id"]]
    thumb = text.split(f'alt="{first["file_name"]}"')[1].split('<div class="thumb">')[0]
    assert thumb.count("<rect ") == len(boxes) > 0
    for a in boxes:
        x, y, w, h = a["bbox"]
        assert f'<rect x="{float(x):g}" y="{float(y):g}" width="{float(w):g}" height="{float(h):g}"/>' in thumb
        assert cats[a["category_id"]] in thumb
    img = client.get(f"/files/default/shapes/{first['file_name']}")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content == (data / first["file_name"]).read_bytes()
    assert text.count('<div class="thumb">') == 24  # a grid's worth of the 60 images


def test_a_segmentation_datasets_thumbnails_carry_their_masks(tmp_path: Path) -> None:
    """A semantic segmentation pair list (images and mask PNGs of category ids): each image gets
    its mask (coloured in the browser), the masks are not shown as images, the names come along."""
    Image = pytest.importorskip("PIL.Image")
    from starlette.testclient import TestClient

    from kiln.controller.console.app import create_app
    from kiln.state import ObjectRecord, open_store

    config = _store_repo(tmp_path)
    root = config.repo / "data/default/roads"
    for d in ("data/images", "data/annotations", "resources"):
        (root / d).mkdir(parents=True)
    pairs = []
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 90, 90)).save(root / f"data/images/{i}.png")
        mask = Image.new("L", (8, 8), 0)
        mask.paste(1 + i % 2, (0, 0, 4, 8))
        mask.save(root / f"data/annotations/{i}.png")
        pairs.append({"image": f"images/{i}.png", "seg_map": f"annotations/{i}.png"})
    (root / "data/data.json").write_text(json.dumps(pairs))
    (root / "resources/id2label.json").write_text(json.dumps({"0": "unlabeled", "1": "road", "2": "car"}))
    store = open_store(None, config.repo)
    store.put(ObjectRecord(key="Dataset/default/roads", sync="Synced", health="Healthy", extra={"number": "v1"}))
    store.close()
    client = TestClient(create_app(config), base_url="http://127.0.0.1")
    text = client.get("/datasets/default/roads").text
    assert text.count('<div class="thumb">') == 3
    for i in range(3):
        assert f'alt="data/images/{i}.png"' in text and f'alt="data/annotations/{i}.png"' not in text
        assert f'data-mask="/files/default/roads/data/annotations/{i}.png"' in text
        got = client.get(f"/files/default/roads/data/annotations/{i}.png")
        assert got.status_code == 200 and got.content == (root / f"data/annotations/{i}.png").read_bytes()
    names = json.loads(text.split('id="masks-data">')[1].split("</script>")[0])
    assert names == {"0": "unlabeled", "1": "road", "2": "car"}


def test_the_labeling_page_shows_progress_per_annotator_and_class(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from kiln.controller.console.app import create_app
    from kiln.state import ObjectRecord, open_store

    config = _store_repo(tmp_path)
    progress = {
        "per_annotator": {
            "cy@example.com": {"assigned": 20, "annotated": 12, "skipped": 1},
            "di@example.com": {"assigned": 22, "annotated": 3, "skipped": 0},
        },
        "per_class": {"circle": 7, "square": 5, "triangle": 3},
    }
    store = open_store(None, config.repo)
    store.put(
        ObjectRecord(
            key="LabelingJob/vision/shapes",
            sync="Synced",
            health="Progressing",
            extra={
                "project": 3,
                "url": "http://127.0.0.1:8080/projects/3",
                "progress": progress,
                "completion": {"complete": False, "rule": "all items", "done": 16, "total": 42, "reason": "26 left"},
                "info": "project 3: 16/42 items annotated or skipped",
            },
        )
    )
    store.close()
    client = TestClient(create_app(config), base_url="http://127.0.0.1")
    page = client.get("/labeling/vision/shapes")
    assert page.status_code == 200
    text = page.text
    assert "16/42" in text and 'href="http://127.0.0.1:8080/projects/3"' in text
    for who, p in progress["per_annotator"].items():
        row = text[text.index(f"<td>{who}</td>") :].split("</tr>")[0]
        assert [int(x) for x in re.findall(r"<td>(\d+)</td>", row)] == [p["annotated"], p["assigned"], p["skipped"]]
    data = json.loads(text.split('id="perclass-vision-shapes-data">')[1].split("</script>")[0])
    assert dict(zip(data["labels"], data["values"])) == progress["per_class"]
    assert client.get("/").text.count('href="/labeling/vision/shapes"') == 1  # linked from the overview


def test_kiln_tensorboard_names_an_experiment_without_event_files(tmp_path: Path) -> None:
    config = _store_repo(tmp_path)
    res = kiln("tensorboard", "exp", cwd=config.repo)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "Experiment/default/exp: no TensorBoard event files in its run folder" in res.stderr
    res = kiln("tensorboard", "nope", cwd=config.repo)
    assert res.returncode == 1 and "Experiment/default/nope has not been applied" in res.stderr


def test_beyond_loopback_the_console_needs_a_hashed_token(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from kiln.bento.auth import TokenStore, default_token_file
    from kiln.controller.console.app import CONSOLE_KEY, COOKIE, create_app
    from kiln.errors import KilnError

    config = _store_repo(tmp_path)
    res = kiln("ui", "--host", "0.0.0.0", "--port", str(_free_port()), cwd=config.repo, timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "kiln console on" not in res.stderr
    assert "kiln ui --host 0.0.0.0 would show the repository's state to the network without a token" in res.stderr
    with pytest.raises(KilnError) as err:
        create_app(config, host="0.0.0.0")
    assert "without a token" in err.value.message and "KILN_UI_TOKEN" in str(err.value.hint)

    env_token = "a-long-random-console-token-from-the-environment"
    client = TestClient(create_app(config, host="0.0.0.0", env_token=env_token), follow_redirects=False)
    assert client.get("/").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {env_token}"}).status_code == 200
    assert client.post("/", headers={"Authorization": f"Bearer {env_token}"}).status_code == 405
    # a browser: ?token= once, kept in an HttpOnly cookie, the address reloaded without it
    first = client.get(f"/models?token={env_token}")
    assert first.status_code == 303 and first.headers["location"] == "/models"
    assert "httponly" in first.headers["set-cookie"].lower() and "samesite=strict" in first.headers["set-cookie"].lower()
    assert client.get("/models").status_code == 200  # the cookie
    client.cookies.clear()
    assert client.get("/models").status_code == 401
    assert env_token not in json.dumps(TokenStore(default_token_file(config.repo)).read())  # the env token is not stored

    # a token made by `kiln ui token`: stored as its sha256 only, refused once revoked
    out = kiln("ui", "token", cwd=config.repo, check=True).stdout.strip()
    assert out.startswith("kiln_")
    stored = TokenStore(default_token_file(config.repo))
    assert out not in json.dumps(stored.read())
    app = TestClient(create_app(config, host="0.0.0.0"))  # no env token: the stored one is enough to start
    assert app.get("/", headers={"Authorization": f"Bearer {out}"}).status_code == 200
    kiln("ui", "token", "--revoke", out.split("_")[1], cwd=config.repo, check=True)
    assert app.get("/", headers={"Authorization": f"Bearer {out}"}).status_code == 401
    assert COOKIE and CONSOLE_KEY in stored.read()


def test_the_controller_serves_the_console_under_ui(tmp_path: Path) -> None:
    from kiln.controller.daemon import Heartbeat, Metrics, serve_http

    config = _store_repo(tmp_path)
    server = serve_http(0, Metrics(), Heartbeat(60), "127.0.0.1", console=lambda: config)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/ui/", timeout=10) as r:
            body = r.read().decode()
        assert r.status == 200 and "wine" in body and 'href="/ui/static/console.css"' in body
        assert 'href="/ui/datasets/default/wine"' in body  # links keep the prefix
        with urllib.request.urlopen(f"{base}/ui/static/console.js", timeout=10) as r:
            assert r.status == 200 and b"DRAW" in r.read()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(f"{base}/ui/", data=b"x", method="POST"), timeout=10)
        assert err.value.code == 405
    finally:
        server.shutdown()


# -- who looks (#26): a user's workspaces and the datasets shared with them ------------------------

ADA, BO, CY, OPS = "ada@example.com", "bo@example.com", "cy@example.com", "ops@example.com"


def _two_workspaces(tmp: Path) -> Any:
    """Two workspaces written as apply records them: vision (ada, cy) with a private experiment
    of ada's, a dataset of its own and one shared with nlp, a deployment and a labeling job; nlp
    (bo) with an experiment. A model registered by each experiment; ops is a platform admin."""
    import yaml

    from kiln.config import load_config
    from kiln.state import ObjectRecord, open_store

    repo = tmp / "repo"
    write(repo, {"kiln.yaml": f"policy: {{admins: [{OPS}]}}\n"})
    config = load_config(repo)
    objects = {
        "Workspace/default/vision": {"members": [{"user": ADA, "role": "developer"}, {"user": CY, "role": "developer"}]},
        "Workspace/default/nlp": {"members": [{"user": BO, "role": "developer"}]},
        "Dataset/vision/digits": {"type": "image"},
        "Dataset/vision/shared": {"type": "image", "sharing": {"visibility": "shared", "workspaces": ["nlp"]}},
        "Experiment/vision/secret": {"access": "private", "owner": ADA},
        "Experiment/nlp/texts": {},
        "Deployment/vision/api": {},
        "LabelingJob/vision/boxes": {},
    }
    store = open_store(None, repo)
    try:
        for key, spec in objects.items():
            extra: dict[str, Any] = {}
            if key == "Experiment/vision/secret":
                extra = {"mode": "run", "workflow": {"name": "kiln-exp-secret", "phase": "Succeeded"}}
            elif key == "Deployment/vision/api":
                extra = {"model": "digits", "version": 1}
            store.put(ObjectRecord(key=key, sync="Synced", health="Healthy", spec={"spec": spec}, extra=extra))
    finally:
        store.close()
    (repo / ".kiln/runs/kiln-exp-secret/logs").mkdir(parents=True)
    (repo / ".kiln/runs/kiln-exp-secret/logs/train.log").write_text("secret epoch 1\n")
    for ds in ("digits", "shared"):
        (repo / f"data/vision/{ds}").mkdir(parents=True)
        (repo / f"data/vision/{ds}/0.png").write_bytes(b"\x89PNG " + ds.encode())
    home = repo / ".kiln/bentoml"
    for model, exp in (("digits", "vision.secret"), ("texts", "nlp.texts")):
        (home / f"models/{model}/v1").mkdir(parents=True)
        (home / f"models/{model}/v1/model.yaml").write_text(yaml.safe_dump({"labels": {"experiment": exp}}))
    audit = [
        {"time": "2026-12-07T00:00:00Z", "who": w, "action": "register", "model": m, "version": 1}
        for m, w in (("digits", ADA), ("texts", BO))
    ]
    (home / "kiln-audit.jsonl").write_text("".join(json.dumps(a) + "\n" for a in audit))
    return config


def test_each_user_sees_their_workspaces_and_the_datasets_shared_with_them(tmp_path: Path) -> None:
    """A console bound to a user (``kiln ui --as``): what ``kiln get --as`` shows, and what it
    does not show answers as if it had never been applied."""
    from starlette.testclient import TestClient

    from kiln.controller.console.app import create_app

    config = _two_workspaces(tmp_path)

    def client(user: str | None) -> Any:
        return TestClient(create_app(config, user=user), base_url="http://127.0.0.1")

    def linked(c: Any) -> set[str]:
        return set(re.findall(r'href="/(?:datasets|experiments|deployments|labeling)/([\w-]+/[\w-]+)"', c.get("/").text))

    mine = {"vision/digits", "vision/shared", "vision/secret", "vision/api", "vision/boxes"}
    everything = mine | {"nlp/texts"}
    assert linked(client(None)) == linked(client(OPS)) == everything  # no user, or a platform admin
    assert linked(client(ADA)) == mine
    assert linked(client(CY)) == mine - {"vision/secret"}  # a member not on the private experiment
    assert linked(client(BO)) == {"nlp/texts", "vision/shared"}  # the dataset shared with nlp
    workspaces = client(BO).get("/").text.split('<table class="workspaces">')[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(\w+)</td>", workspaces) == ["nlp"]  # their workspace only

    bo, ada = client(BO), client(ADA)
    # B asks for A's private experiment, its curves, its importance, A's dataset and its files:
    # the answers of objects never applied, word for word
    for path, never in (
        ("/experiments/vision/secret", "/experiments/vision/nope"),
        ("/experiments/vision/secret/curves.json", "/experiments/vision/nope/curves.json"),
        ("/experiments/vision/secret/importance.json", "/experiments/vision/nope/importance.json"),
        ("/datasets/vision/digits", "/datasets/vision/nope"),
        ("/files/vision/digits/0.png", "/files/vision/nope/0.png"),
    ):
        hidden, absent = bo.get(path), bo.get(never)
        assert hidden.status_code == absent.status_code == 404, path
        assert hidden.text.replace("secret", "nope").replace("digits", "nope") == absent.text, path
        assert ada.get(path).status_code == 200, path
    assert "secret epoch 1" in ada.get("/experiments/vision/secret").text  # its step logs, for its owner
    assert client(CY).get("/experiments/vision/secret").status_code == 404
    assert bo.get("/files/vision/shared/0.png").content == b"\x89PNG shared"
    assert bo.get("/datasets/vision/shared").status_code == 200
    # lists: deployments, labeling jobs and models of what the user sees (a model by its experiment)
    assert "vision/api" not in bo.get("/deployments").text and "vision/api" in ada.get("/deployments").text
    assert "vision/boxes" not in bo.get("/labeling").text and "vision/boxes" in ada.get("/labeling").text
    assert "vision/boxes" not in bo.get("/labeling/vision/boxes").text
    for c, shown, hidden in ((bo, "texts", "digits"), (ada, "digits", "texts")):
        models = c.get("/models").text
        assert f"<td>{shown}</td>" in models and f"<td>{hidden}</td>" not in models  # versions and audit
        assert models.count(f"<td>{shown}</td>") == 2
    assert client(CY).get("/models").text.count("<td>digits</td>") == 0  # its experiment is private to ada
    admin_models = client(OPS).get("/models").text
    assert "<td>digits</td>" in admin_models and "<td>texts</td>" in admin_models


def test_the_tokens_user_decides_what_a_request_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Beyond loopback: a token made with ``--user`` shows that user's view; one made without
    it (as every token made before) and ``$KILN_UI_TOKEN`` show everything, or the ``--as``
    user's view where the console is bound to one."""
    from starlette.testclient import TestClient

    from kiln.bento.auth import TokenStore, default_token_file
    from kiln.cli import main
    from kiln.controller.console.app import CONSOLE_KEY, create_app

    config = _two_workspaces(tmp_path)
    monkeypatch.chdir(config.repo)
    monkeypatch.delenv("KILN_USER", raising=False)

    def token(*args: str) -> tuple[str, str]:
        capsys.readouterr()
        assert main(["ui", "token", *args]) == 0
        out = capsys.readouterr()
        return out.out.strip(), out.err

    bo_token, note = token("--user", " Bo@Example.com ")
    assert note == ""  # a member of nlp
    plain, _ = token()
    stranger, note = token("--user", "who@example.com")
    assert "who@example.com is a member of no applied Workspace" in note and "Traceback" not in note
    stored = TokenStore(default_token_file(config.repo)).list(CONSOLE_KEY)
    assert [t["user"] for t in stored] == [BO, None, "who@example.com"]
    assert all(t["who"] for t in stored)  # who made it: kept as before
    env_token = "a-long-random-console-token-from-the-environment"

    secret = "/experiments/vision/secret"
    for bound in (None, ADA):
        app = TestClient(create_app(config, host="0.0.0.0", env_token=env_token, user=bound))

        def get(tok: str, path: str = secret, app: Any = app) -> int:
            return int(app.get(path, headers={"Authorization": f"Bearer {tok}"}).status_code)

        assert get(bo_token) == 404 and get(bo_token, "/experiments/nlp/texts") == 200  # the token's user
        assert get(stranger, "/experiments/nlp/texts") == 404
        assert get(plain) == get(env_token) == 200  # no user: everything, or the --as user's view
        assert get(plain, "/experiments/nlp/texts") == get(env_token, "/experiments/nlp/texts") == (200 if bound is None else 404)
        assert get("kiln_00000000_forged") == 401
    # on loopback no token is needed, but one bound to a user still decides
    local = TestClient(create_app(config), base_url="http://127.0.0.1")
    assert local.get(secret).status_code == 200
    assert local.get(secret, headers={"Authorization": f"Bearer {bo_token}"}).status_code == 404
    # `kiln tensorboard --as`: an experiment not theirs is one never applied
    for user, said in ((BO, "Experiment/vision/secret has not been applied"), (ADA, "no TensorBoard event files")):
        capsys.readouterr()
        assert main(["tensorboard", "vision/secret", "--as", user]) == 1
        out = capsys.readouterr()
        assert said in out.err and "Traceback" not in out.err
    # a revoked token no longer lets anyone in
    token("--revoke", bo_token.split("_")[1])
    app = TestClient(create_app(config, host="0.0.0.0", env_token=env_token))
    assert app.get("/", headers={"Authorization": f"Bearer {bo_token}"}).status_code == 401


# -- a real apply, a real browser ----------------------------------------------------------------

TRAIN = """
import argparse, time
import kiln

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, required=True)
p.add_argument("--pause", type=float, default=0.1)
a = p.parse_args()
for epoch in range(1, a.epochs + 1):
    time.sleep(a.pause)
    kiln.report(step=epoch, validation_accuracy=0.5 + epoch / 40, train_loss=1.0 / epoch)
"""

SPECS = """
apiVersion: kiln.dev/v1alpha1
kind: Workspace
metadata: {name: team}
spec:
  members: [{user: ada@example.com, role: admin}, {user: bo@example.com, role: annotator}]
  period: {start: 2026-01-01, end: 2099-12-31}
  quotas: {cpu: "8", maxConcurrentJobs: 4, maxDeployments: 2}
---
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: wine}
spec:
  type: tabular
  task: classification
  format: csv
  source: {sample: wine}
  label: target
---
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: epochs}
spec:
  dataset: {name: wine}
  command: {run: python train.py}
  parameterSets: PARAMS
  objective: {metric: validation_accuracy, direction: maximize}
---
apiVersion: kiln.dev/v1alpha1
kind: Experiment
metadata: {name: wine-hpo}
spec:
  mode: hpo
  dataset: {name: wine}
  algorithm:
    name: decision_tree
    searchSpace:
      max_depth: {type: int, low: 1, high: 5}
  hpo: {maxTrials: 3, parallelTrials: 1, sampler: {type: random, seed: 1}, pruner: {type: none}}
  objective: {metric: validation_accuracy}
  register: {model: wine-tree, aliases: [production]}
---
apiVersion: kiln.dev/v1alpha1
kind: Deployment
metadata: {name: wine-api}
spec:
  model: {name: wine-tree, alias: production}
  auth: {public: true}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A repository after a real apply, and `kiln ui` serving it: (repo, base URL)."""
    pytest.importorskip("dvc")
    pytest.importorskip("optuna")
    pytest.importorskip("bentoml")
    repo = tmp_path_factory.mktemp("console") / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    write(repo, {"train.py": TRAIN, "specs/all.yaml": SPECS.replace("PARAMS", "[{epochs: 4}, {epochs: 3}]")})
    res = kiln("apply", cwd=repo, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    port = _free_port()
    proc = subprocess.Popen(
        [*KILN, "ui", "--port", str(port)], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/static/console.css", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)
        yield repo, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        kill_deployment_servers(repo)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (shutil.which("chromium") and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Selenium Manager would try to download a driver: the system's is named instead
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _load(driver: Any, url: str, shot: Path) -> str:
    """Open ``url``, wait for its charts to be drawn, check the browser logged no error, save a
    screenshot; the page's visible text."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    deadline = time.monotonic() + 30  # the parameter importance is computed on first request (optuna)
    while time.monotonic() < deadline:
        figs = driver.find_elements(By.CSS_SELECTOR, "figure[data-chart]")
        if all(f.get_attribute("data-points") is not None for f in figs):
            break
        time.sleep(0.1)
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, (url, errors)
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    return str(driver.find_element(By.TAG_NAME, "body").text)


def _get_json(repo: Path, kind: str, name: str) -> dict[str, Any]:
    """What ``kiln get KIND NAME -o json`` reports of one object."""
    doc = json.loads(kiln("get", kind, name, "-o", "json", cwd=repo, check=True).stdout)
    assert doc["name"] == name
    return doc


@pytest.mark.slow  # ~45 s: a real apply (dataset, two experiments, a registered model), a browser
def test_each_page_loads_without_errors_and_shows_what_kiln_reports(
    console: tuple[Path, str], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    repo, url = console
    ds, hpo = _get_json(repo, "Dataset", "wine"), _get_json(repo, "Experiment", "wine-hpo")

    text = _load(browser, f"{url}/", tmp_path / "overview.png")
    for name in ("team", "wine", "epochs", "wine-hpo", "ada@example.com", "maxDeployments 0/2", "maxConcurrentJobs 0/4"):
        assert name in text, name
    assert "days left" in text and text.count("Healthy") >= 4
    text = _load(browser, f"{url}/queue", tmp_path / "queue.png")  # applied: nothing runs or waits
    assert "0 running" in text and "0 waiting" in text

    text = _load(browser, f"{url}/datasets/default/wine", tmp_path / "dataset.png")
    x = ds["extra"]
    assert f"{x['number']} (current)" in text and str(x["schema"]["rows"]) in text and x["version"][:12] in text
    bars = browser.find_element(By.ID, "class-counts")
    assert bars.get_attribute("data-points") == str(len(x["classes"]))
    drawn = bars.text  # the counts are written above their bars
    assert all(str(n) in drawn for n in x["classes"].values()), (drawn, x["classes"])

    text = _load(browser, f"{url}/experiments/default/wine-hpo", tmp_path / "experiment.png")
    best = hpo["extra"]["best"]
    assert f"{best['value']:.4g}" in text and best["trial"] in text and "wine-tree v1" in text
    for t in hpo["extra"]["trials"]:
        assert t["id"] in text and f"{t['objective']:.4g}" in text
    assert browser.find_element(By.ID, "history").get_attribute("data-points") == str(2 * len(hpo["extra"]["trials"]))
    # the one searched parameter has all the importance; the chosen model's PR curve per class
    assert browser.find_element(By.ID, "importance").get_attribute("data-points") == "1" and "max_depth" in text
    assert browser.find_element(By.ID, "pr-curve").get_attribute("data-points") not in (None, "0")
    assert "average precision" in text and "Confusion matrix" in text
    assert "kiln tensorboard Experiment/default/wine-hpo" in text and "Step logs" in text
    link = browser.find_element(By.LINK_TEXT, "default/wine")  # the dataset it trained on
    assert link.get_attribute("href") == f"{url}/datasets/default/wine"
    # `kiln tensorboard` serves one run per trial: the event files kiln.report wrote while it trained
    from kiln.config import load_config
    from kiln.controller.console.read import one, tensorboard_runs

    rec = one(load_config(repo), "Experiment/default/epochs")[0]
    assert rec is not None and sorted(tensorboard_runs(load_config(repo), rec)) == ["p0", "p1"]

    epochs = _get_json(repo, "Experiment", "epochs")
    text = _load(browser, f"{url}/experiments/default/epochs", tmp_path / "experiment-curves.png")
    curves = browser.find_element(By.ID, "curves")
    assert curves.get_attribute("data-points") == str(2 * (4 + 3))  # two metrics per step of each trial
    assert curves.get_attribute("data-running") == "false"
    assert all(t["id"] in text for t in epochs["extra"]["trials"])

    text = _load(browser, f"{url}/models", tmp_path / "models.png")
    assert "wine-tree" in text and "v1" in text and "production" in text and "register" in text and "set_alias" in text
    assert "default/wine-api" in text  # the version the deployment serves

    # the deployment's requests, rate and latency, from its server's /metrics
    dep = _get_json(repo, "Deployment", "wine-api")["extra"]
    features = json.loads((repo / ".kiln/bentoml/models/wine-tree/v1/kiln-serving.json").read_text())["features"]
    body = json.dumps({"instances": [{f: 1.0 for f in features}]}).encode()
    text = _load(browser, f"{url}/deployments", tmp_path / "deployments-before.png")
    assert dep["url"] in text and "wine-tree v1" in text and "test page" in text
    for _ in range(5):
        req = urllib.request.Request(f"{dep['url']}/predict", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
    text = _load(browser, f"{url}/deployments", tmp_path / "deployments.png")
    cells = browser.find_element(By.CSS_SELECTOR, "table.deployments tbody tr").find_elements(By.TAG_NAME, "td")
    requests, rate, latency = (c.text for c in cells[4:7])
    assert int(requests) >= 5 and rate.endswith("/s") and float(rate[:-2]) > 0 and latency.endswith(" ms"), text
    text = _load(browser, f"{url}/labeling", tmp_path / "labeling.png")
    assert "Labeling" in text and "No labeling job has been applied" in text
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        [
            "overview.png",
            "queue.png",
            "dataset.png",
            "experiment.png",
            "experiment-curves.png",
            "models.png",
            "labeling.png",
            "deployments.png",
            "deployments-before.png",
        ]
    )
    # a request that would change state is refused, on every page
    for path in ("/", "/experiments/default/epochs", "/models"):
        req = urllib.request.Request(f"{url}{path}", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 405


@pytest.mark.slow  # ~20 s: re-trains one experiment for ~6 s while the browser watches
def test_the_live_curve_gains_points_while_it_trains(console: tuple[Path, str], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    repo, url = console
    write(repo, {"specs/all.yaml": SPECS.replace("PARAMS", "[{epochs: 10, pause: 0.6}]")})
    apply = subprocess.Popen([*KILN, "apply"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        browser.get(f"{url}/experiments/default/epochs")
        seen: list[tuple[int, str]] = []
        shot = False
        while apply.poll() is None:
            fig = browser.find_element(By.ID, "curves")  # the page redraws it from the JSON it polls
            pts, running = fig.get_attribute("data-points"), fig.get_attribute("data-running")
            if pts is not None:
                seen.append((int(pts), str(running)))
                if running == "true" and int(pts) > 4 and not shot:
                    shot = browser.save_screenshot(str(tmp_path / "experiment-training.png"))
            time.sleep(0.3)
        out = apply.stdout.read() if apply.stdout else ""
    finally:
        if apply.poll() is None:
            apply.kill()
        apply.wait()
    assert apply.returncode == 0, out
    live = [p for p, running in seen if running == "true"]
    rises = sum(1 for a, b in zip(live, live[1:]) if b > a)
    assert rises >= 2, seen  # the page's curve grew at least twice while the trial trained
    assert shot and (tmp_path / "experiment-training.png").stat().st_size > 10_000
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    time.sleep(1.5)  # one more poll after the end
    fig = browser.find_element(By.ID, "curves")
    assert fig.get_attribute("data-points") == str(2 * 10) and fig.get_attribute("data-running") == "false"
    assert "Experiment/epochs: updated" in out


# -- quotas against current use, and the queue (#17, from #18's resource queue) --------------------


def test_workspace_quotas_show_the_queues_use_and_its_jobs_as_each_user_may_see_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs written into a real resource queue (``kiln.runners._resources``, in this test's slots
    folder, held by this live process) and a deployment server that runs (a live pid) or has
    stopped: the overview counts CPU, memory, training and deployment GPUs and concurrent jobs
    against each workspace's quotas, and the queue page lists the jobs as ``kiln queue`` does, of
    the workspaces (and private experiments) the user sees."""
    import threading

    from kiln.config import load_config
    from kiln.controller.compute import queue_rows
    from kiln.controller.console import pages, read
    from kiln.runners._resources import Capacity, Request, queue_for
    from kiln.state import ObjectRecord, open_store

    monkeypatch.setenv("KILN_SLOTS_DIR", str(tmp_path / "slots"))
    repo = tmp_path / "repo"
    write(repo, {"kiln.yaml": 'capacity: {cpu: "8", memory: 16Gi, gpus: 2}\n'})
    config = load_config(repo)
    vision_q = {"cpu": "4", "memory": "4Gi", "trainingGpus": 1, "deploymentGpus": 2, "maxConcurrentJobs": 3}
    nlp_q = {"cpu": "2", "maxConcurrentJobs": 1}
    gone = subprocess.Popen(["true"])
    gone.wait()  # a server that has stopped: its pid is no one's now
    specs: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "Workspace/default/vision": (
            {
                "members": [{"user": ADA, "role": "developer"}, {"user": CY, "role": "developer"}],
                "quotas": vision_q,
                "presets": [{"name": "gpu", "cpu": "1", "memory": "1Gi", "gpu": 1}],
            },
            {},
        ),
        "Workspace/default/nlp": ({"members": [{"user": BO, "role": "developer"}], "quotas": nlp_q}, {}),
        "Experiment/vision/secret": (
            {"access": "private", "owner": ADA},
            {"workflow": {"name": "kiln-exp-secret", "phase": "Running"}},
        ),
        "Experiment/vision/open": ({}, {"workflow": {"name": "kiln-exp-open", "phase": "Running"}}),
        "Experiment/nlp/texts": ({}, {"workflow": {"name": "kiln-exp-texts", "phase": "Running"}}),
        "Deployment/vision/api": (
            {"model": {"name": "digits"}, "resources": {"preset": "gpu"}, "replicas": 2},
            {"pid": os.getpid(), "url": "http://127.0.0.1:9"},
        ),
        "Deployment/vision/old": ({"model": {"name": "digits"}, "resources": {"preset": "gpu"}}, {"pid": gone.pid}),
    }
    store = open_store(None, repo)
    try:
        for key, (spec, extra) in specs.items():
            store.put(ObjectRecord(key=key, sync="Synced", health="Healthy", spec={"spec": spec}, extra=extra))
    finally:
        store.close()

    queue = queue_for(tmp_path / "slots", Capacity(cpu=8, memory=16 * 2**30, gpus=2))
    gi = 2**30
    asks = [  # (workspace, workflow, cpu, memory, gpu): the first three start, the last waits for a training GPU
        ("vision", "kiln-exp-secret", 2.0, gi, 1),
        ("vision", "kiln-exp-open", 0.5, 2 * gi, 0),
        ("nlp", "kiln-exp-texts", 1.0, gi, 0),
        ("vision", "kiln-exp-open", 1.0, gi, 1),
    ]
    quotas = {"vision": vision_q, "nlp": nlp_q}
    reqs = [
        Request(workspace=ws, workflow=wf, node=f"{wf}.train-{i}", cpu=c, memory=m, gpu=g, quotas=quotas[ws])
        for i, (ws, wf, c, m, g) in enumerate(asks)
    ]
    held = [queue.acquire(r, lambda: None)["id"] for r in reqs[:3]]
    done = threading.Event()

    def stop_waiting() -> None:
        if done.is_set():
            raise RuntimeError("test over")

    waiter = threading.Thread(target=lambda: _acquire_quietly(queue, reqs[3], stop_waiting), daemon=True)
    waiter.start()
    try:
        deadline = time.monotonic() + 5
        while len(queue.snapshot()["waiting"]) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r["state"] for r in queue_rows(config)] == ["running", "running", "running", "waiting"]

        # the overview, for everyone: use now against each quota, from what runs
        ws = {w["name"]: w for w in read.overview(config, None)["workspaces"]}
        used = {w: {q["name"]: q["used"] for q in ws[w]["quotas"]} for w in ws}
        vision_running = [r for r in reqs[:3] if r.workspace == "vision"]
        assert used["vision"]["cpu"] == sum(r.cpu for r in vision_running) == 2.5
        assert used["vision"]["memory"] == f"{sum(r.memory for r in vision_running) / gi:.3g}Gi" == "3Gi"
        assert used["vision"]["trainingGpus"] == 1  # the waiting job's GPU is not in use
        assert used["vision"]["deploymentGpus"] == 1 * 2  # api's preset GPU x 2 replicas; old's server is gone
        assert used["vision"]["maxConcurrentJobs"] == len(vision_running)
        assert (ws["vision"]["waiting"], ws["nlp"]["waiting"]) == (1, 0)
        assert used["nlp"] == {"cpu": 1.0, "maxConcurrentJobs": 1}
        page = pages.dispatch(config, "/", {}).body.decode()
        assert "trainingGpus 1/1" in page and "deploymentGpus 2/2" in page and "cpu 2.5/4" in page
        assert 'href="/queue?workspace=vision">1</a>' in page

        # the queue as kiln queue lists it: each job with workspace, resources, position, reason
        everyone = read.queue(config, None)["jobs"]
        assert [(j["workflow"], j["state"], j["position"]) for j in everyone] == [
            (r.workflow, "running" if i < 3 else "waiting", None if i < 3 else 1) for i, r in enumerate(reqs)
        ]
        assert "quota trainingGpus" in everyone[3]["reason"]
        html = pages.dispatch(config, "/queue", {}).body.decode()
        assert "kiln-exp-open/kiln-exp-open.train-3" in html and "1 CPU 1Gi 1 GPU" in html and "quota trainingGpus" in html

        # as each user: ada sees vision's jobs (her private experiment's too), cy not ada's private
        # one, bo only nlp's; the counts follow what each sees
        seen = {u: [j["workflow"] for j in read.queue(config, read.viewer(config, u))["jobs"]] for u in (ADA, CY, BO)}
        assert seen == {
            ADA: ["kiln-exp-secret", "kiln-exp-open", "kiln-exp-open"],
            CY: ["kiln-exp-open", "kiln-exp-open"],
            BO: ["kiln-exp-texts"],
        }
        as_bo = pages.dispatch(config, "/queue", {}, user=BO).body.decode()
        assert "kiln-exp-texts" in as_bo and "kiln-exp-open" not in as_bo and "vision" not in as_bo
        bo_ws = read.overview(config, read.viewer(config, BO))["workspaces"]
        assert [w["name"] for w in bo_ws] == ["nlp"]
    finally:
        done.set()
        waiter.join(5)
        for entry in held:
            queue.release(entry)
    assert not waiter.is_alive()
    assert queue_rows(config) == []


def _acquire_quietly(queue: Any, req: Any, check: Any) -> None:
    try:
        queue.release(queue.acquire(req, check)["id"])
    except RuntimeError:  # the test is over: the waiting entry leaves the queue
        pass
