"""geo3d: cache frozen 3D-geometry tokens once, train VLA policies on them many times.

Every module lives under this one name, so no file of a user can shadow a part of geo3d (only a file named
geo3d.py could, as for any distribution). The card's top-level folders are subpackages: train/ is
`geo3d.train`, precompute/ `geo3d.precompute`, features_store/ `geo3d.features_store`, evaluation/
`geo3d.evaluation`. A wheel installs them under geo3d/ (pyproject.toml [tool.setuptools] package-dir); in a
source checkout (editable install or PYTHONPATH=<checkout>) the lines below add the checkout root to this
package's search path, so `geo3d.train` is <checkout>/train/ without a copy. ARCHITECTURE.md "Packaging".
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

CARD_PACKAGES = ("train", "precompute", "features_store", "evaluation")  # the card's folders, as geo3d.<name>

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and all((_checkout / p / "__init__.py").is_file() for p in CARD_PACKAGES):
    __path__.append(str(_checkout))  # noqa: F821 (the package's own __path__)
