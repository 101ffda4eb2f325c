"""kiln: a declarative, GitOps-style ML platform.

YAML specs in git (Workspace, Dataset, LabelingJob, Experiment, Deployment) are reconciled by a
controller into Argo workflows, DVC-versioned data, Label Studio projects and BentoML services.

Layers (enforced by ``.importlinter``), higher imports lower, never back::

    kiln.cli -> kiln.controller -> (kiln.runners | kiln.algorithms | kiln.labeling | kiln.bento)
             -> kiln.api / kiln.state -> kiln._util
"""

__version__ = "0.1.0"
API_VERSION = "kiln.dev/v1alpha1"
