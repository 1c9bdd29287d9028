"""The package list for setuptools; everything else about the build is in pyproject.toml.

The deployment stage lives in the folder export/ but installs as `sddcompress_export`. pyproject's
`[tool.setuptools.packages.find]` cannot rename a folder, so both trees are discovered here with
setuptools' own `find_packages` (no hand-kept list that a new subpackage could be missing from).
"""

from setuptools import find_packages, setup

PACKAGES = find_packages(include=["sddcompress", "sddcompress.*"])
PACKAGES += ["sddcompress_export"] + [f"sddcompress_export.{name}" for name in find_packages("export")]

setup(packages=PACKAGES)
