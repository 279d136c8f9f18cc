"""geo3d: cache frozen 3D-geometry tokens once, train VLA policies on them many times.

Every module lives under this one name, so no file of a user can shadow a part of geo3d (only a file named
geo3d.py could, as for any distribution). The card's top-level folders are subpackages: train/ is
`geo3d.train`, precompute/ `geo3d.precompute`, features_store/ `geo3d.features_store`, evaluation/
`geo3d.evaluation`. The checkout root is the package (pyproject.toml [tool.setuptools] package-dir
`geo3d = "."`): `pip install -e .` maps the name geo3d to the checkout, so `geo3d.train` is <checkout>/train/
without a copy or a link (and import-linter sees it); a wheel installs the same tree under geo3d/.
ARCHITECTURE.md "Packaging".
"""

__version__ = "0.1.0"
