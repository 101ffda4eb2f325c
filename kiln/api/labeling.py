"""LabelingJob: a Label Studio project over a dataset version, its annotators and reviewers,
pre-annotation, the completion rule and where finished labels go (a new dataset version)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kiln.api.common import DatasetRef, Description, FieldProblem, Metadata, Model, ModelRef, Name

LabelTask = Literal["classification", "detection", "instance-segmentation", "semantic-segmentation",
                    "tabular-classification", "tabular-regression"]

# The Label Studio control tag each task uses (classification Choices, detection RectangleLabels …).
CONTROL_TAGS: dict[str, str] = {
    "classification": "Choices", "detection": "RectangleLabels",
    "instance-segmentation": "PolygonLabels", "semantic-segmentation": "BrushLabels",
    "tabular-classification": "Choices", "tabular-regression": "Number",
}


def _expand_plain(v: object, key: str) -> object:
    """A list entry given as a plain string stands for ``{key: string}``."""
    if isinstance(v, list):
        return [{key: x} if isinstance(x, str) else x for x in v]
    return v


class Label(Model):
    name: str = Field(..., min_length=1)
    color: str | None = Field(None, pattern=r"^#[0-9a-fA-F]{6}$")
    renamedFrom: str | None = Field(None, description="keep existing annotations when renaming a class")


class Annotator(Model):
    user: str = Field(..., min_length=1)
    weight: float = Field(1.0, gt=0, description="share of the items, relative to the others")


class PreAnnotation(Model):
    """Predictions shown to annotators; below ``threshold`` an item stays unlabelled (Flightbase)."""

    model: ModelRef | None = None
    deployment: Name | None = None
    default: Literal["imagenet", "coco"] | None = Field(None, description="a default pretrained model")
    threshold: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _one(self) -> PreAnnotation:
        if sum(x is not None for x in (self.model, self.deployment, self.default)) != 1:
            raise FieldProblem("give exactly one of model, deployment, default",
                               hint="e.g. `preAnnotation: {model: {experiment: NAME}}` or `{default: imagenet}`")
        return self


class Completion(Model):
    rule: Literal["all-annotated", "reviewed", "min-count"] = "reviewed"
    minCount: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _min(self) -> Completion:
        if (self.rule == "min-count") != (self.minCount is not None):
            raise FieldProblem("minCount goes with rule 'min-count' (and only with it)", "minCount" if self.minCount else "rule",
                               hint="`completion: {rule: min-count, minCount: N}`")
        return self


class Output(Model):
    dataset: Name | None = Field(None, description="default: a new version of the input dataset")


class LabelingJobSpec(Model):
    dataset: DatasetRef
    task: LabelTask
    labels: list[Label] = Field(..., min_length=1)
    instructions: str | None = None
    annotators: list[Annotator] = Field(..., min_length=1)
    reviewers: list[str] = Field(default_factory=list)
    assignment: Literal["even", "weighted"] = "even"
    overlap: int = Field(1, ge=1, description="annotations wanted per item")
    preAnnotation: PreAnnotation | None = None
    completion: Completion = Field(default_factory=Completion)
    output: Output = Field(default_factory=Output)
    owner: str | None = None
    description: Description = None

    @field_validator("labels", mode="before", json_schema_input_type=list[Label | str])
    @classmethod
    def _plain_names(cls, v: object) -> object:
        # `labels: [cat, dog]` is the common case; expand to the full form.
        return _expand_plain(v, "name")

    @field_validator("annotators", mode="before", json_schema_input_type=list[Annotator | str])
    @classmethod
    def _plain_users(cls, v: object) -> object:
        return _expand_plain(v, "user")

    @model_validator(mode="after")
    def _consistent(self) -> LabelingJobSpec:
        names = [lb.name for lb in self.labels]
        if len(set(names)) != len(names):
            again = next(i for i, n in enumerate(names) if n in names[:i])
            raise FieldProblem(f"label {names[again]!r} is listed twice", "labels", again, hint="remove one")
        users = [a.user for a in self.annotators]
        if len(set(users)) != len(users):
            again = next(i for i, u in enumerate(users) if u in users[:i])
            raise FieldProblem(f"annotator {users[again]!r} is listed twice", "annotators", again,
                               hint="list each once; `{user: U, weight: W}` gives one more work")
        if self.completion.rule == "reviewed" and not self.reviewers:
            raise FieldProblem("completion rule 'reviewed' needs at least one reviewer", "completion",
                               hint="add `reviewers: [USER]` (a developer or admin), or use rule all-annotated")
        if self.overlap > len(self.annotators):
            raise FieldProblem(f"overlap {self.overlap} needs at least {self.overlap} annotators", "overlap",
                               hint=f"lower overlap to {len(self.annotators)} or add annotators")
        return self


class LabelingJob(Model):
    apiVersion: Literal["kiln.dev/v1alpha1"]
    kind: Literal["LabelingJob"]
    metadata: Metadata
    spec: LabelingJobSpec
