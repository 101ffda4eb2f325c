"""The spec language: one pydantic model per kind (``apiVersion: kiln.dev/v1alpha1``).

Purely data: models and validators, no I/O. Status is never part of these models; it lives in the
state store.
"""

from __future__ import annotations

from kiln.api.common import API_VERSION, DatasetRef, Metadata, ModelRef, ResourceRequest, SecretRef
from kiln.api.dataset import Dataset
from kiln.api.deployment import Deployment
from kiln.api.experiment import Experiment
from kiln.api.labeling import LabelingJob
from kiln.api.workspace import Workspace

# kind -> model. The order is the order objects are applied in (what others refer to, first).
KINDS: dict[str, type] = {
    "Workspace": Workspace,
    "Dataset": Dataset,
    "LabelingJob": LabelingJob,
    "Experiment": Experiment,
    "Deployment": Deployment,
}

Spec = Workspace | Dataset | LabelingJob | Experiment | Deployment

__all__ = ["API_VERSION", "KINDS", "Spec", "Workspace", "Dataset", "LabelingJob", "Experiment",
           "Deployment", "Metadata", "DatasetRef", "ModelRef", "ResourceRequest", "SecretRef"]
