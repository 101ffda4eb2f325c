"""kiln.runners.registry: name -> runner class."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from kiln.errors import ConfigError
from kiln.runners.argo import ArgoConfig, ArgoRunner
from kiln.runners.base import Runner
from kiln.runners.registry import RUNNERS, get_runner, runner_class


def test_table() -> None:
    assert RUNNERS == {"local": "kiln.runners.local:LocalRunner", "argo": "kiln.runners.argo:ArgoRunner"}


def test_get_argo_runner_with_fields_or_config() -> None:
    r = get_runner("argo", namespace="ml", service_account="sa")
    assert isinstance(r, ArgoRunner) and r.config.namespace == "ml" and r.config.service_account == "sa"
    cfg = ArgoConfig(namespace="x")
    assert get_runner("argo", config=cfg).config is cfg


def test_unknown_runner_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        get_runner("kubeflow")
    assert "unknown runner 'kubeflow'" in str(err.value) and err.value.hint == "valid runners: local, argo"


@pytest.mark.skipif(importlib.util.find_spec("kiln.runners.local") is None, reason="local runner not merged yet")
def test_local_runner_resolves() -> None:
    cls = runner_class("local")
    assert issubclass(cls, Runner) and cls.__name__ == "LocalRunner"


def test_registry_import_does_not_load_kubernetes() -> None:
    import subprocess

    code = "import sys, kiln.runners.registry; print('kubernetes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
