"""Fields shared by every kind: metadata, references, resources.

Purely data: pydantic models and their validators, no I/O. Unknown fields are errors everywhere
(``extra="forbid"``) so that a typo such as ``maxTrails`` is reported rather than ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

API_VERSION = "kiln.dev/v1alpha1"

# DNS-1123 label: the name becomes part of workflow, project and service names.
NAME_RE = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=NAME_RE, description="lower-case letters, digits and '-', at most 63")]

# A container image address as `docker pull` takes it: [registry/]path[:tag][@sha256:digest]. Checked
# here so a typo is a validation error naming the field, not a pod stuck in ImagePullBackOff.
IMAGE_RE = r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"


def _image_ref(v: str) -> str:
    if len(v) > 255 or not re.match(IMAGE_RE, v):
        raise ValueError(f"{v!r} is not an image address: write it as `docker pull` takes it, e.g. "
                         "ghcr.io/acme/train:1.4 or ghcr.io/acme/train@sha256:<digest> (lower-case, no spaces)")
    return v


ImageRef = Annotated[str, AfterValidator(_image_ref),
                     # the pattern for editors only: the validator above says what is wrong in words
                     Field(description="image address, e.g. ghcr.io/acme/train:1.4 or ...@sha256:<digest>",
                           json_schema_extra={"pattern": IMAGE_RE, "maxLength": 255})]

# Every kind's ``spec.description`` (Workspace and Dataset had it first, in spec; the others follow
# them there rather than in metadata, so one path holds it for every kind).
Description = Annotated[str | None, Field(description="free text on what the object is for; shown by "
                                                      "`kiln describe` and `kiln get -o json`")]

# Kubernetes quantities: "500m", "2", "4Gi", "512Mi".
_CPU_RE = re.compile(r"^\d+(\.\d+)?m?$")
_MEM_RE = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_MEM_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def cpu_cores(q: str | float | int) -> float:
    s = str(q)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def memory_bytes(q: str | int) -> int:
    m = re.match(r"^(\d+(?:\.\d+)?)([KMGT]i?)?$", str(q))
    if not m:
        raise ValueError(f"not a memory quantity: {q!r}")
    return int(float(m.group(1)) * _MEM_UNITS[m.group(2) or ""])


def _quantity(v: Any, pattern: re.Pattern[str], expected: str) -> Any:
    """A Kubernetes-style quantity as a string (YAML may give ``2`` or ``0.5``); None passes."""
    if v is None:
        return v
    if isinstance(v, bool) or not pattern.match(str(v)):
        raise ValueError(f"expected {expected}, got {v!r}")
    return str(v)


class FieldProblem(ValueError):
    """A model validator's finding about particular field(s) of its model: ``at`` is that field's
    path below the model (``("format",)``, ``("preprocessing", 2, "op")``), ``hint`` the fix. pydantic places a model
    validator's error at the model itself; the loader appends ``at``, so the message points at the
    line a user must change, and the rest of the document can still be checked without it."""

    def __init__(self, message: str, *at: str | int, hint: str | None = None) -> None:
        super().__init__(message)
        self.at = at
        self.hint = hint


class Model(BaseModel):
    """Base for every spec model: strict about unknown fields, camelCase as users write it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=False, defer_build=True)


class Metadata(Model):
    name: Name
    workspace: Name = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ResourceRequest(Model):
    """Compute for one job or replica. ``preset`` names a Workspace preset; explicit fields win."""

    preset: Name | None = None
    cpu: str | None = Field(None, description='cores, e.g. "2" or "500m"')
    memory: str | None = Field(None, description='e.g. "4Gi"')
    gpu: int | None = Field(None, ge=0)
    gpuModel: str | None = None

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: Any) -> Any:
        return _quantity(v, _CPU_RE, 'a CPU quantity such as "2" or "500m"')

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        return _quantity(v, _MEM_RE, 'a memory quantity such as "4Gi" or "512Mi"')


class DatasetRef(Model):
    """A dataset version: ``latest`` (follows new versions), ``vN`` or a DVC content hash."""

    name: Name
    version: str = "latest"
    workspace: Name | None = Field(None, description="the dataset's workspace when it is shared from another")

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if v == "latest" or re.fullmatch(r"v\d+", v) or re.fullmatch(r"[0-9a-f]{6,32}(\.dir)?", v):
            return v
        raise FieldProblem(f"expected 'latest', 'vN' or a content hash, got {v!r}",
                           hint="`kiln data versions DATASET` lists the versions")


class ModelRef(Model):
    """A registered model: a version, an alias, or an experiment's chosen trial."""

    name: Name | None = Field(None, description="registered model name")
    version: int | None = Field(None, ge=1)
    alias: Name | None = None
    experiment: Name | None = Field(None, description="use the model this experiment registers/chooses")

    @model_validator(mode="after")
    def _one(self) -> ModelRef:
        if self.experiment and (self.name or self.version or self.alias):
            raise FieldProblem("give either 'experiment' or 'name' (with 'version' or 'alias'), not both", "experiment",
                               hint="`{experiment: E}` serves what E registers; `{name: M, alias: A}` a registered model")
        if not self.experiment and not self.name:
            raise ValueError("give 'name' (with 'version' or 'alias') or 'experiment'")
        if self.version is not None and self.alias is not None:
            raise FieldProblem("give 'version' or 'alias', not both", "alias", hint="remove one")
        return self


class SecretRef(Model):
    """Where a secret comes from. Specs never hold secret values, only these references."""

    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    secretName: Name | None = Field(None, description="a Kubernetes Secret (cluster) or kiln secret (local)")
    key: str = "token"

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        if bool(self.env) == bool(self.secretName):
            raise ValueError("give exactly one of 'env' or 'secretName'")
        return self


Task = Literal[
    "classification", "regression", "detection", "instance-segmentation",
    "semantic-segmentation", "clustering", "dimension-reduction",
]
DataType = Literal["image", "tabular"]
Framework = Literal["pytorch", "tensorflow", "sklearn", "xgboost", "transformers", "other"]
