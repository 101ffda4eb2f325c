"""Per-kind handlers, one registry dict. A kind missing here has no behaviour in this kiln
version yet: plan and apply say so plainly instead of pretending success."""

from __future__ import annotations

from kiln.controller.handlers.base import Context, Handler, Step, TemporaryError
from kiln.controller.handlers.dataset import DatasetHandler
from kiln.controller.handlers.deployment import DeploymentHandler
from kiln.controller.handlers.experiment import ExperimentHandler
from kiln.controller.handlers.labeling import LabelingJobHandler
from kiln.controller.handlers.workspace import WorkspaceHandler

HANDLERS: dict[str, type[Handler]] = {
    "Workspace": WorkspaceHandler,
    "Dataset": DatasetHandler,
    "LabelingJob": LabelingJobHandler,
    "Experiment": ExperimentHandler,
    "Deployment": DeploymentHandler,
}

__all__ = ["HANDLERS", "Context", "Handler", "Step", "TemporaryError"]
