"""What a Dataset's source may reach when it is fetched (docs/security.md, finding 3).

``kiln.api.source_policy`` decides from the spec alone (at validate, and again at fetch). Here is
what only the fetch can know: each connection resolves its host and checks *every* address it
may connect to, redirects included (``open_url``), so a DNS name or a redirect pointing inside
is refused as well, and the connection uses only the addresses that were checked (a second DNS
answer cannot differ). Symbolic links are resolved before a file of the repository is read.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kiln.api.source_policy import SETTINGS_HINT, address_problem
from kiln.data.errors import DatasetFormatError

if TYPE_CHECKING:
    from kiln.config import DatasetsConfig


class AddressRefused(OSError):
    """A host resolved to an address a source may not reach (an OSError so urllib passes it on)."""


def check_host(host: str, port: int, settings: DatasetsConfig) -> list[Any]:
    """Resolve ``host`` and refuse it when ANY of its addresses may not be reached; return the
    getaddrinfo entries (the only addresses a connection may then use)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot resolve {host}: {e.strerror}") from None
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        problem = address_problem(ip, settings)
        if problem:
            raise AddressRefused(f"host {host} resolves to {ip}: {problem}")
    return infos


def _connector(settings: DatasetsConfig) -> Any:
    def create_connection(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
                          source_address: Any = None) -> socket.socket:
        """socket.create_connection, restricted to the addresses ``check_host`` passed."""
        err: OSError | None = None
        for family, type_, proto, _, sockaddr in check_host(address[0], address[1], settings):
            sock = socket.socket(family, type_, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as e:
                err = e
                sock.close()
        raise err or OSError(f"cannot connect to {address[0]}")
    return create_connection


def open_url(url: str, settings: DatasetsConfig, timeout: float = 60) -> Any:
    """urlopen for a dataset download: every connection (the first and each redirect's) checks
    all addresses of its host; a redirect may only go to http(s). No proxy: the check must see
    the peer it connects to."""
    connect = _connector(settings)

    def checked(cls: type[http.client.HTTPConnection]) -> Any:
        def build(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
            conn = cls(*args, **kwargs)
            conn._create_connection = connect  # type: ignore[attr-defined]  # set per instance by __init__
            return conn
        return build

    plain, tls = checked(http.client.HTTPConnection), checked(http.client.HTTPSConnection)

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(plain, req)

    class Tls(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(tls, req, context=self._context)  # type: ignore[attr-defined]

    class Redirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            parts = urlsplit(newurl)
            if parts.scheme not in ("http", "https"):
                raise DatasetFormatError(url, f"redirected to {newurl}: only http(s) redirects are followed")
            try:
                check_host(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), settings)
            except AddressRefused as e:
                raise DatasetFormatError(url, f"redirected to {newurl}, refused: {e}",
                                         hint=SETTINGS_HINT.format("allowPrivateNetworks",
                                                                    "KILN_DATASETS_ALLOW_PRIVATE_NETWORKS")) from None
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.OpenerDirector()
    for h in (urllib.request.ProxyHandler({}), urllib.request.UnknownHandler(), Plain(), Tls(), Redirects(),
              urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(h)
    return opener.open(url, timeout=timeout)


# -- files ---------------------------------------------------------------------------------------

def inside(root: Path, given: str, *, allow_outside: bool = False) -> Path:
    """``given`` (relative to ``root``) with every link resolved; refused when it ends outside."""
    p = Path(given)
    p = (p if p.is_absolute() else root / p).resolve()
    if not allow_outside and not p.is_relative_to(root.resolve()):
        raise DatasetFormatError(given, f"resolves to {p}, outside the repository {root}",
                                 hint="a symbolic link out of the repository is not followed; copy the data in")
    return p


def check_links(folder: Path, shown: str) -> None:
    """Refuse a symbolic link under ``folder`` that points outside it, or to a folder holding the
    link (copying would loop). Links inside are followed: their files are copied."""
    top = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in (*dirnames, *filenames):
            link = Path(dirpath) / n
            if not link.is_symlink():
                continue
            target = link.resolve()
            rel = link.relative_to(folder).as_posix()
            if not target.is_relative_to(top):
                raise DatasetFormatError(f"{shown}/{rel}", f"is a symbolic link to {target}, outside the source folder",
                                         hint="copy the file into the folder instead of linking it")
            if target.is_dir() and link.parent.resolve().is_relative_to(target):
                raise DatasetFormatError(f"{shown}/{rel}", "is a symbolic link to a folder that holds it (a loop)",
                                         hint="remove the link")
