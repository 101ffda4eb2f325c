"""The shared helpers every layer writes files and timestamps with (kiln._util.fs, clock) and the
one repository-root discovery (kiln.config.repo_root)."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest

from kiln._util.clock import utcnow, utcnow_seconds
from kiln._util.fs import read_json, replacing, write_bytes_atomic, write_json_atomic, write_text_atomic
from kiln.config import repo_root


def test_json_bytes_follow_the_options(tmp_path: Path) -> None:
    data = {"b": 1, "a": "é"}
    write_json_atomic(tmp_path / "sorted.json", data)
    assert (tmp_path / "sorted.json").read_text() == json.dumps(data, indent=1, sort_keys=True)
    write_json_atomic(tmp_path / "kept.json", data, indent=None, sort_keys=False, ensure_ascii=False)
    assert (tmp_path / "kept.json").read_text(encoding="utf-8") == '{"b": 1, "a": "é"}'
    write_json_atomic(tmp_path / "deep" / "er" / "x.json", {"p": Path("/x")}, default=str)
    assert read_json(tmp_path / "deep" / "er" / "x.json") == {"p": "/x"}


def test_modes_default_to_what_open_gives_and_secrets_can_be_private(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    write_text_atomic(tmp_path / "plain.txt", "x")
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    write_text_atomic(tmp_path / "secret", "s", mode=0o600)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"v": object()})  # not JSON: fails before anything is replaced
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_concurrent_writers_never_tear_a_file(tmp_path: Path) -> None:
    target = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 100_000 for i in range(8)]
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(20):
                write_bytes_atomic(target, data)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


def test_read_json_defaults_for_missing_or_partial_files(tmp_path: Path) -> None:
    assert read_json(tmp_path / "none.json", default={}) == {}
    (tmp_path / "half.json").write_text('{"a": ')
    assert read_json(tmp_path / "half.json") is None


def test_timestamps() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", utcnow())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utcnow_seconds())


def test_repo_root_nearest_marker_wins(tmp_path: Path) -> None:
    outer = tmp_path / "mono"
    (outer / ".git").mkdir(parents=True)
    project = outer / "ml" / "project"
    (project / "specs" / "data").mkdir(parents=True)
    spec = project / "specs" / "data" / "d.yaml"
    spec.write_text("x: 1\n")
    assert repo_root(spec) == outer                       # a fresh checkout: only .git
    (project / ".kiln").mkdir()
    assert repo_root(spec) == project                     # kiln has run in the subproject
    (project / ".kiln").rmdir()
    (project / "kiln.yaml").write_text("specs: specs\n")
    assert repo_root(project / "specs") == project        # its own config
    assert repo_root(tmp_path / "elsewhere" / "x.yaml", default=tmp_path) == tmp_path
