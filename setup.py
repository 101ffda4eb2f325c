"""Package layout for setuptools.

The design card keeps each layer in its own top-level folder (``controller/``, ``runners/`` …);
they install under the single ``kiln`` namespace so that nothing called ``controller`` or
``algorithms`` lands in site-packages. pyproject.toml holds everything else.
"""

from setuptools import find_packages, setup

LAYERS = ("controller", "runners", "algorithms", "labeling", "bento")

packages = find_packages(include=["kiln", "kiln.*"])
package_dir = {"kiln": "kiln"}
for layer in LAYERS:
    package_dir[f"kiln.{layer}"] = layer
    packages.append(f"kiln.{layer}")
    packages += [f"kiln.{layer}.{sub}" for sub in find_packages(layer)]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"kiln": ["_data/*.json", "_data/*.yaml"]},
)
