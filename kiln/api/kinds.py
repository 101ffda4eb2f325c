"""What every layer knows about a kind, at the bottom of the stack: its model, its place in the
apply order and its short name (in workflow names). One entry per kind, in apply order (what
others refer to, first).

The layers above extend these entries rather than keep tables of their own: ``kiln.validate``
adds each kind's cross-spec check (``SPEC_KINDS``), ``kiln.controller.handlers`` its handler,
pipeline and steps (``KINDS``); a test checks that they cover the same kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from kiln.api.dataset import Dataset
from kiln.api.deployment import Deployment
from kiln.api.experiment import Experiment
from kiln.api.labeling import LabelingJob
from kiln.api.workspace import Workspace


@dataclass(frozen=True)
class KindInfo:
    name: str                   # the ``kind:`` of a spec document
    model: type[BaseModel]      # the document's pydantic model
    short: str                  # in workflow names: kiln-<short>-<workspace>-<name>


ALL: tuple[KindInfo, ...] = (
    KindInfo("Workspace", Workspace, "ws"),
    KindInfo("Dataset", Dataset, "data"),
    KindInfo("LabelingJob", LabelingJob, "label"),
    KindInfo("Experiment", Experiment, "exp"),
    KindInfo("Deployment", Deployment, "deploy"),
)
