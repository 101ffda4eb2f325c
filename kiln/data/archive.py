"""Import uploaded archives (zip, tar.*) safely.

Every member is checked before anything is written: absolute names, ``..`` components, links and
device files are refused (zip-slip / tar-slip), so no path outside ``target`` is ever created.
Extraction goes to a temporary sibling folder renamed into place at the end, so a failure leaves
no half-extracted dataset behind.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from kiln.data.errors import DatasetFormatError


def _check_name(archive: Path, name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (p.parts and p.parts[0].endswith(":")) or ".." in p.parts:
        raise DatasetFormatError(
            archive, f"member {name!r} would be written outside the target folder (path traversal)",
            hint="rebuild the archive with relative paths only",
        )


def extract_archive(archive: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Extract ``archive`` into ``target`` (which must not exist yet); return ``target``.
    If the archive holds a single top-level folder, its contents become ``target``."""
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise DatasetFormatError(target, "extraction target already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_name(archive, info.filename)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        raise DatasetFormatError(archive, f"member {info.filename!r} is a symbolic link; links are not allowed")
                base = tmp.resolve()
                for info in zf.infolist():
                    dest = (tmp / info.filename).resolve()
                    if not dest.is_relative_to(base):  # belt and braces after the name check
                        raise DatasetFormatError(archive, f"member {info.filename!r} escapes the target folder")
                zf.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for m in tf.getmembers():
                    _check_name(archive, m.name)
                    if not (m.isfile() or m.isdir()):
                        raise DatasetFormatError(archive, f"member {m.name!r} is a link or special file; not allowed")
                tf.extractall(tmp, filter="data")
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
