"""Name -> runner class, the one registry of workflow runners.

kiln.yaml's ``runner:`` picks an entry by name. Classes are referenced as ``module:Class`` strings
and imported only when asked for, so ``kiln`` does not import the ``kubernetes`` client unless the
argo runner is actually used.
"""

from __future__ import annotations

import importlib
from typing import Any

from kiln.errors import ConfigError
from kiln.runners.base import Runner

RUNNERS: dict[str, str] = {
    "local": "kiln.runners.local:LocalRunner",
    "argo": "kiln.runners.argo:ArgoRunner",
}


def runner_class(name: str) -> type[Runner]:
    """The class registered as ``name``; ConfigError listing the valid names if there is none."""
    try:
        target = RUNNERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown runner {name!r}", hint=f"valid runners: {', '.join(RUNNERS)}") from None
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise TypeError(f"{target} is not a Runner subclass")
    return cls


def get_runner(name: str, **kwargs: Any) -> Runner:
    """Instantiate the runner ``name`` with ``kwargs`` (e.g. ``workdir=`` for local, ``config=`` for argo)."""
    return runner_class(name)(**kwargs)
