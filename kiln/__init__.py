"""kiln: a declarative, GitOps-style ML platform.

YAML specs in git (Workspace, Dataset, LabelingJob, Experiment, Deployment) are reconciled by a
controller into Argo workflows, DVC-versioned data, Label Studio projects and BentoML services.

Layers (enforced by ``.importlinter``), higher imports lower, never back::

    kiln.cli -> kiln.controller -> (kiln.runners | kiln.algorithms | kiln.labeling | kiln.bento)
             -> kiln.api / kiln.state -> kiln._util
"""

__version__ = "0.1.0"
API_VERSION = "kiln.dev/v1alpha1"


def report(step: int | None = None, **metrics: float) -> None:
    """``kiln.report(step=3, validation_accuracy=0.9)`` from your own training script: see kiln.sdk."""
    from kiln.sdk import report as _report

    _report(step, **metrics)
