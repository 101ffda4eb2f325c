"""One way to name an object on every verb (``kiln.api.refs``): KIND/WORKSPACE/NAME, WORKSPACE/NAME and
NAME where the verb implies the kind, ``-w WORKSPACE`` everywhere; clear errors for an ambiguous or
malformed name. The verbs run in-process (``kiln.cli.main``) on one small applied repository with
a dataset ``iris`` in two workspaces and ``wine`` in the default one."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.api.refs import Ref, find_key, parse_ref
from kiln.cli import main
from kiln.errors import ConfigError, NotFound
from tests.helpers import kiln, write
from tests.test_experiment_handler import git_repo

pytest.importorskip("dvc")

WS = "apiVersion: kiln.dev/v1alpha1\nkind: Workspace\nmetadata: {{name: {name}}}\nspec: {{}}\n"
DS = """apiVersion: kiln.dev/v1alpha1
kind: Dataset
metadata: {{name: {name}, workspace: {ws}}}
spec: {{type: tabular, task: classification, source: {{sample: {name}}}}}
"""
KEYS = ["Dataset/vision/iris", "Dataset/team/iris", "Dataset/default/wine", "Workspace/default/team"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = git_repo(tmp_path_factory.mktemp("addressing") / "repo")
    write(root, {"specs/ws.yaml": WS.format(name="vision") + "---\n" + WS.format(name="team"),
                 "specs/vision.yaml": DS.format(name="iris", ws="vision"),
                 "specs/team.yaml": DS.format(name="iris", ws="team"),
                 "specs/wine.yaml": DS.format(name="wine", ws="default")})
    kiln("apply", cwd=root, check=True, timeout=300)
    return root


@pytest.fixture
def run(repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.chdir(repo)

    def go(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err
    return go


def test_parse_every_form() -> None:
    assert parse_ref("Dataset/vision/iris") == Ref("Dataset", "vision", "iris")
    assert parse_ref("datasets/iris") == Ref("Dataset", None, "iris")
    assert parse_ref("Dataset/iris", workspace="vision") == Ref("Dataset", "vision", "iris")
    # where the verb implies the kind
    assert parse_ref("iris", kind="Dataset") == Ref("Dataset", None, "iris")
    assert parse_ref("vision/iris", kind="Dataset") == Ref("Dataset", "vision", "iris")
    assert parse_ref("dataset/vision/iris", kind="Dataset") == Ref("Dataset", "vision", "iris")
    assert parse_ref("iris", kind="Dataset", workspace="vision").key == "Dataset/vision/iris"
    assert parse_ref("iris", kind="Dataset").key == "Dataset/default/iris"


@pytest.mark.parametrize("text,kind,workspace,message", [
    ("iris", None, None, "cannot read 'iris' as an object name: it names no kind"),
    ("vision/iris", None, None, "cannot read 'vision/iris' as an object name: it does not start with a kind"),
    ("Dataset//iris", None, None, "cannot read 'Dataset//iris' as an object name"),
    ("Dataset/a/b/c", None, None, "cannot read 'Dataset/a/b/c' as an object name"),
    ("Experiment/x", "Dataset", None, "'Experiment/x' names a Experiment; this command takes a Dataset"),
    ("a/b/c", "Dataset", None, "cannot read 'a/b/c' as a Dataset name: 'a' is not a kind"),
    ("vision/iris", "Dataset", "team", "'vision/iris' is in workspace vision, but -w says team"),
    ("Dataset/Iris", None, None, "'Iris' is not a name"),
])
def test_malformed_names_say_what_to_write(text: str, kind: str | None, workspace: str | None, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_ref(text, kind=kind, workspace=workspace)
    assert message in e.value.message and e.value.hint  # one line, and what to write instead


def test_resolve_default_then_the_only_workspace_else_ambiguous() -> None:
    assert find_key("Dataset/wine", KEYS) == "Dataset/default/wine"
    assert find_key("Dataset/iris", KEYS, workspace="team") == "Dataset/team/iris"
    assert find_key("iris", [*KEYS, "Dataset/default/iris"], kind="Dataset") == "Dataset/default/iris"
    assert find_key("Dataset/iris", KEYS[:1]) == "Dataset/vision/iris"  # the only one
    with pytest.raises(NotFound) as e:
        find_key("Dataset/iris", KEYS)
    assert e.value.message == "Dataset/iris is ambiguous: Dataset/team/iris, Dataset/vision/iris"
    assert e.value.hint == "name the workspace: KIND/WORKSPACE/NAME or -w WORKSPACE"
    with pytest.raises(NotFound) as e:
        find_key("Dataset/wine", KEYS, workspace="vision")
    assert e.value.message == "no Dataset/vision/wine"
    assert e.value.hint == "Dataset objects: Dataset/team/iris, Dataset/vision/iris, Dataset/wine"


def test_describe_get_render_logs(run) -> None:
    for args in (["Dataset/vision/iris"], ["Dataset/iris", "-w", "vision"], ["dataset/iris", "--workspace", "vision"]):
        code, out, _ = run("describe", *args)
        assert code == 0 and "Name:         iris\n" in out and "Workspace:    vision\n" in out
    code, _, err = run("describe", "Dataset/iris")
    assert code == 1 and "error: Dataset/iris is ambiguous: Dataset/team/iris, Dataset/vision/iris" in err
    code, _, err = run("describe", "Dataset/wine", "-w", "team")
    assert code == 1 and "error: Dataset/team/wine has not been applied" in err
    for args in (["vision/iris"], ["iris", "-w", "vision"], ["Dataset/vision/iris"]):
        code, out, _ = run("get", "dataset", *args, "-o", "json")
        assert code == 0 and '"key": "Dataset/vision/iris"' in out
    code, out, _ = run("get", "datasets", "-w", "team")
    assert code == 0 and "team" in out and "vision" not in out and "wine" not in out
    code, _, err = run("get", "dataset", "Experiment/x")
    assert code == 1 and "'Experiment/x' names a Experiment; this command takes a Dataset" in err
    code, out, _ = run("render", "Dataset/iris", "-w", "team", "--what", "spec")
    assert code == 0 and "workspace: team" in out
    code, out, _ = run("logs", "Dataset/iris", "-w", "vision")
    assert code == 0 and out.strip()
    code, _, err = run("logs", "Dataset/iris")
    assert code == 1 and "ambiguous" in err


def test_data_infer_predict_tokens(run) -> None:
    for args in (["iris", "-w", "vision"], ["vision/iris"], ["Dataset/vision/iris"]):
        code, out, _ = run("data", "versions", *args)
        assert code == 0 and "dataset vision/iris: 1 version(s)" in out
    code, out, _ = run("data", "versions", "wine")  # the default workspace's
    assert code == 0 and "dataset default/wine: 1 version(s)" in out
    code, _, err = run("data", "versions", "iris")
    assert code == 1 and "Dataset/iris is ambiguous" in err and "-w WORKSPACE" in err
    code, _, err = run("data", "diff", "team/iris", "v1", "v1", "-w", "vision")
    assert code == 1 and "'team/iris' is in workspace team, but -w says vision" in err
    # infer finds the dataset first: with -w, the error is about the (missing) model
    code, _, err = run("infer", "nomodel", "iris")
    assert code == 1 and "Dataset/iris is ambiguous" in err
    code, _, err = run("infer", "nomodel", "iris@v1", "-w", "team")
    assert code == 1 and "ambiguous" not in err and "nomodel" in err
    code, _, err = run("predict", "Deployment/vision/api", "--json", "{}")
    assert code == 1 and "Deployment/vision/api is not running here" in err
    code, _, err = run("predict", "api", "-w", "vision", "--json", "{}")
    assert code == 1 and "Deployment/vision/api is not running here" in err
    for args in (["vision/api"], ["api", "-w", "vision"], ["Deployment/vision/api"]):
        code, out, _ = run("deployments", "token", "list", *args)
        assert code == 0 and "deployment vision/api has no tokens" in out
    code, _, err = run("deployments", "token", "create", "api", "-w", "vision")
    assert code == 1 and "no applied Deployment vision/api" in err


def test_target_with_workspace_option(run) -> None:
    code, out, _ = run("plan", "--target", "Dataset/iris", "-w", "team", "-v", "--format", "json")
    assert code == 0 and '"ref": "Dataset/team/iris"' in out and "vision" not in out
    code, _, err = run("plan", "--target", "Dataset/iris")
    assert code == 1 and "--target Dataset/iris: Dataset/iris is ambiguous" in err
