"""The CI examples: the GitHub workflow and docs/ci.md's .gitlab-ci.yml validate against the
schemas check-jsonschema vendors (GitHub's and GitLab's published ones), and the workflow's
"changed experiments" step, run as bash in a real git repository, picks exactly the experiments a
branch changed (through a template too)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "kiln.yml"


def _check(schema: str, path: Path) -> None:
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (the test extra)")
    p = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_workflow_matches_githubs_schema() -> None:
    _check("vendor.github-workflows", WORKFLOW)


def test_workflow_jobs_and_secrets() -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as true
    assert set(on) == {"pull_request", "issue_comment", "push"}
    assert set(wf["jobs"]) == {"plan", "train", "apply"}
    text = WORKFLOW.read_text()
    # Secrets only through ${{ secrets.X }} into env, never echoed or put on a command line.
    for line in text.splitlines():
        if "secrets." in line:
            assert re.match(r"\s+[A-Z_]+: \$\{\{ secrets\.[A-Z_]+ \}\}$", line), line
    run = " ".join(s.get("run", "") for j in wf["jobs"].values() for s in j["steps"])
    assert "kiln validate" in run and "kiln plan --format markdown" in run
    assert "kiln report --base" in run and "kiln apply --wait-lock" in run
    assert '--target "$t"' in run


def test_gitlab_example_matches_gitlabs_schema(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "ci.md").read_text()
    block = re.search(r"```yaml\n(# \.gitlab-ci\.yml\n.*?)\n```\n", doc, re.S)
    assert block, "docs/ci.md has no .gitlab-ci.yml example"
    f = tmp_path / ".gitlab-ci.yml"
    f.write_text(block.group(1))
    _check("vendor.gitlab-ci", f)
    ci = yaml.safe_load(block.group(1))
    assert ci["kiln-train"]["rules"][0]["when"] == "manual"
    assert ci["kiln-apply"]["rules"][0]["if"] == "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_changed_experiments_step_picks_what_the_branch_changed(tmp_path: Path) -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    step = next(s for s in wf["jobs"]["train"]["steps"] if s.get("id") == "changed")
    origin, repo = tmp_path / "origin.git", tmp_path / "repo"
    _git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    _git(tmp_path, "clone", "-q", str(origin), str(repo))
    shutil.copytree(ROOT / "specs", repo / "specs")
    for k, v in {"user.email": "ci@example.com", "user.name": "ci"}.items():
        _git(repo, "config", k, v)
    _git(repo, "checkout", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "base")
    _git(repo, "push", "-q", "origin", "main")
    bin_dir = tmp_path / "bin"  # `kiln` as installed by pip: this interpreter's kiln.cli
    bin_dir.mkdir()
    (bin_dir / "kiln").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m kiln.cli "$@"\n')
    (bin_dir / "kiln").chmod(0o755)

    def changed(name: str) -> list[str]:
        runner_temp = tmp_path / f"rt-{name}"
        runner_temp.mkdir()
        out = tmp_path / f"out-{name}"
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "BASE": "main",
               "RUNNER_TEMP": str(runner_temp), "GITHUB_OUTPUT": str(out)}
        p = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        line = next(x for x in out.read_text().splitlines() if x.startswith("targets="))
        return line.removeprefix("targets=").split()

    _git(repo, "checkout", "-q", "-b", "pr1")
    assert changed("same") == []  # nothing changed yet
    exp = repo / "specs/experiments/wine-automl.yaml"
    exp.write_text(exp.read_text().replace("      - {name: svm}\n", ""))
    (repo / "specs/README.md").write_text("notes only\n")
    _git(repo, "commit", "-qam", "drop svm")
    assert changed("one") == ["Experiment/wine-automl"]
    # A template edit changes the composed spec of the experiment built from it.
    tpl = repo / "specs/templates/image-classification.yaml"
    tpl.write_text(tpl.read_text().replace("learning_rate: 0.01", "learning_rate: 0.02"))
    _git(repo, "commit", "-qam", "lr")
    assert sorted(changed("tpl")) == ["Experiment/vision/digits-resnet", "Experiment/wine-automl"]
