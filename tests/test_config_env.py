"""Environment variables override single kiln.yaml settings (what the Helm chart's ConfigMap sets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import ENV_OVERRIDES, load_config
from kiln.errors import ConfigError


def test_env_overrides_settings_and_keeps_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kiln.yaml").write_text("argo: {namespace: ml, kubeconfig: /k}\nlabelStudio: {tokenEnv: LS_TOK}\n")
    for var in ENV_OVERRIDES:
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(tmp_path)
    assert (cfg.runner, cfg.argo, cfg.dvc.remote) == ("local", {"namespace": "ml", "kubeconfig": "/k"}, None)
    monkeypatch.setenv("KILN_RUNNER", "argo")
    monkeypatch.setenv("KILN_DVC_REMOTE", "s3://bucket/dvc")
    monkeypatch.setenv("KILN_LABEL_STUDIO_URL", "http://label-studio:8080")
    monkeypatch.setenv("KILN_ARGO_NAMESPACE", "argo")
    monkeypatch.setenv("KILN_ARGO_IN_CLUSTER", "TRUE")
    monkeypatch.setenv("KILN_IMAGE", "registry.example.com/kiln:1")
    cfg = load_config(tmp_path)
    assert cfg.runner == "argo" and cfg.image == "registry.example.com/kiln:1"
    assert cfg.argo == {"namespace": "argo", "kubeconfig": "/k", "inCluster": True}
    assert cfg.dvc.remote == "s3://bucket/dvc"
    assert (cfg.labelStudio.url, cfg.labelStudio.tokenEnv) == ("http://label-studio:8080", "LS_TOK")


def test_bad_env_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_ARGO_IN_CLUSTER", "maybe")
    with pytest.raises(ConfigError, match="KILN_ARGO_IN_CLUSTER='maybe' is not a boolean"):
        load_config(tmp_path)
    monkeypatch.setenv("KILN_ARGO_IN_CLUSTER", "false")
    monkeypatch.setenv("KILN_RUNNER", "slurm")
    with pytest.raises(ConfigError, match="runner"):
        load_config(tmp_path)


def test_dataset_source_settings_come_from_kiln_yaml_or_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_OVERRIDES:
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "kiln.yaml").write_text("datasets: {allowFileUrls: true, maxArchiveMembers: 10}\n")
    d = load_config(tmp_path).datasets
    assert (d.allowFileUrls, d.allowPrivateNetworks, d.maxArchiveMembers, d.maxArchiveBytes) == (True, False, 10, 20 << 30)
    monkeypatch.setenv("KILN_DATASETS_ALLOW_FILE_URLS", "no")
    monkeypatch.setenv("KILN_DATASETS_ALLOW_PRIVATE_NETWORKS", "yes")
    d = load_config(tmp_path).datasets
    assert (d.allowFileUrls, d.allowPrivateNetworks, d.maxArchiveMembers) == (False, True, 10)
    monkeypatch.setenv("KILN_DATASETS_ALLOW_PRIVATE_NETWORKS", "sure")
    with pytest.raises(ConfigError, match="KILN_DATASETS_ALLOW_PRIVATE_NETWORKS='sure' is not a boolean"):
        load_config(tmp_path)
