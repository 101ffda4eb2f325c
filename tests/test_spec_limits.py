"""Specs that would exhaust memory or break apply are refused by validate, with file and line.

A pull request controls the spec files, and CI runs `kiln validate` / `kiln plan` on them, so
a spec must not be able to make kiln allocate without bound: YAML alias bombs ("billion laughs")
inside free-form `params`, recursive aliases, deep nesting, huge files, and documents too large
to be passed to a workflow task (Linux caps one argument at 128 KiB).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.loader import MAX_DOC_JSON, MAX_FILE_BYTES, load_specs
from tests.helpers import kiln, write

HEAD = """\
apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {name: wine}
spec:
  type: tabular
  task: classification
  format: csv
  source: {sample: wine}
  label: target
"""


def _bomb(levels: int = 12) -> str:
    lines = ["  preprocessing:", "    - op: StandardScaler", "      params:", '        a0: &a0 ["lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"        a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 8)}]")
    return HEAD + "\n".join(lines) + "\n"


CASES = {
    # 4 * 8^11 values once expanded; 1.3 KB on disk
    "bomb": (_bomb(), "expands to more than 100,000 values"),
    "recursive": (HEAD + "  preprocessing:\n    - op: StandardScaler\n      params: &p {self: *p}\n",
                  "refers to itself through a YAML alias"),
    "deep": (HEAD + "  preprocessing:\n    - op: StandardScaler\n      params: " + "[" * 200 + "]" * 200 + "\n",
             "nested more than 64 levels deep"),
    # libyaml stops these itself (at 1,000 levels) before Python could run out of stack
    "very-deep": (HEAD + "  preprocessing:\n    - op: StandardScaler\n      params: " + "[" * 20000 + "]" * 20000 + "\n",
                  "exceeded maximum nesting depth"),
    "long-value": (HEAD + "  description: " + "x" * (MAX_DOC_JSON + 10) + "\n",
                   f"more than the {MAX_DOC_JSON // 1024} KiB a spec may be"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_oversized_documents_are_spec_issues(tmp_path: Path, case: str) -> None:
    text, words = CASES[case]
    write(tmp_path, {"specs/wine.yaml": text})
    specs = load_specs(tmp_path / "specs")
    assert specs.specs == []
    assert len(specs.issues) == 1, [i.format() for i in specs.issues]
    issue = specs.issues[0]
    assert words in issue.message
    assert issue.file.endswith("wine.yaml") and issue.line >= 1


def test_a_huge_spec_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    write(tmp_path, {"specs/wine.yaml": HEAD + "  description: " + "x" * (MAX_FILE_BYTES + 1) + "\n"})
    specs = load_specs(tmp_path / "specs")
    assert [i.message for i in specs.issues] == ["spec file is 1.0 MiB, more than the 1 MiB a spec file may be"]


def test_validate_plan_and_apply_refuse_a_bomb_without_a_traceback(tmp_path: Path) -> None:
    write(tmp_path, {"specs/wine.yaml": _bomb(14)})  # 4 * 8^13 values: would never finish expanding
    for verb in ("validate", "plan", "apply"):
        p = kiln(verb, cwd=tmp_path, timeout=60)
        out = p.stdout + p.stderr
        assert p.returncode == 1, (verb, out)
        assert "wine.yaml:1:1" in out and "expands to more than 100,000 values" in out, out
        assert "Traceback" not in out


def test_the_example_specs_are_well_within_the_limits() -> None:
    from tests.helpers import ROOT

    specs = load_specs(ROOT / "specs")
    assert specs.issues == [] and len(specs.specs) >= 10
