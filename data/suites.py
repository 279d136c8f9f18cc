"""Suite names -> dataset folders on disk (one folder per LIBERO suite, LeRobot or LIBERO HDF5).

Each suite is looked for under the data root as its LeRobot folder (`SUITE_FOLDERS`), else as a LIBERO HDF5
folder (`HDF5_FOLDERS`: openvla's regenerated `<suite>_no_noops/`, then the release's `<suite>/`); the
format is detected from what the folder holds. Two candidates for one suite is refused (which one is meant
cannot be guessed): point the data root at a folder that holds only one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from geo3d.core.config import DATA_ROOT_ENV, PACKAGE_ROOT
from geo3d.core.errors import DataError
from geo3d.data.lerobot_format import LeRobotDataset
from geo3d.data.libero_hdf5 import LiberoHDF5Dataset, is_hdf5_suite_folder

SUITE_FOLDERS = {
    "libero_spatial": "libero_spatial_no_noops_1.0.0_lerobot",
    "libero_object": "libero_object_no_noops_1.0.0_lerobot",
    "libero_goal": "libero_goal_no_noops_1.0.0_lerobot",
    "libero_10": "libero_10_no_noops_1.0.0_lerobot",
}
SUITE_GROUPS = {
    "libero_all": ("libero_spatial", "libero_object", "libero_goal", "libero_10"),
    "demo": ("libero_spatial", "libero_object"),  # the shipped demo_data/ holds these two folders
}
HDF5_FOLDERS = {s: (f"{s}_no_noops", s) for s in SUITE_FOLDERS}  # regenerated set, then the release
VALID_SUITES = tuple(SUITE_FOLDERS) + tuple(SUITE_GROUPS)
DEMO_DATA_ROOT = PACKAGE_ROOT / "demo_data"


def suite_members(suite: str) -> tuple[str, ...]:
    """The single suites a (possibly grouped) suite name stands for, in global-index order."""
    if suite in SUITE_FOLDERS:
        return (suite,)
    if suite in SUITE_GROUPS:
        return SUITE_GROUPS[suite]
    raise DataError(f"unknown suite {suite!r}; valid suites: {', '.join(VALID_SUITES)}")


def resolve_data_root(suite: str, data_root: str | Path | None) -> Path:
    """The folder holding the suite folders: given root, else $GEO3D_DATA_ROOT, else demo_data/ for `demo`."""
    root = data_root or os.environ.get(DATA_ROOT_ENV) or None
    if root:
        return Path(root).expanduser()
    if suite == "demo":
        return DEMO_DATA_ROOT
    raise DataError(f"suite {suite!r} needs a data root: pass --data-root DIR (or data.data_root=DIR) or set "
                    f"{DATA_ROOT_ENV}=DIR, where DIR holds the folders {[SUITE_FOLDERS[s] for s in suite_members(suite)]}")


def _is_lerobot(path: Path) -> bool:
    return (path / "meta").is_dir()


def find_suite_folder(root: Path, suite: str) -> tuple[Path | None, str]:
    """The suite's one folder under root (or None) and, if none, why; refuses two candidates."""
    lerobot = root / SUITE_FOLDERS[suite]
    found = [lerobot] if _is_lerobot(lerobot) else []
    found += [root / f for f in HDF5_FOLDERS[suite] if is_hdf5_suite_folder(root / f)]
    if len(found) > 1:
        raise DataError(f"suite {suite!r}: {root} holds several copies of it ({', '.join(p.name for p in found)}); "
                        f"point --data-root at a folder that holds only the one to use (e.g. a folder of symlinks)")
    if found:
        return found[0], ""
    if lerobot.exists():
        return None, f"{lerobot} has no meta/ folder (not a LeRobot dataset)"
    hdf5 = " or ".join(str(root / f) for f in HDF5_FOLDERS[suite])
    return None, f"{lerobot} does not exist (nor a LIBERO HDF5 folder {hdf5} with *_demo.hdf5 files)"


def resolve_suite(suite: str, data_root: str | Path | None = None) -> list[Path]:
    """Dataset folders for `suite` in global-index order; a missing folder is a DataError naming its path."""
    members = suite_members(suite)
    root = resolve_data_root(suite, data_root)
    found = [find_suite_folder(root, m) for m in members]
    problems = [why for p, why in found if p is None]
    if problems:
        hint = ("the shipped demo dataset is missing; restore demo_data/ from git (git checkout -- demo_data) "
                "or pass --data-root / set " + DATA_ROOT_ENV if root == DEMO_DATA_ROOT else
                f"download the suite there, or point --data-root / {DATA_ROOT_ENV} at the folder that holds it")
        raise DataError(f"suite {suite!r}: dataset folder " + "; ".join(problems) + f". Fix: {hint}")
    return [p for p, _ in found if p is not None]


def open_dataset(path: Path, **kwargs: Any) -> Any:
    """The reader for a resolved suite folder: `LeRobotDataset` or `LiberoHDF5Dataset` (same interface)."""
    if _is_lerobot(path):
        return LeRobotDataset(path, **kwargs)

    return LiberoHDF5Dataset(path, **kwargs)
