"""Crash-safe file writes shared by every layer.

Each writer goes through a temporary file in the target's folder and ``os.replace``: a reader (or
a process that resumes after ``kill -9``) sees the old file or the new one, never half of one. The
temporary name comes from ``tempfile.mkstemp``, so threads and processes that write the same path
at once never share a temporary file; a failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@functools.cache
def _default_mode() -> int:
    # the umask can only be read by setting it; once per process, before any writer thread runs
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def replacing(path: Path, *, mkdir: bool = True, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new content to; on a clean exit it
    replaces ``path``, on an error it is removed. For writers that want a file name (pandas'
    ``to_csv``, PIL's ``save``: they stream, so a large table never sits in memory twice). The
    name ends in ``.tmp``: pass the file format explicitly to writers that guess it from the
    suffix. ``mode`` as in :func:`write_bytes_atomic`."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode() if mode is None else mode)
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = False, mkdir: bool = True,
                       mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` in one step. ``fsync`` also survives a power cut (the
    registry's metadata), at the cost of a disk flush. ``mode`` sets the permissions before any
    byte is written (``0o600`` for secrets); by default the file gets what ``open()`` would give
    it (0666 less the umask), not ``mkstemp``'s 0600: other tools and users read these files."""
    with replacing(path, mkdir=mkdir, mode=mode) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str, *, fsync: bool = False, mkdir: bool = True,
                      mode: int | None = None) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync, mkdir=mkdir, mode=mode)


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 1, sort_keys: bool = True,
                      ensure_ascii: bool = True, default: Callable[[Any], Any] | None = None,
                      fsync: bool = False, mkdir: bool = True, mode: int | None = None) -> None:
    """``json.dumps`` with these options, written with :func:`write_bytes_atomic`. The options
    stay explicit because some files are hashed (DVC-tracked metadata): the bytes must not
    change when a caller moves to this helper."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=default)
    write_text_atomic(path, text, fsync=fsync, mkdir=mkdir, mode=mode)


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON document at ``path``, or ``default`` when it is missing or not valid JSON (a
    file that another process has not written yet)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """``dst`` as a hard link to ``src`` (one copy on disk), or a copy where a link cannot be made
    (another file system). Made for ``shutil.copytree(copy_function=...)``. Only for files that
    are never rewritten in place afterwards: a link shares every later write."""
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def share_identical(files: Iterator[Path] | list[Path], reference: Path, *, min_size: int = 4096,
                    dry_run: bool = False) -> int:
    """Replace each of ``files`` that has the same bytes as a file under ``reference`` by a hard
    link to that file, so both paths keep working and the bytes are on disk once. Returns the
    bytes freed (or, with ``dry_run``, that would be). The swap is atomic (a link under a
    temporary name, then ``os.replace``): a reader sees the old file or the linked one.

    Why content and not names: the registry lays a model out differently from a trial folder
    (``kiln-model/``, a serving file at the top), and equal bytes are the only safe test."""
    import filecmp

    by_size: dict[int, list[Path]] = {}
    for p in reference.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size >= min_size:
            by_size.setdefault(p.stat().st_size, []).append(p)
    freed = 0
    for f in files:
        if not f.is_file() or f.is_symlink():
            continue
        st = f.stat()
        for ref in by_size.get(st.st_size, []):
            rst = ref.stat()
            if (rst.st_dev, rst.st_ino) == (st.st_dev, st.st_ino):
                break  # already one copy
            if rst.st_dev != st.st_dev or not filecmp.cmp(f, ref, shallow=False):
                continue
            if not dry_run:
                tmp = f.with_name(f".{f.name}.link.tmp")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.link(ref, tmp)
                os.replace(tmp, f)
            freed += st.st_size if st.st_nlink == 1 else 0
            break
    return freed


PRIVATE_IGNORE = "# kiln's private files (state, runs, models, locks): never committed. Written by kiln.\n*\n"


def private_dir(path: Path) -> Path:
    """Create ``path`` (kiln's ``.kiln/``) with a ``.gitignore`` of ``*`` inside it, as .venv,
    .pytest_cache and .mypy_cache do: `git add -A` then never stages it, whichever command made
    it first (`kiln labelstudio start` before any apply did, and the repository's own .gitignore
    is only written by `kiln init` and a first apply), and no tracked file changes."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        write_text_atomic(ignore, PRIVATE_IGNORE, mkdir=False)
    return path
