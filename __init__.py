"""geo3d: cache frozen 3D-geometry tokens once, train VLA policies on them many times.

Every module lives under this one name, so no file of a user can shadow a part of geo3d (only a file named
geo3d.py could, as for any distribution). The card's top-level folders are subpackages: train/ is
`geo3d.train`, precompute/ `geo3d.precompute`, features_store/ `geo3d.features_store`, evaluation/
`geo3d.evaluation`. A wheel installs them under geo3d/ (pyproject.toml [tool.setuptools] package-dir); in a
source checkout geo3d/train, geo3d/precompute, geo3d/features_store and geo3d/evaluation are symlinks to those
folders, so `geo3d.train` is <checkout>/train/ without a copy (and import-linter sees it). ARCHITECTURE.md
"Packaging".
"""

__version__ = "0.1.0"
