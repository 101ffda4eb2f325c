"""Dataset sources read only what they may (issue #20 item 3, docs/security.md).

Each test reproduces an attack a spec author could write and shows it refused with one line, no
file written outside the repository and no DVC version: local files through ``file://`` or a
symbolic link, loopback and link-local HTTP (a real local server; a name and a redirect that
point inside), ``source.path: /etc``, archive bombs. And the operator's settings really allow
loopback and local files when set.
"""

from __future__ import annotations

import http.server
import threading
import urllib.error
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.config import DatasetsConfig
from kiln.data.errors import DatasetFormatError
from kiln.data.sources import AddressRefused, check_host, check_links, open_url
from tests.helpers import kiln, write

CSV = "a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(12))
METADATA = "http://169.254.169.254/latest/meta-data/"


class _Handler(http.server.BaseHTTPRequestHandler):
    """/metrics and /data.csv answer; /to-* redirect where their name says."""

    hits: list[str]

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        port = self.server.server_address[1]
        redirects = {"/to-metadata": METADATA, "/to-ftp": f"ftp://127.0.0.1:{port}/data.csv",
                     "/to-loopback": f"http://127.0.0.1:{port}/metrics"}
        if self.path in redirects:
            self.send_response(302)
            self.send_header("Location", redirects[self.path])
            self.end_headers()
            return
        body = (CSV if self.path.startswith("/data") else "kiln_deployment_requests_total 7\n").encode()
        self.send_response(200)
        if self.path != "/data-unsized.csv":  # without a length: read until the server closes
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    """A real HTTP server on loopback (like a deployment's /metrics); yields (port, paths hit)."""
    hits: list[str] = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Handler,), {"hits": hits}))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1], hits
    finally:
        srv.shutdown()
        srv.server_close()


STRICT, OPEN = DatasetsConfig(), DatasetsConfig(allowPrivateNetworks=True)


def test_a_name_that_resolves_to_loopback_is_refused_before_connecting(server: tuple[int, list[str]]) -> None:
    port, hits = server
    with pytest.raises(urllib.error.URLError) as e:
        open_url(f"http://localhost:{port}/metrics", STRICT)
    assert isinstance(e.value.reason, AddressRefused)
    assert str(e.value.reason) == "host localhost resolves to 127.0.0.1: 127.0.0.1 is a loopback address" \
        or "::1 is a loopback address" in str(e.value.reason)
    assert hits == []  # refused before any connection
    with pytest.raises(AddressRefused, match="0.0.0.0 is an unspecified address"):
        check_host("0.0.0.0", port, OPEN)
    with pytest.raises(AddressRefused, match="10.0.0.1 is a private address"):
        check_host("10.0.0.1", port, STRICT)
    # the setting allows it
    with open_url(f"http://localhost:{port}/metrics", OPEN) as r:
        assert r.read() == b"kiln_deployment_requests_total 7\n"
    assert hits == ["/metrics"]


def test_every_redirect_is_checked_before_it_is_followed(server: tuple[int, list[str]]) -> None:
    port, hits = server
    # loopback allowed, but a redirect to the cloud metadata address (link-local) never is
    with pytest.raises(DatasetFormatError) as e:
        open_url(f"http://127.0.0.1:{port}/to-metadata", OPEN)
    assert str(e.value).startswith(f"http://127.0.0.1:{port}/to-metadata: redirected to {METADATA}, refused: "
                                   "host 169.254.169.254 resolves to 169.254.169.254: 169.254.169.254 is a "
                                   "link-local address")
    with pytest.raises(DatasetFormatError, match="only http\\(s\\) redirects are followed"):
        open_url(f"http://127.0.0.1:{port}/to-ftp", OPEN)
    assert hits == ["/to-metadata", "/to-ftp"]
    # where loopback is not allowed, a redirect to it is refused by the same check
    with pytest.raises(AddressRefused, match="127.0.0.1 is a loopback address"):
        check_host("127.0.0.1", port, STRICT)
    with open_url(f"http://127.0.0.1:{port}/to-loopback", OPEN) as r:  # allowed: followed
        assert r.read().startswith(b"kiln_deployment")


def test_downloads_stop_at_the_size_limit_declared_or_not(tmp_path: Path, server: tuple[int, list[str]]) -> None:
    from kiln.config import KilnConfig
    from kiln.controller.dataset_steps import _http_get

    port, _ = server
    config = KilnConfig(datasets=DatasetsConfig(allowPrivateNetworks=True, maxDownloadBytes=40))
    for path, said in (("/data.csv", f"is {len(CSV)} bytes,"), ("/data-unsized.csv", "goes on")):
        with pytest.raises(DatasetFormatError) as e:
            _http_get(f"http://127.0.0.1:{port}{path}", tmp_path / "got.csv", config)
        assert str(e.value).startswith(f"http://127.0.0.1:{port}{path}: download {said} past the limit "
                                       "of 40 bytes -- raise datasets.maxDownloadBytes")
        assert not (tmp_path / "got.csv").exists() or (tmp_path / "got.csv").stat().st_size <= 40


def test_links_out_of_a_source_folder_are_refused_links_inside_followed(tmp_path: Path) -> None:
    src = tmp_path / "raw"
    (src / "a").mkdir(parents=True)
    (src / "a" / "one.csv").write_text(CSV)
    (src / "a" / "same.csv").symlink_to(src / "a" / "one.csv")
    (src / "b").symlink_to(src / "a", target_is_directory=True)
    check_links(src, "raw")  # inside the source: fine
    (src / "a" / "loop").symlink_to(src, target_is_directory=True)
    with pytest.raises(DatasetFormatError, match="^raw/a/loop: is a symbolic link to a folder that holds it"):
        check_links(src, "raw")
    (src / "a" / "loop").unlink()
    (tmp_path / "secret.txt").write_text("s")
    (src / "a" / "leak.csv").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(DatasetFormatError) as e:
        check_links(src, "raw")
    assert str(e.value) == (f"raw/a/leak.csv: is a symbolic link to {tmp_path / 'secret.txt'}, outside the "
                            "source folder -- copy the file into the folder instead of linking it")


def _ds(name: str, source: str, kind: str = "type: tabular\n  task: classification") -> str:
    return (f"apiVersion: kiln.dev/v1alpha1\nkind: Dataset\nmetadata: {{name: {name}}}\n"
            f"spec:\n  {kind}\n  source: {source}\n")


def _outside(tmp_path: Path, repo: Path) -> list[Path]:
    return sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(repo))


def test_validate_refuses_sources_that_the_spec_alone_shows_reach_too_far(
        tmp_path: Path, server: tuple[int, list[str]]) -> None:
    port, hits = server
    repo = tmp_path / "repo"
    specs = {
        "passwd": "{url: 'file:///etc/passwd'}",
        "metrics": f"{{url: 'http://127.0.0.1:{port}/metrics'}}",
        "local": f"{{url: 'http://localhost:{port}/metrics'}}",
        "decimal": f"{{url: 'http://2130706433:{port}/metrics'}}",  # 127.0.0.1 as the resolver reads it
        "ipv6": f"{{url: 'http://[::1]:{port}/metrics'}}",
        "metadata": f"{{url: '{METADATA}'}}",
        "ftp": "{url: 'ftp://example.com/data.csv'}",
        "chained": "{url: 's3://bucket/x.zip::file:///etc/passwd'}",
        "etc": "{path: /etc}",
        "up": "{path: ../../outside}",
        "archive": "{archive: /var/backups/data.zip}",
    }
    write(repo, {f"specs/{n}.yaml": _ds(n, s) for n, s in specs.items()})
    before = _outside(tmp_path, repo)
    p = kiln("validate", cwd=repo)
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr
    out = p.stdout + p.stderr
    field = {"etc": "path", "up": "path", "archive": "archive"}
    for name in specs:
        line = next(ln for ln in out.splitlines() if ln.startswith(f"specs/{name}.yaml:"))
        assert f":7:12  spec.source.{field.get(name, 'url')}  Dataset/{name}: source." in line, line
        assert "refused: " in line
    assert "file:///etc/passwd' refused: file:// URLs read the applying machine's files  (use a public " \
           "https:// URL or an object store, or set datasets.allowFileUrls in kiln.yaml " \
           "(env KILN_DATASETS_ALLOW_FILE_URLS)" in out
    assert f"http://127.0.0.1:{port}/metrics' refused: 127.0.0.1 is a loopback address  (use a public https:// URL or an object " \
           "store, or set datasets.allowPrivateNetworks" in out
    assert "'/etc' refused: outside the repository" in out
    # apply refuses the same, before anything runs: no version, nothing written outside
    p = kiln("apply", cwd=repo)
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr
    assert not (repo / "data").exists() and hits == [] and _outside(tmp_path, repo) == before
    # the operator's settings (here through the environment) allow local files and loopback only
    env = {"KILN_DATASETS_ALLOW_FILE_URLS": "true", "KILN_DATASETS_ALLOW_PRIVATE_NETWORKS": "1"}
    p = kiln("validate", cwd=repo, env=env)
    out = p.stdout + p.stderr
    assert sorted({ln.split(".yaml:")[0][len("specs/"):] for ln in out.splitlines() if ".yaml:" in ln}) == \
        ["chained", "etc", "ftp", "metadata", "up"]


@pytest.mark.slow
def test_fetch_refuses_links_out_bombs_and_redirects_inside_and_allows_loopback_when_set(
        tmp_path: Path, server: tuple[int, list[str]]) -> None:
    import subprocess

    port, hits = server
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "raw" / "leak").mkdir(parents=True)
    (repo / "raw" / "leak" / "data.csv").write_text(CSV)
    (repo / "raw" / "leak" / "hostname.csv").symlink_to("/etc/hostname")
    (repo / "raw" / "passwd.csv").symlink_to("/etc/passwd")
    with zipfile.ZipFile(repo / "raw" / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/zeros.csv", b"\0" * (4 << 20))
    (tmp_path / "private").mkdir()
    with zipfile.ZipFile(tmp_path / "private" / "data.zip", "w") as zf:
        zf.writestr("data/data.csv", CSV)
    (repo / "raw" / "data.zip").symlink_to(tmp_path / "private" / "data.zip")
    base = f"http://127.0.0.1:{port}"
    specs = {
        "leak": ("{path: raw/leak}", "raw/leak/hostname.csv: is a symbolic link to /etc/hostname, outside the source folder"),
        "filelink": ("{path: raw/passwd.csv}", "raw/passwd.csv: resolves to /etc/passwd, outside the repository"),
        "archivelink": ("{archive: raw/data.zip}", f"raw/data.zip: resolves to {tmp_path}/private/data.zip, outside"),
        "bomb": ("{archive: raw/bomb.zip}", "raw/bomb.zip: would expand to 4.0 MiB, over the limit of 1.0 MiB"),
        "redirect": (f"{{url: '{base}/to-metadata'}}", f"{base}/to-metadata: redirected to {METADATA}, refused"),
        "served": (f"{{url: '{base}/data.csv'}}", None),
    }
    write(repo, {"kiln.yaml": "datasets: {allowPrivateNetworks: true, maxArchiveBytes: 1048576}\n",
                 **{f"specs/{n}.yaml": _ds(n, s) for n, (s, _) in specs.items()}})
    before = _outside(tmp_path, repo)
    p = kiln("apply", cwd=repo, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    from tests.test_dataset_handler import status, versions_log

    st = status(repo)
    for name, (_, start) in specs.items():
        if start is not None:
            msg = st[f"default/{name}"]["message"]
            assert st[f"default/{name}"]["reason"] == "Failed" and "\n" not in msg
            assert msg.startswith(f"fetch: {start}"), (name, msg)
    assert versions_log(repo, "served")["versions"][0]["files"] >= 1  # loopback allowed by the setting
    assert sorted(p.name for p in (repo / "data" / "default").iterdir() if not p.name.startswith(".")) == \
        ["served", "served.dvc", "served.versions.json"]
    assert sorted(set(hits)) == ["/data.csv", "/to-metadata"]
    assert _outside(tmp_path, repo) == before
