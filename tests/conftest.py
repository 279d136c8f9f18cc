"""Session-wide fixtures and the test tiers.

Tiers (markers, pyproject [tool.pytest.ini_options]): `make test` runs everything (CI); `make test-fast` runs
`-m "not slow and not sim and not slurm"` (units and small real-file tests).
slow = end-to-end subprocess runs (precompute/train/demo/wheel), sim = needs the LIBERO simulator,
slurm = starts a real SLURM cluster, gpu = needs CUDA (`make test-gpu`, `pytest -m gpu`).
The CPU tiers mean the CPU (exact-loss resume, CPU bf16 rules): on a GPU host a session that does not select
the gpu tier hides the GPUs (CUDA_VISIBLE_DEVICES="", set before anything initialises CUDA, so the test
process and every `geo3d` subprocess it starts run on the CPU); a session run with `-m gpu` keeps them. The
hidden value is kept in GEO3D_TEST_HIDDEN_GPUS (tests/slurm_cluster.py hands it back to its jobs). Both make targets run two pytest-xdist workers (`-n 2 --dist loadgroup`,
`make test TEST_WORKERS=0` for one process); the scheduling groups are set below.

The tiny Qwen2.5-VL dir (tokenizer + processor + config) is the expensive shared fixture: one GEO3D_CACHE per
session, set in os.environ so every `geo3d` subprocess a test starts reuses the same build, and nothing is
written to the user's ~/.cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from packaging.version import Version

from geo3d.core.config import CONFIG_DIR
from geo3d.policy.configuration_policy import PolicyConfig
from geo3d.policy.tiny_qwen import tiny_model_dir

# `make test` runs two pytest workers (pytest-xdist, `-n 2 --dist loadgroup`) on the 2-core CI machine: each
# worker keeps to one torch thread, as the `geo3d` subprocesses the tests start already do
# (train_fixtures.subprocess_env), so the two workers do not fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Scheduling groups for `--dist loadgroup`: a module's tests stay on one worker (its module-scoped
    fixtures, e.g. a trained checkpoint, are built once), and every SLURM test shares one worker, so two
    throwaway clusters never run side by side. Set as each item is collected, before xdist's
    pytest_collection_modifyitems reads the groups."""
    if not any(item.iter_markers("xdist_group")):
        group = "slurm" if item.get_closest_marker("slurm") else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


HIDDEN_GPUS = "GEO3D_TEST_HIDDEN_GPUS"
UNSET = "<unset>"


def selects_gpu_tier(markexpr: str) -> bool:
    """`-m gpu` (or an expression that asks for gpu without negating it)."""
    return "gpu" in markexpr and "not gpu" not in markexpr


def pytest_configure(config: pytest.Config) -> None:
    """Hide the GPUs from the CPU tiers (module docstring). Refuse, rather than run ungrouped: with pytest >= 9.2,
    xdist's `--dist loadgroup` silently ignores the groups (pytest-dev/pytest-xdist#1386): the SLURM tests would
    start two clusters side by side."""
    if not selects_gpu_tier(config.option.markexpr or "") and HIDDEN_GPUS not in os.environ:
        os.environ[HIDDEN_GPUS] = os.environ.get("CUDA_VISIBLE_DEVICES", UNSET)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    if getattr(config.option, "dist", "no") == "loadgroup" and Version(pytest.__version__).release[:2] >= (9, 2):
        raise pytest.UsageError(f"pytest {pytest.__version__}: pytest-xdist's --dist loadgroup does not group tests "
                                "with pytest >= 9.2 (pytest-dev/pytest-xdist#1386); install 'pytest<9.2' "
                                "(pyproject.toml [dev]) or run `make test TEST_WORKERS=0`")


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
    cfg = PolicyConfig.from_cfg(OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml"))
    return tiny_model_dir(cfg.vlm.tiny, geo3d_cache)
