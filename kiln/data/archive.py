"""Import uploaded archives (zip, tar.*) safely.

Every member is checked before anything is written: absolute names, ``..`` components, links and
device files are refused (zip-slip / tar-slip), so no path outside ``target`` is ever created.

Size is bounded twice (``ArchiveLimits``): from the headers before anything is written (member
count, total size, expansion ratio), and again while writing, counting the bytes actually
written, because headers can lie. Extraction goes to a temporary sibling folder renamed into
place at the end, so a failure leaves no half-extracted dataset behind.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from kiln.data.errors import DatasetFormatError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """How far an archive may expand. The ratio (extracted / archive bytes) applies only past
    ``ratio_floor`` bytes: small archives of text compress far better than 200:1 and are harmless."""

    max_bytes: int = 20 << 30
    max_members: int = 1_000_000
    max_ratio: float = 200.0
    ratio_floor: int = 64 << 20

    def budget(self, archive_size: int) -> int:
        """The most bytes an archive of ``archive_size`` bytes may write."""
        return min(self.max_bytes, max(int(self.max_ratio * archive_size), self.ratio_floor))


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} GiB"  # pragma: no cover


def _check_name(archive: Path, name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (p.parts and p.parts[0].endswith(":")) or ".." in p.parts:
        raise DatasetFormatError(
            archive, f"member {name!r} would be written outside the target folder (path traversal)",
            hint="rebuild the archive with relative paths only",
        )


# (name, is_dir, declared size, open the member's bytes)
_Member = tuple[str, bool, int, Callable[[], IO[bytes]]]


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        _check_name(archive, info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetFormatError(archive, f"member {info.filename!r} is a symbolic link; links are not allowed")
        yield info.filename, info.is_dir(), info.file_size, functools.partial(zf.open, info)


def _tar_members(archive: Path, tf: tarfile.TarFile) -> Iterator[_Member]:
    for m in tf.getmembers():
        _check_name(archive, m.name)
        if not (m.isfile() or m.isdir()):
            raise DatasetFormatError(archive, f"member {m.name!r} is a link or special file; not allowed")
        yield m.name, m.isdir(), m.size, (lambda m=m: tf.extractfile(m))  # type: ignore[misc,return-value]


def _check_declared(archive: Path, members: list[_Member], limits: ArchiveLimits) -> int:
    """Refuse from the headers alone, before writing anything; return the byte budget."""
    size = archive.stat().st_size
    if len(members) > limits.max_members:
        raise DatasetFormatError(archive, f"has {len(members):,} members, over the limit of {limits.max_members:,}",
                                 hint="raise datasets.maxArchiveMembers in kiln.yaml if this is a real dataset")
    total = sum(m[2] for m in members)
    budget = limits.budget(size)
    if total > budget:
        raise DatasetFormatError(archive, _over(total, size, limits, "would expand to"),
                                 hint=_RAISE_HINT)
    return budget


_RAISE_HINT = "raise datasets.maxArchiveBytes / maxExpansionRatio in kiln.yaml if this is a real dataset"


def _over(total: int, size: int, limits: ArchiveLimits, verb: str) -> str:
    if total > limits.max_bytes:
        return f"{verb} {_human(total)}, over the limit of {_human(limits.max_bytes)}"
    return (f"{verb} {_human(total)} from {_human(size)} (ratio {total / max(size, 1):,.0f}), "
            f"over the limit of {limits.max_ratio:g}")


def _write_members(archive: Path, members: list[_Member], tmp: Path, budget: int, limits: ArchiveLimits) -> None:
    """Write every member under ``tmp``, counting the bytes really written against ``budget``."""
    base = tmp.resolve()
    written = 0
    for name, is_dir, _declared, open_member in members:
        dest = (tmp / name).resolve()
        if not dest.is_relative_to(base):  # belt and braces after the name check
            raise DatasetFormatError(archive, f"member {name!r} escapes the target folder")
        if is_dir:
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as src, open(dest, "wb") as out:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > budget:
                    raise DatasetFormatError(
                        archive, _over(written, archive.stat().st_size, limits, "expands while extracting to over")
                        + " (its headers said less)", hint=_RAISE_HINT)
                out.write(chunk)


def extract_archive(archive: str | os.PathLike[str], target: str | os.PathLike[str],
                    limits: ArchiveLimits | None = None) -> Path:
    """Extract ``archive`` into ``target`` (which must not exist yet); return ``target``.
    If the archive holds a single top-level folder, its contents become ``target``."""
    archive, target = Path(archive), Path(target)
    limits = limits or ArchiveLimits()
    if target.exists():
        raise DatasetFormatError(target, "extraction target already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = list(_zip_members(archive, zf))
                _write_members(archive, members, tmp, _check_declared(archive, members, limits), limits)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = list(_tar_members(archive, tf))
                _write_members(archive, members, tmp, _check_declared(archive, members, limits), limits)
        else:
            raise DatasetFormatError(archive, "not a zip or tar archive")
        entries = [e for e in tmp.iterdir() if e.name != "__MACOSX"]
        src = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        os.replace(src, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise DatasetFormatError(archive, f"corrupt archive ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
