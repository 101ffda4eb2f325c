"""The controller's kind registry: one descriptor per kind, extending the spec layer's
(``kiln.validate.SPEC_KINDS``: model, apply order, short name, cross-spec check) with what the
controller does about it: the handler that reconciles it, the pipeline of ``kiln step`` tasks
its work is made of (``kiln.controller.pipelines``) and the step namespace those tasks use
(``kiln.controller.steps.STEPS``). ``HANDLERS`` and ``PIPELINES`` are views of it by field.

A descriptor per kind in this one dict, no registration by decorator or by name: an unknown kind
is a KeyError here, and ``kiln.loader`` has already refused it with the list of valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from kiln.controller import pipelines
from kiln.controller.handlers.base import Context, Handler, Step, TemporaryError
from kiln.controller.handlers.dataset import DatasetHandler
from kiln.controller.handlers.deployment import DeploymentHandler
from kiln.controller.handlers.experiment import ExperimentHandler
from kiln.controller.handlers.labeling import LabelingJobHandler
from kiln.controller.handlers.workspace import WorkspaceHandler
from kiln.validate import SPEC_KINDS, SpecKind

if TYPE_CHECKING:
    from kiln.controller.pipelines import Task
    from kiln.loader import LoadedSpec

Pipeline = Callable[["LoadedSpec"], list["Task"]]


@dataclass(frozen=True)
class Kind:
    spec: SpecKind                 # what the spec layer knows (model, order, short name, check)
    handler: type[Handler]
    pipeline: Pipeline
    steps: str                     # its tasks run `kiln step <steps>.<task>`

    @property
    def name(self) -> str:
        return self.spec.info.name

    @property
    def short(self) -> str:
        return self.spec.info.short


_CONTROLLER: dict[str, tuple[type[Handler], Pipeline, str]] = {
    "Workspace": (WorkspaceHandler, pipelines.workspace, "workspace"),
    "Dataset": (DatasetHandler, pipelines.dataset, "dataset"),
    "LabelingJob": (LabelingJobHandler, pipelines.labeling, "labeling"),
    "Experiment": (ExperimentHandler, pipelines.experiment, "experiment"),
    "Deployment": (DeploymentHandler, pipelines.deployment, "deployment"),
}

# kind -> Kind, in apply order (SPEC_KINDS' order)
KINDS: dict[str, Kind] = {name: Kind(sk, *_CONTROLLER[name]) for name, sk in SPEC_KINDS.items()}


class _ByField(MutableMapping[str, Any]):
    """``KINDS`` seen as kind -> one field. Assigning replaces that field of the kind's
    descriptor (tests swap a handler or pipeline this way), so the registry stays the one truth."""

    def __init__(self, attr: str) -> None:
        self.attr = attr

    def __getitem__(self, kind: str) -> Any:
        return getattr(KINDS[kind], self.attr)

    def __setitem__(self, kind: str, value: Any) -> None:
        KINDS[kind] = replace(KINDS[kind], **{self.attr: value})

    def __delitem__(self, kind: str) -> None:
        raise TypeError("a kind's descriptor fields cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(KINDS)

    def __len__(self) -> int:
        return len(KINDS)


HANDLERS: MutableMapping[str, type[Handler]] = _ByField("handler")
PIPELINES: MutableMapping[str, Pipeline] = _ByField("pipeline")

__all__ = ["HANDLERS", "KINDS", "PIPELINES", "Context", "Handler", "Kind", "Step", "TemporaryError"]
