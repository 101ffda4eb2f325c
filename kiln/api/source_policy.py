"""What a Dataset's source may name, decided from the spec and the repository's settings alone
(docs/security.md, finding 3). ``kiln validate`` reports these with file:line; the fetch step runs
the same check again, then ``kiln.data.sources`` checks what the names resolve to.

A spec is written by whoever can open a pull request, and its source is fetched with the rights of
whoever applies it; so by default a source reads only the repository's files, public http(s)
URLs and object stores. ``datasets.allowFileUrls`` and ``datasets.allowPrivateNetworks`` in
kiln.yaml (the operator's, not the spec author's) widen that.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from kiln.api.dataset import Source
    from kiln.config import DatasetsConfig

# Remote stores fsspec reads (scheme -> the package that brings it). Each talks to its provider's
# endpoint, never to a host the URL names, so they need no address check.
OBJECT_STORES = {
    "s3": "s3fs (or dvc-s3)", "s3a": "s3fs (or dvc-s3)", "gs": "gcsfs (or dvc-gs)", "gcs": "gcsfs (or dvc-gs)",
    "az": "adlfs (or dvc-azure)", "abfs": "adlfs (or dvc-azure)", "abfss": "adlfs (or dvc-azure)",
    "hf": "huggingface_hub",
}
URL_SCHEMES = ("http", "https", *OBJECT_STORES)
SETTINGS_HINT = "or set datasets.{} in kiln.yaml (env {}) if the operator means it"


# -- addresses -----------------------------------------------------------------------------------

def address_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """None for a public address, else what it is. Link-local (cloud metadata at 169.254.169.254),
    unspecified, multicast and reserved come first: no setting allows them."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("link_local", "unspecified", "multicast", "loopback", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "private"


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, settings: DatasetsConfig) -> str | None:
    kind = address_kind(ip)
    if kind is None or (kind in ("loopback", "private") and settings.allowPrivateNetworks):
        return None
    return f"{ip} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} address"


# -- the spec ------------------------------------------------------------------------------------

def _repo_relative(given: str) -> bool:
    """A relative path that stays inside the folder it is relative to (textually; links are
    checked when the files are read)."""
    norm = posixpath.normpath(given.replace("\\", "/"))
    return not (os.path.isabs(given) or given.startswith(("/", "\\")) or norm == ".." or norm.startswith("../"))


def url_problem(url: str, settings: DatasetsConfig) -> str | None:
    """What the URL alone says is refused, or None."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return None if settings.allowFileUrls else "file:// URLs read the applying machine's files"
    if scheme not in URL_SCHEMES:
        return f"scheme {scheme or '(none)'!r} is not one of {', '.join(URL_SCHEMES)}"
    if scheme in OBJECT_STORES:
        return "chained fsspec URLs (::) are not allowed" if "::" in url else None
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return "the URL has no host"
    if host == "localhost" or host.endswith(".localhost"):
        return None if settings.allowPrivateNetworks else f"host {host} is a loopback address"
    ip = _literal_address(host)
    return None if ip is None else address_problem(ip, settings)


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host written as one stands for, in every form the resolver takes (127.1,
    0x7f000001 and 2130706433 are 127.0.0.1 too); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def spec_problems(source: Source, settings: DatasetsConfig) -> list[tuple[str, str, str, str]]:
    """(field, value, problem, hint) for each part of ``source`` the spec alone shows to be refused."""
    out: list[tuple[str, str, str, str]] = []
    if source.path is not None and not _repo_relative(source.path):
        out.append(("path", source.path, "refused: outside the repository",
                    "give a folder or file relative to the repository root, without '..'"))
    if source.archive is not None and not settings.allowFileUrls and not _repo_relative(source.archive):
        out.append(("archive", source.archive, "refused: outside the repository",
                    "put the archive in the repository or serve it over https, "
                    + SETTINGS_HINT.format("allowFileUrls", "KILN_DATASETS_ALLOW_FILE_URLS")))
    if source.url is not None:
        problem = url_problem(source.url, settings)
        if problem:
            hint = "use a public https:// URL or an object store"
            if problem.startswith("file://"):
                hint += ", " + SETTINGS_HINT.format("allowFileUrls", "KILN_DATASETS_ALLOW_FILE_URLS")
            elif problem.endswith(("loopback address", "private address")):
                hint += ", " + SETTINGS_HINT.format("allowPrivateNetworks", "KILN_DATASETS_ALLOW_PRIVATE_NETWORKS")
            out.append(("url", source.url, f"refused: {problem}", hint))
    return out
