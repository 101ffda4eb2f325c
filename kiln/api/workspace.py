"""Workspace: members with roles, quotas and resource presets (Surromind groups, Flightbase
workspaces). Every other object lives in a workspace; ``default`` exists implicitly."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, model_validator

from kiln.api.common import Description, FieldProblem, Metadata, Model, Name, ResourceRequest, cpu_cores, memory_bytes

Role = Literal["admin", "developer", "annotator"]

# What each role may own or do. Annotators label; only developers and admins create the
# objects that consume compute or publish models (the source platforms' permission model).
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"own:Dataset", "own:Experiment", "own:Deployment", "own:LabelingJob",
                        "annotate", "review", "manage:Workspace"}),
    "developer": frozenset({"own:Dataset", "own:Experiment", "own:Deployment", "own:LabelingJob",
                            "annotate", "review"}),
    "annotator": frozenset({"annotate"}),
}


class Member(Model):
    user: str = Field(..., min_length=1, description="user id or e-mail, as known to Label Studio and git")
    role: Role = "developer"


class Preset(Model):
    """A named resource size (the source platforms' resource presets: GPU model/count, CPU, RAM)."""

    name: Name
    cpu: str = "1"
    memory: str = "2Gi"
    gpu: int = Field(0, ge=0)
    gpuModel: str | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _quantities(self) -> Preset:
        ResourceRequest(cpu=self.cpu, memory=self.memory)  # same checks as a request
        return self


class Quotas(Model):
    """Upper bounds for the workspace. Omitted means unlimited."""

    cpu: str | None = Field(None, description="total CPU of concurrently running jobs")
    memory: str | None = None
    trainingGpus: int | None = Field(None, ge=0, description="GPUs for training jobs at once")
    deploymentGpus: int | None = Field(None, ge=0, description="GPUs for deployments at once")
    maxConcurrentJobs: int | None = Field(None, ge=1)
    maxDeployments: int | None = Field(None, ge=0)
    maxExperiments: int | None = Field(None, ge=0)
    maxDatasets: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _quantities(self) -> Quotas:
        ResourceRequest(cpu=self.cpu, memory=self.memory)
        return self


class Period(Model):
    start: dt.date | None = None
    end: dt.date | None = None

    @model_validator(mode="after")
    def _order(self) -> Period:
        if self.start and self.end and self.end < self.start:
            raise FieldProblem("end is before start", "end", hint=f"give an end after {self.start}")
        return self


class WorkspaceSpec(Model):
    description: Description = None
    members: list[Member] = Field(default_factory=list)
    quotas: Quotas = Field(default_factory=Quotas)
    presets: list[Preset] = Field(default_factory=list)
    defaultPreset: Name | None = None
    period: Period | None = Field(None, description="period of use (Flightbase)")

    @model_validator(mode="after")
    def _consistent(self) -> WorkspaceSpec:
        seen: set[str] = set()
        for i, m in enumerate(self.members):
            if m.user in seen:
                raise FieldProblem(f"member {m.user!r} is listed twice", "members", i,
                                   hint="keep one entry per user, with one role")
            seen.add(m.user)
        names = [p.name for p in self.presets]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            again = next(i for i, n in enumerate(names) if n in names[:i])
            raise FieldProblem(f"preset {names[again]!r} is defined twice", "presets", again, "name",
                               hint="rename or remove one")
        if self.defaultPreset and self.defaultPreset not in names:
            from kiln._util.suggest import did_you_mean

            raise FieldProblem(f"defaultPreset {self.defaultPreset!r} is not one of the presets", "defaultPreset",
                               hint=did_you_mean(self.defaultPreset, names) or f"presets: {', '.join(names) or 'none'}")
        return self

    def role_of(self, user: str) -> str | None:
        return next((m.role for m in self.members if m.user == user), None)

    def may(self, user: str, permission: str) -> bool:
        role = self.role_of(user)
        return role is not None and permission in ROLE_PERMISSIONS[role]

    def preset(self, name: str) -> Preset | None:
        return next((p for p in self.presets if p.name == name), None)

    def resolve(self, req: ResourceRequest | None) -> Preset:
        """The effective size of a request: preset (named or default) overlaid by explicit fields."""
        req = req or ResourceRequest()
        base = self.preset(req.preset or self.defaultPreset or "") or Preset(name="default")
        return base.model_copy(update={k: v for k, v in {
            "cpu": req.cpu, "memory": req.memory, "gpu": req.gpu, "gpuModel": req.gpuModel,
        }.items() if v is not None})

    def quota_problems(self, size: Preset, count: int, *, deployment: bool = False) -> list[str]:
        """Why ``count`` units of ``size`` running at once would exceed the quotas (empty: fits)."""
        q, out = self.quotas, []
        if q.cpu is not None and cpu_cores(size.cpu) * count > cpu_cores(q.cpu):
            out.append(f"needs {cpu_cores(size.cpu) * count:g} CPU at once, quota is {q.cpu}")
        if q.memory is not None and memory_bytes(size.memory) * count > memory_bytes(q.memory):
            out.append(f"needs {count} x {size.memory} memory at once, quota is {q.memory}")
        gpus = q.deploymentGpus if deployment else q.trainingGpus
        if gpus is not None and size.gpu * count > gpus:
            which = "deploymentGpus" if deployment else "trainingGpus"
            out.append(f"needs {size.gpu * count} GPU at once, quota {which} is {gpus}")
        return out


class Workspace(Model):
    apiVersion: Literal["kiln.dev/v1alpha1"]
    kind: Literal["Workspace"]
    metadata: Metadata
    spec: WorkspaceSpec = Field(default_factory=WorkspaceSpec)
