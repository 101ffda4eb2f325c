"""The spec language: one pydantic model per kind (``apiVersion: kiln.dev/v1alpha1``).

Purely data: models and validators, no I/O. Status is never part of these models; it lives in the
state store.
"""

from __future__ import annotations

from kiln.api.common import API_VERSION, DatasetRef, Metadata, ModelRef, ResourceRequest, SecretRef
from kiln.api.dataset import Dataset
from kiln.api.deployment import Deployment
from kiln.api.experiment import Experiment
from kiln.api.kinds import ALL as _ALL_KINDS
from kiln.api.labeling import LabelingJob
from kiln.api.workspace import Workspace

# kind -> model, in apply order (what others refer to, first); derived from kiln.api.kinds.
KINDS: dict[str, type] = {k.name: k.model for k in _ALL_KINDS}

Spec = Workspace | Dataset | LabelingJob | Experiment | Deployment

__all__ = ["API_VERSION", "KINDS", "Spec", "Workspace", "Dataset", "LabelingJob", "Experiment",
           "Deployment", "Metadata", "DatasetRef", "ModelRef", "ResourceRequest", "SecretRef"]
