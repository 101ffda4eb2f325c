"""What every layer knows about a kind, at the bottom of the stack: its model, its place in the
apply order, its short name (in workflow names) and the update class of each of its fields. One
entry per kind, in apply order (what others refer to, first).

Update classes (``UPDATE_CLASSES``, cheapest first) say what a changed field costs, so that plan
announces it and apply does only that (#25):

- ``metadata``: descriptions, labels, annotations, owner and sharing; recorded, nothing runs;
- ``re-register``: how a model version is registered (tags, description, aliases, retention,
  export formats): the registered version is re-tagged or converted, nothing is trained;
- ``re-select``: which finished trial is registered (``selectTrial``, the model name): the chosen
  trial's artefacts are registered, nothing is trained;
- ``restart``: how a deployment serves (resources, workers, batching, limits): the server is
  restarted with the same model, nothing is rebuilt;
- ``re-run``: everything else, i.e. what changes the result. A field not listed re-runs: a new
  field is safe until someone declares it cheaper.

A field's class is its longest listed prefix (``spec.register`` re-selects, ``spec.register.tags``
only re-registers); a change's class is its costliest field's.

The layers above extend these entries rather than keep tables of their own: ``kiln.validate``
adds each kind's cross-spec check (``SPEC_KINDS``), ``kiln.controller.handlers`` its handler,
pipeline and steps (``KINDS``); a test checks that they cover the same kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from kiln.api.dataset import Dataset
from kiln.api.deployment import Deployment
from kiln.api.experiment import Experiment
from kiln.api.labeling import LabelingJob
from kiln.api.workspace import Workspace

UpdateClass = Literal["metadata", "re-register", "re-select", "restart", "re-run"]
UPDATE_CLASSES: tuple[UpdateClass, ...] = ("metadata", "re-register", "re-select", "restart", "re-run")

# every kind: what describes an object changes no result
_METADATA: dict[str, UpdateClass] = {
    "metadata.labels": "metadata", "metadata.annotations": "metadata", "metadata.description": "metadata",
    "spec.description": "metadata",
}


@dataclass(frozen=True)
class KindInfo:
    name: str                   # the ``kind:`` of a spec document
    model: type[BaseModel]      # the document's pydantic model
    short: str                  # in workflow names: kiln-<short>-<workspace>-<name>
    # field path prefix (as `kiln plan` prints it: spec.register.tags) -> its update class; any
    # other field re-runs (module doc)
    updates: tuple[tuple[str, UpdateClass], ...] = ()

    def update_class(self, path: str) -> UpdateClass:
        """The update class of a changed field (``spec.register.tags.team``): its longest
        declared prefix's, ``re-run`` when none is declared."""
        best: tuple[int, UpdateClass] = (-1, "re-run")
        for prefix, cls in self.updates:
            if (path == prefix or path.startswith((prefix + ".", prefix + "["))) and len(prefix) > best[0]:
                best = (len(prefix), cls)
        return best[1]


def _updates(**by_path: UpdateClass) -> tuple[tuple[str, UpdateClass], ...]:
    return tuple({**_METADATA, **{p.replace("__", "."): c for p, c in by_path.items()}}.items())


ALL: tuple[KindInfo, ...] = (
    KindInfo("Workspace", Workspace, "ws", _updates()),
    # sharing (Flightbase's read-only datasets) is who may change it, not what it holds
    KindInfo("Dataset", Dataset, "data", _updates(
        spec__owner="metadata", spec__sharing="metadata")),
    KindInfo("LabelingJob", LabelingJob, "label", _updates(spec__owner="metadata")),
    KindInfo("Experiment", Experiment, "exp", _updates(
        spec__owner="metadata", spec__access="metadata", spec__users="metadata",
        # the trigger says what a future dataset version does; this run's result stays
        spec__trigger="metadata",
        spec__register="re-select", spec__register__model="re-select", spec__selectTrial="re-select",
        spec__register__tags="re-register", spec__register__description="re-register",
        spec__register__aliases="re-register", spec__register__keepVersions="re-register",
        spec__register__export="re-register", spec__register__onnxTolerance="re-register",
    )),
    KindInfo("Deployment", Deployment, "deploy", _updates(
        spec__owner="metadata", spec__access="metadata", spec__users="metadata", spec__resources="restart", spec__workers="restart", spec__batching="restart",
        spec__limits="restart", spec__replicas="restart", spec__autoscaling="restart",
        spec__port="restart", spec__capture="restart", spec__enabled="restart", spec__rollout="restart",
    )),
)
