"""Archive bombs (issue #20 item 3): a small archive may not expand past the limits, checked from
the headers before anything is written and again on the bytes really written."""

from __future__ import annotations

import io
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from kiln.data.archive import ArchiveLimits, _write_members, extract_archive
from kiln.data.errors import DatasetFormatError


def zeros_zip(path: Path, mib: int, members: int = 1) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(members):
            zf.writestr(f"d/zeros{i}.bin", b"\0" * (mib << 20))
    return path


def left_behind(folder: Path, archive: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p != archive)


def test_a_zip_bomb_is_refused_from_its_headers_before_anything_is_written(tmp_path: Path) -> None:
    bomb = zeros_zip(tmp_path / "bomb.zip", 8)  # 8 KiB on disk, 8 MiB inside
    t0 = time.monotonic()
    with pytest.raises(DatasetFormatError) as e:
        extract_archive(bomb, tmp_path / "out", ArchiveLimits(max_bytes=1 << 20))
    assert time.monotonic() - t0 < 0.5  # refused before inflating 8 MiB
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{bomb}: would expand to 8.0 MiB, over the limit of 1.0 MiB")
    assert "datasets.maxArchiveBytes" in msg
    assert left_behind(tmp_path, bomb) == []


def test_expansion_ratio_and_member_count_are_limited(tmp_path: Path) -> None:
    bomb = zeros_zip(tmp_path / "ratio.zip", 2)
    with pytest.raises(DatasetFormatError, match=r"from .* \(ratio [0-9,]+\), over the limit of 200 --"):
        extract_archive(bomb, tmp_path / "out", ArchiveLimits(ratio_floor=0))
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(11):
            zf.writestr(f"f{i}.txt", "x")
    with pytest.raises(DatasetFormatError, match="has 11 members, over the limit of 10"):
        extract_archive(many, tmp_path / "out", ArchiveLimits(max_members=10))
    assert left_behind(tmp_path, bomb) == ["many.zip"]
    # within the limits (and the default ones) the same archives extract
    assert (extract_archive(bomb, tmp_path / "ok") / "zeros0.bin").stat().st_size == 2 << 20


def test_an_archive_whose_headers_lie_is_refused_on_the_bytes_written(tmp_path: Path) -> None:
    # a zip whose headers say 100 bytes for a member of 4 MiB: the header check passes
    data = bytearray(zeros_zip(tmp_path / "lie.zip", 4).read_bytes())
    struct.pack_into("<I", data, data.find(b"PK\x01\x02") + 24, 100)  # central directory
    struct.pack_into("<I", data, 22, 100)  # local header
    (tmp_path / "lie.zip").write_bytes(data)
    with pytest.raises(DatasetFormatError, match="corrupt archive"):
        extract_archive(tmp_path / "lie.zip", tmp_path / "out", ArchiveLimits(max_bytes=1000))
    assert left_behind(tmp_path, tmp_path / "lie.zip") == []
    # CPython's zipfile stops at the declared size; the writer does not rely on that: it counts
    # what a member's stream really yields
    lying = [("big.bin", False, 10, lambda: io.BytesIO(b"\0" * 5000))]
    (tmp_path / "w").mkdir()
    with pytest.raises(DatasetFormatError, match=r"expands while extracting .* \(its headers said less\)"):
        _write_members(tmp_path / "lie.zip", lying, tmp_path / "w", 1000, ArchiveLimits(max_bytes=1000))


def test_a_tar_bomb_is_refused_from_its_headers(tmp_path: Path) -> None:
    tgz = tmp_path / "bomb.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        info = tarfile.TarInfo("d/zeros.bin")
        info.size = 4 << 20
        tf.addfile(info, io.BytesIO(b"\0" * info.size))
    with pytest.raises(DatasetFormatError, match="would expand to 4.0 MiB, over the limit of 1.0 MiB"):
        extract_archive(tgz, tmp_path / "out", ArchiveLimits(max_bytes=1 << 20))
    assert left_behind(tmp_path, tgz) == []
