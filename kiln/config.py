"""Repository configuration: ``kiln.yaml`` at the repository root, overridden by environment.

Everything has an embedded default (local runner, SQLite under ``.kiln/``, a local DVC remote),
so a repository without ``kiln.yaml`` works. Secrets are never read from this file: it names
environment variables or secrets that hold them.

Example::

    specs: specs                  # folder of spec files
    templates: specs/templates    # hydra templates (skipped by the spec loader)
    state: sqlite:///.kiln/state.db   # or postgresql+psycopg2://user@host/db (env KILN_STATE_URL)
    runner: local                 # or argo (env KILN_RUNNER)
    image: ghcr.io/kiln-dev/kiln:0.1.0
    argo: {namespace: argo, serviceAccount: kiln}
    labelStudio: {url: http://127.0.0.1:8080, tokenEnv: LABEL_STUDIO_TOKEN, documentRoot: /srv}
    notifications: {webhook: https://hooks.example.com/kiln}   # or {webhookEnv: KILN_WEBHOOK_URL}
    datasets: {allowPrivateNetworks: false, maxArchiveBytes: 21474836480}   # what sources may reach
    gc: {keepRuns: 3, afterApply: false}   # kiln gc: newest runs kept per experiment
    policy: {admins: [ops@example.com], requireSignedCommits: false}   # who may change what (docs/security.md)
    localRunner: {foreignImages: refuse}   # or host: run command.image steps in kiln's own environment
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kiln.errors import ConfigError

CONFIG_FILE = "kiln.yaml"
DEFAULT_IMAGE = "ghcr.io/kiln-dev/kiln:0.1.0"

# Environment variable -> the kiln.yaml setting it overrides (a path of keys). This is how a
# deployment (the Helm chart's ConfigMap, a CI job) configures kiln without editing the repository.
# KILN_STATE_URL is read by ``KilnConfig.state_url`` (it may hold a password, so it is never copied
# into the config object); the Label Studio token is read from ``labelStudio.tokenEnv``.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "KILN_RUNNER": ("runner",),
    "KILN_IMAGE": ("image",),
    "KILN_DVC_REMOTE": ("dvc", "remote"),
    "KILN_LABEL_STUDIO_URL": ("labelStudio", "url"),
    "KILN_ARGO_NAMESPACE": ("argo", "namespace"),
    "KILN_ARGO_SERVICE_ACCOUNT": ("argo", "serviceAccount"),
    "KILN_ARGO_IN_CLUSTER": ("argo", "inCluster"),
    "KILN_DATASETS_ALLOW_FILE_URLS": ("datasets", "allowFileUrls"),
    "KILN_DATASETS_ALLOW_PRIVATE_NETWORKS": ("datasets", "allowPrivateNetworks"),
}
# settings whose environment value is read as a boolean (true/false, 1/0, yes/no)
_BOOL_SETTINGS = {"inCluster", "allowFileUrls", "allowPrivateNetworks"}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelStudioConfig(_Section):
    """A Label Studio server kiln does not start itself. Without this section kiln uses the one
    ``kiln labelstudio start`` runs (``.kiln/labelstudio.json``)."""

    url: str = "http://127.0.0.1:8080"
    tokenEnv: str = "LABEL_STUDIO_TOKEN"
    documentRoot: str | None = Field(
        None, description="the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT as this machine sees it "
                          "(default: the repository root); dataset folders must lie under it")


class DatasetsConfig(_Section):
    """What a Dataset's source may reach (docs/security.md, finding 3). A spec is written by
    whoever can open a pull request; these settings belong to whoever runs kiln."""

    allowFileUrls: bool = Field(
        False, description="file:// URLs and source.archive paths outside the repository "
                           "(any file the applying user can read)")
    allowPrivateNetworks: bool = Field(
        False, description="http(s) hosts on loopback or private networks (RFC 1918, fc00::/7); "
                           "link-local, unspecified and multicast addresses are never fetched")
    maxDownloadBytes: int = Field(20 << 30, ge=1, description="largest download (default 20 GiB)")
    maxArchiveBytes: int = Field(20 << 30, ge=1, description="largest total extracted size (default 20 GiB)")
    maxArchiveMembers: int = Field(1_000_000, ge=1, description="most members of an archive")
    maxExpansionRatio: float = Field(200, gt=0, description="extracted size / archive size at most")


class LocalRunnerConfig(_Section):
    """What the local runner does with a step that names its own image (``command.image``): it runs
    no containers, so by default it refuses the run (one line naming ``runner: argo``); ``host``
    runs the step in kiln's own environment instead, with a warning, for a quick try of code whose
    dependencies this machine already has."""

    foreignImages: Literal["refuse", "host"] = "refuse"


class DvcConfig(_Section):
    remote: str | None = Field(None, description="remote URL; default: <repo>/.kiln/dvc-remote")


def _check_http_url(value: str | None) -> str | None:
    from urllib.parse import urlsplit

    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s):// URL, got {value!r}")
    return value


class NotificationsConfig(_Section):
    """Where ``kiln controller`` POSTs a JSON event when an Experiment, LabelingJob or Deployment
    becomes Ready or Stalled, and when a commit is invalid. Chat webhook URLs embed a secret: keep
    them out of git with ``webhookEnv`` (the environment variable holding the URL)."""

    webhook: str | None = None
    webhookEnv: str | None = None

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _check_http_url(value)

    def url(self) -> str | None:
        """The webhook URL, or None when none is configured (an unset ``webhookEnv`` included)."""
        if self.webhook:
            return self.webhook
        return _check_http_url(os.environ.get(self.webhookEnv) or None) if self.webhookEnv else None


class GcConfig(_Section):
    """What ``kiln gc`` keeps (see controller/gc.py). Runs a record or a registered model version
    refers to are kept whatever the number."""

    keepRuns: int = Field(3, ge=1, description="newest runs kept per experiment (the recorded one always)")
    afterApply: bool = Field(False, description="collect after every kiln apply, under its lock")


class PolicyConfig(_Section):
    """Who may change what (``kiln.controller.policy``, docs/security.md). With this section in
    kiln.yaml, ``kiln controller`` checks every commit range before applying it; ``kiln plan
    --policy`` checks whether the section is there or not. Read from the range's base commit,
    never from the change under check, so a commit cannot make its author an admin."""

    admins: list[str] = Field(default_factory=list, description="platform admins (git author e-mails): "
                              "create Workspaces, change kiln.yaml and CODEOWNERS, and see everything")
    requireSignedCommits: bool = Field(False, description="every commit of a range must pass `git verify-commit` "
                                       "(signed by its author's key, as the git configuration trusts it)")

    def is_admin(self, user: str | None) -> bool:
        return user is not None and user.strip().lower() in {a.strip().lower() for a in self.admins}


class CapacityConfig(_Section):
    """This machine's capacity for the local runner's resource queue; a field left out is
    detected (CPUs from the process's affinity, memory from the OS, GPUs via NVML)."""

    cpu: str | None = Field(None, pattern=r"^\d+(\.\d+)?m?$", description="CPUs, like 8 or 7500m")
    memory: str | None = Field(None, pattern=r"^\d+(\.\d+)?([KMGT]i?)?$", description="like 32Gi")
    gpus: int | None = Field(None, ge=0)


class KilnConfig(_Section):
    specs: str | None = None
    templates: str | None = None
    state: str | None = None
    runner: Literal["local", "argo"] = "local"
    image: str = DEFAULT_IMAGE
    concurrency: int | None = Field(None, ge=1, description="machine-wide step limit of the local runner")
    capacity: CapacityConfig = Field(default_factory=CapacityConfig)
    argo: dict[str, Any] = Field(default_factory=dict)
    labelStudio: LabelStudioConfig = Field(default_factory=LabelStudioConfig)
    dvc: DvcConfig = Field(default_factory=DvcConfig)
    datasets: DatasetsConfig = Field(default_factory=DatasetsConfig)
    historyLimit: int = Field(20, ge=1)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    gc: GcConfig = Field(default_factory=GcConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    localRunner: LocalRunnerConfig = Field(default_factory=LocalRunnerConfig)

    # Resolved paths (not read from the file).
    repo: Path = Field(default=Path("."), exclude=True)

    def specs_dir(self) -> Path:
        if self.specs:
            return self.repo / self.specs
        return self.repo / "specs" if (self.repo / "specs").is_dir() else self.repo

    def templates_dir(self) -> Path:
        return self.repo / self.templates if self.templates else self.specs_dir() / "templates"

    def state_url(self) -> str | None:
        """None means the default SQLite file under ``.kiln/`` (see ``kiln.state.open_store``)."""
        return os.environ.get("KILN_STATE_URL") or self.state

    def kiln_dir(self) -> Path:
        return self.repo / ".kiln"

    def policy_enforced(self) -> bool:
        """Whether kiln.yaml has a ``policy`` section (then ``kiln controller`` enforces it)."""
        return "policy" in self.model_fields_set


def load_config(repo: str | os.PathLike[str]) -> KilnConfig:
    repo = Path(repo).resolve()
    path = repo / CONFIG_FILE
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
    for var, keys in ENV_OVERRIDES.items():
        value: Any = os.environ.get(var)
        if not value:
            continue
        if keys[-1] in _BOOL_SETTINGS:
            if value.lower() not in _BOOLS:
                raise ConfigError(f"{var}={value!r} is not a boolean", hint="use true or false")
            value = _BOOLS[value.lower()]
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    try:
        cfg = KilnConfig.model_validate(data)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {msgs}", hint="see the settings documented in README.md") from None
    cfg.repo = repo
    return cfg


def repo_root(start: str | os.PathLike[str], default: Path | None = None) -> Path | None:
    """The kiln repository holding ``start`` (a file or folder): the nearest folder at or above
    it with ``kiln.yaml``, a ``.kiln/`` folder or ``.git``; ``default`` when there is none.

    Why these three: ``kiln.yaml`` is the repository's own config and sits at its root; a
    repository without one (it is optional) still has ``.kiln/`` at its root once kiln has run
    there (state, model store), which also finds a kiln project in a subfolder of a larger git
    repository; ``.git`` (a folder, or a file in a worktree or submodule) covers a fresh
    checkout. The nearest wins, so a project's own markers beat an enclosing git repository.
    (Dataset folders keep lineage in a ``.kiln/`` of their own, but specs never live there.)
    """
    here = Path(start).resolve()
    if not here.is_dir():
        here = here.parent
    for p in (here, *here.parents):
        if (p / CONFIG_FILE).is_file() or (p / ".kiln").is_dir() or (p / ".git").exists():
            return p
    return default
