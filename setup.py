"""Maps the layer folders to their import packages: engine/ -> lamina_engine, operator/ -> lamina_operator.

A top-level package named `operator` would shadow the standard library, so the folder and the
import name differ; everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

LAYERS = {"engine": "lamina_engine", "operator": "lamina_operator"}

packages, package_dir = [], {}
for folder, name in LAYERS.items():
    for pkg in find_packages(include=[folder, f"{folder}.*"]):
        mapped = name + pkg[len(folder) :]
        packages.append(mapped)
        package_dir[mapped] = pkg.replace(".", "/")

setup(packages=packages, package_dir=package_dir)
