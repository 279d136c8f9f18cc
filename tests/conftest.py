"""Session-wide fixtures and the test tiers.

Tiers (markers, pyproject [tool.pytest.ini_options]): `make test` runs everything (CI); `make test-fast` runs
`-m "not slow and not sim and not slurm"` (units and small real-file tests: 314 tests in 1 min 53 s on the 2-core EPYC, 2026-12-01).
slow = end-to-end subprocess runs (precompute/train/demo/wheel), sim = needs the LIBERO simulator,
slurm = starts a real SLURM cluster.

The tiny Qwen2.5-VL dir (tokenizer + processor + config) is the expensive shared fixture: one GEO3D_CACHE per
session, set in os.environ so every `geo3d` subprocess a test starts reuses the same build, and nothing is
written to the user's ~/.cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def geo3d_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.getbasetemp() / "geo3d_cache"
    previous = os.environ.get("GEO3D_CACHE")
    os.environ["GEO3D_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("GEO3D_CACHE", None)
    else:
        os.environ["GEO3D_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_vlm_dir(geo3d_cache: Path) -> Path:
    """The tiny Qwen dir of configs/model/tiny.yaml, built once per session."""
    from omegaconf import OmegaConf

    from geo3d.config import CONFIG_DIR
    from geo3d.train.modeling.configuration_policy import PolicyConfig
    from geo3d.train.modeling.tiny_qwen import tiny_model_dir

    cfg = PolicyConfig.from_cfg(OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml"))
    return tiny_model_dir(cfg.vlm.tiny, geo3d_cache)
