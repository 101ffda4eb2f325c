"""Experiment: train by hand (run), tune (hpo, Optuna) or compare algorithms (automl), then
register the chosen model. One spec drives the local runner and Argo alike."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from kiln.api.common import DatasetRef, Description, FieldProblem, ImageRef, Metadata, Model, Name, ResourceRequest, Task

HyperValue = bool | int | float | str


def experiment_label(workspace: str, name: str) -> str:
    """The ``experiment`` label a registered model carries (BentoML labels hold no '/')."""
    return f"{workspace}.{name}"


def from_experiment(labels: dict, workspace: str, name: str) -> bool:
    """Whether a model with ``labels`` was registered by experiment ``workspace/name`` (plain
    ``name`` too: models registered by hand or by older kiln versions)."""
    return labels.get("experiment") in (experiment_label(workspace, name), name)


def _check_range(low: float, high: float, log: bool, fmt: str = "") -> None:
    if low >= high:
        raise FieldProblem(f"low ({low:{fmt}}) must be < high ({high:{fmt}})", hint="swap them, or widen the range")
    if log and low <= 0:
        raise FieldProblem("a log-scale range needs low > 0", "low", hint="raise low above 0, or drop log: true")


class FloatParam(Model):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, "g")
        if self.log and self.step is not None:
            raise ValueError("step cannot be combined with log")
        return self


class IntParam(Model):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        return self


class ChoiceParam(Model):
    type: Literal["choice"]
    values: list[HyperValue] = Field(..., min_length=1)


SearchParam = Annotated[FloatParam | IntParam | ChoiceParam, Field(discriminator="type")]


class Objective(Model):
    metric: str = Field("validation_accuracy", min_length=1)
    direction: Literal["maximize", "minimize"] = "maximize"
    goal: float | None = Field(None, description="stop early once a trial reaches it")
    additionalMetrics: list[str] = Field(default_factory=list)


class Sampler(Model):
    type: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    seed: int | None = None


class Pruner(Model):
    type: Literal["none", "median", "hyperband", "asha"] = "median"
    warmupSteps: int = Field(0, ge=0)


class HPO(Model):
    """Defaults are the source platform's (MaxTrialCount 10, ParallelTrialCount 1, MaxFailed 4)."""

    maxTrials: int = Field(10, ge=1)
    parallelTrials: int = Field(1, ge=1)
    maxFailedTrials: int = Field(4, ge=0)
    sampler: Sampler = Field(default_factory=Sampler)
    pruner: Pruner = Field(default_factory=Pruner)
    timeoutSeconds: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _parallel(self) -> HPO:
        if self.parallelTrials > self.maxTrials:
            raise FieldProblem(f"parallelTrials ({self.parallelTrials}) exceeds maxTrials ({self.maxTrials})",
                               "parallelTrials", hint=f"lower parallelTrials to at most {self.maxTrials}, or raise maxTrials")
        return self


Featurization = Literal["auto", "off"]


def _featurization_word(v: Any) -> Any:
    """YAML 1.1 reads a bare ``off`` as false (and ``on`` as true): both mean the word."""
    return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v


class Algorithm(Model):
    """A built-in algorithm by registry name, with fixed values and (hpo/automl) a search space."""

    name: str = Field(..., min_length=1, description="an algorithm of `kiln algorithms list` (docs/algorithms.md)")
    # Any value here: the algorithm's own type and range decide (kiln.validate_algorithms, from the
    # catalogue), in one line per mistake; a union of scalars would report `[3]` four times over.
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    # A parameter both fixed and searched is searched; its fixed value is tried first (so a
    # template's values are the starting point of the tuning).
    searchSpace: dict[str, SearchParam] = Field(default_factory=dict)
    pretrained: str | None = Field(None, description="local path or cache key of weights; never downloaded")
    split: dict[str, float] | None = Field(None, description="per-algorithm split override (automl)")
    featurization: Featurization | None = Field(None, description="tabular: 'auto' or 'off'; default: the experiment's")

    @field_validator("featurization", mode="before")
    @classmethod
    def _featurization(cls, v: Any) -> Any:
        return _featurization_word(v)



class Command(Model):
    """Your own training code (Flightbase jobs): run from the repo; hyperparameters become args."""

    run: str = Field(..., min_length=1, description="e.g. 'python train.py'")
    image: ImageRef | None = Field(None, description="run the training step in this image on a cluster "
                                   "(kiln's step runner is copied in: the image needs only Python 3.11)")
    imagePullSecrets: list[Name] = Field(default_factory=list, description="Secrets (by name) to pull `image`")
    workdir: str = "."
    env: dict[str, str] = Field(default_factory=dict)
    metricsFile: str | None = Field(None, description="JSON lines the script writes, if not using kiln's API")
    searchSpace: dict[str, SearchParam] = Field(default_factory=dict)

    @field_validator("metricsFile")
    @classmethod
    def _inside_output(cls, v: str | None) -> str | None:
        if v is not None and (v.startswith(("/", "\\")) or ".." in v.replace("\\", "/").split("/")):
            raise ValueError(f"metricsFile {v!r} must be a path inside the trial's output folder "
                             "($KILN_OUTPUT_DIR), without '..'")
        return v

    @field_validator("env")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if any(s in k.lower() for s in ("token", "password", "secret", "apikey", "api_key")):
                raise FieldProblem(f"env {k!r} looks like a secret; reference it from the environment "
                                   "or a secret instead of writing it in the spec", k,
                                   hint="remove it: your program reads the variable from kiln's environment")
        return v


class AutoML(Model):
    """Compare algorithms. Without candidates: the catalogue's defaults for the task (tabular
    classification or regression; ``kiln.algorithms.registry.automl_defaults``)."""

    candidates: list[Algorithm] = Field(default_factory=list,
                                        description="empty: the task's tabular algorithms from the catalogue")
    trialsPerCandidate: int = Field(1, ge=1, description="> 1 runs a small HPO per candidate")
    timeBudget: int | None = Field(None, ge=1, description="seconds for the whole experiment, from its start to "
                                   "the registered model: the search stops early enough to leave the estimated "
                                   "time of export and registration (the search keeps at least a quarter of it); no new "
                                   "candidate or trial starts after it, a fit still running is stopped, the best "
                                   "finished candidate is kept")
    maxCandidates: int | None = Field(None, ge=1, description="compare at most the first N candidates")
    ensemble: bool = Field(True, description="without a candidate list: also compare the average of the top 3 "
                           "candidates (soft voting, or the mean for regression); selected only when it beats the "
                           "best single one on validation")

    @model_validator(mode="after")
    def _unique(self) -> AutoML:
        if len(self.candidates) == 1:
            raise ValueError("candidates needs at least 2 items to compare (or none: the catalogue's defaults "
                             "for the task); for one algorithm use mode 'run' or 'hpo'")
        names = [c.name for c in self.candidates]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            again = next(i for i, n in enumerate(names) if n in names[:i])
            raise FieldProblem(f"candidate {names[again]!r} is listed twice", "candidates", again, "name",
                               hint="list each algorithm once; trialsPerCandidate tunes one")
        return self


class Checkpoint(Model):
    every: int = Field(1, ge=1)
    unit: Literal["epoch", "step"] = "epoch"
    keep: int = Field(2, ge=1)


class AliasPolicy(Model):
    """When a registered version takes an alias (#21). ``better`` (the default): only when it beats
    the alias's current version on ``metric`` by more than ``minDelta``, both evaluated on the same
    rows (the current dataset version's ``split``); ``always``: every new version takes it;
    ``version``: pinned to that version (a promotion or rollback made by a pull request)."""

    name: Name
    when: Literal["better", "always"] = "better"
    metric: str | None = Field(None, min_length=1, description="default: the objective's metric")
    minDelta: float = Field(0.0, ge=0, description="the improvement needed, in the metric's units")
    split: Literal["test", "validation"] = Field("test", description="the rows both versions are evaluated on")
    version: int | None = Field(None, ge=1, description="pin the alias to this version")

    @model_validator(mode="after")
    def _pinned(self) -> AliasPolicy:
        rule = sorted(self.model_fields_set & {"when", "metric", "minDelta", "split"})
        if self.version is not None and rule:
            raise FieldProblem(f"alias {self.name!r} is pinned to version {self.version}; {', '.join(rule)} "
                               "would never apply", rule[0], hint="remove them, or remove version to promote by rule")
        return self


def _alias_item(v: Any) -> Any:
    # a plain name is the default policy: the spec stays as it was written, its meaning is `better`
    return {"name": v} if isinstance(v, str) else v


# what the editor schema offers (a name or a policy); what the code sees (always a policy)
AliasItem = Annotated[AliasPolicy, BeforeValidator(_alias_item, json_schema_input_type=Name | AliasPolicy)]


class Registration(Model):
    model: Name = Field(..., description="registered model name; same name -> new version")
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    aliases: list[AliasItem] = Field(
        default_factory=list, description="e.g. [production] or [{name: production, when: always}, "
                                          "{name: stable, version: 3}]; a plain name moves when better")
    keepVersions: int | None = Field(None, ge=1, description="delete the oldest beyond N (never an aliased or deployed one)")
    export: list[Literal["onnx"]] = Field(default_factory=list)
    onnxTolerance: float = Field(1e-4, gt=0)
    checkpoint: Literal["best", "last"] = Field(
        "best", description="which weights of a trial are registered and reported: the epoch best by the objective, "
                            "or the last one")

    @model_validator(mode="after")
    def _unique_aliases(self) -> Registration:
        names = [a.name for a in self.aliases]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise FieldProblem(f"alias {n!r} is listed twice", "aliases", i, hint="list each alias once")
        return self

    @property
    def alias_names(self) -> list[str]:
        return [a.name for a in self.aliases]


class Trigger(Model):
    """When a followed dataset (version: latest) gets a new version, train again or only report."""

    onNewDatasetVersion: Literal["retrain", "plan-only", "ignore"] = "plan-only"


class ExperimentSpec(Model):
    mode: Literal["run", "hpo", "automl"] = "run"
    task: Task | None = Field(None, description="default: the dataset's task")
    dataset: DatasetRef
    split: dict[str, float] | None = Field(None, description="override the dataset's train/validation/test")
    algorithm: Algorithm | None = None
    command: Command | None = None
    parameterSets: list[dict[str, HyperValue]] = Field(
        default_factory=list, description="several parameter sets at once: one job each (Flightbase)")
    objective: Objective = Field(default_factory=Objective)
    hpo: HPO | None = None
    automl: AutoML | None = None
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    featurization: Featurization = Field(
        "auto", description="tabular: impute, encode and scale inside the model, fitted on the train split ('auto'), "
                            "or give the model the columns as the dataset version has them ('off')")
    selectTrial: Literal["auto"] | int = Field("auto", description="'auto' (best by objective) or a trial number")
    # `register` would shadow a class attribute of pydantic's model metaclass; keep it as alias.
    registration: Registration | None = Field(None, alias="register")
    trigger: Trigger = Field(default_factory=Trigger)
    retries: int = Field(0, ge=0, le=10)
    timeoutSeconds: int | None = Field(None, ge=1)
    owner: str | None = None
    description: Description = None
    access: Literal["public", "private"] = "public"
    users: list[str] = Field(default_factory=list, description="private: who besides the owner may see it")

    @field_validator("featurization", mode="before")
    @classmethod
    def _featurization(cls, v: Any) -> Any:
        return _featurization_word(v)

    @field_validator("selectTrial")
    @classmethod
    def _trial(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError("a trial number is >= 0")
        return v

    @model_validator(mode="after")
    def _task_objective(self) -> ExperimentSpec:
        # no objective written: rank by the algorithm's task's metric (a detector by validation_map),
        # not by classification's validation_accuracy, which the others never report
        if "objective" not in self.model_fields_set and (self.algorithm is not None or self.automl is not None):
            from kiln.algorithms.catalogue import TASK_OBJECTIVE, default_objective

            if self.algorithm is not None:
                metric = default_objective(self.algorithm.name)
            else:  # automl: the candidates' task (all of one task, or validate says which is not)
                found = {default_objective(c.name) for c in self.automl.candidates} if self.automl else set()  # type: ignore[union-attr]
                metric = found.pop() if len(found) == 1 else TASK_OBJECTIVE.get(self.task or "")
            if metric is not None and metric != self.objective.metric:
                self.objective = Objective(metric=metric)
        return self

    @model_validator(mode="after")
    def _mode(self) -> ExperimentSpec:
        if self.mode == "automl":
            if self.automl is None:
                self.automl = AutoML()  # the catalogue's defaults for the task
            if self.algorithm or self.command:
                raise FieldProblem("mode 'automl' takes its algorithms from automl.candidates, not 'algorithm'/'command'",
                                   "algorithm" if self.algorithm else "command",
                                   hint="move it into automl.candidates, or use mode run/hpo")
        else:
            if self.automl is not None:
                raise FieldProblem(f"'automl' is only for mode 'automl' (mode is {self.mode!r})", "automl",
                                   hint="set mode: automl, or remove the automl section")
            if self.algorithm is not None and self.command is not None:
                raise FieldProblem("give exactly one of 'algorithm' or 'command'", "command",
                                   hint="a built-in algorithm, or your own training command: remove the other")
            if self.algorithm is None and self.command is None:
                raise FieldProblem("give exactly one of 'algorithm' or 'command'",
                                   hint="add `algorithm: {name: ...}` (`kiln algorithms list`) or `command: {run: ...}`")
        searched = bool(self.algorithm and self.algorithm.searchSpace) or bool(
            self.command and self.command.searchSpace) or (
            self.automl is not None and any(c.searchSpace for c in self.automl.candidates))
        if self.mode == "hpo":
            if self.hpo is None:
                self.hpo = HPO()
            if not searched:
                raise FieldProblem("mode 'hpo' needs a searchSpace (what to tune) in algorithm or command", "mode",
                                   hint="add e.g. `searchSpace: {learning_rate: {type: float, low: 0.0001, high: 0.1, log: true}}`")
        elif self.mode == "run" and self.hpo is not None:
            raise FieldProblem("'hpo' settings need mode 'hpo'", "hpo", hint="set mode: hpo, or remove the hpo section")
        elif self.mode == "run" and searched:
            raise FieldProblem("searchSpace needs mode 'hpo' or 'automl'",
                               *(("algorithm", "searchSpace") if self.algorithm else ("command", "searchSpace")),
                               hint="set mode: hpo to tune it, or fix the values in hyperparameters")
        if self.parameterSets and self.mode != "run":
            raise FieldProblem("parameterSets are for mode 'run' (one job per set)", "parameterSets",
                               hint="set mode: run, or express the sets as a searchSpace")
        if isinstance(self.selectTrial, int) and self.mode == "run" and not self.parameterSets:
            raise FieldProblem("selectTrial needs trials (mode hpo/automl or parameterSets)", "selectTrial",
                               hint="remove selectTrial: a run has one trial")
        return self


class Experiment(Model):
    apiVersion: Literal["kiln.dev/v1alpha1"]
    kind: Literal["Experiment"]
    metadata: Metadata
    spec: ExperimentSpec
