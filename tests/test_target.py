"""`kiln plan/apply --target KIND/NAME`: only the named objects and what they depend on (how CI
trains just the experiments a pull request changed)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import example_repo, kiln, write

WS = """
apiVersion: kiln.dev/v1alpha1
kind: Workspace
metadata: {name: NAME}
spec:
  members:
    - {user: ada@example.com, role: admin}
"""


def _planned(repo: Path, *targets: str) -> dict[str, str]:
    args = [a for t in targets for a in ("--target", t)]
    out = json.loads(kiln("plan", "--format", "json", *args, cwd=repo, check=True).stdout)
    return {c["ref"]: c["action"] for c in out["changes"]}


def test_target_selects_object_and_its_dependencies(tmp_path: Path) -> None:
    repo = example_repo(tmp_path)
    everything = _planned(repo)
    assert len(everything) > 4
    # An experiment in the default workspace needs only the dataset it trains on.
    assert _planned(repo, "Experiment/wine-automl") == {"Dataset/wine": "create", "Experiment/wine-automl": "create"}
    # One in another workspace also needs that workspace; its own dataset lives there.
    assert _planned(repo, "Experiment/vision/digits-resnet") == {
        "Workspace/vision": "create", "Dataset/vision/digits": "create", "Experiment/vision/digits-resnet": "create"}
    # Repeatable; KIND/NAME finds a unique name in any workspace; dependencies come first.
    both = kiln("plan", "--format", "json", "--target", "experiment/digits-resnet", "--target",
                "Experiment/wine-automl", cwd=repo, check=True).stdout
    refs = [c["ref"] for c in json.loads(both)["changes"]]
    assert set(refs) == {"Workspace/vision", "Dataset/vision/digits", "Experiment/vision/digits-resnet",
                         "Dataset/wine", "Experiment/wine-automl"}
    assert refs.index("Dataset/wine") < refs.index("Experiment/wine-automl")
    assert refs.index("Workspace/vision") < refs.index("Dataset/vision/digits") < refs.index(
        "Experiment/vision/digits-resnet")
    # A deployment that names a registered model (not an experiment) needs only its workspace.
    assert _planned(repo, "Deployment/vision/digits-classifier") == {
        "Workspace/vision": "create", "Deployment/vision/digits-classifier": "create"}


def test_unknown_target_lists_what_exists(tmp_path: Path) -> None:
    repo = example_repo(tmp_path)
    p = kiln("apply", "--target", "Experiment/nope", cwd=repo)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "--target Experiment/nope: no spec defines Experiment/default/nope" in p.stderr
    assert "Experiment/wine-automl" in p.stderr
    assert not (repo / ".kiln/state.db").exists()
    bad = kiln("plan", "--target", "wine", cwd=repo)
    assert bad.returncode == 1 and "KIND/NAME or KIND/WORKSPACE/NAME" in bad.stderr


def test_apply_target_applies_only_the_selection(tmp_path: Path) -> None:
    write(tmp_path, {"specs/team.yaml": WS.replace("NAME", "team"), "specs/other.yaml": WS.replace("NAME", "other")})
    out = kiln("apply", "--target", "Workspace/team", cwd=tmp_path, check=True).stdout
    assert "Workspace/team: create" in out and "other" not in out
    assert (tmp_path / ".kiln/workspaces/team").is_dir()
    assert not (tmp_path / ".kiln/workspaces/other").exists()
    # The object not selected is still to create; the applied one is done.
    assert _planned(tmp_path) == {"Workspace/other": "create", "Workspace/team": "unchanged"}
    # Targeting never prunes or notes objects outside the selection, even with --prune.
    (tmp_path / "specs/team.yaml").unlink()
    out = kiln("apply", "--prune", "--target", "Workspace/other", cwd=tmp_path, check=True).stdout
    assert "Workspace/other: create" in out and "team" not in out
    assert (tmp_path / ".kiln/workspaces/team").is_dir()


def test_prune_with_target_prunes_only_within_the_targets(tmp_path: Path) -> None:
    names = ("team", "other", "third")
    write(tmp_path, {f"specs/{n}.yaml": WS.replace("NAME", n) for n in names})
    kiln("apply", cwd=tmp_path, check=True)
    for n in ("team", "other"):
        (tmp_path / f"specs/{n}.yaml").unlink()
    # a target may name an object whose spec was removed: planned for deletion with --prune only
    kept = kiln("plan", "--target", "Workspace/team", cwd=tmp_path, check=True).stdout
    assert "Workspace/team  [spec removed; kept until you apply with --prune]" in kept
    planned = json.loads(kiln("plan", "--prune", "--format", "json", "--target", "Workspace/team",
                              cwd=tmp_path, check=True).stdout)
    assert [(c["action"], c["ref"]) for c in planned["changes"]] == [("delete", "Workspace/team")]
    out = kiln("apply", "--prune", "--target", "Workspace/team", cwd=tmp_path, check=True).stdout
    assert "- Workspace/team: delete" in out and "1 deleted" in out and "other" not in out
    assert not (tmp_path / ".kiln/workspaces/team").exists()
    assert (tmp_path / ".kiln/workspaces/other").is_dir()  # removed too, but not targeted: kept
    assert _planned(tmp_path) == {"Workspace/other": "unchanged", "Workspace/third": "unchanged"}
    # the name of an object that neither a spec nor the state knows is still an error
    p = kiln("apply", "--prune", "--target", "Workspace/team", cwd=tmp_path)
    assert p.returncode == 1 and "--target Workspace/team: no spec defines Workspace/default/team" in p.stderr
