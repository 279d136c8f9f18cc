"""Suite names -> dataset folders on disk (one LeRobot dataset folder per LIBERO suite)."""

from __future__ import annotations

import os
from pathlib import Path

from geo3d.config import DATA_ROOT_ENV, shipped_dir
from geo3d.errors import DataError

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
VALID_SUITES = tuple(SUITE_FOLDERS) + tuple(SUITE_GROUPS)
DEMO_DATA_ROOT = shipped_dir("demo_data", "demo_data")


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


def resolve_suite(suite: str, data_root: str | Path | None = None) -> list[Path]:
    """Dataset folders for `suite` in global-index order; a missing folder is a DataError naming its path."""
    members = suite_members(suite)
    root = resolve_data_root(suite, data_root)
    paths = [root / SUITE_FOLDERS[m] for m in members]
    problems = [f"{p} {'does not exist' if not p.exists() else 'has no meta/ folder (not a LeRobot dataset)'}"
                for p in paths if not (p / "meta").is_dir()]
    if problems:
        hint = ("the shipped demo dataset is missing; restore demo_data/ from git (git checkout -- demo_data) "
                "or pass --data-root / set " + DATA_ROOT_ENV if root == DEMO_DATA_ROOT else
                f"download the suite there, or point --data-root / {DATA_ROOT_ENV} at the folder that holds it")
        raise DataError(f"suite {suite!r}: dataset folder " + "; ".join(problems) + f". Fix: {hint}")
    return paths
