"""Model registry on BentoML's store: versions, aliases, retention, audit log, export, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bentoml")
from click.testing import CliRunner  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

from kiln.bento.registry import Registry, default_home  # noqa: E402
from kiln.cli import cli  # noqa: E402
from kiln.errors import ConfigError, KilnError, NotFound  # noqa: E402


@pytest.fixture()
def reg(tmp_path: Path) -> Registry:
    return Registry(default_home(tmp_path))


@pytest.fixture(scope="module")
def tree():
    X, y = load_iris(return_X_y=True)
    return DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, y)


def _reg(r: Registry, tree, n: int = 1, **kw) -> list[int]:
    return [r.register("iris", tree, "sklearn", serving={"task": "classification", "input": "tabular",
                                                         "features": ["a", "b", "c", "d"]}, **kw) for _ in range(n)]


def test_versions_labels_metadata(reg: Registry, tree) -> None:
    v = _reg(reg, tree, labels={"experiment": "exp1", "dataset_version": "d41d8"},
             metadata={"metrics": {"accuracy": 0.95}, "params": {"max_depth": 2}}, tags=["baseline"],
             description="first")
    assert v == [1]
    assert _reg(reg, tree, 2) == [2, 3]
    assert reg.versions("iris") == [1, 2, 3]
    d = reg.describe("iris", 1)
    assert d["labels"] == {"experiment": "exp1", "dataset_version": "d41d8", "framework": "sklearn"}
    assert d["metadata"]["metrics"] == {"accuracy": 0.95}
    assert d["metadata"]["params"] == {"max_depth": 2}
    assert d["metadata"]["tags"] == ["baseline"] and d["metadata"]["description"] == "first"
    assert "model.joblib" in d["files"] and "kiln-serving.json" in d["files"]
    assert reg.describe("iris")["version"] == 3  # latest
    # it is BentoML's store: bentoml can read the model back
    import bentoml

    m = bentoml.models.get("iris:v2", _model_store=reg._store)
    assert m.info.labels["framework"] == "sklearn"


def test_aliases_and_resolve(reg: Registry, tree) -> None:
    _reg(reg, tree, 3)
    reg.set_alias("iris", "prod", 2)
    reg.set_alias("iris", "canary", 3)
    assert reg.resolve("iris", alias="prod") == 2
    assert reg.aliases("iris") == {"prod": 2, "canary": 3}
    reg.set_alias("iris", "prod", 3)  # move
    assert reg.resolve("iris", alias="prod") == 3
    with pytest.raises(NotFound, match="no version 9"):
        reg.set_alias("iris", "x", 9)
    with pytest.raises(NotFound, match="no alias 'nope'"):
        reg.resolve("iris", alias="nope")
    reg.delete_alias("iris", "canary")
    assert reg.aliases("iris") == {"prod": 3}
    # the alias file is valid JSON written by atomic replace (no temp files left behind)
    assert json.loads((reg.home / "kiln-registry.json").read_text())["aliases"]["iris"] == {"prod": 3}
    assert not list(reg.home.glob(".kiln-registry.json.*"))


def test_keep_versions_never_deletes_aliased_or_in_use(reg: Registry, tree) -> None:
    _reg(reg, tree, 6)
    reg.set_alias("iris", "prod", 1)
    deleted = reg.keep_versions("iris", 2, in_use={3})
    assert deleted == [2, 4]
    assert reg.versions("iris") == [1, 3, 5, 6]
    assert not (reg.home / "models" / "iris" / "v2").exists()
    with pytest.raises(KilnError, match="in use by alias prod"):
        reg.delete("iris", 1)
    with pytest.raises(KilnError, match="in use by a deployment"):
        reg.delete("iris", 3, in_use=[3])
    assert reg.keep_versions("iris", 0, in_use={5}) == [3, 6]
    assert reg.versions("iris") == [1, 5]
    # numbering continues after deletions: a version number is never reused
    assert _reg(reg, tree) == [7]


def test_audit_log(reg: Registry, tree) -> None:
    _reg(reg, tree, 2)
    reg.set_alias("iris", "prod", 2)
    assert reg.keep_versions("iris", 1) == [1]
    log = reg.audit_log()
    assert [(e["action"], e.get("version")) for e in log] == [
        ("register", 1), ("register", 2), ("set_alias", 2), ("delete", 1)]
    assert log[2]["alias"] == "prod"
    for e in log:
        assert e["who"] and e["time"].endswith("Z") and e["model"] == "iris"


def test_export_is_a_bentoml_archive(reg: Registry, tree, tmp_path: Path) -> None:
    _reg(reg, tree)
    out = reg.export("iris", 1, tmp_path / "out")
    assert out.name == "out.bentomodel" and out.exists() and out.stat().st_size > 0
    other = Registry(tmp_path / "other")
    import bentoml

    bentoml.models.import_model(str(out), _model_store=other._store)
    assert other.versions("iris") == [1]


def test_bad_names_and_frameworks(reg: Registry, tree) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        reg.register("Bad Name", tree, "sklearn")
    with pytest.raises(ConfigError, match="valid: onnx, sklearn, torch"):
        reg.register("iris", tree, "xgboost")
    with pytest.raises(NotFound, match="not registered"):
        reg.describe("ghost")
    assert reg.versions("iris") == []  # nothing half-written


def test_cli_models(tmp_path: Path, tree) -> None:
    reg = Registry(default_home(tmp_path))
    _reg(reg, tree, 2, labels={"experiment": "e1"})
    reg.set_alias("iris", "prod", 1)
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "models", "list"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("MODEL") and len(lines) == 3 and "prod" in lines[1] and "e1" in lines[1]
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "models", "describe", "iris", "--alias", "prod"])
    assert r.exit_code == 0 and json.loads(r.output)["version"] == 1
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "models", "export", "iris", "2", str(tmp_path / "x.bentomodel")])
    assert r.exit_code == 0 and (tmp_path / "x.bentomodel").exists()
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "models", "describe", "nope"])
    assert r.exit_code != 0 and isinstance(r.exception, NotFound) and "not registered" in str(r.exception)


def test_import_kiln_bento_is_cheap() -> None:
    code = "import sys, kiln.bento, kiln.bento.registry, kiln.bento.cli, kiln.bento.auth; " \
           "print(','.join(m for m in ('bentoml', 'torch', 'onnxruntime', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
