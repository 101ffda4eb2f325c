"""Package layout for setuptools.

The design card keeps each layer in its own top-level folder (``controller/``, ``runners/`` …);
they install under the single ``kiln`` namespace so that nothing called ``controller`` or
``algorithms`` lands in site-packages. pyproject.toml holds everything else.

Every package is declared, data folders included (``kiln._data`` holds Argo's schema and has no
``__init__.py``): setuptools warns "Package would be ignored" for any importable folder it was not
told about, and pip prints the backend's warnings on every install, where a newcomer reads them as
failures.
"""

import warnings

from setuptools import find_namespace_packages, find_packages, setup
from setuptools.warnings import InformationOnly

LAYERS = ("controller", "runners", "algorithms", "labeling", "bento")
DATA_PACKAGES = ("kiln._data", "kiln.controller.console.static")

packages = find_packages(include=["kiln", "kiln.*"]) + list(DATA_PACKAGES)
package_dir = {"kiln": "kiln"}
for layer in LAYERS:
    package_dir[f"kiln.{layer}"] = layer
    packages.append(f"kiln.{layer}")
    packages += [f"kiln.{layer}.{sub}" for sub in find_packages(layer)]

# A data folder nobody declared would be left out of a wheel without a word; fail the build instead.
undeclared = sorted(
    f"kiln.{name}" for name in find_namespace_packages("kiln", exclude=["*__pycache__*"]) if f"kiln.{name}" not in packages
)
if undeclared:
    raise SystemExit(f"setup.py: {', '.join(undeclared)} not declared: add it to DATA_PACKAGES (data) or give it an __init__.py")

# The editable install maps kiln.controller to controller/ etc. with a meta path finder (the layers'
# folders are not under kiln/), and setuptools then emits an InformationOnly "Editable installation"
# notice ("folders in your working directory ... may take precedence"). Here the folder that could
# take precedence is this checkout's kiln/, the very code installed, so the notice says nothing
# actionable; it is silenced by its category and text alone, every other warning still shows.
warnings.filterwarnings("ignore", message="Editable installation", category=InformationOnly)

setup(
    packages=packages,
    package_dir=package_dir,
    # the console's script and style sheet: served from the package, no build step, no CDN
    package_data={"kiln._data": ["*.json", "*.yaml"], "kiln.controller.console.static": ["*.js", "*.css"]},
)
