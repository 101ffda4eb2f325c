"""Dataset: where data comes from, its format and task, splits, preprocessing and sharing.

Every change (source content, preprocessing, finished labelling) becomes a new DVC-backed
version; the handler records versions and lineage in the state store, never in this file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kiln.api.common import DatasetRef, DataType, Description, FieldProblem, Metadata, Model, Name, Task

Format = Literal["auto", "image-folder", "coco", "segmentation-json", "studio", "masks", "csv"]

# Which formats can hold which task (the source platforms' layouts, SEEDS_DIGEST §1 and §3).
FORMAT_TASKS: dict[str, set[str]] = {
    "image-folder": {"classification"},
    "coco": {"detection", "instance-segmentation"},
    "segmentation-json": {"semantic-segmentation"},
    "masks": {"semantic-segmentation"},
    "studio": {"detection", "instance-segmentation", "semantic-segmentation", "classification"},
    "csv": {"classification", "regression", "clustering", "dimension-reduction"},
}

# Preprocessing ops by name -> data type they apply to. The digest names sklearn/pandas ops for
# tables and imgaug augmenters for images; imgaug fails on numpy 2, so image ops run on
# torchvision transforms.v2 but keep imgaug's names as aliases. Parameters are checked by the
# op implementations (kiln.data), which the datasets issue brings.
PREPROCESSING_OPS: dict[str, DataType] = {
    **{n: "tabular" for n in (
        "MinMaxScaler", "StandardScaler", "qcut", "cut", "KBinsDiscretizer", "factorize",
        "SimpleImputer", "KNNImputer", "sort_values", "drop_columns")},
    **{n: "image" for n in (
        "flip", "rotate", "brightness", "contrast", "gamma", "shift", "grayscale", "crop", "resize", "equalize",
        # imgaug names, as the source platforms write them
        "Fliplr", "Flipud", "Rotate", "Multiply", "GammaContrast", "Affine", "Grayscale", "Crop",
        "Resize", "pillike.Equalize")},
}

SAMPLES = ("iris", "wine", "breast_cancer", "diabetes", "digits", "shapes")


class Source(Model):
    """Exactly one of the fields: where the data of the first version comes from."""

    path: str | None = Field(None, description="a folder or file in this repository (relative; links out of it are refused)")
    archive: str | None = Field(None, description="a .zip or .tar.* in the repo (outside it only with datasets.allowFileUrls); "
                                                 "extracted safely, within datasets.maxArchive* limits")
    url: str | None = Field(None, description="a public http(s):// URL or an object store (s3://, gs://, az://, abfs://, hf://); "
                                             "file:// and private networks only with kiln.yaml's datasets settings")
    sample: Literal["iris", "wine", "breast_cancer", "diabetes", "digits", "shapes"] | None = Field(
        None, description="a built-in sample (scikit-learn bundled data, or drawn shapes for detection), materialised as files")
    dataset: DatasetRef | None = Field(None, description="derive from another dataset's version")
    capture: Name | None = Field(None, description="inputs captured by this Deployment")

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [k for k in ("path", "archive", "url", "sample", "dataset", "capture") if getattr(self, k)]
        if len(given) != 1:
            raise FieldProblem(
                "give exactly one of path, archive, url, sample, dataset, capture"
                + (f" (got {', '.join(given)})" if given else ""), *given[1:2],
                hint="keep one source; derive a second version with `source: {dataset: ...}`" if given else
                "e.g. `source: {path: data/train}` (a folder or file in this repository)")
        return self


class Splits(Model):
    train: float = Field(0.8, ge=0, le=1)
    validation: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    seed: int = 42
    stratify: bool = True

    @model_validator(mode="after")
    def _sum(self) -> Splits:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise FieldProblem(f"train + validation + test must be 1.0, got {total:g}",
                               hint="e.g. {train: 0.8, validation: 0.1, test: 0.1}")
        if self.train == 0:
            raise FieldProblem("train must be > 0", "train", hint="give the train split most of the data")
        return self


class PreprocessOp(Model):
    """One step of the ordered preprocessing list; each produces a new version with lineage."""

    op: str
    columns: list[str] | None = Field(None, description="tabular ops: the columns (default: all that apply)")
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> PreprocessOp:
        if self.op not in PREPROCESSING_OPS:
            from kiln._util.suggest import did_you_mean

            raise FieldProblem(f"unknown preprocessing op {self.op!r}", "op",
                               hint=did_you_mean(self.op, PREPROCESSING_OPS) or f"valid: {', '.join(PREPROCESSING_OPS)}")
        return self


class Sharing(Model):
    visibility: Literal["private", "shared"] = "private"
    access: Literal["read-write", "read-only"] = Field(
        "read-write", description="read-only: only the owner may change it (Flightbase)")
    workspaces: list[Name] = Field(default_factory=list, description="shared with these; empty = all")


class Versioning(Model):
    commit: Literal["auto", "manual"] = Field(
        "manual", description="auto: kiln commits the .dvc files; manual: left for you to commit")
    remote: str | None = Field(None, description="DVC remote name (default: kiln's local remote)")
    push: bool = True


class DatasetSpec(Model):
    type: DataType
    task: Task | None = Field(None, description="omit for unlabelled data")
    format: Format = "auto"
    source: Source
    label: str | None = Field(None, description="tabular: the label column (default: the last; none for clustering and dimension-reduction)")
    missingLabels: Literal["skip", "error"] = Field(
        "skip", description="tabular: rows without a label are left out of training (skip, counted in the "
                            "version's schema) or refuse the version (error)")
    classes: list[str] | None = None
    background: Annotated[int, Field(ge=0, le=65535)] | Literal["none"] | None = Field(
        None,
        description="semantic segmentation: the mask value that is the background class when the "
                    "category list (meta.json, id2label.json) does not name it; default 0, 'none': every "
                    "mask value must be listed")
    splits: Splits | None = None
    preprocessing: list[PreprocessOp] = Field(default_factory=list)
    sharing: Sharing = Field(default_factory=Sharing)
    owner: str | None = None
    description: Description = None
    versioning: Versioning = Field(default_factory=Versioning)

    @field_validator("background")
    @classmethod
    def _masks_only(cls, v: Any, info: ValidationInfo) -> Any:
        # a field validator (task and format come before it), so the error points at this line
        task, fmt = info.data.get("task"), info.data.get("format")
        if v is not None and (task not in (None, "semantic-segmentation") or fmt in ("image-folder", "coco", "csv")):
            raise FieldProblem(f"background is for semantic-segmentation masks; this dataset is {task or fmt}",
                               hint="remove background")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        if self.format != "auto" and self.task and self.task not in FORMAT_TASKS[self.format]:
            raise FieldProblem(
                f"format {self.format!r} cannot hold a {self.task} dataset; "
                f"it holds {', '.join(sorted(FORMAT_TASKS[self.format]))}", "format",
                hint=f"formats for {self.task}: " + ", ".join(["auto", *(f for f, ts in FORMAT_TASKS.items() if self.task in ts)]))
        if self.type == "tabular" and self.format not in ("auto", "csv"):
            raise FieldProblem(f"a tabular dataset is CSV, not {self.format!r}", "format",
                               hint="use format: csv (or auto), or type: image for pictures")
        if self.type == "image" and self.format == "csv":
            raise FieldProblem("an image dataset cannot have format 'csv'", "format",
                               hint="use type: tabular for a table, or an image format (auto finds it)")
        if self.type == "image" and self.task in ("regression", "clustering", "dimension-reduction"):
            raise FieldProblem(f"task {self.task!r} is for tabular data", "task",
                               hint="use type: tabular, or an image task (classification, detection, ...)")
        for i, op in enumerate(self.preprocessing):
            if PREPROCESSING_OPS[op.op] != self.type:
                raise FieldProblem(f"preprocessing[{i}] {op.op!r} is a {PREPROCESSING_OPS[op.op]} op; "
                                   f"this dataset is {self.type}", "preprocessing", i, "op",
                                   hint=f"{self.type} ops: " + ", ".join(n for n, t in PREPROCESSING_OPS.items() if t == self.type))
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            dup = next(i for i, c in enumerate(self.classes) if c in self.classes[:i])
            raise FieldProblem(f"classes has duplicates ({self.classes[dup]!r})", "classes", dup, hint="remove one")
        return self


class Dataset(Model):
    apiVersion: Literal["kiln.dev/v1alpha1"]
    kind: Literal["Dataset"]
    metadata: Metadata
    spec: DatasetSpec
