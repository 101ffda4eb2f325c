"""kiln: a declarative, GitOps-style ML platform.

YAML specs in git (Workspace, Dataset, LabelingJob, Experiment, Deployment) are reconciled by a
controller into Argo workflows, DVC-versioned data, Label Studio projects and BentoML services.

Layers, higher imports lower, never back (``tests/test_layers.py`` enforces them on the source;
import-linter cannot follow the package-dir mapping that installs ``controller/`` as
``kiln.controller``)::

    kiln.cli -> kiln.controller -> (kiln.runners | kiln.algorithms | kiln.labeling | kiln.bento | kiln.data)
             -> (kiln.state | kiln.validate | kiln.loader | kiln.templates) -> (kiln.api | kiln.config)
             -> (kiln._util | kiln.errors)
"""

__version__ = "0.1.0"
API_VERSION = "kiln.dev/v1alpha1"

# ``kiln.report(step=3, validation_accuracy=0.9)`` from your own training script (kiln.sdk:
# standard library only, so every ``import kiln`` can afford it)
from kiln.sdk import report  # noqa: E402

__all__ = ["API_VERSION", "__version__", "report"]
