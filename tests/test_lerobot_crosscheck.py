"""Cross-check with lerobot's own reader (optional): on the v3.0 fixtures, every frame's pixels, action, state,
timestamp and index as lerobot returns them equal what geo3d's reader returns.

lerobot cannot live in geo3d's environment (lerobot 0.6 needs Python >= 3.12; the standalone lerobot-dataset
package pins older numpy/av/huggingface-hub), so it runs in its own interpreter: GEO3D_LEROBOT_PYTHON, made by
`bash scripts/setup_lerobot_crosscheck.sh`, or this interpreter if it has lerobot. Skipped, saying so, without.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from data_fixtures import make_synthetic_libero
from geo3d.core.config import PACKAGE_ROOT
from geo3d.data.lerobot_format import LeRobotDataset
from geo3d.data.suites import SUITE_FOLDERS


def _lerobot_python() -> str | None:
    env = os.environ.get("GEO3D_LEROBOT_PYTHON")
    if env:
        return env
    if importlib.util.find_spec("lerobot") or importlib.util.find_spec("ledataset"):
        return sys.executable
    return None


PY = _lerobot_python()
pytestmark = pytest.mark.skipif(PY is None, reason="lerobot is not installed (lerobot 0.6 needs Python >= 3.12): "
                                "run `bash scripts/setup_lerobot_crosscheck.sh` and set GEO3D_LEROBOT_PYTHON")


def test_lerobot_reads_the_v3_fixtures_exactly_like_geo3d(tmp_path):
    root = make_synthetic_libero(tmp_path, suites=("libero_spatial",), episodes_per_suite=3, lengths=[9, 14, 11],
                                 size=48, version="v3.0", episodes_per_file=2)
    folder = root / SUITE_FOLDERS["libero_spatial"]
    dump = tmp_path / "lerobot.npz"
    proc = subprocess.run([PY, str(PACKAGE_ROOT / "scripts" / "lerobot_dump.py"), str(folder), str(dump)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = np.load(dump)
    ds = LeRobotDataset(folder)
    cols = ds.read_columns(["timestamp", "index", "episode_index", "frame_index"])
    frames = np.stack([f for e in ds.episode_indices for f in ds.iter_episode_frames(e)])
    ours = {"action": np.concatenate([ds.episode_columns(e)["action"] for e in ds.episode_indices]),
            "state": np.concatenate([ds.episode_columns(e)["observation.state"] for e in ds.episode_indices])}
    assert len(theirs["index"]) == ds.num_frames == 34
    for k in ("index", "episode_index", "frame_index"):
        assert np.array_equal(theirs[k], cols[k]), k
    assert np.array_equal(theirs["timestamp"].astype(np.float32), cols["timestamp"].astype(np.float32))
    assert np.allclose(theirs["timestamp"], cols["frame_index"] / ds.fps, atol=1e-6)
    assert np.array_equal(theirs["action"], ours["action"]) and np.array_equal(theirs["state"], ours["state"])
    assert np.array_equal(theirs["agentview"], frames[:, 0]) and np.array_equal(theirs["wrist"], frames[:, 1])
    random = np.stack([ds.read_frame(int(e), int(f)) for e, f in zip(theirs["episode_index"], theirs["frame_index"])])
    assert np.array_equal(random, frames)  # geo3d's random access agrees with both
