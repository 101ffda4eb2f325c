"""A failed HPO study can be retried (#15): a new apply after the failure stop gets a fresh
failure budget and keeps the completed trials; a changed training script starts the search over.
Real applies of a `command` experiment on the wine dataset (DVC, Optuna, the local runner)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import kiln, write
from tests.test_experiment_handler import COMMAND_TRAIN, copy_repo, exp, record, wine_repo  # noqa: F401 - fixture

# fails from its second run on while jobs/broken exists (a missing file, a full disk: not the code)
FLAKY = ("import os, pathlib, sys\nhere = pathlib.Path(__file__).parent\nn = here / 'runs'\n"
         "runs = int(n.read_text()) if n.exists() else 0\nn.write_text(str(runs + 1))\n"
         "if runs >= 1 and (here / 'broken').exists():\n    sys.exit('boom: the disk is full')\n") + COMMAND_TRAIN

SPEC = """
mode: hpo
dataset: {name: wine}
command:
  run: python train.py
  workdir: jobs
  searchSpace: {C: {type: float, low: 0.01, high: 10, log: true}, max_iter: {type: choice, values: [300]}}
hpo: {maxTrials: 3, parallelTrials: 1, maxFailedTrials: 2, sampler: {type: random, seed: 1}}
"""


def _states(repo: Path) -> list[tuple[str, str]]:
    return [(t["id"], t["state"]) for t in record(repo, "search")["extra"]["trials"]]


def test_apply_after_failure_stop_gets_a_fresh_budget_and_keeps_completed_trials(wine_repo: Path,  # noqa: F811
                                                                                   tmp_path: Path) -> None:
    repo = copy_repo(wine_repo, tmp_path / "repo")
    write(repo, {"jobs/train.py": FLAKY, "jobs/broken": "", "specs/hpo.yaml": exp("search", SPEC)})
    first = kiln("apply", cwd=repo, timeout=300)
    assert first.returncode == 1 and "stopped after 2 failed trial(s)" in first.stdout + first.stderr
    assert _states(repo) == [("t0000", "COMPLETE"), ("t0001", "FAIL"), ("t0002", "FAIL")]
    (repo / "jobs/broken").unlink()  # the cause is fixed; the spec and the script are not changed
    assert "+ create    Experiment/search" in kiln("plan", cwd=repo, check=True).stdout  # tried again
    second = kiln("apply", cwd=repo, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    # t0000 kept; the failures of the first apply no longer count against maxTrials or the budget
    assert _states(repo) == [("t0000", "COMPLETE"), ("t0001", "FAIL"), ("t0002", "FAIL"),
                             ("t0003", "COMPLETE"), ("t0004", "COMPLETE")]
    assert record(repo, "search")["extra"]["best"]["trial"] in ("t0000", "t0003", "t0004")


def test_a_changed_script_starts_the_search_over(wine_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    repo = copy_repo(wine_repo, tmp_path / "repo")
    write(repo, {"jobs/train.py": "import sys\nsys.exit('boom: a bug')\n", "specs/hpo.yaml": exp("search", SPEC)})
    assert kiln("apply", cwd=repo, timeout=300).returncode == 1
    assert _states(repo) == [("t0000", "FAIL"), ("t0001", "FAIL")]
    write(repo, {"jobs/train.py": COMMAND_TRAIN})  # the bug fixed
    res = kiln("apply", cwd=repo, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    # trials of the old script count for nothing and are not listed; three new ones ran
    assert _states(repo) == [("t0002", "COMPLETE"), ("t0003", "COMPLETE"), ("t0004", "COMPLETE")]
    assert "the training code changed" in kiln("logs", "Experiment/search", cwd=repo, check=True).stdout
