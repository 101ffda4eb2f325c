"""Each kind's work as a DAG of ``kiln step`` tasks: the pipelines that ``render`` turns into Argo
Workflows and that in-process handlers (LabelingJob) run step by step. Pure: a spec in, tasks out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.loader import LoadedSpec


@dataclass
class Task:
    """One DAG task: ``kiln step <step>`` with arguments, after ``depends``: task names (the
    task succeeded) or ``task.Result`` in Argo's ``depends`` terms (``train.AnySucceeded``)."""

    name: str
    step: str
    depends: list[str] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    compute: bool = False            # gets the object's resource request (training, serving)
    memoize: bool = False            # outputs depend only on inputs: reuse them
    retries: int = 0
    with_items: list[Any] | None = None
    with_sequence: int | None = None
    timeout: int | None = None       # activeDeadlineSeconds
    describe: str = ""               # what it does, for apply's output when a handler runs it in-process
    image: str | None = None         # the user's image (command.image) instead of kiln's: render injects kiln


def workspace(s: LoadedSpec) -> list[Task]:
    return [Task("storage", "workspace.storage", describe="ensure the workspace's storage folder"),
            Task("members", "workspace.members", depends=["storage"],
                 describe="record members, roles, quotas and presets")]


def dataset(s: LoadedSpec) -> list[Task]:
    spec = s.obj.spec
    tasks = [Task("fetch", "dataset.fetch", memoize=True, retries=2),
             Task("validate", "dataset.validate", depends=["fetch"], memoize=True)]
    prev = "validate"
    for i in range(len(spec.preprocessing)):
        name = f"preprocess-{i}"
        tasks.append(Task(name, "dataset.preprocess", depends=[prev], args={"op-index": str(i)},
                          memoize=True, compute=True))
        prev = name
    if spec.splits is not None:
        tasks.append(Task("split", "dataset.split", depends=[prev], memoize=True))
        prev = "split"
    tasks.append(Task("version", "dataset.version", depends=[prev], retries=2))
    return tasks


def labeling(s: LoadedSpec) -> list[Task]:
    # pre-annotate before import: predictions travel with the new tasks (kiln.controller.labeling_steps)
    spec = s.obj.spec
    tasks = [Task("project", "labeling.project", retries=3,
                  describe="ensure the Label Studio project and its label config")]
    prev = "project"
    if spec.preAnnotation is not None:
        tasks.append(Task("pre-annotate", "labeling.pre-annotate", depends=["project"], compute=True, retries=1,
                          describe="predict labels for new items with the registered model"))
        prev = "pre-annotate"
    tasks.append(Task("import", "labeling.import", depends=[prev], retries=3,
                      describe="import new dataset items (split among the annotators)"))
    tasks.append(Task("assign", "labeling.assign", depends=["import"], retries=3,
                      describe="ensure annotator/reviewer users and per-annotator views"))
    # polls up to 10 minutes, then ends Succeeded either way (incomplete: the next run checks again)
    tasks.append(Task("wait-complete", "labeling.wait-complete", depends=["assign"],
                      args={"timeout": "600", "interval": "30"}, describe="check the completion rule"))
    tasks.append(Task("export", "labeling.export", depends=["wait-complete"], retries=2,
                      describe="on completion, write the labels as a new dataset version"))
    return tasks


def experiment(s: LoadedSpec) -> list[Task]:
    spec = s.obj.spec
    retries = spec.retries
    # only the steps that run the user's command get its image; data, selection and registration
    # stay in kiln's image (they need kiln's dependencies, not the user's)
    image = spec.command.image if spec.command is not None else None
    tasks = [Task("prepare-data", "experiment.prepare-data", memoize=True, retries=2)]
    if spec.mode == "run" and spec.parameterSets:
        tasks.append(Task("train", "experiment.train", depends=["prepare-data"], compute=True, retries=retries,
                          with_items=[json.dumps(p, sort_keys=True) for p in spec.parameterSets],
                          args={"parameters": "{{item}}"}, timeout=spec.timeoutSeconds, image=image))
    elif spec.mode == "run":
        tasks.append(Task("train", "experiment.train", depends=["prepare-data"], compute=True,
                          retries=retries, memoize=True, timeout=spec.timeoutSeconds, image=image))
    elif spec.mode == "hpo":
        # the study needs only the spec: it is created while the data is prepared (about 1 s of
        # imports and schema off the serial path of every HPO run)
        tasks.append(Task("create-study", "experiment.create-study"))
        # parallelTrials workers share one Optuna study (RDB storage) and pull trials until
        # maxTrials, maxFailedTrials or the goal stops the study.
        tasks.append(Task("trials", "experiment.hpo-worker", depends=["prepare-data", "create-study"], compute=True,
                          retries=retries, with_sequence=spec.hpo.parallelTrials, args={"worker": "{{item}}"},
                          timeout=spec.timeoutSeconds, image=image))
    elif spec.automl.candidates:
        names = [c.name for c in spec.automl.candidates][:spec.automl.maxCandidates]
        tasks.append(Task("candidates", "experiment.train-candidate", depends=["prepare-data"], compute=True,
                          retries=retries, with_items=names, args={"candidate": "{{item}}"},
                          timeout=spec.timeoutSeconds))
    else:
        # the catalogue's defaults depend on the dataset's task, known once the data is prepared:
        # one task trains them in turn (which is also what keeps the time budget exact)
        tasks.append(Task("candidates", "experiment.train-candidate", depends=["prepare-data"], compute=True,
                          retries=retries, args={"candidate": "auto"}, timeout=spec.timeoutSeconds))
    # fanned-out training (parameter sets, HPO workers, listed AutoML candidates): select ranks the
    # trials that finished, also when a job was stopped (`kiln stop --job`: its trial is recorded
    # STOPPED) or failed (FAIL), listed with why beside the leaderboard as the AutoML budget's
    # STOPPED candidates are; with no job succeeded, select is omitted and the experiment fails
    fan_out = tasks[-1].with_items is not None or tasks[-1].with_sequence is not None
    tasks.append(Task("select", "experiment.select",
                      depends=[f"{tasks[-1].name}.AnySucceeded" if fan_out else tasks[-1].name]))
    if spec.registration is not None:
        # export (and its parity check) before register: a model whose ONNX file computes
        # something else is never registered as ONNX
        prev = "select"
        if spec.registration.export:
            tasks.append(Task("export-onnx", "experiment.export-onnx", depends=["select"], compute=True))
            prev = "export-onnx"
        tasks.append(Task("register", "experiment.register", depends=[prev], retries=2))
    return tasks


def deployment(s: LoadedSpec) -> list[Task]:
    return [Task("resolve-model", "deployment.resolve-model"),
            Task("build", "deployment.build", depends=["resolve-model"], memoize=True, retries=1),
            Task("rollout", "deployment.rollout", depends=["build"], retries=2),
            Task("smoke-test", "deployment.smoke-test", depends=["rollout"], retries=3)]
